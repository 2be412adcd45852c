"""Route conventions shared by every API module: version prefixes and key-free handlers."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The SDK 3.x default is v1; pinned or older clients use v1beta; v1alpha is served the same way.
API_VERSIONS = ("v1", "v1beta", "v1alpha")
VERSION_PATTERN = "{version:" + "|".join(API_VERSIONS) + "}"
ADMIN_PREFIX = "/_emulator/"

_PUBLIC_ATTR = "__gemini_emulator_public__"


def versioned(path: str) -> str:
    """Route pattern serving ``path`` under every API version prefix, e.g. ``/v1beta/files``."""
    return "/" + VERSION_PATTERN + path


def base_url(request: web.Request) -> str:
    """``http://host:port`` as the client addressed us (the Host header), for URLs we hand out."""
    return f"{request.scheme}://{request.host}"


def json_response(body: Any, *, text: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """A 200 JSON answer; pass ``text`` when the body was already serialised (off the loop)."""
    return web.Response(
        text=text if text is not None else json.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def public(handler: Handler) -> Handler:
    """Mark a handler as reachable without an API key (the SDK sends none on upload session URLs)."""
    setattr(handler, _PUBLIC_ATTR, True)
    return handler


def is_public(request: web.Request) -> bool:
    if request.path.startswith(ADMIN_PREFIX):
        return True
    return getattr(request.match_info.handler, _PUBLIC_ATTR, False)
