"""``POST /{v}/models/{model}:generateContent`` (and ``:streamGenerateContent``).

Per request: parse (400s) -> quota admission (429s, not counted) -> pick outcome and latency ->
hold a concurrency slot while the modelled latency elapses and the PNG renders -> answer.
Outcome and admission are decided together under the state lock, so stats and quota always
agree about which requests were admitted.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from infra.gemini_emulator import content, errors, images, models
from infra.gemini_emulator.faults import OK, SPOILED_IMAGE_OUTCOMES, choose_outcome, latency_seconds
from infra.gemini_emulator.quota import QuotaEngine, QuotaLimits
from infra.gemini_emulator.routing import versioned
from infra.gemini_emulator.state import STATE_KEY, EmulatorState
from infra.gemini_emulator.stats import Stats

# Outcomes that render an image: a good one, one after thought parts, or one spoiled on the way out.
_IMAGE_OUTCOMES = (OK, "thought_image", *SPOILED_IMAGE_OUTCOMES)

_LOGGED_HEADERS = ("content-type", "user-agent", "x-goog-api-client", "x-server-timeout")
_LOG_STRING_LIMIT = 200


@dataclass(frozen=True)
class _Admitted:
    outcome: str
    latency_s: float
    hang_s: float
    retry_delay_s: float
    image_scale: float
    image_target_bytes: int | None
    image_format: str
    window_s: float
    # The engine and stats that admitted the request: a reset meanwhile replaces the state's,
    # and the slot must go back to the ones it was taken from.
    quota: QuotaEngine
    stats: Stats


def setup_routes(app: web.Application) -> None:
    # One route per action so that stats count them apart (route names are the endpoint names).
    for action in ("generateContent", "streamGenerateContent"):
        path = versioned("/models/{model:[^/:]+}:{action:" + action + "}")
        app.router.add_post(path, handle_generate, name=f"models.{action}")


async def handle_generate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    model = request.match_info["model"]
    entry = _log_entry(request, model)
    with state.lock:
        state.stats.record_request(model)
    try:
        try:
            raw = await _read_json(request)
            entry["body"] = _truncate(raw)
            req = _parse(state, model, raw)
        except errors.ApiError as exc:
            with state.lock:
                state.stats.record_outcome(model, str(exc.code))
            raise
        admitted = _admit(state, req)  # records its own outcome: "429" or the chosen one
        entry["outcome"] = admitted.outcome
        body = await _serve(state, req, admitted)
        entry["status"] = 200
        return _respond(request, body)
    except errors.ApiError as exc:
        entry["status"] = exc.code
        entry["outcome"] = entry["outcome"] or str(exc.code)
        raise
    except asyncio.CancelledError:
        entry["status"] = "client_disconnected"
        raise
    finally:
        with state.lock:
            state.request_log.append(entry)


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.invalid_argument(f"Invalid JSON payload received. {exc}") from None


def _parse(state: EmulatorState, model: str, raw: Any) -> content.GenerateRequest:
    models.check_served(state, model)
    req = content.parse_request(model, raw)
    models.check_image_config(model, req.aspect_ratio, req.image_size, size_given=req.image_size != images.DEFAULT_IMAGE_SIZE)
    return req


def _admit(state: EmulatorState, req: content.GenerateRequest) -> _Admitted:
    """Take quota and a concurrency slot, or raise the 429 naming the violated quota."""
    with state.lock:
        cfg = state.config
        now = state.clock()
        window_s = cfg["window_seconds"]
        violation = state.quota.try_acquire(
            req.model,
            images=req.images_requested,
            now=now,
            limits=QuotaLimits.from_config(cfg["quotas"], req.model),
            window_s=window_s,
            day_s=cfg["day_seconds"],
            concurrency_retry_s=cfg["concurrency_retry_delay_s"],
        )
        if violation is not None:
            state.stats.record_rejection(req.model, violation.quota_id, now, window_s)
            state.stats.record_outcome(req.model, "429")
            raise errors.quota_exceeded(
                quota_id=violation.quota_id,
                quota_metric=violation.quota_metric,
                limit=violation.limit,
                model=req.model,
                retry_after_s=violation.retry_after_s,
            )
        outcome, state.script_pos = choose_outcome(
            prompt=req.prompt, model=req.model, faults=cfg["faults"], script_pos=state.script_pos, rng=state.rng
        )
        latency_s = latency_seconds(cfg["latency"], state.rng)
        state.stats.record_admission(req.model, now, window_s, latency_s)
        state.stats.record_outcome(req.model, outcome)
        if outcome != OK:
            state.stats.record_fault(outcome)
        return _Admitted(
            outcome=outcome,
            latency_s=latency_s,
            hang_s=cfg["faults"]["hang_seconds"],
            retry_delay_s=cfg["faults"]["retry_delay_s"],
            image_scale=cfg["image_scale"],
            image_target_bytes=cfg["image_target_bytes"],
            image_format=cfg["image_format"],
            window_s=window_s,
            quota=state.quota,
            stats=state.stats,
        )


async def _serve(state: EmulatorState, req: content.GenerateRequest, adm: _Admitted) -> dict[str, Any]:
    """Run an admitted request to its outcome; the concurrency slot is freed whatever happens,
    including cancellation when the client hangs up (the app enables handler cancellation)."""
    try:
        if adm.outcome == "hang":
            await asyncio.sleep(adm.hang_s)
            raise errors.deadline_exceeded()
        render = None
        if adm.outcome in _IMAGE_OUTCOMES and req.want_image:
            # Render concurrently with the modelled latency: the answer comes after
            # max(latency, render time), as a real model's service time would.
            render = asyncio.get_running_loop().run_in_executor(state.executor, _render, req, adm)
        if adm.latency_s > 0:
            await asyncio.sleep(adm.latency_s)
        if adm.outcome not in _IMAGE_OUTCOMES:
            return _fault_body(req, adm)
        image = await render if render is not None else None
        if image is not None and adm.outcome not in SPOILED_IMAGE_OUTCOMES:  # a spoiled one counts as its fault
            with state.lock:
                adm.stats.record_images(req.model, 1, state.clock(), adm.window_s)
                adm.stats.record_billed(req.prompt)
        if adm.outcome == "thought_image" and image is not None:
            return content.thought_image_response(req, image, images.draft_png(req.prompt))
        body = content.success_response(req, image, images.MIME_TYPES[adm.image_format])
        return content.spoil_image(body, adm.outcome) if adm.outcome in SPOILED_IMAGE_OUTCOMES else body
    finally:
        with state.lock:
            adm.quota.release(req.model)
            adm.stats.record_release(req.model)


def _render(req: content.GenerateRequest, adm: _Admitted) -> bytes:
    image = images.render_for_request(req.model, req.prompt, req.aspect_ratio, req.image_size, adm.image_scale,
                                      adm.image_format)
    # Hook for benchmarks: real images are ~1-2 MB, ours are tens of KB.
    return images.pad_png(image, adm.image_target_bytes) if adm.image_format == "png" else image


def _fault_body(req: content.GenerateRequest, adm: _Admitted) -> dict[str, Any]:
    """HTTP 200 faults return a body; the others raise their google.rpc error."""
    if adm.outcome in content.REFUSALS:
        return content.REFUSALS[adm.outcome](req)
    raise {
        "429": lambda: errors.transient_exhausted(adm.retry_delay_s),
        "429_multi": lambda: errors.quota_exceeded_multi(model=req.model, retry_after_s=adm.retry_delay_s),
        "429_help_only": errors.quota_exceeded_help_only,
        "500": errors.internal,
        "503": errors.overloaded,
        "403": errors.permission_denied,
    }[adm.outcome]()


def _respond(request: web.Request, body: dict[str, Any]) -> web.Response:
    text = json.dumps(body)
    if request.match_info["action"] == "generateContent":
        return web.Response(text=text, content_type="application/json", charset="utf-8")
    if request.query.get("alt") == "sse":
        # The whole answer as one event; the SDK reads any number of `data:` events.
        return web.Response(text=f"data: {text}\r\n\r\n", content_type="text/event-stream")
    # Without alt=sse the real API streams one JSON array of responses.
    return web.Response(text=f"[{text}]", content_type="application/json", charset="utf-8")


def _log_entry(request: web.Request, model: str) -> dict[str, Any]:
    return {
        "time": time.time(),
        "api_version": request.match_info["version"],
        "model": model,
        "action": request.match_info["action"],
        "query": {k: v for k, v in request.query.items() if k != "key"},
        "headers": {h: request.headers[h] for h in _LOGGED_HEADERS if h in request.headers},
        "body": None,
        "outcome": None,
        "status": None,
    }


def _truncate(value: Any) -> Any:
    """The body as received (original key casing) with long strings (base64) shortened."""
    if isinstance(value, dict):
        return {k: _truncate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate(v) for v in value]
    if isinstance(value, str) and len(value) > _LOG_STRING_LIMIT:
        return value[:_LOG_STRING_LIMIT] + f"...({len(value)} chars)"
    return value
