"""Accepting a job without losing it to a crash or to a poller tick.

The job document is written first, in status `accepting`; then its items, then (batch lane)
one intent per batch, all create-if-absent; then the job moves `accepting -> queued` by
compare-and-set. Nothing else acts on an accepting job: a poller tick that meets its intents
leaves them, finalizing it does nothing, and its interactive items are published only after
the flip. So every step can be repeated by whoever finishes an interrupted accept (the same
request resent with its Idempotency-Key, or the poller once the job is abandoned) and ends
with the same documents.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from core import accounting as acct
from core.accounting import Accounting
from core.batches import plan_intents
from core.jobs import _all_items, finalize_job_if_done, iter_intents
from core.models import BatchIntent, Item, ItemState, Job, Lane
from core.ports import BatchStore, Clock, EventOutbox, ImageSink, JobStore, WorkQueue
from core.transitions import AcceptAbandoned

log = logging.getLogger(__name__)


def plan_missing_intents(
    job: Job, items: Sequence[Item], existing: Sequence[BatchIntent], *, max_requests: int, now: float
) -> list[BatchIntent]:
    """The intents still to create so that every item is in exactly one first-attempt batch.

    With none recorded, the plan is the first attempt's own (deterministic ids). Otherwise only
    the items no recorded intent covers are planned, in a series of their own, so a changed
    batch size can never put one item in two batches (billed twice)."""
    if not existing:
        return plan_intents(job, items, max_requests=max_requests, now=now)
    covered = {key for intent in existing for key in intent.keys}
    rest = [it for it in items if it.key not in covered]
    return plan_intents(job, rest, max_requests=max_requests, now=now, series="c") if rest else []


def record_job(
    job: Job, items: Sequence[Item], *, store: JobStore, intents: BatchStore | None, max_requests: int, now: float,
) -> list[BatchIntent]:
    """Write whatever of the job is missing: the job document (accepting), its items, and for
    the batch lane its intents. Returns the job's first-attempt intents, recorded before or now."""
    store.create_job_doc(job)  # False: an earlier attempt wrote it, and we finish its work
    store.create_items(job.job_id, items, job_created_at=job.created_at)  # they expire with the job
    if intents is None:
        return []
    existing = [i for i in iter_intents(intents, job.job_id, with_keys=True) if i.attempt == 1]
    missing = plan_missing_intents(job, items, existing, max_requests=max_requests, now=now)
    intents.create_intents(missing)
    return sorted([*existing, *missing], key=lambda i: i.intent_id)


def abandoned_message(recorded: int, expected: int) -> str:
    return (f"the API stopped while accepting this job: {recorded} of {expected} items were recorded; "
            f"submit it again")


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
    for job in deps.store.accepting_jobs(limit, idle_since=idle_since):  # younger: its submitter may be alive
        if job.expansion is not None:
            continue  # expanded in the background: core.expanding.resume_expansions resumes it
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
        record_job(job, items, store=store, intents=deps.batches, max_requests=deps.max_requests,
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
    error = abandoned_message(len(items), job.item_count)
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
