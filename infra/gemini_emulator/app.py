"""The aiohttp application: route registration, API-key auth and google.rpc error rendering.

Each API surface is a module with ``setup_routes(app)`` (generate today; files and batches
later), and every route is authenticated here except ``/_emulator/`` admin routes and handlers
marked ``routing.public`` (later: resumable-upload session URLs, which the SDK calls keyless).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from aiohttp import web

from infra.gemini_emulator import admin, errors, generate
from infra.gemini_emulator.routing import Handler, is_public
from infra.gemini_emulator.state import STATE_KEY, EmulatorState

log = logging.getLogger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as a google.rpc.Status JSON body, as the SDK expects."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return exc.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return errors.not_found(f"Method not found: {request.method} {request.path}").to_response()
        return errors.ApiError(exc.status, exc.reason).to_response()
    except Exception:  # noqa: BLE001 - a bug must still look like the API's 500, not an HTML page
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return errors.internal().to_response()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``x-goog-api-key`` header or ``?key=``; missing -> 403, wrong -> 400 API_KEY_INVALID."""
    if is_public(request):
        return await handler(request)
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
    if failure is not None:
        raise failure
    return await handler(request)


def create_app(config: dict[str, Any] | None = None, *, clock: Callable[[], float] = time.monotonic) -> web.Application:
    """Build the emulator app; ``config`` is a patch over the defaults (raises ConfigError).

    ``clock`` drives quota windows and stats; inject a fake one for deterministic tests.
    Run it with ``web.AppRunner(app, handler_cancellation=True)`` so a client that times out
    frees its concurrency slot (see server.py).
    """
    state = EmulatorState(config, clock=clock)
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=64 * 1024**2)
    app[STATE_KEY] = state
    generate.setup_routes(app)
    admin.setup_routes(app)

    async def _close(_: web.Application) -> None:
        state.close()

    app.on_cleanup.append(_close)
    return app
