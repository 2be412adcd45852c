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

from collections.abc import Sequence

from core.batches import plan_intents
from core.models import BatchIntent, Item, Job
from core.ports import BatchStore, JobStore


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
    existing = [i for i in intents.intents_of_job(job.job_id) if i.attempt == 1]
    missing = plan_missing_intents(job, items, existing, max_requests=max_requests, now=now)
    intents.create_intents(missing)
    return sorted([*existing, *missing], key=lambda i: i.intent_id)


def abandoned_message(recorded: int, expected: int) -> str:
    return (f"the API stopped while accepting this job: {recorded} of {expected} items were recorded; "
            f"submit it again")
