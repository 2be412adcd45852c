"""API-key authentication, shared by the app middleware and by handlers that authenticate
only some of their requests (the upload route: ``start`` needs a key, session chunks do not)."""

from __future__ import annotations

from aiohttp import web

from infra.gemini_emulator import errors
from infra.gemini_emulator.state import STATE_KEY

# The caller's key, set on every authenticated request. Files and batches belong to the key that
# created them (the real API scopes them to a project; here each key is its own project for
# visibility, while quotas stay shared).
API_KEY = web.RequestKey("gemini_emulator_api_key", str)


def authenticate(request: web.Request) -> str:
    """``x-goog-api-key`` header or ``?key=``; missing -> 403, wrong -> 400 API_KEY_INVALID."""
    key = request.headers.get("x-goog-api-key")
    if key is None:
        key = request.query.get("key")
    state = request.app[STATE_KEY]
    with state.lock:
        allowed = state.config["api_keys"]
        failure = None
        if key is None:
            failure = errors.missing_api_key()
        elif not key or (allowed is not None and key not in allowed):
            failure = errors.invalid_api_key()
        if failure is not None:
            state.stats.auth_failures += 1
    if failure is not None or key is None:  # key is None only with a failure
        raise failure or errors.missing_api_key()
    request[API_KEY] = key
    return key
