"""Submitting a job, as the HTTP API asks for it: the dry run's plan, or the job itself, behind
an optional Idempotency-Key. No transport here: the HTTP layer parses, this decides."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from core import accepting, routing
from core.expanding import STAGED_FORMAT, STAGED_PREFIX, ExpandNudges, Expansion, staged_jsonl
from core.accounting import Accounting, Prices
from core.batches import BatchLane
from core.breaker import CircuitBreaker
from core.catalog import Catalog
from core.model_halts import ModelHalts
from core.errors import DeliveryFailed, IdempotencyMismatch, InProgress, LaneUnavailable, ModelHalted
from core.jobs import new_job_id
from core.models import Item, Job, JobSpec, JobStatus, Lane
from core.ports import Clock, IdempotencyStore, JobStore, StagedSources, WorkQueue

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX_CHARS = 255


@dataclass(frozen=True)
class RouteDeps:
    """What choosing a lane reads (all a dry run needs): nothing here is written. A collaborator
    left None is not consulted (no breaker, no budget, no catalog sizes, no model halts)."""
    interactive_threshold: int
    batch_available: bool
    breaker: CircuitBreaker | None = None
    accounting: Accounting | None = None
    catalog: Catalog | None = None
    model_halts: ModelHalts | None = None


@dataclass(frozen=True)
class SubmitDeps:
    """What a submission writes with. `batch` is None when the batch lane is off; `idempotency`
    is needed only by a request that carries an Idempotency-Key. With `staging` and `nudges`
    a job is accepted in constant time and expanded in the background (core/expanding.py);
    without them (tests of the synchronous accept) its items are written before the answer."""
    route: RouteDeps
    store: JobStore
    queue: WorkQueue
    clock: Clock
    idempotency: IdempotencyStore | None = None
    batch: BatchLane | None = None
    batch_max_requests: int = 1000
    batch_submit_budget: float = 5.0
    idempotency_ttl_seconds: float = 86_400.0
    idempotency_takeover_seconds: float = 120.0
    staging: StagedSources | None = None
    nudges: ExpandNudges | None = None


@dataclass(frozen=True)
class SourceRef:
    """A caller's gs:// object as read at accept: expanded at that generation, never another."""
    uri: str
    generation: int
    size: int
    format: str  # "jsonl" | "csv"
    on_bad_line: str = "skip"


@dataclass(frozen=True)
class Submission:
    """One validated request: the job, its model, who submits it (`owner`, for leases) and,
    with an Idempotency-Key, the scoped key's id and the body's hash. A `source` job has no
    items in its spec: they are read from the source in the background."""
    spec: JobSpec
    model: str
    owner: str = "api"
    key_id: str | None = None
    body_sha256: str = ""
    source: SourceRef | None = None


def idempotency_key_problem(key: str) -> str | None:
    """Why an Idempotency-Key value is refused, or None when it is usable."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS:
        return "length out of range"
    # RFC 9110 section 5.5: a field value holds no control characters, a tab aside.
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f for c in key):
        return "control character"
    return None


def idempotency_key_id(tenant: str, api_key: str, key: str) -> str:
    """Keys are scoped to the tenant and the caller's API key (so two clients never share one,
    and a key moved to another tenant never replays its old tenant's job) and hashed: neither
    the client's key nor the API key is stored or becomes a document id."""
    return hashlib.sha256(f"{tenant}\x00{api_key}\x00{key}".encode()).hexdigest()


def body_sha256(body: object) -> str:
    """The body's hash, key order aside: the same key with another body is refused."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def plan(sub: Submission, deps: RouteDeps) -> routing.Route:
    """The dry run: the lane the job would take now, why, and its cost. Nothing is written."""
    if sub.source is not None:
        return source_route(sub, deps)
    return plan_route(sub.spec, deps, sub.model)


def submit(sub: Submission, deps: SubmitDeps) -> tuple[Job, bool]:
    """The job, and whether it is a replay of an earlier request with the same key."""
    if sub.key_id is None:
        return submit_job(sub, deps), False
    return submit_once(sub, deps)


# --- the route ---------------------------------------------------------------------------


def plan_route(spec: JobSpec, deps: RouteDeps, model: str | None = None) -> routing.Route:
    """The lane a job would take now, and why, and what it would cost (also the dry run)."""
    breaker, accounting = deps.breaker, deps.accounting
    _check_open(deps, model)
    return routing.choose_lane(
        len(spec.items),
        spec.requested_lane,
        threshold=deps.interactive_threshold,
        batch_available=deps.batch_available,
        headroom=_headroom(breaker, accounting),
        pricing=routing.Pricing(
            prices=accounting.prices if accounting is not None else Prices(), model=model,
            sizes=_sizes(spec, model, deps.catalog),
        ),
    )


def _check_open(deps: RouteDeps, model: str | None) -> None:
    """ModelHalted or LaneUnavailable when no job may be accepted for this model now."""
    breaker, model_halts = deps.breaker, deps.model_halts
    if model and model_halts is not None and (model_halt := model_halts.halted(model)) is not None:
        raise ModelHalted(model, model_halt.reason)
    if breaker is not None and (halted := breaker.halted()) is not None:
        raise LaneUnavailable(
            f"image generation is halted: {halted.reason}; no lane is used (batch shares the "
            f"project and its billing) until an operator fixes it or a probe succeeds"
        )


def _headroom(breaker: CircuitBreaker | None, accounting: Accounting | None) -> routing.Headroom:
    """What is left today: the breaker's quota signal, and the day's requests and budget."""
    totals = accounting.totals() if accounting is not None else None
    return routing.Headroom(
        quota_exhausted=breaker.routes_to_batch() if breaker is not None else False,
        requests_left=accounting.requests_left(totals) if accounting is not None else None,
        budget_left=accounting.budget_left(totals) if accounting is not None else None,
    )


def _sizes(spec: JobSpec, model: str | None, catalog: Catalog | None) -> list[str] | None:
    """Each item's output size, from the model's catalog entry and the item's quality."""
    model_spec = catalog.get(model) if catalog is not None and model else None
    if model_spec is None:
        return None
    return [model_spec.size_for(it.quality) for it in spec.items]


# --- the job -----------------------------------------------------------------------------


def submit_job(
    sub: Submission, deps: SubmitDeps, *, make_id: Callable[[], str] = new_job_id, resume: bool = False,
) -> Job:
    """Record the job and its items, then hand the items to their lane.

    The job is written first in status accepting, then its items and (batch lane) one intent
    per batch, then it moves to queued (core/accepting.py): a poller tick in between leaves it
    alone, and a submitter that dies half-way leaves a job the poller finishes or fails, never
    one that is silently lost. `resume` finishes what an abandoned first attempt under the
    same job id began (an Idempotency-Key takeover): existing documents are kept.
    Interactive: items are published after the flip, with published=False until they are, so
    reconcile_unpublished() finishes a submitter that died in between (the worker is
    idempotent). Batch: the batches are created here within `batch_submit_budget`; whatever
    fails or crashes is created by the next poller tick."""
    store, clock = deps.store, deps.clock
    job_id = make_id()
    if sub.source is not None or deps.staging is not None:
        return _accept_staged(sub, deps, job_id, resume)
    existing = store.get_job(job_id) if resume else None
    if existing is not None and (existing.status is not JobStatus.ACCEPTING
                                 or not store.touch_accepting(job_id, clock.now())):
        return store.get_job(job_id) or existing  # the first attempt got further than us
    if existing is not None:
        job = existing  # keep its lane, route and estimate: the breaker may say otherwise now
    else:
        job = _new_job(job_id, plan_route(sub.spec, deps.route, sub.model), sub.model, clock.now(), sub.spec)
    items = _new_items(job, sub.spec, clock.now())
    accounting = deps.route.accounting
    if accounting is not None and existing is None:
        # Reserved before the job exists: a crash in between over-reserves (safe), never under.
        accounting.reserve(job.lane, len(items), cost=job.estimated_cost_usd, job_id=job.job_id)
    return _accept(job, items, sub.owner, deps)


def _accept_staged(sub: Submission, deps: SubmitDeps, job_id: str, resume: bool) -> Job:
    """Accept in constant time: store the request (a body's items as JSONL, create-only; a
    source is only referenced), reserve, write the ONE job document (accepting, with its
    expansion record) and ask for its expansion. The job document is the last write, so a
    takeover that finds it has nothing left to do; a lost nudge is the poller's next tick's."""
    store, clock = deps.store, deps.clock
    existing = store.get_job(job_id) if resume else None
    if existing is not None:
        return existing
    if sub.source is None:
        route = plan_route(sub.spec, deps.route, sub.model)
        if deps.staging is None:
            raise RuntimeError("a staged accept needs somewhere to stage the body")
        uri, generation, size = deps.staging.put_staged(f"{STAGED_PREFIX}{job_id}.jsonl",
                                                        staged_jsonl(sub.spec.items))
        expansion = Expansion(uri, generation, STAGED_FORMAT, requested_lane=sub.spec.requested_lane, size=size)
    else:
        route = source_route(sub, deps.route)
        src = sub.source
        expansion = Expansion(src.uri, src.generation, src.format, src.on_bad_line, sub.spec.requested_lane,
                              size=src.size)
    job = _new_job(job_id, route, sub.model, clock.now(), sub.spec)
    job.expansion = expansion.to_dict()
    accounting = deps.route.accounting
    if accounting is not None and sub.source is None:
        # Reserved before the job exists: a crash in between over-reserves (safe), never under.
        accounting.reserve(job.lane, job.item_count, cost=job.estimated_cost_usd, job_id=job_id)
    if not store.create_job_doc(job):
        return store.get_job(job_id) or job  # a takeover wrote it meanwhile
    _nudge(job_id, deps.nudges)
    return job


def _nudge(job_id: str, nudges: ExpandNudges | None) -> None:
    try:
        if nudges is not None:
            nudges.expand(job_id)
    except DeliveryFailed as e:  # the job is stored: the poller's next tick starts its expansion
        log.warning("job %s: could not ask for its expansion (%s); the poller will", job_id, e)


def source_route(sub: Submission, deps: RouteDeps) -> routing.Route:
    """A source job's lane, chosen before its size is known: the one asked for, and for `auto`
    the batch lane when this deployment has one (a file is rarely small), else interactive.
    Its estimate and reservation wait for the count (core/expanding.py)."""
    _check_open(deps, sub.model)
    lane = sub.spec.requested_lane
    if lane == "auto":
        lane = Lane.BATCH.value if deps.batch_available else Lane.INTERACTIVE.value
        reason = f"a source file: auto takes the {lane} lane (the size is known once it is read)"
    else:
        reason = f"lane={lane} was requested"
    if lane == Lane.BATCH.value and not deps.batch_available:
        raise LaneUnavailable("the batch lane is not deployed: use lane=interactive for this source")
    return routing.Route(Lane(lane), reason, 0.0)


def _accept(job: Job, items: list[Item], owner: str, deps: SubmitDeps) -> Job:
    """Write what is missing of the job, queue it, and hand its items to their lane."""
    store, clock, batch = deps.store, deps.clock, deps.batch
    batch_store = batch.store if batch is not None and job.lane is Lane.BATCH else None
    intents = accepting.record_job(job, items, store=store, intents=batch_store,
                                   max_requests=deps.batch_max_requests, now=clock.now())
    if not store.finish_accepting(job.job_id, clock.now()):
        return _left_accepting_elsewhere(job.job_id, store)
    job.status = JobStatus.QUEUED
    if job.lane is Lane.INTERACTIVE:
        return _publish(job, items, store=store, queue=deps.queue, clock=clock)
    if batch is None:  # plan_route never picks the batch lane when there is none
        raise RuntimeError(f"job {job.job_id} is a batch job, but no batch lane is wired")
    _submit_batches(job, items, intents, batch, owner, clock.now() + deps.batch_submit_budget)
    return job


def _left_accepting_elsewhere(job_id: str, store: JobStore) -> Job:
    """The job as another party left it when finish_accepting found it no longer accepting."""
    current = store.get_job(job_id)
    if current is None or current.status is JobStatus.ACCEPTING:
        raise RuntimeError(f"job {job_id} could not leave accepting")  # 500: the client resends
    return current  # failed by the poller as abandoned meanwhile, or queued by another attempt


def _publish(job: Job, items: list[Item], *, store: JobStore, queue: WorkQueue, clock: Clock) -> Job:
    queue.publish_items(job.job_id, [it.key for it in items])
    store.mark_published(job.job_id, clock.now())
    job.published = True
    return job


def _new_job(job_id: str, route: routing.Route, model: str, now: float, spec: JobSpec) -> Job:
    return Job(
        job_id=job_id,
        lane=route.lane,
        status=JobStatus.ACCEPTING,
        model=model,
        item_count=len(spec.items),
        created_at=now,
        updated_at=now,
        published=route.lane is Lane.BATCH,  # "published" is the interactive lane's intent flag
        estimated_cost_usd=route.estimated_cost_usd,
        route_reason=route.reason,
        callback_url=spec.callback_url,
        tenant=spec.tenant,
    )


def _new_items(job: Job, spec: JobSpec, now: float) -> list[Item]:
    return [
        Item(job_id=job.job_id, key=s.key, index=i, prompt=s.prompt, aspect_ratio=s.aspect_ratio, domain=s.domain,
             quality=s.quality, lane=job.lane.value, updated_at=now)
        for i, s in enumerate(spec.items)
    ]


def _submit_batches(job: Job, items: list[Item], intents: list, batch: BatchLane, owner: str, deadline: float) -> None:
    by_key = {it.key: it for it in items}
    for intent in intents:
        if batch.clock.now() >= deadline:
            # The rest are recorded intents: the next poller tick creates them. The client
            # gets its 202 in seconds, whatever the job's size.
            log.info("job %s: leaving the remaining batches to the poller", job.job_id)
            break
        try:
            submitted = batch.submit(intent.intent_id, owner, [by_key[k] for k in intent.keys])
        except Exception:  # noqa: BLE001 - recorded; the poller creates it on its next tick
            log.exception("creating the batch of intent %s failed; the poller will retry", intent.intent_id)
            continue
        if submitted is not None and batch.waiting(submitted):
            # Gemini answered 429: the other batches would get one each. The poller creates
            # them once the wait is over.
            log.info("job %s: batch quota reached; leaving the remaining batches to the poller", job.job_id)
            break


# --- behind an Idempotency-Key -----------------------------------------------------------


def submit_once(sub: Submission, deps: SubmitDeps) -> tuple[Job, bool]:
    """submit_job behind an Idempotency-Key: (job, replayed).

    The record (key -> job id, body hash) is written create-only *before* the job, with the
    job id chosen up front, so a retried request finds the job its first attempt made. The
    same key with another body is refused; a first attempt still in flight (no job yet, or
    its job still accepting) answers "in progress"; one abandoned for the takeover time (the
    submitter died) is resumed by the next attempt under the same job id: submit_job(...,
    resume=True) keeps what the first attempt wrote and finishes the rest."""
    idempotency, key_id = deps.idempotency, sub.key_id
    if idempotency is None or key_id is None:
        raise RuntimeError("submit_once needs an idempotency store and a key")
    now = deps.clock.now()
    job_id = new_job_id()
    record, created = idempotency.begin(key_id, {
        "job_id": job_id, "body_sha256": sub.body_sha256, "started_at": now,
        "expires_at": now + deps.idempotency_ttl_seconds,
    })
    if created:
        return submit_job(sub, deps, make_id=lambda: job_id), False
    return _resend(sub, deps, record, now, idempotency, key_id)


def _resend(
    sub: Submission, deps: SubmitDeps, record: dict, now: float, idempotency: IdempotencyStore, key_id: str,
) -> tuple[Job, bool]:
    """A request whose key is already recorded: the replay, a refusal, or the takeover."""
    if record.get("body_sha256") != sub.body_sha256:
        raise IdempotencyMismatch(
            "this Idempotency-Key was used with a different request body; use a new key for a new job"
        )
    job = deps.store.get_job(record["job_id"])
    if job is not None and (job.status is not JobStatus.ACCEPTING or job.expansion is not None):
        return job, True  # an expanding job's document is its accept's last write: it is accepted
    started_at = record.get("started_at", 0)
    if now - started_at < deps.idempotency_takeover_seconds or not idempotency.take_over(key_id, started_at, now):
        raise InProgress("a request with this Idempotency-Key is still being processed; retry shortly")
    job_id = record["job_id"]
    log.warning("idempotency key record of job %s was abandoned; finishing the submission", job_id)
    return submit_job(sub, deps, make_id=lambda: job_id, resume=True), False
