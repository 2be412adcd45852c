"""Use cases: plain functions taking their collaborators as keyword arguments."""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from core import routing
from core.batches import BatchLane, plan_intents
from core.jsonl import png_facts
from core.errors import (
    Conflict,
    ContentRefused,
    GenerationError,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
)
from core.models import (
    TERMINAL_JOB_STATUSES,
    object_name,
    Item,
    ItemState,
    Job,
    JobSpec,
    JobStatus,
    Lane,
)
from core.ports import BatchStore, Clock, EventOutbox, ImageGenerator, ImageSink, JobStore, RateLimiter, WorkQueue

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return uuid.uuid4().hex


# --- submit ------------------------------------------------------------------------------


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
) -> Job:
    """Record the job and its items, then hand the items to their lane.

    Interactive: the job is written with published=False before anything is published; if
    this instance dies half-way, reconcile_unpublished() finishes the job later, and Pub/Sub
    duplicates are harmless because the worker is idempotent.
    Batch: the job, its items and one intent per batch are written first; the batches are
    then created here, and whatever fails or crashes is created by the next poller tick."""
    lane = routing.choose_lane(
        len(spec.items),
        spec.requested_lane,
        threshold=interactive_threshold,
        batch_available=batch is not None,
    )
    now = clock.now()
    job = Job(
        job_id=make_id(),
        lane=lane,
        status=JobStatus.QUEUED,
        model=model,
        item_count=len(spec.items),
        created_at=now,
        updated_at=now,
        published=lane is Lane.BATCH,  # "published" is the interactive lane's intent flag
        callback_url=spec.callback_url,
    )
    items = [
        Item(
            job_id=job.job_id,
            key=s.key,
            index=i,
            prompt=s.prompt,
            aspect_ratio=s.aspect_ratio,
            domain=s.domain,
            quality=s.quality,
            lane=lane.value,
            updated_at=now,
        )
        for i, s in enumerate(spec.items)
    ]
    if lane is Lane.INTERACTIVE:
        store.create_job(job, items)
        queue.publish_items(job.job_id, [it.key for it in items])
        store.mark_published(job.job_id, clock.now())
        job.published = True
        return job
    intents = plan_intents(job, items, max_requests=batch_max_requests, now=now)
    batch.store.create_job_with_intents(job, items, intents)
    by_key = {it.key: it for it in items}
    deadline = clock.now() + batch_submit_budget
    for intent in intents:
        if clock.now() >= deadline:
            # The rest are recorded intents: the next poller tick creates them. The client
            # gets its 202 in seconds, whatever the job's size.
            log.info("job %s: leaving the remaining batches to the poller", job.job_id)
            break
        try:
            batch.submit(intent.intent_id, owner, [by_key[k] for k in intent.keys])
        except Exception:  # noqa: BLE001 - recorded; the poller creates it on its next tick
            log.exception("creating the batch of intent %s failed; the poller will retry", intent.intent_id)
    return job


def reconcile_unpublished(
    *, store: JobStore, queue: WorkQueue, clock: Clock, grace_seconds: float = 60.0
) -> list[str]:
    """Publish the items of interactive jobs whose submitter died before publishing them."""
    done = []
    for job in store.unpublished_jobs(older_than=clock.now() - grace_seconds, limit=50):
        if job.lane is not Lane.INTERACTIVE:
            continue
        keys = [it.key for it in _all_items(store, job.job_id) if not it.terminal]
        queue.publish_items(job.job_id, keys)
        store.mark_published(job.job_id, clock.now())
        log.warning("republished %d items of job %s", len(keys), job.job_id)
        done.append(job.job_id)
    return done


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
    batches: BatchStore | None = None, events: EventOutbox | None = None,
) -> dict:
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
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
        "batches": [i.public() for i in batches.intents_of_job(job_id)] if batches and job.lane is Lane.BATCH else [],
        "events": events.events_of_job(job_id) if events else [],
    }


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
    if job is not None and job.status in TERMINAL_JOB_STATUSES and (job.manifest_uri or sink is None):
        _record_completion(job, store, events)
        return job.status  # already finalized: a duplicate delivery costs one read (two with events)
    if store.has_unfinished_items(job_id):
        return None
    status = job_status_from_counts(store.count_items(job_id))
    if status is None:
        return None
    manifest_uri = None
    if sink is not None:
        manifest_uri = sink.put_manifest(manifest_name(job_id), build_manifest(_all_items(store, job_id))).uri
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


def manifest_name(job_id: str) -> str:
    return f"{job_id}/manifest.jsonl"


def build_manifest(items: list[Item]) -> bytes:
    """One JSON line per item: where its image is and what it is."""
    lines = []
    for it in items:
        lines.append(json.dumps({
            "key": it.key, "prompt": it.prompt, "state": it.state.value, "gcs_uri": it.gcs_uri, "sha256": it.sha256,
            "bytes": it.bytes, "width": it.width, "height": it.height, "finish_reason": it.finish_reason,
            "output_tokens": it.output_tokens, "lane": it.lane, "attempts": it.attempts, "error": it.error,
        }, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def cancel_job(
    job_id: str, *, store: JobStore, clock: Clock, sink: ImageSink | None = None, events: EventOutbox | None = None
) -> dict:
    """Cancel a job: queued interactive items are dropped here or by the worker that meets
    them; the poller cancels the job's Gemini batches. Finished items keep their images."""
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if not store.cancel_job(job_id, clock.now()):
        raise Conflict(f"job {job_id} has already ended ({job.status.value})")
    if job.lane is Lane.INTERACTIVE:
        for item in _all_items(store, job_id):
            if item.state is ItemState.QUEUED:
                owner = f"cancel-{job_id}"
                if store.claim_item(job_id, item.key, owner, clock.now(), 60):
                    store.finish_item(job_id, item.key, owner,
                                      _finished(ItemState.CANCELLED, clock.now(), error="job cancelled"))
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink, events=events)
    return get_job_status(job_id, store=store, page_size=1, events=events)


# --- the worker --------------------------------------------------------------------------


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


def image_size_for(model: str, quality: str) -> str | None:
    """imageSize is only accepted by the Gemini 3 image models; 2.5 Flash Image is fixed at 1K."""
    if not model.startswith("gemini-3"):
        return None
    return "2K" if quality == "high" else "1K"


def compose_prompt(item: Item) -> str:
    if item.domain:
        return f"{item.prompt}\n\nDomain: {item.domain}"
    return item.prompt


def process_item(
    job_id: str,
    key: str,
    *,
    store: JobStore,
    generator: ImageGenerator,
    sink: ImageSink,
    limiter: RateLimiter,
    clock: Clock,
    owner: str,
    max_attempts: int,
    max_wait: float,
    lease_seconds: float,
    events: EventOutbox | None = None,
) -> ItemOutcome:
    """Generate one image, at most once per success, under the shared rate limit.

    Pub/Sub delivers at least once, so every step tolerates a duplicate: a finished item is
    skipped, a running one is left to its lease holder, and the image goes to a
    deterministic object name written only if absent."""
    item = store.get_item(job_id, key)
    if item is None:
        return _ack("unknown", f"no item {job_id}/{key}")
    if item.terminal:
        # The finisher may have died before finalizing the job: finishing it is idempotent.
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink, events=events)
        return _ack(item.state.value, "already finished")
    job = store.get_job(job_id)
    if job is None:
        return _ack("unknown", f"no job {job_id}")

    def end(state: ItemState, reason: str = "", **fields) -> ItemOutcome:
        """Give the item its terminal state (we hold its lease), finish the job if it was the
        last one, and ack the message."""
        store.finish_item(job_id, key, owner, _finished(state, clock.now(), **fields))
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink, events=events)
        return _ack(state.value, reason)

    started = clock.now()
    if job.status in TERMINAL_JOB_STATUSES:  # cancelled while the message was in flight
        if store.claim_item(job_id, key, owner, started, lease_seconds) is None:
            return _ack(ItemState.CANCELLED.value, "job cancelled")
        return end(ItemState.CANCELLED, "job cancelled", error="job cancelled")

    claimed = store.claim_item(job_id, key, owner, started, lease_seconds)
    if claimed is None:
        current = store.get_item(job_id, key)
        if current is None or current.terminal:
            return _ack(current.state.value if current else "unknown", "already finished")
        return _retry("leased by another delivery", current.state.value)
    item = claimed
    if job.status is JobStatus.QUEUED:
        store.set_job_running(job_id, started)

    deadline = started + max_wait
    while True:
        try:
            limiter.acquire(owner, max(0.0, deadline - clock.now()))
        except RateLimited as e:
            _requeue(store, item, owner, clock.now(), error=None)
            return _retry(f"rate limited: {e}")
        try:
            image = generator.generate(
                compose_prompt(item), item.aspect_ratio, image_size_for(job.model, item.quality)
            )
        except QuotaExceeded as e:
            delay = e.retry_delay if e.retry_delay is not None else 1.0
            limiter.push_back(clock.now() + delay)
            item.quota_retries += 1
            log.warning("quota exceeded (%s), retry in %.1fs", e.quota_id, delay)
            if clock.now() + delay < deadline:
                continue  # short delay: wait here rather than round-trip through Pub/Sub
            _requeue(store, item, owner, clock.now(), error=e.reason)
            return _retry(f"quota exceeded: {e.quota_id}")
        except (ContentRefused, InvalidRequest) as e:
            return end(ItemState.FAILED, e.reason, error=e.reason, attempts=item.attempts + 1,
                       quota_retries=item.quota_retries)
        except GenerationError as e:  # retryable: transient or permission
            attempts = item.attempts + 1
            if attempts >= max_attempts:
                return end(ItemState.DEAD_LETTERED, e.reason, error=f"gave up after {attempts} attempts: {e.reason}",
                           attempts=attempts, quota_retries=item.quota_retries)
            item.attempts = attempts
            _requeue(store, item, owner, clock.now(), error=e.reason)
            return _retry(e.reason)
        finally:
            limiter.release(owner)
        break

    stored = sink.put_png(
        object_name(job_id, key),
        image.data,
        {
            "job_id": job_id,
            "item_key": key,
            "model": image.model_version or job.model,
            "finish_reason": image.finish_reason,
            "lane": "interactive",
        },
    )
    if not stored.created:
        log.info("object for %s/%s already existed; keeping it", job_id, key)
    return end(
        ItemState.SUCCEEDED, attempts=item.attempts + 1, quota_retries=item.quota_retries,
        gcs_uri=stored.uri, finish_reason=image.finish_reason, output_tokens=image.output_tokens,
        error=None, **png_facts(image.data),
    )


def _finished(state: ItemState, now: float, **fields) -> dict:
    return {"state": state.value, "lease_owner": None, "lease_expires_at": None,
            "updated_at": now, **fields}


def _requeue(store: JobStore, item: Item, owner: str, now: float, error: str | None) -> None:
    """Give the item back (lease released) so the next delivery can claim it at once."""
    updates = {
        "state": ItemState.QUEUED.value,
        "lease_owner": None,
        "lease_expires_at": None,
        "attempts": item.attempts,
        "quota_retries": item.quota_retries,
        "updated_at": now,
    }
    if error is not None:
        updates["error"] = error
    store.finish_item(item.job_id, item.key, owner, updates)
