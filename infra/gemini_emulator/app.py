"""The aiohttp application: route registration, API-key auth and google.rpc error rendering.

Each API surface is a module with ``setup_routes(app)`` (generate, files, batches, admin), and
every route is authenticated here except ``/_emulator/`` admin routes and handlers marked
``routing.public`` (the upload route: its session URLs are called keyless by the SDK).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from infra.gemini_emulator import admin, batches, errors, files, generate, models, webhooks
from infra.gemini_emulator.auth import authenticate
from infra.gemini_emulator.routing import ADMIN_PREFIX, Handler, is_public
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
    """Count the request by endpoint, then require a key unless the handler is public."""
    state = request.app[STATE_KEY]
    endpoint = request.match_info.route.name
    if endpoint is not None and not request.path.startswith(ADMIN_PREFIX):
        with state.lock:
            state.stats.record_endpoint(endpoint)
    if not is_public(request):
        authenticate(request)
    return await handler(request)


def create_app(
    config: dict[str, Any] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    data_dir: str | Path | None = None,
) -> web.Application:
    """Build the emulator app; ``config`` is a patch over the defaults (raises ConfigError).

    ``clock`` drives quota windows, stats and batch turnaround; inject a fake one for
    deterministic tests. ``data_dir`` holds file bytes (uploads, batch results); default: a
    fresh temp dir, removed at cleanup. Run it with ``web.AppRunner(app, handler_cancellation=True)``
    so a client that times out frees its concurrency slot (see server.py).
    """
    state = EmulatorState(config, clock=clock, data_dir=data_dir)
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=64 * 1024**2)
    app[STATE_KEY] = state
    generate.setup_routes(app)
    models.setup_routes(app)
    files.setup_routes(app)
    batches.setup_routes(app)
    webhooks.setup_routes(app)
    admin.setup_routes(app)

    async def _close(_: web.Application) -> None:
        state.close()

    app.on_cleanup.append(_close)
    return app
