"""Writes docs/configuration.md from the field descriptions of `Settings` (functions/config.py),
so the table of environment variables cannot drift from the code.

`python tools/gen_config_doc.py` (or `make docs`) rewrites the page; a unit test fails when the
committed page and the code disagree.
"""
from __future__ import annotations

import pathlib
import sys
import types
import typing

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"

HEADER = """\
# Configuration

Part of the imagefleet documentation; start at the [README](../README.md).

The functions read these environment variables, through one `Settings` class in
`functions/config.py` (a variable's name is the field's, upper-cased). This page is generated from
that class's field descriptions by `python tools/gen_config_doc.py` (`make docs`); a unit test
fails when the two disagree, so edit the descriptions, not this page.

| variable | type | default | meaning |
|---|---|---|---|
"""

FOOTER = """
Not in the table, because the SDKs read them themselves when a client is built: the emulator
variables `FIRESTORE_EMULATOR_HOST`, `PUBSUB_EMULATOR_HOST`, `STORAGE_EMULATOR_HOST` (with
`http://`) and `GOOGLE_GEMINI_BASE_URL`, set by the local stack and the tests. `API_KEYS` entries are described
under [Tenants](http-api.md#the-http-api).

The worker's push subscription needs an ack deadline above `MAX_WAIT_SECONDS + GEMINI_TIMEOUT_SECONDS`
`+ 2 × WEBHOOK_TIMEOUT_SECONDS` (the local stack uses 120 s).
"""


def _settings_class() -> type:
    sys.path.insert(0, str(ROOT / "functions"))
    from config import Settings

    return Settings


def type_name(annotation: typing.Any) -> str:
    """`int`, `float`, `bool`, `str`, `secret`; an optional field shows as its inner type."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in inner)
    if getattr(annotation, "__name__", "") == "SecretStr":
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: typing.Any) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(settings_class: type | None = None) -> str:
    settings_class = settings_class or _settings_class()
    rows = []
    for name, field in settings_class.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no description: give it one (Field(..., description=...))")
        rows.append(f"| `{name.upper()}` | {type_name(field.annotation)} | {default_text(field)} "
                    f"| {_cell(field.description)} |")
    return HEADER + "\n".join(rows) + "\n" + FOOTER


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC.relative_to(ROOT)}")
