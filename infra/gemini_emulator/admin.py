"""``/_emulator/*``: the control plane tests and benchmarks use (no API key).

GET/POST config, GET stats, POST reset, GET requests (recent request log), GET healthz, and
POST batches/{id}:force (end a batch in a chosen state now).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from infra.gemini_emulator import batch_jobs, batches, errors
from infra.gemini_emulator.config import ConfigError
from infra.gemini_emulator.routing import ADMIN_PREFIX
from infra.gemini_emulator.state import STATE_KEY


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


def _bad_request(message: str) -> web.Response:
    return _json({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}, 400)


async def get_config(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].config_snapshot())


async def post_config(request: web.Request) -> web.Response:
    try:
        patch = json.loads(await request.read() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _bad_request(f"config body is not JSON: {exc}")
    try:
        return _json(request.app[STATE_KEY].update_config(patch))
    except ConfigError as exc:
        return _bad_request(str(exc))


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        batches.advance_all(state)  # so batches.by_state is current
    return _json(state.stats_snapshot())


async def force_batch(request: web.Request) -> web.Response:
    """``{"state": "BATCH_STATE_EXPIRED"}`` (or JOB_STATE_X, or "expired"): end the batch in that
    state now, whoever owns it. SUCCEEDED answers once the results are written. Returns the
    Operation as ``batches.get`` would."""
    try:
        body = json.loads(await request.read() or b"{}")
        batch_state = batch_jobs.parse_state(body["state"])
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as exc:
        return _bad_request(f'expected {{"state": one of {sorted(batch_jobs.TERMINAL)}}}: {exc}')
    try:
        return _json(await batches.force_state(request.app[STATE_KEY], request.match_info["batch_id"], batch_state))
    except errors.ApiError as exc:
        return exc.to_response()


async def post_reset(request: web.Request) -> web.Response:
    keep = request.query.get("keep_config", "").lower() in ("1", "true", "yes")
    return _json(request.app[STATE_KEY].reset(keep_config=keep))


async def get_requests(request: web.Request) -> web.Response:
    """The most recent generate requests (body as received, long strings cut), oldest first."""
    state = request.app[STATE_KEY]
    with state.lock:
        entries = list(state.request_log)
    try:
        limit = int(request.query.get("limit", len(entries)))
    except ValueError:
        return _bad_request("limit must be an integer")
    return _json({"requests": entries[-limit:] if limit > 0 else []})


async def get_downloads(request: web.Request) -> web.Response:
    """The most recent file downloads (file, Range header, where a cut fault ended it), oldest first."""
    state = request.app[STATE_KEY]
    with state.lock:
        return _json({"downloads": list(state.files.download_log)})


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


def setup_routes(app: web.Application) -> None:
    p = ADMIN_PREFIX
    app.router.add_get(p + "config", get_config)
    app.router.add_post(p + "config", post_config)
    app.router.add_get(p + "stats", get_stats)
    app.router.add_post(p + "reset", post_reset)
    app.router.add_get(p + "requests", get_requests)
    app.router.add_get(p + "downloads", get_downloads)
    app.router.add_get(p + "healthz", healthz)
    app.router.add_post(p + "batches/{batch_id:[^/:]+}:force", force_batch)
