"""Helpers for the wire: key casing, bytes fields, timestamps and page tokens.

The real server parses proto-JSON, which accepts lowerCamel and snake_case for every field, and the
SDK really does send both in one body (``generationConfig`` holding ``inlineData.mime_type``). We
normalise every key to snake_case once, so handlers read a single spelling.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100

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


def rfc3339(epoch_seconds: float) -> str:
    """Timestamp JSON as the API writes it (UTC, fractional seconds, ``Z``)."""
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def paginate(
    items: Sequence[T], seq_of: Callable[[T], int], page_size: str | None, page_token: str | None
) -> tuple[list[T], str | None]:
    """One page of ``items`` (sorted newest first by ``seq_of``) and the next page token.

    The token is the sequence number of the last item served, so creating or deleting items
    between pages neither repeats nor skips any. Raises ``ValueError`` on a bad size or token.
    """
    size = int(page_size) if page_size not in (None, "") else DEFAULT_PAGE_SIZE
    size = DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)
    if page_token:
        after = int(page_token)
        items = [item for item in items if seq_of(item) < after]
    page = list(items[:size])
    next_token = str(seq_of(page[-1])) if len(items) > size else None
    return page, next_token
