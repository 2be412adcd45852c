"""Use cases: plain functions taking their collaborators as keyword arguments."""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from core import accounting as acct
from core import accepting, routing
from core.accounting import Accounting, Prices
from core.batches import BatchLane
from core.breaker import CircuitBreaker
from core.catalog import Catalog
from core.model_halts import ModelHalts
from core.pool import PoolEntry, PoolStore
from core.errors import (
    Conflict,
    IdempotencyMismatch,
    InProgress,
    LaneUnavailable,
    ModelHalted,
    NotFound,
)
from core.models import (
    TERMINAL_JOB_STATUSES,
    Item,
    ItemState,
    Job,
    JobSpec,
    JobStatus,
    Lane,
)
from core.ports import (
    BatchStore, Clock, EventOutbox, IdempotencyStore, ImageSink, JobStore, WorkQueue,
)
from core.tenants import visible
from core.transitions import AcceptAbandoned, Cancelled, DeadLettered, Requeued, Touched

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return uuid.uuid4().hex


# --- submit ------------------------------------------------------------------------------


def plan_route(
    spec: JobSpec,
    *,
    interactive_threshold: int,
    batch_available: bool,
    breaker: CircuitBreaker | None = None,
    accounting: Accounting | None = None,
    model: str | None = None,
    catalog: Catalog | None = None,
    model_halts: ModelHalts | None = None,
) -> routing.Route:
    """The lane a job would take now, and why, and what it would cost (also the dry run)."""
    if model and model_halts is not None and (model_halt := model_halts.halted(model)) is not None:
        raise ModelHalted(model, model_halt.reason)
    if breaker is not None and (halted := breaker.halted()) is not None:
        raise LaneUnavailable(
            f"image generation is halted: {halted.reason}; no lane is used (batch shares the "
            f"project and its billing) until an operator fixes it or a probe succeeds"
        )
    totals = accounting.totals() if accounting is not None else None
    return routing.choose_lane(
        len(spec.items),
        spec.requested_lane,
        threshold=interactive_threshold,
        batch_available=batch_available,
        headroom=routing.Headroom(
            quota_exhausted=breaker.routes_to_batch() if breaker is not None else False,
            requests_left=accounting.requests_left(totals) if accounting is not None else None,
            budget_left=accounting.budget_left(totals) if accounting is not None else None,
        ),
        pricing=routing.Pricing(
            prices=accounting.prices if accounting is not None else Prices(), model=model,
            sizes=_sizes(spec, model, catalog),
        ),
    )


def _sizes(spec: JobSpec, model: str | None, catalog: Catalog | None) -> list[str] | None:
    """Each item's output size, from the model's catalog entry and the item's quality."""
    model_spec = catalog.get(model) if catalog is not None and model else None
    if model_spec is None:
        return None
    return [model_spec.size_for(it.quality) for it in spec.items]


def submit_job(
    spec: JobSpec,
    *,
    store: JobStore,
    queue: WorkQueue,
    clock: Clock,
    model: str,
    interactive_threshold: int,
    batch: BatchLane | None = None,
    batch_max_requests: int = 1000,
    batch_submit_budget: float = 5.0,
    owner: str = "api",
    make_id: Callable[[], str] = new_job_id,
    breaker: CircuitBreaker | None = None,
    accounting: Accounting | None = None,
    resume: bool = False,
    catalog: Catalog | None = None,
    model_halts: ModelHalts | None = None,
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
    job_id = make_id()
    existing = store.get_job(job_id) if resume else None
    if existing is not None and (existing.status is not JobStatus.ACCEPTING
                                 or not store.touch_accepting(job_id, clock.now())):
        return store.get_job(job_id) or existing  # the first attempt got further than us
    if existing is not None:
        job = existing  # keep its lane, route and estimate: the breaker may say otherwise now
    else:
        route = plan_route(spec, interactive_threshold=interactive_threshold, batch_available=batch is not None,
                           breaker=breaker, accounting=accounting, model=model, catalog=catalog,
                           model_halts=model_halts)
        job = _new_job(job_id, route, model, clock.now(), spec)
    items = _new_items(job, spec, clock.now())
    if accounting is not None and existing is None:
        # Reserved before the job exists: a crash in between over-reserves (safe), never under.
        accounting.reserve(job.lane, len(items), cost=job.estimated_cost_usd, job_id=job.job_id)
    batch_store = batch.store if batch is not None and job.lane is Lane.BATCH else None
    intents = accepting.record_job(job, items, store=store, intents=batch_store,
                                   max_requests=batch_max_requests, now=clock.now())
    if not store.finish_accepting(job.job_id, clock.now()):
        return _left_accepting_elsewhere(job.job_id, store)
    job.status = JobStatus.QUEUED
    if job.lane is Lane.INTERACTIVE:
        return _publish(job, items, store=store, queue=queue, clock=clock)
    if batch is None:  # plan_route never picks the batch lane when there is none
        raise RuntimeError(f"job {job.job_id} is a batch job, but no batch lane is wired")
    _submit_batches(job, items, intents, batch, owner, clock.now() + batch_submit_budget)
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


def submit_once(
    spec: JobSpec,
    *,
    key_id: str,
    body_sha256: str,
    idempotency: IdempotencyStore,
    store: JobStore,
    clock: Clock,
    submit: Callable[[Callable[[], str], bool], Job],
    ttl_seconds: float = 86_400.0,
    takeover_seconds: float = 120.0,
) -> tuple[Job, bool]:
    """submit_job behind an Idempotency-Key: (job, replayed).

    The record (key -> job id, body hash) is written create-only *before* the job, with the
    job id chosen up front, so a retried request finds the job its first attempt made. The
    same key with another body is refused; a first attempt still in flight (no job yet, or
    its job still accepting) answers "in progress"; one abandoned for `takeover_seconds` (the
    submitter died) is resumed by the next attempt under the same job id: submit(make_id,
    resume=True) keeps what the first attempt wrote and finishes the rest."""
    now = clock.now()
    job_id = new_job_id()
    record, created = idempotency.begin(key_id, {
        "job_id": job_id, "body_sha256": body_sha256, "started_at": now, "expires_at": now + ttl_seconds,
    })
    if not created:
        if record.get("body_sha256") != body_sha256:
            raise IdempotencyMismatch(
                "this Idempotency-Key was used with a different request body; use a new key for a new job"
            )
        job = store.get_job(record["job_id"])
        if job is not None and job.status is not JobStatus.ACCEPTING:
            return job, True
        if now - record.get("started_at", 0) < takeover_seconds or not idempotency.take_over(
            key_id, record.get("started_at", 0), now
        ):
            raise InProgress("a request with this Idempotency-Key is still being processed; retry shortly")
        job_id = record["job_id"]
        log.warning("idempotency key record of job %s was abandoned; finishing the submission", job_id)
        return submit(lambda: job_id, True), False
    return submit(lambda: job_id, False), False


def reconcile_unpublished(
    *, store: JobStore, queue: WorkQueue, clock: Clock, grace_seconds: float = 60.0
) -> list[str]:
    """Publish the items of interactive jobs whose submitter died before publishing them."""
    done = []
    for job in store.unpublished_jobs(older_than=clock.now() - grace_seconds, limit=50):
        if job.lane is not Lane.INTERACTIVE or job.status is JobStatus.ACCEPTING:
            continue  # an accepting job is published after its flip (or by recover_abandoned_accepts)
        keys = [it.key for it in _all_items(store, job.job_id) if not it.terminal]
        queue.publish_items(job.job_id, keys)
        store.mark_published(job.job_id, clock.now())
        log.warning("republished %d items of job %s", len(keys), job.job_id)
        done.append(job.job_id)
    return done


def redrive_stuck_items(
    *, store: JobStore, queue: WorkQueue, clock: Clock, lease_grace_seconds: float, queued_after_seconds: float,
    limit: int = 100,
) -> dict[str, int]:
    """Publish again the messages of interactive items nothing will deliver: running under a
    lease that expired `lease_grace_seconds` ago (a worker killed with deliveries in flight,
    whose messages Pub/Sub will not redeliver, e.g. acked or dropped by a detached subscription),
    and queued items of published jobs untouched for `queued_after_seconds`. Duplicates are
    harmless: the worker is idempotent, and records an image an earlier attempt stored.

    The grace is past the lease so a holder whose clock runs behind ours is not raced; each
    query reads at most `limit` items."""
    now = clock.now()
    running = store.expired_leases(now - lease_grace_seconds, limit)
    queued = store.untouched_queued_items(now - queued_after_seconds, limit)
    by_job: dict[str, list[Item]] = {}
    for it in running + queued:
        by_job.setdefault(it.job_id, []).append(it)
    summary = {"running": 0, "queued": 0}
    for job_id, items in by_job.items():
        job = store.get_job(job_id)
        if job is None or not job.published:
            continue  # not published yet: reconcile_unpublished owns it
        queue.publish_items(job_id, [it.key for it in items])
        for it in items:
            if it.state is ItemState.QUEUED:
                # Touched, so the next tick does not publish it again before a worker could.
                store.requeue_item(job_id, it.key, ItemState.QUEUED, Touched(now))
            summary[it.state.value] += 1
        log.warning("republished %d stuck items of job %s", len(items), job_id, extra={"job_id": job_id})
    return summary


@dataclass(frozen=True)
class AcceptRecovery:
    """recover_abandoned_accepts' collaborators; max_requests is the batch lane's intent size."""
    store: JobStore
    batches: BatchStore | None
    queue: WorkQueue
    clock: Clock
    sink: ImageSink | None
    events: EventOutbox | None = None
    accounting: Accounting | None = None
    max_requests: int = 1000


def recover_abandoned_accepts(
    deps: AcceptRecovery, *, abandon_seconds: float = 600.0, limit: int = 20,
) -> dict[str, list[str]]:
    """Finish or fail the jobs whose submitter died while accepting them (see core/accepting.py).

    A job accepting for longer than `abandon_seconds` (longer than an Idempotency-Key takeover
    waits, so a resent request gets the first chance) is completed when all its items were
    recorded: its intents are re-planned from the items, create-only, then it is queued (and,
    interactive, published). Otherwise it ends failed with an error saying so, its reservation
    released and its job.completed event recorded: nothing is silently lost."""
    done: dict[str, list[str]] = {"completed": [], "failed": []}
    idle_since = deps.clock.now() - abandon_seconds
    for job in deps.store.accepting_jobs(limit):
        if job.updated_at > idle_since:
            continue  # its submitter may be alive
        items = _all_items(deps.store, job.job_id)
        if len(items) == job.item_count:
            if _complete_accept(job, items, deps):
                done["completed"].append(job.job_id)
        elif _fail_accept(job, items, deps, idle_since):
            done["failed"].append(job.job_id)
    return done


def _complete_accept(job: Job, items: list[Item], deps: AcceptRecovery) -> bool:
    store, clock = deps.store, deps.clock
    if job.lane is Lane.BATCH:
        if deps.batches is None:
            return False  # the batch lane is off here: leave it for an instance that has it
        accepting.record_job(job, items, store=store, intents=deps.batches, max_requests=deps.max_requests,
                             now=clock.now())
    if not store.finish_accepting(job.job_id, clock.now()):
        return False
    if job.lane is Lane.INTERACTIVE:
        deps.queue.publish_items(job.job_id, [it.key for it in items if not it.terminal])
        store.mark_published(job.job_id, clock.now())
    log.warning("job %s: finished accepting it for a submitter that stopped", job.job_id, extra={"job_id": job.job_id})
    return True


def _fail_accept(job: Job, items: list[Item], deps: AcceptRecovery, idle_since: float) -> bool:
    store, clock, accounting = deps.store, deps.clock, deps.accounting
    error = accepting.abandoned_message(len(items), job.item_count)
    if not store.fail_accepting(job.job_id, error, clock.now(), idle_since):
        return False  # a resent request resumed it meanwhile
    for it in items:  # nothing ran them: the job never left accepting
        store.requeue_item(job.job_id, it.key, ItemState.QUEUED, AcceptAbandoned(clock.now(), error))
    if accounting is not None:
        accounting.add({acct.RELEASED_USD: accounting.prices.estimate(job.lane, job.item_count)},
                       job_id=job.job_id, lane=job.lane.value)
    log.error("job %s: %s", job.job_id, error, extra={"job_id": job.job_id})
    finalize_job_if_done(job.job_id, store=store, clock=clock, sink=deps.sink, events=deps.events)
    return True


def finalize_stalled_jobs(
    *, store: JobStore, clock: Clock, sink: ImageSink | None, events: EventOutbox | None = None, limit: int = 50,
    deadline: float | None = None, start_after: str | None = None,
) -> list[str]:
    """Finish running jobs that have no work left. Every finisher finalizes its job, but one
    that died after its last commit (a poller killed after an intent's final checkpoint, whose
    batch nothing will reconcile again) would leave the job running forever.

    The sweep stops at `deadline` (the tick's) and the next tick carries on. It walks the jobs
    in id order from `start_after`, wrapping around; by default a random point, as random as
    the ids (uuid4), so that a sweep cut short by the deadline or the limit reaches every
    running job in turn instead of always spending itself on the same first ones, with no
    cursor to store between ticks."""
    done = []
    for job in _running_jobs_from(store, new_job_id() if start_after is None else start_after, limit):
        if deadline is not None and clock.now() >= deadline:
            log.info("finalize sweep: the tick's deadline passed; the next tick carries on")
            break
        if finalize_job_if_done(job.job_id, store=store, clock=clock, sink=sink, events=events) is not None:
            log.warning("finalized job %s, which had no work left", job.job_id, extra={"job_id": job.job_id})
            done.append(job.job_id)
    return done


def _running_jobs_from(store: JobStore, start_after: str, limit: int):
    """Up to `limit` running jobs in id order after `start_after`, then from the first id up
    to it: one query, and the second only when the first leaves room."""
    first = store.running_jobs(limit, after=start_after)
    yield from first
    if len(first) < limit:
        yield from (job for job in store.running_jobs(limit - len(first)) if job.job_id <= start_after)


def _all_items(store: JobStore, job_id: str, page: int = 500) -> list[Item]:
    items: list[Item] = []
    after = None
    while True:
        batch = store.list_items(job_id, after, page)
        items.extend(batch)
        if len(batch) < page:
            return items
        after = batch[-1].index


# --- status ------------------------------------------------------------------------------


def get_job_status(
    job_id: str, *, store: JobStore, page_size: int = 100, page_token: str | None = None,
    batches: BatchStore | None = None, prices: Prices | None = None, events: EventOutbox | None = None,
    tenant: str | None = None,
) -> dict:
    job = _job_of_tenant(store, job_id, tenant)
    after = int(page_token) if page_token else None
    items = store.list_items(job_id, after, page_size)
    counts = store.count_items(job_id)
    next_token = str(items[-1].index) if len(items) == page_size else None
    return {
        "job_id": job.job_id,
        "lane": job.lane.value,
        "status": job.status.value,
        "model": job.model,
        "item_count": job.item_count,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "manifest_uri": job.manifest_uri,
        "counts": {state.value: counts.get(state, 0) for state in ItemState},
        "items": [it.public() for it in items],
        "next_page_token": next_token,
        # A job's items may reach batches without the job being a batch job (diverted, retried).
        "batches": [i.public() for i in batches.intents_of_job(job_id)] if batches else [],
        "round": job.round,
        "route_reason": job.route_reason,
        "error": job.error,
        "estimated_cost_usd": job.estimated_cost_usd,
        "actual_cost_usd": _actual_cost(store, job, prices or Prices(), counts),
        "events": events.events_of_job(job_id) if events else [],
    }


def _job_of_tenant(store: JobStore, job_id: str, tenant: str | None) -> Job:
    """The job, if `tenant` may see it (None: an admin, who sees all). Another tenant's job is
    "not found", the same answer as a job that does not exist: its existence is not revealed."""
    job = store.get_job(job_id)
    if job is None or not visible(job.tenant, tenant):
        raise NotFound(f"job {job_id} not found")
    return job


def _actual_cost(store: JobStore, job: Job, prices: Prices, counts: dict[ItemState, int]) -> float:
    """What the job's images cost so far: each succeeded item at its model's price (standard
    size) in the lane it ran in."""
    if not counts.get(ItemState.SUCCEEDED):
        return 0.0
    by_lane = store.count_succeeded_by_lane(job.job_id)
    return round(sum(prices.estimate(lane, n, job.model) for lane, n in by_lane.items()), 6)


def job_status_from_counts(counts: dict[ItemState, int]) -> JobStatus | None:
    """The terminal status once nothing is queued or running; None while work remains."""
    if counts.get(ItemState.QUEUED, 0) or counts.get(ItemState.RUNNING, 0):
        return None
    succeeded = counts.get(ItemState.SUCCEEDED, 0)
    unsuccessful = sum(
        counts.get(s, 0) for s in (ItemState.FAILED, ItemState.DEAD_LETTERED)
    )
    if succeeded and not unsuccessful:
        return JobStatus.SUCCEEDED
    if succeeded:
        return JobStatus.PARTIALLY_SUCCEEDED
    if unsuccessful:
        return JobStatus.FAILED
    return JobStatus.CANCELLED


def finalize_job_if_done(
    job_id: str, *, store: JobStore, clock: Clock, sink: ImageSink | None = None, events: EventOutbox | None = None
) -> JobStatus | None:
    """Give the job its terminal status, and write its manifest, once no item is left to do.

    Every finisher calls this after committing its own item, so the last one to commit
    always sees zero remaining; two finishers may both see it, and both writes are
    idempotent (the manifest is create-only, the status only moves forward). The manifest
    is written before the status, so a job that says it is done always has one.

    With `events`, the job.completed event is recorded after the status (create-only), also
    when the job was already finalized and the event is missing: a finisher that died between
    the two is repaired by the next one that gets here."""
    job = store.get_job(job_id)
    if job is None or job.status is JobStatus.ACCEPTING:
        return None  # its items may not all be written yet: counting them now would lose the rest
    if job.status in TERMINAL_JOB_STATUSES and (job.manifest_uri or sink is None):
        _record_completion(job, store, events)
        return job.status  # already finalized: a duplicate delivery costs one read (two with events)
    if store.has_unfinished_items(job_id):
        return None
    status = job_status_from_counts(store.count_items(job_id))
    if status is None:
        return None
    manifest_uri = None
    if sink is not None:
        name = manifest_name(job_id, job.round)
        manifest_uri = sink.put_manifest(name, build_manifest(_all_items(store, job_id))).uri
    store.complete_job(job_id, status, clock.now(), manifest_uri=manifest_uri)
    if events is not None:
        _record_completion(store.get_job(job_id), store, events)  # as stored: another finisher may have won
    return status


def _record_completion(job: Job | None, store: JobStore, events: EventOutbox | None) -> None:
    """Record the job.completed event of a finalized job unless it is recorded. A cancelled job
    is terminal at once but finalized only when its last running item has ended."""
    if events is None or job is None or job.status not in TERMINAL_JOB_STATUSES:
        return
    if job.finished_at is None and store.has_unfinished_items(job.job_id):
        return
    if not events.has_completion(job):
        events.record_completion(job, store.count_items(job.job_id))


def manifest_name(job_id: str, round: int = 1) -> str:
    """Create-only, so a job re-opened by :retry writes its next manifest beside the first."""
    return f"{job_id}/manifest.jsonl" if round <= 1 else f"{job_id}/manifest-r{round}.jsonl"


def build_manifest(items: list[Item]) -> bytes:
    """One JSON line per item: where its image is and what it is."""
    lines = []
    for it in items:
        lines.append(json.dumps({
            "key": it.key, "prompt": it.prompt, "state": it.state.value, "gcs_uri": it.gcs_uri, "sha256": it.sha256,
            "bytes": it.bytes, "format": it.format, "width": it.width, "height": it.height, "finish_reason": it.finish_reason,
            "output_tokens": it.output_tokens, "lane": it.lane, "attempts": it.attempts, "error": it.error,
        }, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def cancel_job(
    job_id: str, *, store: JobStore, clock: Clock, sink: ImageSink | None = None, events: EventOutbox | None = None,
    tenant: str | None = None,
) -> dict:
    """Cancel a job: queued interactive items are dropped here or by the worker that meets
    them; the poller cancels the job's Gemini batches. Finished items keep their images."""
    job = _job_of_tenant(store, job_id, tenant)
    if job.status is JobStatus.ACCEPTING:
        raise Conflict(f"job {job_id} is still being accepted; cancel it once it is queued")
    if not store.cancel_job(job_id, clock.now()):
        raise Conflict(f"job {job_id} has already ended ({job.status.value})")
    if job.lane is Lane.INTERACTIVE:
        for item in _all_items(store, job_id):
            if item.state is ItemState.QUEUED:
                owner = f"cancel-{job_id}"
                if store.claim_item(job_id, item.key, owner, clock.now(), 60):
                    store.finish_item(job_id, item.key, owner, Cancelled(clock.now(), error="job cancelled"))
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink, events=events)
    return get_job_status(job_id, store=store, page_size=1, events=events)


# --- retry, dead letters, stats -----------------------------------------------------------


def retry_job(
    job_id: str,
    *,
    store: JobStore,
    queue: WorkQueue,
    pool: PoolStore,
    clock: Clock,
    tenant: str | None = None,
) -> dict:
    """Re-queue the job's dead-lettered items (the retryable failures: refusals stay failed).

    A finished job is re-opened for a new round (its next manifest gets a new name, and it
    completes again). Interactive items are re-published with the job's `published` flag
    cleared first, so a crash half-way is finished by the poller; batch items go through the
    pending-batch pool, whose entries are written before the items change, for the same
    reason. Two concurrent retries requeue each item once (compare-and-set on its state)."""
    job = _job_of_tenant(store, job_id, tenant)
    if job.status is JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} was cancelled; submit a new job instead")
    dead = [it for it in _all_items(store, job_id) if it.state is ItemState.DEAD_LETTERED]
    if not dead:
        raise Conflict(f"job {job_id} has no dead-lettered items to retry")
    now = clock.now()
    job = store.reopen_job(job_id, now)
    interactive = [it for it in dead if it.lane != Lane.BATCH.value]
    batch = [it for it in dead if it.lane == Lane.BATCH.value]
    if interactive:
        store.mark_unpublished(job_id, now)
    for it in batch:
        pool.add(PoolEntry(job_id, it.key, now, urgent=True))  # the client is waiting: next tick
    requeued_interactive: list[str] = []
    requeued_batch: list[str] = []
    for it in dead:
        requeued = Requeued(now, error=f"retried after: {it.error}" if it.error else None,
                            to_pool=it.lane == Lane.BATCH.value)
        if store.requeue_item(job_id, it.key, ItemState.DEAD_LETTERED, requeued):
            (requeued_batch if it.lane == Lane.BATCH.value else requeued_interactive).append(it.key)
    if interactive:
        queue.publish_items(job_id, requeued_interactive)
        store.mark_published(job_id, clock.now())
    log.info("job %s round %d: requeued %d interactive and %d batch items", job_id, job.round,
             len(requeued_interactive), len(requeued_batch), extra={"job_id": job_id})
    return {"job_id": job_id, "round": job.round, "status": job.status.value,
            "requeued": len(requeued_interactive) + len(requeued_batch),
            "requeued_interactive": len(requeued_interactive), "requeued_batch": len(requeued_batch)}


@dataclass(frozen=True)
class DeadLettering:
    """What settling a dead letter needs: the job store, the clock, the finisher's sink and
    outbox, and the lease owner it claims the item as."""
    store: JobStore
    clock: Clock
    sink: ImageSink | None
    owner: str
    events: EventOutbox | None = None
    lease_seconds: float = 60.0


def dead_letter_item(job_id: str, key: str, deliveries: int | None, deps: DeadLettering) -> bool:
    """Pub/Sub gave up on an item's message: the item ends dead_lettered with its last error.

    Returns False when the item is still leased by a live delivery (come back later); True
    when the message can be acked (the item is terminal now, or was, or does not exist)."""
    store, clock, owner = deps.store, deps.clock, deps.owner
    item = store.get_item(job_id, key)
    if item is None or item.terminal or item.lane == Lane.BATCH.value:
        return True  # nothing to do: finished, unknown, or the batch lane owns it now
    if store.claim_item(job_id, key, owner, clock.now(), deps.lease_seconds) is None:
        current = store.get_item(job_id, key)
        return current is None or current.terminal
    tries = f" after {deliveries} deliveries" if deliveries else ""
    last = f"; last error: {item.error}" if item.error else ""
    store.finish_item(job_id, key, owner, DeadLettered(clock.now(), f"Pub/Sub gave up on the message{tries}{last}"))
    log.warning("item %s/%s dead-lettered by Pub/Sub%s", job_id, key, tries,
                extra={"job_id": job_id, "item_key": key, "lane": Lane.INTERACTIVE.value,
                       "state": ItemState.DEAD_LETTERED.value})  # the dead-letter metric counts this
    finalize_job_if_done(job_id, store=store, clock=clock, sink=deps.sink, events=deps.events)
    return True


def drain_dead_letters(
    source, *, settling: DeadLettering, decode: Callable[[bytes], tuple[str, str]], max_messages: int = 100,
) -> dict[str, int]:
    """The dead-letter topic's consumer: each work message Pub/Sub gave up on ends its item
    dead_lettered (with the last error), so no item waits `queued` forever. A message whose
    item a live delivery still holds is left for the next tick."""
    summary = {"settled": 0, "unreadable": 0, "deferred": 0}
    acks = []
    for ack_id, data, attributes in source.pull(max_messages):
        try:
            job_id, key = decode(data)
        except ValueError as e:
            log.error("dropping an unreadable dead letter: %s", e)
            summary["unreadable"] += 1
            acks.append(ack_id)
            continue
        deliveries = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
        if dead_letter_item(job_id, key, int(deliveries) if deliveries and deliveries.isdigit() else None, settling):
            summary["settled"] += 1
            acks.append(ack_id)
        else:
            summary["deferred"] += 1
    source.ack(acks)
    return summary


def models_in_use(*, store: JobStore, default: str, limit: int = 100) -> set[str]:
    """The default model and those of running jobs: what the poller's models.get check watches."""
    return {default} | {job.model for job in store.running_jobs(limit)}


def resume_restored_models(*, model_halts: ModelHalts, store: JobStore, queue: WorkQueue) -> dict[str, int]:
    """Publish the parked items of every model whose halt was lifted, then mark it resumed.
    The mark comes last, so a poller that dies half-way leaves it for the next tick
    (duplicates are harmless: the worker skips a finished or leased item)."""
    done = {}
    for model in model_halts.pending_resumes():
        done[model] = resume_model(model, store=store, queue=queue)
        model_halts.resumed(model)
    return done


def resume_model(model: str, *, store: JobStore, queue: WorkQueue, limit: int = 1000) -> int:
    """Publish the model's interactive jobs' waiting items again: the parked ones (queued) and
    those a worker holds right now (running: it may be parking them as we read)."""
    published = 0
    for job in store.running_jobs(limit):
        if job.model != model or job.lane is not Lane.INTERACTIVE:
            continue
        keys = [it.key for it in _all_items(store, job.job_id)
                if it.state in (ItemState.QUEUED, ItemState.RUNNING) and it.lane != Lane.BATCH.value]
        if keys:
            queue.publish_items(job.job_id, keys)
            published += len(keys)
    if published:
        log.info("model %s is back: republished %d waiting items", model, published, extra={"model": model})
    return published


def get_stats(*, accounting: Accounting, breaker: CircuitBreaker | None, pool_size: int | None = None,
              tenant: str | None = None, models: list[dict] | None = None) -> dict:
    """Today's usage as `tenant` may see it (None: an admin: the totals and every tenant's),
    beside the limits and the breaker, which every tenant shares."""
    body = accounting.summary(tenant)
    body["breaker"] = breaker.view(fresh=True).public() if breaker is not None else {"state": "closed"}
    body["pending_batch_pool"] = pool_size
    body["models"] = models or []
    return body


# --- shared with the worker (core/worker.py) and the batch lane ------------------------------


def compose_prompt(item: Item) -> str:
    if item.domain:
        return f"{item.prompt}\n\nDomain: {item.domain}"
    return item.prompt
