"""The interactive worker: one Pub/Sub message is one image, read as claim -> send under
limits -> record.

Pub/Sub delivers at least once, so every step tolerates a duplicate: a finished item is
skipped, a running one is left to its lease holder, and the image goes to a deterministic
object name written only if absent.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from core import accounting as acct
from core import images
from core.breaker import Decision
from core.catalog import Catalog, ModelSpec
from core.errors import (
    ContentRefused,
    GenerationError,
    InvalidRequest,
    ModelUnavailable,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    StorageUnavailable,
    TransientError,
)
from core.jsonl import image_facts, stored_metadata
from core.models import (
    IMAGE_EXTENSIONS,
    TERMINAL_JOB_STATUSES,
    GeneratedImage,
    Item,
    ItemState,
    Job,
    JobStatus,
    Lane,
    PoolEntry,
    StoredImage,
    object_name,
)
from core.ports import (
    Breaker,
    Clock,
    EventOutbox,
    ImageGenerator,
    ImageSink,
    JobStore,
    ModelHaltRegistry,
    PoolStore,
    RateLimiter,
    UsageMeter,
)
from core.jobs import finalize_job_if_done
from core.prompts import compose_prompt
from core.transitions import (
    Cancelled, DeadLettered, Diverted, EarlierImageRecorded, Ending, Failed, HandedBack, LeaseRenewed, Succeeded,
)

log = logging.getLogger(__name__)

_HOLD_POLL_SECONDS = 0.5
_UPLOAD_PAUSE_SECONDS = 1.0
_JITTER = random.Random()


@dataclass(frozen=True)
class WorkerLimits:
    max_attempts: int
    max_wait: float  # seconds one delivery may wait for the limiter and short quota delays
    lease_seconds: float
    upload_budget: float = 60.0  # seconds to keep trying to store an image that is paid for


@dataclass(frozen=True)
class WorkerDeps:
    """Everything process_item needs; wiring.worker_deps() takes it from wiring.deps(), built once per instance."""

    store: JobStore
    generator: ImageGenerator
    sink: ImageSink
    limiter: RateLimiter
    clock: Clock
    breaker: Breaker
    pool: PoolStore
    accounting: UsageMeter
    events: EventOutbox
    catalog: Catalog
    model_halts: ModelHaltRegistry
    limits: WorkerLimits
    # The pool is flushed into batches: while quota is exhausted, items are diverted into it.
    # Without it the breaker's DIVERT hands the message back instead.
    batch_lane: bool


@dataclass(frozen=True)
class ItemOutcome:
    """What the worker should tell Pub/Sub: ack (done with this message) or retry (redeliver)."""

    ack: bool
    state: str
    reason: str = ""


def _retry(reason: str, state: str = ItemState.QUEUED.value) -> ItemOutcome:
    return ItemOutcome(ack=False, state=state, reason=reason)


def _ack(state: str, reason: str = "") -> ItemOutcome:
    return ItemOutcome(ack=True, state=state, reason=reason)


@dataclass
class _Delivery:
    """One delivery of one item: what every step needs."""

    deps: WorkerDeps
    owner: str
    job: Job
    item: Item
    started: float
    spec: ModelSpec | None
    size: str | None
    dead_deltas: dict | None = None  # usage deltas of a dead-lettered item, priced after the claim

    @property
    def context(self) -> dict:
        return {"job_id": self.job.job_id, "item_key": self.item.key, "lane": Lane.INTERACTIVE.value}

    @property
    def deadline(self) -> float:
        return self.started + self.deps.limits.max_wait


def process_item(deps: WorkerDeps, job_id: str, key: str, owner: str) -> ItemOutcome:
    """Generate one image, at most once per success, under the shared rate limit.

    While quota is exhausted the item is diverted to the pending-batch pool (with the batch
    lane), and while the lane is halted (403) it is handed back untouched."""
    item = deps.store.get_item(job_id, key)
    if item is None:
        return _ack("unknown", f"no item {job_id}/{key}")
    if (outcome := _skip_done(deps, item)) is not None:
        return outcome
    job = deps.store.get_job(job_id)
    if job is None:
        return _ack("unknown", f"no job {job_id}")
    spec = deps.catalog.get(job.model)
    run = _Delivery(deps, owner, job, item, deps.clock.now(), spec,
                    spec.size_for(item.quality) if spec is not None else None)
    if (outcome := _claim(run)) is not None:
        return outcome
    if (outcome := _record_earlier_image(run)) is not None:
        return outcome
    return _send_and_record(run)


# --- claim -------------------------------------------------------------------------------------


def _skip_done(deps: WorkerDeps, item: Item) -> ItemOutcome | None:
    """Ack a duplicate of a finished item, or of one the breaker moved to the batch lane."""
    if item.terminal:
        # The finisher may have died before finalizing the job: finishing it is idempotent.
        finalize_job_if_done(item.job_id, store=deps.store, clock=deps.clock, sink=deps.sink, events=deps.events)
        return _ack(item.state.value, "already finished")
    if item.lane == Lane.BATCH.value:
        # Diverted by the breaker (a duplicate delivery, or a crash before its pool entry).
        if item.pooled_at is not None and not item.batch_intent and deps.batch_lane:
            deps.pool.add(PoolEntry(item.job_id, item.key, item.pooled_at))
        return _ack(item.state.value, "in the batch lane")
    return None


def _claim(run: _Delivery) -> ItemOutcome | None:
    """Take the item's lease; an outcome when this delivery has nothing to send."""
    store, job, key = run.deps.store, run.job, run.item.key
    lease_seconds = run.deps.limits.lease_seconds
    if job.status in TERMINAL_JOB_STATUSES:  # cancelled while the message was in flight
        if store.claim_item(job.job_id, key, run.owner, run.started, lease_seconds) is None:
            return _ack(ItemState.CANCELLED.value, "job cancelled")
        return _end(run, Cancelled(run.deps.clock.now()), "job cancelled")
    # Only while the item is still the interactive lane's: another delivery of it may have
    # diverted it to the batch lane since this one read it, and then a send here would buy
    # the image a second time.
    claimed = store.claim_item(job.job_id, key, run.owner, run.started, lease_seconds, lane=Lane.INTERACTIVE.value)
    if claimed is None:
        current = store.get_item(job.job_id, key)
        if current is None or current.terminal:
            return _ack(current.state.value if current else "unknown", "already finished")
        if current.lane == Lane.BATCH.value:
            return _ack(current.state.value, "in the batch lane")
        return _retry("leased by another delivery", current.state.value)
    run.item = claimed
    if job.status is JobStatus.QUEUED:
        store.set_job_running(job.job_id, run.started)
    run.dead_deltas = run.deps.accounting.item_unsuccessful(Lane.INTERACTIVE, acct.DEAD_LETTERED, job.model,
                                                            run.size)
    return None


def _record_earlier_image(run: _Delivery) -> ItemOutcome | None:
    """An earlier attempt may have stored the image and died before its commit (or lost its
    lease): record that object rather than pay for a second one."""
    item = run.item
    try:
        if (earlier := run.deps.sink.find_image(f"{item.job_id}/{item.key}", IMAGE_EXTENSIONS)) is not None:
            log.warning("item %s/%s: recording the image an earlier attempt stored", item.job_id, item.key,
                        extra=run.context)
            return _end(run, EarlierImageRecorded(run.deps.clock.now(), earlier.uri, earlier.facts or {},
                                                  attempts=item.attempts + 1, quota_retries=item.quota_retries),
                        "stored by an earlier attempt")
    except StorageUnavailable as e:  # nothing was billed: not the item's fault, no attempt counted
        _requeue(run, error=e.args[0])
        return _retry(f"storage unavailable: {e}")
    return None


# --- send under limits -------------------------------------------------------------------------


def _send_and_record(run: _Delivery) -> ItemOutcome:
    try:
        sent = _send(run)
        if isinstance(sent, ItemOutcome):
            return sent
        return _record(run, *sent)
    except StorageUnavailable as e:
        # Paid for and not stored within the budget: a failed attempt (the next one pays again).
        return _attempt_failed(run, TransientError(f"storing the image failed: {e}"))
    except Exception as e:  # noqa: BLE001 - never leave the item running on a surprise
        log.exception("item %s/%s: unexpected error", run.item.job_id, run.item.key, extra=run.context)
        return _attempt_failed(run, TransientError(f"unexpected error: {type(e).__name__}: {e}"[:500]))


def _send(run: _Delivery) -> ItemOutcome | tuple[GeneratedImage, dict]:
    """Call the model once the gates let us, until an image or an outcome; a short quota delay is
    waited here rather than through a round trip to Pub/Sub."""
    deps = run.deps
    while True:
        if (outcome := _pass_gates(run)) is not None:
            return outcome
        try:
            size_param = run.spec.image_size_param(run.item.quality) if run.spec is not None else None
            image = deps.generator.generate(compose_prompt(run.item), run.item.aspect_ratio, size_param,
                                            model=run.job.model)
            return image, image_facts(image.data)  # a truncated or corrupt image is a failed attempt
        except QuotaExceeded as e:
            if (outcome := _quota_exceeded(run, e)) is not None:
                return outcome
        except GenerationError as e:
            return _generation_failed(run, e)
        finally:
            deps.limiter.release(run.owner)


def _pass_gates(run: _Delivery) -> ItemOutcome | None:
    """The breaker, the model's halt and the rate limiter, in that order; None to send."""
    deps = run.deps
    if (outcome := _wait_for_breaker(run)) is not None:
        return outcome
    # Fresh, not cached: a park on a stale view could swallow the very message that the
    # lifted halt's resume_model published (see _park_for_model).
    halts, model = deps.model_halts, run.job.model
    if halts.halted(model) is not None and (halt := halts.halted(model, fresh=True)) is not None:
        return _park_for_model(run, halt.reason)
    try:
        # The spend dimension admits the request only if this image's price fits.
        deps.limiter.acquire(run.owner, max(0.0, run.deadline - deps.clock.now()),
                             cost=deps.accounting.prices.per_image(Lane.INTERACTIVE, model, run.size))
    except RateLimited as e:
        _requeue(run, error=None)
        return _retry(f"rate limited: {e}")
    return None


def _wait_for_breaker(run: _Delivery) -> ItemOutcome | None:
    breaker, clock = run.deps.breaker, run.deps.clock
    while True:
        decision = breaker.before_send(run.owner)
        if decision is Decision.HOLD and breaker.hold_ends_by(run.deadline - _HOLD_POLL_SECONDS):
            # Another worker is probing, or the halt ends soon: wait in place rather than a
            # round trip through Pub/Sub's backoff. A long halt hands the message back now.
            clock.sleep(_HOLD_POLL_SECONDS)
            continue
        return _blocked(run, decision)


def _blocked(run: _Delivery, decision: Decision) -> ItemOutcome | None:
    """Divert or hand back when the breaker says so; None to go on sending."""
    if decision is Decision.SEND:
        return None
    view = run.deps.breaker.view()
    if decision is Decision.DIVERT and run.deps.batch_lane:
        return _divert(run, view.reason or "quota exhausted")
    _requeue(run, error=None)
    return _retry(f"interactive lane {view.state.value}: {view.reason}")


def _divert(run: _Delivery, why: str) -> ItemOutcome:
    deps, job_id, key = run.deps, run.item.job_id, run.item.key
    now = deps.clock.now()
    deps.store.finish_item(job_id, key, run.owner, Diverted(now))
    deps.pool.add(PoolEntry(job_id, key, now))
    _count(run, deps.accounting.diverted(run.job.model, run.size))
    log.info("item %s/%s diverted to the batch lane: %s", job_id, key, why, extra=run.context)
    return _ack(ItemState.QUEUED.value, f"diverted to the batch lane: {why}")


def _quota_exceeded(run: _Delivery, e: QuotaExceeded) -> ItemOutcome | None:
    """A 429: push the shared limiter back; None to wait here and send again."""
    deps = run.deps
    # Up to 20% jitter on retryDelay, so instances that were told the same delay do not all
    # come back in the same instant.
    delay = (e.retry_delay if e.retry_delay is not None else 1.0) * (1 + 0.2 * _JITTER.random())
    deps.limiter.push_back(deps.clock.now() + delay)
    run.item.quota_retries += 1
    _count(run, {acct.QUOTA_ERRORS: 1}, quota_id=e.quota_id)
    log.warning("quota exceeded (%s), retry in %.1fs", e.quota_id, delay,
                extra={**run.context, "quota_id": e.quota_id, "per_day": e.per_day})
    deps.breaker.on_quota_failure(run.owner, e.quota_id, e.per_day)
    if (outcome := _blocked(run, deps.breaker.before_send(run.owner))) is not None:
        return outcome
    if deps.clock.now() + delay < run.deadline and not e.per_day:
        return None
    _requeue(run, error=e.reason)
    return _retry(f"quota exceeded: {e.quota_id}")


def _generation_failed(run: _Delivery, e: GenerationError) -> ItemOutcome:
    """Every answer but an image and a 429: whose fault it is decides what it costs the item."""
    deps, item = run.deps, run.item
    if isinstance(e, ModelUnavailable):
        _count(run, {acct.REQUESTS: 1})
        if not deps.model_halts.parks_items:
            return _attempt_failed(run, e)
        # The model is gone, not the item: halt the model, park the item unspent.
        deps.model_halts.halt(run.job.model, e.reason, source="generate")
        return _park_for_model(run, e.reason)
    if isinstance(e, (ContentRefused, InvalidRequest)):
        deps.breaker.on_success(run.owner)  # the quota let the request through
        _count(run, {acct.REQUESTS: 1, **deps.accounting.item_unsuccessful(Lane.INTERACTIVE, acct.FAILED,
                                                                          run.job.model, run.size)})
        return _end(run, Failed(deps.clock.now(), e.reason, attempts=item.attempts + 1,
                                quota_retries=item.quota_retries), e.reason)
    if isinstance(e, PermissionDenied):
        _count(run, {acct.REQUESTS: 1, acct.PERMISSION_ERRORS: 1})
        # Not the item's fault and not fixed by another lane: halt, hand back, alert.
        if deps.breaker.on_permission_denied(run.owner, e.reason):
            _requeue(run, error=e.reason)
            return _retry(f"interactive lane halted: {e.reason}")
        return _attempt_failed(run, e)
    _count(run, {acct.REQUESTS: 1, acct.TRANSIENT_ERRORS: 1})  # retryable: transient
    return _attempt_failed(run, e)


# --- record ------------------------------------------------------------------------------------


def _record(run: _Delivery, image: GeneratedImage, facts: dict) -> ItemOutcome:
    """Store the paid-for image and commit the item."""
    deps, job, item = run.deps, run.job, run.item
    deps.breaker.on_success(run.owner)
    # Counted once billed, before the upload: an attempt that later finds the stored object
    # records it without counting it again.
    _count(run, {acct.REQUESTS: 1, **deps.accounting.image_produced(Lane.INTERACTIVE, job.model, run.size)})
    name = object_name(job.job_id, item.key, images.EXTENSIONS[facts["format"]])
    metadata = {"job_id": job.job_id, "item_key": item.key, "model": image.model_version or job.model,
                "finish_reason": image.finish_reason, "lane": "interactive", **stored_metadata(facts)}
    stored = _store_leased(run, name, image.data, images.CONTENT_TYPES[facts["format"]], metadata)
    if not stored.created:
        # Another attempt stored it first: the item records that object, not our bytes.
        log.info("object for %s/%s already existed; keeping it", job.job_id, item.key, extra=run.context)
        facts = stored.facts or facts
    return _end(run, Succeeded(deps.clock.now(), stored.uri, facts, attempts=item.attempts + 1,
                               quota_retries=item.quota_retries, finish_reason=image.finish_reason,
                               output_tokens=image.output_tokens))


def _store_leased(run: _Delivery, name: str, data: bytes, content_type: str, metadata: dict) -> StoredImage:
    """Upload create-only, renewing the item's lease before each try: the sink bounds one try to
    less than a lease, so no other delivery can claim the item (and pay again) while this one is
    still storing the image it paid for. StorageUnavailable once the upload budget is spent.

    A lost lease (another instance claimed the item: a clock far ahead) does not stop the upload:
    the bytes are paid for, and whoever commits finds them."""
    deps, item = run.deps, run.item
    clock, limits = deps.clock, deps.limits
    give_up = clock.now() + limits.upload_budget
    while True:
        if not deps.store.finish_item(item.job_id, item.key, run.owner,
                                      LeaseRenewed(clock.now() + limits.lease_seconds)):
            log.warning("item %s/%s: lease lost before the upload", item.job_id, item.key)
        try:
            return deps.sink.put_image(name, data, content_type, metadata)
        except StorageUnavailable as e:
            if clock.now() >= give_up:
                raise
            log.warning("item %s/%s: storing the image failed, trying again: %s", item.job_id, item.key, e)
            clock.sleep(min(_UPLOAD_PAUSE_SECONDS, max(0.0, give_up - clock.now())))


def _end(run: _Delivery, change: Ending, reason: str = "") -> ItemOutcome:
    """Give the item its terminal state (we hold its lease), finish the job if it was the last
    one, and ack the message."""
    deps, job_id = run.deps, run.job.job_id
    state = change.state
    if not deps.store.finish_item(job_id, run.item.key, run.owner, change):
        # Another delivery holds the item now (our lease expired): it decides. Whatever we
        # stored is found by its first step, so this never leads to a second generation.
        return _retry(f"lease lost before the commit ({state.value})", ItemState.RUNNING.value)
    finalize_job_if_done(job_id, store=deps.store, clock=deps.clock, sink=deps.sink, events=deps.events)
    return _ack(state.value, reason)


def _attempt_failed(run: _Delivery, e: GenerationError) -> ItemOutcome:
    """A retryable failure counts as an attempt: hand back, or dead-letter at the limit."""
    item = run.item
    attempts = item.attempts + 1
    if attempts >= run.deps.limits.max_attempts:
        _count(run, run.dead_deltas or {})
        return _end(run, DeadLettered(run.deps.clock.now(), f"gave up after {attempts} attempts: {e.reason}",
                                      attempts=attempts, quota_retries=item.quota_retries), e.reason)
    item.attempts = attempts
    _requeue(run, error=e.reason)
    return _retry(e.reason)


def _park_for_model(run: _Delivery, reason: str) -> ItemOutcome:
    """The job's model is halted: the item goes back to queued without spending an attempt,
    and its message is acked rather than handed back. A halt can last days: redelivering
    would churn for nothing and, past the subscription's max_delivery_attempts, dead-letter
    items that did nothing wrong. When the halt is lifted, resume_restored_models publishes
    the model's queued and running items again (a running one: its holder may be parking it)."""
    model = run.job.model
    _requeue(run, error=f"waiting: model {model} is halted: {reason}"[:500])
    job = run.deps.store.get_job(run.item.job_id)
    if job is None or job.status in TERMINAL_JOB_STATUSES:
        # Cancelled while we held the item (cancel_job skipped it, running): hand the message
        # back, so its redelivery ends the item cancelled and finalizes the job.
        return _retry(f"job ended while model {model} is halted")
    return _ack(ItemState.QUEUED.value, f"parked until model {model} is back: {reason}")


def _requeue(run: _Delivery, error: str | None) -> None:
    """Give the item back (lease released) so the next delivery can claim it at once."""
    item = run.item
    run.deps.store.finish_item(item.job_id, item.key, run.owner,
                               HandedBack(run.deps.clock.now(), item.attempts, item.quota_retries, error))


def _count(run: _Delivery, deltas: dict, quota_id: str | None = None) -> None:
    run.deps.accounting.add(deltas, quota_id=quota_id, **run.context)
