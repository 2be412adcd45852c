"""A job's life after it is accepted: its status, finalizing it (status and manifest), cancel
and retry. Every finisher (worker, batch lane, dead letters, the poller's sweeps) ends here."""
from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from core.accounting import Prices
from core.errors import Conflict, NotFound
from core.manifests import write_manifest
from core.models import TERMINAL_JOB_STATUSES, BatchIntent, Item, ItemState, Job, JobStatus, Lane, PoolEntry
from core.ports import BatchStore, Clock, EventOutbox, ImageSink, JobStore, PoolStore, WorkQueue
from core.tenants import visible
from core.transitions import Cancelled, Requeued

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return uuid.uuid4().hex


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


@dataclass(frozen=True)
class StatusDeps:
    """What a job's status reads: its job and items, and, when given, its batch intents, the
    prices of its images and its events."""
    store: JobStore
    batches: BatchStore | None = None
    prices: Prices | None = None
    events: EventOutbox | None = None


# The batches a status shows at once; the rest are paged with batches_page_token. A
# million-item job has hundreds of batches: listing them all made its status grow with it.
BATCH_PAGE_SIZE = 100


def get_job_status(
    job_id: str, deps: StatusDeps, *, page_size: int = 100, page_token: str | None = None, tenant: str | None = None,
    batches_page_token: str | None = None,
) -> dict:
    store, batches, events = deps.store, deps.batches, deps.events
    job = _job_of_tenant(store, job_id, tenant)
    after = int(page_token) if page_token else None
    # page_size 0: the counts without items, for pollers of a very large job (a page of items
    # is cheap on Firestore, but a full scan of the collection on its emulator).
    items = store.list_items(job_id, after, page_size) if page_size else []
    counts = store.count_items(job_id)
    next_token = str(items[-1].index) if items and len(items) == page_size else None
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
        **_batch_page(job_id, batches, batches_page_token),
        "round": job.round,
        "route_reason": job.route_reason,
        "error": job.error,
        "estimated_cost_usd": job.estimated_cost_usd,
        "actual_cost_usd": _actual_cost(store, job, deps.prices or Prices(), counts),
        "events": events.events_of_job(job_id) if events else [],
        **({"expansion": expansion_progress(job.expansion)} if job.expansion else {}),
    }


def _batch_page(job_id: str, batches: BatchStore | None, after: str | None) -> dict:
    """A page of the job's batches, read without their keys, and how many there are. A job's
    items may reach batches without the job being a batch job (diverted, retried)."""
    if batches is None:
        return {"batches": [], "batch_count": 0, "batches_next_page_token": None}
    page = batches.intent_page(job_id, after or None, BATCH_PAGE_SIZE)
    count = batches.count_intents(job_id) if page or after else 0
    next_token = page[-1].intent_id if len(page) == BATCH_PAGE_SIZE else None
    return {"batches": [i.public() for i in page], "batch_count": count, "batches_next_page_token": next_token}


def iter_intents(batches: BatchStore, job_id: str, *, with_keys: bool = False, page: int = 100) -> Iterator[BatchIntent]:
    """Every intent of the job, read a page at a time: a million-item job's hundreds of
    intents (and their keys) are never all held at once."""
    after = None
    while True:
        intents = batches.intent_page(job_id, after, page, with_keys=with_keys)
        yield from intents
        if len(intents) < page:
            return
        after = intents[-1].intent_id


def expansion_progress(expansion: dict) -> dict:
    """What the status shows of a job's expansion record (core/expanding.py)."""
    return {"lines_read": expansion.get("lines", 0), "items_created": expansion.get("items", 0),
            "bad_line_count": expansion.get("bad_lines", 0),
            "bad_lines": [dict(s) for s in expansion.get("bad_samples") or ()],
            "failed_attempts": expansion.get("failed_attempts", 0), "last_error": expansion.get("last_error")}


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


# How long one finalizer has the manifest to itself. Writing it reads every item, so without
# the lease every finisher and every overlapping poller tick that saw the job done read them all
# again (five at once for a 100,000-item job on the local stack). A finalizer that outlives it
# only shares the work: every write of a finalize is idempotent.
FINALIZE_LEASE_SECONDS = 600.0


def finalizing_claim(data: dict | None, owner: str, now: float, lease_seconds: float) -> dict | None:
    """The job document's fields for `owner` taking its finalizing lease, or None when another
    finalizer holds it for the job's current round."""
    if data is None:
        return None
    held, round_ = data.get("finalizing") or {}, data.get("round", 1)
    if held.get("owner") not in (None, owner) and held.get("until", 0.0) > now and held.get("round") == round_:
        return None
    return {"finalizing": {"owner": owner, "until": now + lease_seconds, "round": round_}}


@dataclass(frozen=True)
class Finalizing:
    """What finalizing a job writes with: the store, the clock, the sink its manifest goes to
    and the outbox of its job.completed event (None: no manifest, no event)."""
    store: JobStore
    clock: Clock
    sink: ImageSink | None = None
    events: EventOutbox | None = None


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
        manifest_uri = _write_manifest_leased(job, store, clock, sink)
        if manifest_uri is None:
            return None  # another finalizer is writing it (if that one dies, the sweep finishes)
    store.complete_job(job_id, status, clock.now(), manifest_uri=manifest_uri)
    if events is not None:
        _record_completion(store.get_job(job_id), store, events)  # as stored: another finisher may have won
    return status


def _write_manifest_leased(job: Job, store: JobStore, clock: Clock, sink: ImageSink) -> str | None:
    """The manifest's URI, written under the job's finalizing lease; None while another holds
    the lease and the manifest is not written yet.
    A failed write gives the lease up (a lease that ends now), so the next finisher need not
    wait it out; a killed one keeps it until it runs out."""
    owner, name = uuid.uuid4().hex, manifest_name(job.job_id, job.round)
    if not store.claim_finalizing(job.job_id, owner, clock.now(), FINALIZE_LEASE_SECONDS):
        # Its holder may have died after writing it, before recording it: then record it now.
        return sink.existing_uri(name)
    try:
        return write_manifest(name, job.job_id, store=store, sink=sink)
    except BaseException:
        with contextlib.suppress(Exception):
            store.claim_finalizing(job.job_id, owner, clock.now(), 0.0)
        raise


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


# --- cancel and retry ----------------------------------------------------------------------


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
    return get_job_status(job_id, StatusDeps(store, events=events), page_size=1)


def retry_job(
    job_id: str,
    *,
    store: JobStore,
    queue: WorkQueue,
    pool: PoolStore | None,
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
        if pool is None:  # the batch lane was switched off since these items ran in it
            raise RuntimeError(f"job {job_id} has batch items to retry, but the batch lane is off")
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
