"""Cloud Functions entry points. They translate transports to use cases and nothing else.

  http_api          the public HTTP API (jobs in, status out)
  pubsub_worker     one Pub/Sub message = one image, delivered as a CloudEvent
  scheduled_poller  called by Cloud Scheduler: reconciles work that needs a nudge
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import math
import logging
import uuid

import flask
import functions_framework
import pydantic
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound, ServiceUnavailable
from werkzeug.routing import Map, Rule

import logs
import wiring
from adapters.pubsub_queue import decode_work_message
from core import errors, usecases, worker
from core.model_watch import models_section
from core.poller import poll_once
from core.tenants import LOCAL, Caller
from openapi import API_KEY_HEADER, build_openapi
from schemas import JobRequest, error_fields, model_problems
from schemas import excerpt as _excerpt

logs.configure()
log = logging.getLogger("imagefleet")
# Build this instance's clients now, in the background, rather than on its first request.
wiring.start_warm_up()

_ROUTES = Map(
    [
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/v1/openapi.json", endpoint="openapi", methods=["GET"]),
        Rule("/v1/stats", endpoint="stats", methods=["GET"]),
        Rule("/v1/jobs", endpoint="submit", methods=["POST"]),
        Rule("/v1/jobs/<job_id>:retry", endpoint="retry", methods=["POST"]),
        Rule("/v1/jobs/<job_id>", endpoint="status", methods=["GET"]),
        Rule("/v1/jobs/<job_id>", endpoint="cancel", methods=["DELETE"]),
    ],
    strict_slashes=False,
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, fields: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.fields = code, reason, message, fields
        self.headers = headers


def _json(body: dict, code: int = 200, headers: dict | None = None):
    return json.dumps(body), code, {"Content-Type": "application/json", **(headers or {})}


def _error(e: ApiError, headers: dict | None = None):
    body = {"error": {"code": e.code, "reason": e.reason, "message": e.message}}
    if e.fields:
        body["error"]["fields"] = e.fields
    return _json(body, e.code, headers)


@functions_framework.http
def http_api(request):
    wiring.wait_for_warm_up()
    try:
        adapter = _ROUTES.bind_to_environ(request.environ)
        endpoint, args = adapter.match()
        if endpoint in _PUBLIC:
            return _HANDLERS[endpoint](request, **args)
        return _HANDLERS[endpoint](request, _authenticate(request), **args)
    except ApiError as e:
        return _error(e, e.headers)
    except MethodNotAllowed as e:
        allowed = ", ".join(sorted(e.valid_methods or []))
        return _error(ApiError(405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}"),
                      {"Allow": allowed})  # RFC 9110: a 405 lists what is allowed
    except RouteNotFound:
        return _error(ApiError(404, "not_found", f"no route {_excerpt(request.path)}"))
    except HTTPException as e:  # e.g. 413 from the body size cap
        return _error(ApiError(e.code or 400, e.name.lower().replace(" ", "_"), e.description or e.name))
    except Exception:  # never an HTML error page: log it, answer JSON
        log.exception("unhandled error on %s %s", request.method, _excerpt(request.path))
        return _error(ApiError(500, "internal", "internal error; see the function's logs"))


def _framework_not_found(e):
    """functions-framework routes every path to http_api with Flask's `<path:path>`, whose
    pattern does not match a line break: "/v1/jobs/x%0A" never reaches http_api and Flask
    answered with an HTML page. The handler is documented in
    https://github.com/GoogleCloudPlatform/functions-framework-python#error-handling."""
    return _error(ApiError(404, "not_found", f"no route {_excerpt(flask.request.path)}"))


functions_framework.errorhandler(RouteNotFound)(_framework_not_found)  # not an entry point


def _authenticate(request) -> Caller:
    """X-API-Key against API_KEYS, in constant time: the caller (its tenant). The key is never
    logged or echoed. Without keys configured, every caller is the one local tenant."""
    callers = wiring.settings().api_callers()
    if not callers:
        return LOCAL
    given = request.headers.get(API_KEY_HEADER, "").encode()
    found = None
    for key, caller in callers.items():  # every key is compared: timing says nothing of which matched
        if hmac.compare_digest(given, key.encode()):
            found = caller
    if found is None:
        raise ApiError(401, "unauthenticated", f"send a valid API key in the {API_KEY_HEADER} header")
    return found


def _healthz(request):
    return _json({"status": "ok"})


def _openapi(request):
    s = wiring.settings()
    return _json(build_openapi(max_items=s.max_items_per_job, max_prompt_chars=s.max_prompt_chars))


def _read_json(request, max_bytes: int):
    mimetype = request.mimetype or ""
    if mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    data = _read_body(request.stream, max_bytes)
    if data is None:
        raise ApiError(413, "body_too_large", f"the body is over the {max_bytes}-byte limit")
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {_excerpt(str(e), 200)}") from e


def _read_body(stream, max_bytes: int, chunk: int = 64 * 1024) -> bytes | None:
    """The body, or None when it is over max_bytes, with or without a Content-Length (a chunked
    body has none). An oversized body is read to its end and dropped, in bounded memory:
    functions-framework reads the whole body after every response (its `read_request` hook),
    and with `request.max_content_length` set that second read raised the 413 again outside
    our handler, as a 500 HTML page. A 2nd gen function takes at most 32 MB of uncompressed
    request (https://cloud.google.com/functions/quotas), so the drain is bounded in the cloud."""
    parts: list[bytes] = []
    size = 0
    while size <= max_bytes:
        part = stream.read(min(chunk, max_bytes + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    while stream.read(chunk):
        pass
    return None


IDEMPOTENCY_HEADER = "Idempotency-Key"


def _submit(request, caller: Caller):
    s = wiring.settings()
    body = _read_json(request, s.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object",
                       [{"field": "(body)", "problem": "expected an object"}])
    try:
        job_request = JobRequest.model_validate(
            body, context={"max_items_per_job": s.max_items_per_job, "max_prompt_chars": s.max_prompt_chars,
                           "webhook_secret_set": s.webhook_key() is not None,
                           "webhook_allow_insecure": s.webhook_allow_insecure}
        )
    except pydantic.ValidationError as e:
        fields = error_fields(e)
        raise ApiError(400, "invalid_request", f"{len(fields)} problem(s) in the request", fields) from e
    if problems := model_problems(job_request, wiring.catalog(), s.default_model):
        raise ApiError(400, "invalid_request", f"{len(problems)} problem(s) with the job's model", problems)
    model = job_request.model or s.default_model
    spec = dataclasses.replace(job_request.to_spec(), tenant=caller.tenant)
    dry_run = request.args.get("dry_run", "").lower()
    if dry_run not in ("", "false", "0", "true", "1"):
        raise ApiError(400, "invalid_request", "dry_run must be true or false",
                       [{"field": "dry_run", "problem": "expected true or false"}])
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise ApiError(400, "invalid_request", f"{IDEMPOTENCY_HEADER} must be 1 to 255 characters",
                       [{"field": IDEMPOTENCY_HEADER, "problem": "length out of range"}])
    # RFC 9110 section 5.5: a field value holds no control characters, a tab aside.
    if idempotency_key is not None and any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f for c in idempotency_key):
        raise ApiError(400, "invalid_request", f"{IDEMPOTENCY_HEADER} contains a control character",
                       [{"field": IDEMPOTENCY_HEADER, "problem": "control character"}])
    try:
        if dry_run in ("true", "1"):
            route = usecases.plan_route(
                spec, interactive_threshold=s.interactive_threshold, batch_available=s.batch_lane_enabled,
                breaker=wiring.breaker(), accounting=wiring.accounting(),
                model=model, catalog=wiring.catalog(), model_halts=wiring.model_halts(),
            )
            return _json({"dry_run": True, "lane": route.lane.value, "item_count": len(spec.items),
                          "estimated_cost_usd": route.estimated_cost_usd, "reason": route.reason,
                          "breaker": wiring.breaker().view().state.value, "model": model})

        def submit(make_id, resume=False):
            return usecases.submit_job(
                spec,
                store=wiring.job_store(),
                queue=wiring.work_queue(),
                clock=wiring.clock(),
                model=model,
                interactive_threshold=s.interactive_threshold,
                batch=wiring.batch_lane(),
                batch_max_requests=s.batch_items_per_batch,
                batch_submit_budget=s.batch_submit_budget_seconds,
                owner=f"api-{wiring.instance_id()}-{uuid.uuid4().hex[:8]}",
                make_id=make_id,
                breaker=wiring.breaker(),
                accounting=wiring.accounting(),
                resume=resume,
                catalog=wiring.catalog(),
                model_halts=wiring.model_halts(),
            )

        if idempotency_key is None:
            job, replayed = submit(usecases.new_job_id), False
        else:
            job, replayed = usecases.submit_once(
                spec,
                key_id=_idempotency_key_id(request, caller, idempotency_key),
                body_sha256=hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
                idempotency=wiring.idempotency_store(),
                store=wiring.job_store(),
                clock=wiring.clock(),
                submit=submit,
                ttl_seconds=s.idempotency_ttl_seconds,
                takeover_seconds=s.idempotency_takeover_seconds,
            )
    except errors.ModelHalted as e:
        raise ApiError(503, "model_halted", str(e)) from e
    except errors.LaneUnavailable as e:
        halted = wiring.breaker().halted()
        retry_after = {"Retry-After": _seconds_until(halted.retry_at)} if halted and halted.retry_at else None
        raise ApiError(503, "lane_unavailable", str(e), headers=retry_after) from e
    except errors.BudgetExceeded as e:
        raise ApiError(429, "budget_exceeded", f"{e}; the budget resets at midnight Pacific",
                       headers={"Retry-After": _seconds_until(wiring.accounting().resets_at())}) from e
    except errors.IdempotencyMismatch as e:
        raise ApiError(422, "idempotency_key_reused", str(e),
                       [{"field": IDEMPOTENCY_HEADER, "problem": "already used with another body"}]) from e
    except errors.InProgress as e:
        raise ApiError(409, "request_in_progress", str(e), headers={"Retry-After": "1"}) from e
    status_url = f"/v1/jobs/{job.job_id}"
    if not replayed:
        log.info("accepted job %s: %d items, lane %s (%s)", job.job_id, job.item_count, job.lane.value,
                 job.route_reason, extra={"job_id": job.job_id, "lane": job.lane.value, "tenant": caller.tenant})
    return _json(
        {"job_id": job.job_id, "lane": job.lane.value, "status": job.status.value,
         "item_count": job.item_count, "status_url": status_url, "route_reason": job.route_reason,
         "estimated_cost_usd": job.estimated_cost_usd, "model": job.model},
        200 if replayed else 202, {"Location": status_url, **({"Idempotent-Replayed": "true"} if replayed else {})},
    )


def _idempotency_key_id(request, caller: Caller, key: str) -> str:
    """Keys are scoped to the tenant and the caller's API key (so two clients never share one,
    and a key moved to another tenant never replays its old tenant's job) and hashed: neither
    the client's key nor the API key is stored or becomes a document id."""
    api_key = request.headers.get(API_KEY_HEADER, "")
    return hashlib.sha256(f"{caller.tenant}\x00{api_key}\x00{key}".encode()).hexdigest()


def _seconds_until(epoch: float) -> str:
    return str(max(1, math.ceil(epoch - wiring.clock().now())))


def _stats(request, caller: Caller):
    pool = wiring.pool_store()
    s = wiring.settings()
    models = models_section(wiring.catalog(), wiring.model_halts(), wiring.clock().now(), s.default_model,
                            s.model_shutdown_warning_days)
    body = usecases.get_stats(accounting=wiring.accounting(), breaker=wiring.breaker(),
                              pool_size=pool.count() if pool is not None else None, tenant=caller.scope,
                              models=models)
    return _json({"tenant": caller.tenant, "admin": caller.admin, **body})


def _retry(request, caller: Caller, job_id: str):
    _check_job_id(job_id)
    try:
        body = usecases.retry_job(job_id, store=wiring.job_store(), queue=wiring.work_queue(),
                                  pool=wiring.pool_store(), clock=wiring.clock(), tenant=caller.scope)
    except errors.NotFound as e:
        raise ApiError(404, "not_found", str(e)) from e
    except errors.Conflict as e:
        raise ApiError(409, "conflict", str(e)) from e
    return _json(body, 202, {"Location": f"/v1/jobs/{job_id}"})


def _status(request, caller: Caller, job_id: str):
    raw_size = request.args.get("page_size", "100")
    # ASCII digits only: int() also takes " 5", "+5", "1_0" and "٣".
    page_size = int(raw_size) if raw_size.isascii() and raw_size.isdigit() and len(raw_size) <= 3 else -1
    if not 1 <= page_size <= 500:
        raise ApiError(400, "invalid_request", "page_size must be an integer from 1 to 500",
                       [{"field": "page_size", "problem": "out of range"}])
    page_token = request.args.get("page_token")
    # An item index: ASCII digits that fit Firestore's int64 (str.isdigit() also takes "²").
    if page_token is not None and not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 9):
        raise ApiError(400, "invalid_request", "page_token is not one this API issued",
                       [{"field": "page_token", "problem": "invalid"}])
    _check_job_id(job_id)
    try:
        body = usecases.get_job_status(
            job_id, store=wiring.job_store(), page_size=page_size, page_token=page_token,
            batches=wiring.job_store(), prices=wiring.accounting().prices, events=wiring.job_events(),
            tenant=caller.scope,
        )
    except errors.NotFound as e:
        raise ApiError(404, "not_found", str(e)) from e
    return _json(body)


def _cancel(request, caller: Caller, job_id: str):
    _check_job_id(job_id)
    try:
        body = usecases.cancel_job(job_id, store=wiring.job_store(), clock=wiring.clock(), sink=wiring.image_sink(),
                                   events=wiring.job_events(), tenant=caller.scope)
    except errors.NotFound as e:
        raise ApiError(404, "not_found", str(e)) from e
    except errors.Conflict as e:
        raise ApiError(409, "conflict", str(e)) from e
    log.info("cancelled job %s", job_id, extra={"job_id": job_id})
    return _json(body)


def _check_job_id(job_id: str) -> None:
    # Job ids are ours (uuid hex): anything else cannot name a job, and never reaches a query.
    if not (job_id.isascii() and job_id.isalnum()) or len(job_id) > 64:
        raise ApiError(404, "not_found", f"job {_excerpt(job_id)} not found")


_PUBLIC = {"healthz", "openapi"}
_HANDLERS = {"healthz": _healthz, "openapi": _openapi, "submit": _submit, "status": _status, "cancel": _cancel,
             "stats": _stats, "retry": _retry}


class RetryLater(ServiceUnavailable):
    """Raised to answer 503, so that Pub/Sub redelivers the message. An HTTP exception, not a
    crash: Flask answers it without logging an ERROR traceback for a routine hand-back."""


@functions_framework.cloud_event
def pubsub_worker(cloud_event):
    wiring.wait_for_warm_up()
    message = (cloud_event.data or {}).get("message") or {}
    message_id = message.get("messageId") or message.get("message_id")
    try:
        job_id, key = decode_work_message(base64.b64decode(message.get("data") or b""))
    except ValueError as e:
        # A message we cannot read can never succeed: log it with its id and drop it.
        log.error("dropping unreadable message %s: %s", message_id, e, extra={"message_id": message_id})
        return
    owner = f"{wiring.instance_id()}-{uuid.uuid4().hex[:8]}"  # this delivery's leases
    outcome = worker.process_item(wiring.worker_deps(), job_id, key, owner)
    if not outcome.ack:
        log.warning("item %s/%s handed back to Pub/Sub: %s", job_id, key, outcome.reason,
                    extra={"job_id": job_id, "item_key": key, "lane": "interactive", "state": outcome.state})
        raise RetryLater(f"{job_id}/{key}: {outcome.reason}")
    log.info("item %s/%s: %s %s", job_id, key, outcome.state, outcome.reason,
             extra={"job_id": job_id, "item_key": key, "lane": "interactive", "state": outcome.state})


@functions_framework.http
def scheduled_poller(request):
    """One Cloud Scheduler tick (core/poller.py). POST only, as Cloud Scheduler sends it: a GET
    (a health check, a crawler, a browser) must not run a tick."""
    if request.method != "POST":
        return _error(ApiError(405, "method_not_allowed", "the poller runs on POST only"), {"Allow": "POST"})
    wiring.wait_for_warm_up()
    return _json(poll_once(wiring.poller_deps(), wiring.poller_policy(), wiring.instance_id()))
