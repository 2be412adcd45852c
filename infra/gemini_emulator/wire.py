"""Helpers for the request side of the wire: key casing and bytes fields.

The real server parses proto-JSON, which accepts lowerCamel and snake_case for every field, and the
SDK really does send both in one body (``generationConfig`` holding ``inlineData.mime_type``). We
normalise every key to snake_case once, so handlers read a single spelling.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")

# Maps whose keys belong to the user, not to the schema: never rename inside them.
_FREE_FORM_KEYS = frozenset({"labels", "metadata"})


def snake(name: str) -> str:
    return _CAMEL_BOUNDARY.sub(r"_\1", name).lower()


def normalize_keys(value: Any) -> Any:
    """Return ``value`` with every dict key in snake_case.

    If both spellings of a key are present (``extra_body`` in the SDK can add ``generation_config``
    next to the ``generationConfig: {}`` it always sends), dicts are merged and scalars take the
    later value, which is what a tolerant proto-JSON reader ends up with.
    """
    if isinstance(value, list):
        return [normalize_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = snake(key)
        item = item if name in _FREE_FORM_KEYS else normalize_keys(item)
        if isinstance(out.get(name), dict) and isinstance(item, dict):
            out[name] = {**out[name], **item}
        else:
            out[name] = item
    return out


def decode_bytes(data: str) -> bytes:
    """Decode a proto-JSON ``bytes`` field; the SDK sends URL-safe base64, others send standard.

    Raises ``ValueError`` on garbage so callers can answer 400 naming the field.
    """
    text = data.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def encode_bytes(data: bytes) -> str:
    """Responses carry standard padded base64, as the real API sends."""
    return base64.b64encode(data).decode("ascii")
