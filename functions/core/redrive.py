"""The poller's repairs: work that nothing else would deliver or finish. Publishing the items
of a submitter that died, re-sending the messages of stuck items, and finalizing jobs whose
last finisher died after its last commit."""
from __future__ import annotations

import logging

from core import jobs
from core.jobs import Finalizing, _all_items, finalize_job_if_done
from core.models import Item, ItemState, Lane
from core.ports import Clock, JobStore, WorkQueue
from core.transitions import Touched

log = logging.getLogger(__name__)


def reconcile_unpublished(
    *, store: JobStore, queue: WorkQueue, clock: Clock, grace_seconds: float = 60.0
) -> list[str]:
    """Publish the items of interactive jobs whose submitter died before publishing them."""
    done = []
    # An accepting job is not among them: it is published after its flip (or by
    # recover_abandoned_accepts).
    for job in store.unpublished_jobs(older_than=clock.now() - grace_seconds, limit=50):
        if job.lane is not Lane.INTERACTIVE:
            continue
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


def finalize_stalled_jobs(
    deps: Finalizing, *, limit: int = 50, deadline: float | None = None, start_after: str | None = None,
) -> list[str]:
    """Finish running jobs that have no work left. Every finisher finalizes its job, but one
    that died after its last commit (a poller killed after an intent's final checkpoint, whose
    batch nothing will reconcile again) would leave the job running forever.

    The sweep stops at `deadline` (the tick's) and the next tick carries on. It walks the jobs
    in id order from `start_after`, wrapping around; by default a random point, as random as
    the ids (uuid4), so that a sweep cut short by the deadline or the limit reaches every
    running job in turn instead of always spending itself on the same first ones, with no
    cursor to store between ticks."""
    store, clock = deps.store, deps.clock
    done = []
    for job in _running_jobs_from(store, jobs.new_job_id() if start_after is None else start_after, limit):
        if deadline is not None and clock.now() >= deadline:
            log.info("finalize sweep: the tick's deadline passed; the next tick carries on")
            break
        # The counts first (a few shard reads): finalize_job_if_done's query for an unfinished
        # item is an index lookup on Firestore but a scan of every item on its emulator, and
        # this sweep visits every running job on every tick.
        if jobs.job_status_from_counts(store.count_items(job.job_id)) is None:
            continue
        if finalize_job_if_done(job.job_id, store=store, clock=clock, sink=deps.sink, events=deps.events) is not None:
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
