"""One poller tick: what Cloud Scheduler's call does, in which order, and how its budget is
split. Each step is its own use case; this module only sequences them.

Cloud Scheduler starts no attempt before the previous one ends, but a tick can still meet
another (one that outlived its attempt deadline, a manual run, a second deployment): every
batch intent and event is leased, so that is safe."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import dead_letters, redrive
from core.accepting import AcceptRecovery, recover_abandoned_accepts
from core.accounting import Accounting
from core.batches import BatchLane
from core.events import CompletionEvents
from core.expanding import ExpandNudges, resume_expansions
from core.jobs import Finalizing
from core.model_halts import ModelHalts, models_in_use, resume_restored_models
from core.model_watch import ModelWatch
from core.pool import FlushRule, flush_pool
from core.ports import BatchStore, Clock, ImageSink, JobStore, PoolStore, WorkQueue

log = logging.getLogger("imagefleet")


@dataclass(frozen=True)
class PollerPolicy:
    """The tick's budget and the settings its steps read (config.Settings, as plain values)."""

    budget_seconds: float
    republish_grace_seconds: float
    stuck_lease_grace_seconds: float
    stuck_queued_seconds: float
    pool_flush_items: int
    pool_max_age_seconds: float
    batch_items_per_batch: int
    accept_abandon_seconds: float
    default_model: str
    # Events go first with this share of the budget: a long ingest must not hold back webhooks.
    events_share: float = 0.25


@dataclass(frozen=True)
class PollerDeps:
    """Everything a tick works with. `dead_letters` is None when the deployment has no
    dead-letter subscription; `batches` (the batch intents' store), `pool` and `batch_lane`
    when it has no batch lane."""

    store: JobStore
    queue: WorkQueue
    clock: Clock
    sink: ImageSink
    events: CompletionEvents
    accounting: Accounting
    model_watch: ModelWatch
    model_halts: ModelHalts
    decode: Callable[[bytes], tuple[str, str]]  # a work message's data -> (job_id, key)
    dead_letters: Any = None  # adapters.pubsub_queue.PubSubDeadLetters: pull() and ack()
    batches: BatchStore | None = None
    pool: PoolStore | None = None
    batch_lane: BatchLane | None = None
    nudges: ExpandNudges | None = None  # resumes accepted jobs' expansions (core/expanding.py)


def poll_once(deps: PollerDeps, policy: PollerPolicy, instance: str) -> dict[str, Any]:
    """One tick; its summary (what each step did)."""
    owner = f"poller-{instance}-{uuid.uuid4().hex[:8]}"
    start = deps.clock.now()
    deadline = start + policy.budget_seconds
    summary: dict[str, Any] = {
        "republished_jobs": redrive.reconcile_unpublished(
            store=deps.store, queue=deps.queue, clock=deps.clock, grace_seconds=policy.republish_grace_seconds),
        "stuck_items": redrive.redrive_stuck_items(
            store=deps.store, queue=deps.queue, clock=deps.clock,
            lease_grace_seconds=policy.stuck_lease_grace_seconds, queued_after_seconds=policy.stuck_queued_seconds),
        "events": deps.events.deliver_due(owner, deadline=deps.clock.now() + policy.budget_seconds * policy.events_share),
        "dead_letters": _drain_dead_letters(deps, owner),
        "pool": _flush_pool(deps, policy),
        "batches": deps.batch_lane.reconcile(owner, deadline) if deps.batch_lane else {},
    }
    # After the batches, so these take none of their budget: an abandoned accept is minutes
    # old, and a restored model's held intents go at the next tick (its parked items now).
    summary["abandoned_accepts"] = recover_abandoned_accepts(AcceptRecovery(
        store=deps.store, batches=deps.batches, queue=deps.queue, clock=deps.clock,
        sink=deps.sink, events=deps.events, accounting=deps.accounting,
        max_requests=policy.batch_items_per_batch), abandon_seconds=policy.accept_abandon_seconds)
    if deps.nudges is not None:
        summary["expansions_resumed"] = resume_expansions(store=deps.store, nudges=deps.nudges, clock=deps.clock)
    summary["models"] = deps.model_watch.tick(
        lambda: models_in_use(store=deps.store, default=policy.default_model))
    summary["resumed"] = resume_restored_models(
        model_halts=deps.model_halts, store=deps.store, queue=deps.queue)
    summary["finalized_jobs"] = redrive.finalize_stalled_jobs(
        Finalizing(store=deps.store, clock=deps.clock, sink=deps.sink, events=deps.events), deadline=deadline)
    log.info("poller tick: republished %d jobs, dead letters %s, pool %s, batches %s, events %s",
             len(summary["republished_jobs"]), summary["dead_letters"], summary["pool"], summary["batches"],
             summary["events"], extra=summary)
    return summary


def _drain_dead_letters(deps: PollerDeps, owner: str) -> dict[str, int]:
    if deps.dead_letters is None:
        return {}
    settling = dead_letters.DeadLettering(store=deps.store, clock=deps.clock, sink=deps.sink, owner=owner,
                                      events=deps.events)
    return dead_letters.drain_dead_letters(deps.dead_letters, settling=settling, decode=deps.decode)


def _flush_pool(deps: PollerDeps, policy: PollerPolicy) -> dict[str, int]:
    if deps.pool is None or deps.batches is None:
        return {}
    rule = FlushRule(flush_items=policy.pool_flush_items, max_age_seconds=policy.pool_max_age_seconds,
                     max_batch_items=policy.batch_items_per_batch)
    return flush_pool(pool=deps.pool, jobs=deps.store, batches=deps.batches, clock=deps.clock, rule=rule)
