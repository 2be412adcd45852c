"""The public HTTP API behind main.http_api: routes, the bounded body, parameters, and the
mapping of domain errors to JSON answers. Each handler parses, calls one use case, answers."""
from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import logging
import math
import re
import uuid

import flask
import pydantic
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound, ServiceUnavailable
from werkzeug.routing import Map, Rule

import wiring
from adapters.pubsub_nudges import decode_expand, decode_nudge
from core import errors, expanding, gemini_webhooks, jobs, submitting
from core.stats import get_stats
from core.model_watch import models_section
from core.tenants import LOCAL, Caller
from openapi import API_KEY_HEADER, build_openapi
import schemas
from schemas import JobRequest, error_fields, model_problems
from schemas import excerpt as _excerpt

log = logging.getLogger("imagefleet")

IDEMPOTENCY_HEADER = "Idempotency-Key"

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


def json_response(body: dict, code: int = 200, headers: dict | None = None):
    """A JSON document that is not a response model (the OpenAPI document itself)."""
    return json.dumps(body), code, {"Content-Type": "application/json", **(headers or {})}


def model_response(model: type[schemas.Response], body: dict, code: int = 200, headers: dict | None = None):
    """A body serialised through its response model, so it is what the OpenAPI contract says:
    validated against it (a field it lacks, or a wrong type, fails here), enums as their values,
    aliases as aliases. Only the fields the body sets are written: an absent field stays absent."""
    text = model.model_validate(body).model_dump_json(by_alias=True, exclude_unset=True)
    return text, code, {"Content-Type": "application/json", **(headers or {})}


def error_response(e: ApiError, headers: dict | None = None):
    body = {"error": {"code": e.code, "reason": e.reason, "message": e.message}}
    if e.fields:
        body["error"]["fields"] = e.fields
    return model_response(schemas.ErrorResponse, body, e.code, headers)


def _invalid(message: str, field: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_request", message, [{"field": field, "problem": problem}])


def handle(request):
    """One request: route it, run its handler, answer JSON whatever happens."""
    try:
        return _dispatch(request)
    except ApiError as e:
        return error_response(e, e.headers)
    except MethodNotAllowed as e:
        allowed = ", ".join(sorted(e.valid_methods or []))
        return error_response(ApiError(405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}"),
                              {"Allow": allowed})  # RFC 9110: a 405 lists what is allowed
    except RouteNotFound:
        return error_response(ApiError(404, "not_found", f"no route {_excerpt(request.path)}"))
    except HTTPException as e:  # e.g. 413 from the body size cap
        return error_response(ApiError(e.code or 400, e.name.lower().replace(" ", "_"), e.description or e.name))
    except Exception:  # never an HTML error page: log it, answer JSON
        log.exception("unhandled error on %s %s", request.method, _excerpt(request.path))
        return error_response(ApiError(500, "internal", "internal error; see the function's logs"))


def _dispatch(request):
    endpoint, args = _ROUTES.bind_to_environ(request.environ).match()
    if endpoint in _PUBLIC:
        return _HANDLERS[endpoint](request, **args)
    return _HANDLERS[endpoint](request, _authenticate(request), **args)


def framework_not_found(e):
    """functions-framework routes every path to http_api with Flask's `<path:path>`, whose
    pattern does not match a line break: "/v1/jobs/x%0A" never reaches http_api and Flask
    answered with an HTML page. The handler is documented in
    https://github.com/GoogleCloudPlatform/functions-framework-python#error-handling."""
    return error_response(ApiError(404, "not_found", f"no route {_excerpt(flask.request.path)}"))


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


# --- the body ------------------------------------------------------------------------------


def _read_json(request, max_bytes: int):
    mimetype = request.mimetype or ""
    if mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    data = read_body(request.stream, max_bytes)
    if data is None:
        raise ApiError(413, "body_too_large", f"the body is over the {max_bytes}-byte limit")
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {_excerpt(str(e), 200)}") from e


def read_body(stream, max_bytes: int, chunk: int = 64 * 1024) -> bytes | None:
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


# --- handlers ------------------------------------------------------------------------------


def _healthz(request):
    return model_response(schemas.Health, {"status": "ok"})


def _openapi(request):
    s = wiring.settings()
    return json_response(build_openapi(max_items=s.max_items_per_job, max_prompt_chars=s.max_prompt_chars))


def _submit(request, caller: Caller):
    body = _read_json(request, wiring.settings().max_body_bytes)
    job_request = _job_request(body)
    dry_run = _dry_run(request)
    sub = _submission(request, caller, job_request, body)
    try:
        if dry_run:
            return _dry_run_answer(sub, submitting.plan(sub, wiring.route_deps()))
        job, replayed = submitting.submit(sub, wiring.submit_deps())
    except _SUBMIT_ERRORS as e:
        raise _submit_error(e) from e
    return _accepted_answer(job, replayed, caller)


def _job_request(body) -> JobRequest:
    """The body as a JobRequest whose model the catalog knows, or a 400 naming each problem."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object", "(body)", "expected an object")
    if "requests" in body and "source" in body:
        raise _invalid("requests and source are mutually exclusive", "source", "not allowed with requests")
    if "requests" not in body and "source" not in body:
        raise _invalid("give the images as requests, or a gs:// file as source", "requests", "Field required")
    s = wiring.settings()
    try:
        job_request = JobRequest.model_validate(
            body, context={"max_items_per_job": s.max_items_per_job, "max_prompt_chars": s.max_prompt_chars,
                           "webhook_secret_set": s.webhook_key() is not None,
                           "webhook_allow_insecure": s.webhook_allow_insecure}
        )
    except pydantic.ValidationError as e:
        fields = error_fields(e)
        raise ApiError(400, "invalid_request", f"{len(fields)} problem(s) in the request", fields) from e
    if problems := model_problems(job_request, wiring.deps().catalog, s.default_model):
        raise ApiError(400, "invalid_request", f"{len(problems)} problem(s) with the job's model", problems)
    return job_request


def _dry_run(request) -> bool:
    dry_run = request.args.get("dry_run", "").lower()
    if dry_run not in ("", "false", "0", "true", "1"):
        raise _invalid("dry_run must be true or false", "dry_run", "expected true or false")
    return dry_run in ("true", "1")


def _submission(request, caller: Caller, job_request: JobRequest, body: dict) -> submitting.Submission:
    spec = dataclasses.replace(job_request.to_spec(), tenant=caller.tenant)
    sub = submitting.Submission(spec=spec, model=job_request.model or wiring.settings().default_model,
                                owner=f"api-{wiring.instance_id()}-{uuid.uuid4().hex[:8]}",
                                source=_source_ref(job_request))
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return sub
    if problem := submitting.idempotency_key_problem(key):
        message = ("must be 1 to 255 characters" if problem == "length out of range"
                   else "contains a control character")
        raise _invalid(f"{IDEMPOTENCY_HEADER} {message}", IDEMPOTENCY_HEADER, problem)
    key_id = submitting.idempotency_key_id(caller.tenant, request.headers.get(API_KEY_HEADER, ""), key)
    return dataclasses.replace(sub, key_id=key_id, body_sha256=submitting.body_sha256(body))


def _source_ref(job_request: JobRequest) -> submitting.SourceRef | None:
    """The `source` object as it is now (one metadata read: its generation pins what is read),
    or a 400 naming the field when it is malformed, not allowed, missing or unreadable."""
    if job_request.source is None:
        return None
    from adapters.gcs_sources import SourceError
    from sources import source_format

    try:
        obj = wiring.gcs_sources().stat(job_request.source)
    except SourceError as e:
        raise _invalid(f"the source cannot be used: {e}", "source", str(e)) from None
    except errors.StorageUnavailable as e:
        raise ApiError(503, "unavailable", f"Cloud Storage did not answer; retry: {e}",
                       headers={"Retry-After": "5"}) from None
    return submitting.SourceRef(uri=obj.uri, generation=obj.generation, size=obj.size,
                                format=source_format(obj.name), on_bad_line=job_request.on_bad_line)


def _dry_run_answer(sub: submitting.Submission, route):
    return model_response(schemas.DryRun, {"dry_run": True, "lane": route.lane.value, "item_count": len(sub.spec.items),
                          "estimated_cost_usd": route.estimated_cost_usd, "reason": route.reason,
                          "breaker": wiring.deps().breaker.view().state.value, "model": sub.model})


def _accepted_answer(job, replayed: bool, caller: Caller):
    status_url = f"/v1/jobs/{job.job_id}"
    if not replayed:
        log.info("accepted job %s: %d items, lane %s (%s)", job.job_id, job.item_count, job.lane.value,
                 job.route_reason, extra={"job_id": job.job_id, "lane": job.lane.value, "tenant": caller.tenant})
    return model_response(
        schemas.JobAccepted,
        {"job_id": job.job_id, "lane": job.lane.value, "status": job.status.value,
         "item_count": job.item_count, "status_url": status_url, "route_reason": job.route_reason,
         "estimated_cost_usd": job.estimated_cost_usd, "model": job.model},
        200 if replayed else 202, {"Location": status_url, **({"Idempotent-Replayed": "true"} if replayed else {})},
    )


_SUBMIT_ERRORS = (errors.LaneUnavailable, errors.BudgetExceeded, errors.IdempotencyMismatch, errors.InProgress)


def _submit_error(e: errors.DomainError) -> ApiError:
    """The HTTP answer to a refused submission (ModelHalted is a LaneUnavailable: it goes first)."""
    if isinstance(e, errors.ModelHalted):
        return ApiError(503, "model_halted", str(e))
    if isinstance(e, errors.LaneUnavailable):
        halted = wiring.deps().breaker.halted()
        retry_after = {"Retry-After": _seconds_until(halted.retry_at)} if halted and halted.retry_at else None
        return ApiError(503, "lane_unavailable", str(e), headers=retry_after)
    if isinstance(e, errors.BudgetExceeded):
        return ApiError(429, "budget_exceeded", f"{e}; the budget resets at midnight Pacific",
                        headers={"Retry-After": _seconds_until(wiring.deps().accounting.resets_at())})
    if isinstance(e, errors.IdempotencyMismatch):
        return ApiError(422, "idempotency_key_reused", str(e),
                        [{"field": IDEMPOTENCY_HEADER, "problem": "already used with another body"}])
    return ApiError(409, "request_in_progress", str(e), headers={"Retry-After": "1"})


def _seconds_until(epoch: float) -> str:
    return str(max(1, math.ceil(epoch - wiring.deps().clock.now())))


def _stats(request, caller: Caller):
    d, s = wiring.deps(), wiring.settings()
    models = models_section(d.catalog, d.model_halts, d.clock.now(), s.default_model, s.model_shutdown_warning_days)
    body = get_stats(accounting=d.accounting, breaker=d.breaker, pool_size=d.pool.count() if d.pool is not None else None,
                     tenant=caller.scope, models=models)
    return model_response(schemas.Stats, {"tenant": caller.tenant, "admin": caller.admin, **body})


def _retry(request, caller: Caller, job_id: str):
    _check_job_id(job_id)
    try:
        d = wiring.deps()
        body = jobs.retry_job(job_id, store=d.store, queue=d.queue, pool=d.pool, clock=d.clock, tenant=caller.scope)
    except (errors.NotFound, errors.Conflict) as e:
        raise _lookup_error(e) from e
    return model_response(schemas.RetryAccepted, body, 202, {"Location": f"/v1/jobs/{job_id}"})


def _status(request, caller: Caller, job_id: str):
    page_size, page_token = _paging(request)
    batches_token = _batches_paging(request)
    _check_job_id(job_id)
    try:
        body = jobs.get_job_status(job_id, wiring.status_deps(), page_size=page_size, page_token=page_token,
                                   tenant=caller.scope, batches_page_token=batches_token)
    except errors.NotFound as e:
        raise _lookup_error(e) from e
    return model_response(schemas.JobStatusResponse, body)


def _paging(request) -> tuple[int, str | None]:
    raw_size = request.args.get("page_size", "100")
    # ASCII digits only: int() also takes " 5", "+5", "1_0" and "٣".
    page_size = int(raw_size) if raw_size.isascii() and raw_size.isdigit() and len(raw_size) <= 3 else -1
    if not 0 <= page_size <= 500:
        raise _invalid("page_size must be an integer from 0 to 500", "page_size", "out of range")
    page_token = request.args.get("page_token")
    # An item index: ASCII digits that fit Firestore's int64 (str.isdigit() also takes "²").
    if page_token is not None and not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 9):
        raise _invalid("page_token is not one this API issued", "page_token", "invalid")
    return page_size, page_token


_BATCH_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _batches_paging(request) -> str | None:
    """batches_page_token: an intent id, as batches_next_page_token gave it."""
    token = request.args.get("batches_page_token")
    if token is not None and not _BATCH_TOKEN.fullmatch(token):
        raise _invalid("batches_page_token is not one this API issued", "batches_page_token", "invalid")
    return token


def _cancel(request, caller: Caller, job_id: str):
    _check_job_id(job_id)
    try:
        d = wiring.deps()
        body = jobs.cancel_job(job_id, store=d.store, clock=d.clock, sink=d.sink, events=d.events, tenant=caller.scope)
    except (errors.NotFound, errors.Conflict) as e:
        raise _lookup_error(e) from e
    log.info("cancelled job %s", job_id, extra={"job_id": job_id})
    return model_response(schemas.JobStatusResponse, body)


def _lookup_error(e: errors.NotFound | errors.Conflict) -> ApiError:
    if isinstance(e, errors.NotFound):
        return ApiError(404, "not_found", str(e))
    return ApiError(409, "conflict", str(e))


def gemini_webhook(request):
    """main.gemini_webhook: one Gemini batch webhook, answered JSON whatever happens."""
    if request.method != "POST":
        return error_response(ApiError(405, "method_not_allowed", "Gemini webhooks are POSTed"), {"Allow": "POST"})
    try:
        return _gemini_webhook(request)
    except ApiError as e:
        return error_response(e)


def _gemini_webhook(request):
    """A Gemini batch webhook (core/gemini_webhooks.py): 401 unless signed with our secret and
    fresh; 200 for every genuine event, ours or not, repeated or not (Gemini retries anything
    else for a day); 503 when the nudge cannot be recorded, so that Gemini delivers it again."""
    s = wiring.settings()
    key = s.gemini_webhook_key()
    if key is None:
        raise ApiError(404, "not_found", "Gemini webhooks are not configured here")
    body = read_body(request.stream, 64 * 1024)  # thin payloads: a pointer and a status
    if body is None:
        raise ApiError(413, "body_too_large", "a Gemini webhook is a few hundred bytes")
    try:
        webhook_id = gemini_webhooks.verify(key, request.headers, body, now=wiring.deps().clock.now(),
                                            tolerance_seconds=s.gemini_webhook_tolerance_seconds)
    except gemini_webhooks.WebhookRejected as e:
        log.warning("Gemini webhook refused: %s", e)
        raise ApiError(401, "unauthenticated", str(e)) from None
    try:
        event = gemini_webhooks.read_event(webhook_id, body)
    except ValueError as e:  # signed by Gemini but unreadable: a retry would bring the same
        log.error("Gemini webhook %s unreadable, acknowledged: %s", webhook_id, e, extra={"webhook_id": webhook_id})
        return json_response({"outcome": "unreadable"})
    try:
        d = wiring.deps()
        outcome = gemini_webhooks.on_batch_event(event, batches=d.batches, nudges=d.nudges, clock=d.clock)
    except errors.DeliveryFailed as e:
        raise ApiError(503, "unavailable", f"could not start the batch's ingest: {e}") from None
    log.info("Gemini webhook %s %s %s: %s", webhook_id, event.type, event.batch_name, outcome,
             extra={"webhook_id": webhook_id, "state": outcome})
    return json_response({"outcome": outcome})


class RetryLater(ServiceUnavailable):
    """Raised to answer 503, so that Pub/Sub redelivers the message. An HTTP exception, not a
    crash: Flask answers it without logging an ERROR traceback for a routine hand-back."""


def poller_nudge(message: dict):
    """main.scheduled_poller, pushed one nudge (a Gemini webhook said this intent's batch
    ended): reconcile it now. 200 but for a busy intent (503: pushed again later): an
    unreadable nudge can never succeed, and a failed reconcile is the next tick's."""
    try:
        data = base64.b64decode((message or {}).get("data") or b"")
        job_id = decode_expand(data)
        intent_id = decode_nudge(data) if job_id is None else ""
    except ValueError as e:
        log.error("dropping unreadable nudge: %s", e)
        return json_response({"nudge": "unreadable"})
    if job_id is not None:
        return expand_nudge(job_id)
    d = wiring.deps()
    if d.batch_lane is None:
        return json_response({"nudge": "no batch lane"})
    owner = f"nudge-{wiring.instance_id()}-{uuid.uuid4().hex[:8]}"
    deadline = d.clock.now() + wiring.settings().poller_budget_seconds
    outcome = gemini_webhooks.reconcile_nudged(d.batch_lane, d.nudges, intent_id, owner, deadline)
    log.info("nudged intent %s: %s", intent_id, outcome, extra={"batch_intent": intent_id, "state": outcome})
    if outcome == "busy":  # Pub/Sub pushes it again after its back-off, when the lease is likely free
        raise RetryLater(f"intent {intent_id} is being worked on")
    return json_response({"nudge": outcome})


def expand_nudge(job_id: str):
    """Expand an accepted job for a while (core/expanding.py). When its budget runs out, the
    continuation is published before this push is answered: a failed publish answers 503, so
    Pub/Sub pushes this one again and it carries on from the checkpoint. Busy (another holds
    the lease), lost, done, failed, gone: 200, nothing more to do here (an expander that died is
    the poller's to resume once its lease runs out)."""
    d, s = wiring.deps(), wiring.settings()
    owner = f"expand-{wiring.instance_id()}-{uuid.uuid4().hex[:8]}"
    outcome = expanding.expand_job(job_id, owner, wiring.expand_deps(), d.clock.now() + s.expand_budget_seconds)
    log.info("expanding job %s: %s", job_id, outcome, extra={"job_id": job_id, "state": outcome})
    if outcome == "continue":
        try:
            d.nudges.expand(job_id)
        except errors.DeliveryFailed as e:
            raise RetryLater(f"job {job_id}: could not publish the expansion's continuation: {e}") from None
    return json_response({"expand": outcome})


def _check_job_id(job_id: str) -> None:
    # Job ids are ours (uuid hex): anything else cannot name a job, and never reaches a query.
    if not (job_id.isascii() and job_id.isalnum()) or len(job_id) > 64:
        raise ApiError(404, "not_found", f"job {_excerpt(job_id)} not found")


_PUBLIC = {"healthz", "openapi"}
_HANDLERS = {"healthz": _healthz, "openapi": _openapi, "submit": _submit, "status": _status, "cancel": _cancel,
             "stats": _stats, "retry": _retry}
