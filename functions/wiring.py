"""The composition root: SDK clients and adapters, built lazily and once per instance.

deps() is the one place the entry points take their collaborators from: every client and
adapter, built at its first call (or by the warm-up) and cached. Nothing is built at import
time: the SDKs read the emulator variables when a client is constructed. The per-role
objects (worker_deps(), poller_deps(), submit_deps(), ...) are derived from deps() and the
settings at each call; they build nothing. Tests build a Deps of fakes in one call.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config import Settings, get_settings
from core.clock import SystemClock
from core.ratelimit import RateLimit, SlotRateLimiter

if TYPE_CHECKING:
    from core.accounting import Accounting
    from core.batches import BatchLane
    from core.breaker import CircuitBreaker
    from core.catalog import Catalog
    from core.events import CompletionEvents
    from core.expanding import ExpandDeps
    from core.jobs import StatusDeps
    from core.model_halts import ModelHalts
    from core.model_watch import ModelWatch
    from core.poller import PollerDeps, PollerPolicy
    from core.ports import PoolStore
    from core.ports import (
        BatchNudges, BatchStore, Clock, IdempotencyStore, ImageGenerator, ImageSink, JobStore, RateLimiter, WorkQueue,
    )
    from core.submitting import RouteDeps, SubmitDeps
    from core.worker import WorkerDeps, WorkerLimits


def settings() -> Settings:
    return get_settings()


@functools.cache
def clock() -> SystemClock:
    return SystemClock()


@functools.cache
def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@functools.cache
def firestore_ops():
    """The running count of this instance's Firestore reads, writes and deletes (docs/cost.md)."""
    from adapters.firestore.ops import FirestoreOps

    ops = FirestoreOps()
    if settings().firestore_ops_log_seconds:
        import ops_log

        ops_log.start(ops, settings().firestore_ops_log_seconds)
    return ops


@functools.cache
def firestore_client():
    from google.cloud import firestore

    from adapters.firestore.ops import count_ops

    return count_ops(firestore.Client(project=settings().google_cloud_project), firestore_ops())


@functools.cache
def job_store():
    from adapters.firestore.jobs import FirestoreJobStore

    return FirestoreJobStore(firestore_client(), retention_days=settings().records_retention_days)


@functools.cache
def pubsub_publisher():
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient()


@functools.cache
def work_queue():
    from adapters.pubsub_queue import PubSubWorkQueue

    publisher = pubsub_publisher()
    s = settings()
    return PubSubWorkQueue(publisher, publisher.topic_path(s.google_cloud_project, s.work_topic))


@functools.cache
def batch_nudges():
    """The batch-nudges topic (core/gemini_webhooks.py): a Gemini webhook's intent, reconciled now."""
    from adapters.pubsub_nudges import PubSubBatchNudges

    s = settings()
    if not s.batch_nudges_topic:
        from core.gemini_webhooks import NoNudges

        return NoNudges()
    publisher = pubsub_publisher()
    return PubSubBatchNudges(publisher, publisher.topic_path(s.google_cloud_project, s.batch_nudges_topic))


@functools.cache
def staged_sources():
    """Accepted jobs' sources (core/expanding.py): bodies staged in the images bucket, under a
    prefix no item object can have, and the ranged reads of any source."""
    from google.cloud import storage

    from adapters.gcs_staged import GcsStagedSources

    s = settings()
    return GcsStagedSources(storage.Client(project=s.google_cloud_project), s.images_bucket,
                            max_prompt_chars=s.max_prompt_chars)


@functools.cache
def image_sink():
    from google.cloud import storage

    from adapters.gcs_sink import GcsImageSink

    s = settings()
    sink = GcsImageSink(storage.Client(project=s.google_cloud_project), s.images_bucket,
                        upload_seconds=s.upload_try_seconds)
    return _KillAfterUpload(sink) if s.test_kill_after_upload else sink


@functools.cache
def gcs_sources():
    from google.cloud import storage

    from adapters.gcs_sources import GcsSources

    s = settings()
    return GcsSources(storage.Client(project=s.google_cloud_project), s.source_buckets.split(","))


class _KillAfterUpload:
    """TEST ONLY (TEST_KILL_AFTER_UPLOAD): dies like a crashed instance right after an image
    object is created, before anything is committed. gunicorn starts a new worker process."""

    def __init__(self, sink) -> None:
        self.sink = sink

    def put_image(self, *args, **kwargs):
        stored = self.sink.put_image(*args, **kwargs)
        if stored.created:
            os.kill(os.getpid(), signal.SIGKILL)
        return stored

    def __getattr__(self, name: str):
        return getattr(self.sink, name)


@functools.cache
def genai_client():
    from google import genai
    from google.genai import types

    # Base URL and key come from GOOGLE_GEMINI_BASE_URL / GEMINI_API_KEY. Retries are ours
    # (shared limiter, Pub/Sub redelivery, batch resubmission), so the SDK's stay off.
    return genai.Client(
        http_options=types.HttpOptions(timeout=int(settings().gemini_timeout_seconds * 1000))
    )


@functools.cache
def image_generator():
    from adapters.gemini_generator import GeminiImageGenerator

    return GeminiImageGenerator(genai_client(), settings().default_model)


def catalog():
    """The model catalog (functions/models.json or MODEL_CATALOG_FILE), read once per instance."""
    return settings().catalog()


@functools.cache
def model_halts():
    from adapters.firestore.model_halts import FirestoreModelHaltStore
    from core.model_halts import ModelHalts

    return ModelHalts(FirestoreModelHaltStore(firestore_client()), clock())


@functools.cache
def model_watch():
    from adapters.gemini_models import GeminiModelsApi
    from core.model_watch import ModelWatch

    s = settings()
    return ModelWatch(api=GeminiModelsApi(genai_client()), halts=model_halts(), catalog=catalog(), clock=clock(),
                      interval_seconds=s.model_check_interval_seconds, warn_days=s.model_shutdown_warning_days)


@functools.cache
def batch_lane():
    """The batch lane, or None when it is switched off (BATCH_LANE_ENABLED=false)."""
    from adapters.gemini_batches import GeminiBatchApi
    from core.batches import BatchLane, BatchLaneDeps, BatchLimits

    s = settings()
    if not s.batch_lane_enabled:
        return None
    key = s.gemini_api_key.get_secret_value() if s.gemini_api_key else None
    deps = BatchLaneDeps(
        store=job_store(), jobs=job_store(), sink=image_sink(), clock=clock(),
        api=GeminiBatchApi(genai_client(), key, download_timeout_seconds=s.gemini_download_timeout_seconds),
        catalog=catalog(), events=job_events(), accounting=accounting(), model_halts=model_halts(),
        nudges=batch_nudges() if s.batch_nudges_topic else None,  # None: the tick ingests inline
    )
    return BatchLane(deps, BatchLimits(
        lease_seconds=s.batch_lease_seconds,
        max_attempts=s.batch_max_attempts,
        checkpoint_lines=s.batch_checkpoint_lines,
        checkpoint_bytes=s.batch_checkpoint_bytes,
        quota_backoff_seconds=s.batch_quota_backoff_seconds,
        upload_concurrency=s.batch_upload_concurrency,
        accept_abandon_seconds=s.accept_abandon_seconds,
        running_deadline_seconds=s.batch_running_deadline_seconds or None,
        ingest_nudge_grace_seconds=s.batch_ingest_nudge_grace_seconds,
    ))


def rate_limit(s: Settings) -> RateLimit:
    return RateLimit(
        requests_per_window=s.rate_limit_requests or None,
        images_per_window=s.rate_limit_images or None,
        window_seconds=s.rate_window_seconds,
        concurrency=s.rate_concurrency or None,
        safety=s.rate_safety,
        spend_usd_per_window=s.rate_limit_spend_usd or None,
        spend_window_seconds=s.rate_spend_window_seconds,
        # The worker passes each image's own price; this one is for a caller that passes none.
        cost_per_request_usd=prices(s).interactive_image_usd,
    )


@functools.cache
def rate_limiter() -> SlotRateLimiter:
    from adapters.firestore.ratelimit import FirestoreSlotStore

    s = settings()
    limiter_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.default_model)
    return SlotRateLimiter(
        rate_limit(s),
        FirestoreSlotStore(firestore_client(), limiter_id),
        clock(),
        lease_ttl=s.lease_seconds,
        longest_hold=s.max_wait_seconds + s.gemini_timeout_seconds,
    )


@functools.cache
def breaker():
    from adapters.firestore.breaker import FirestoreBreakerStore
    from core.breaker import BreakerPolicy, CircuitBreaker

    s = settings()
    breaker_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.default_model)
    return CircuitBreaker(
        FirestoreBreakerStore(firestore_client(), breaker_id),
        clock(),
        BreakerPolicy(
            threshold=s.breaker_threshold,
            cooldown_seconds=s.breaker_cooldown_seconds,
            halt_seconds=s.breaker_halt_seconds,
            probe_seconds=s.lease_seconds,
        ),
    )


@functools.cache
def accounting():
    from adapters.firestore.usage import FirestoreCounterStore
    from core.accounting import Accounting, DailyLimits

    s = settings()
    return Accounting(
        store=FirestoreCounterStore(firestore_client(), shards=s.usage_counter_shards,
                                    retention_days=s.records_retention_days),
        clock=clock(),
        prices=prices(s),
        limits=DailyLimits(s.daily_request_quota, s.daily_image_quota, s.daily_budget_usd),
        tenant_of=_tenant_of_job,
    )


def prices(s: Settings):
    """Each model's catalog price; PRICE_*_IMAGE_USD, when set, for every model instead. The flat
    prices also price a model outside the catalog: the default model's standard size."""
    from core.accounting import Prices

    spec = s.catalog().spec(s.default_model)
    size = spec.size_for("standard")
    override = s.price_interactive_image_usd is not None or s.price_batch_image_usd is not None
    return Prices(
        interactive_image_usd=s.price_interactive_image_usd if s.price_interactive_image_usd is not None
        else spec.price(size, batch=False),
        batch_image_usd=s.price_batch_image_usd if s.price_batch_image_usd is not None else spec.price(size, batch=True),
        catalog=s.catalog(),
        flat_override=override,
    )


def _tenant_of_job(job_id: str) -> str | None:
    from core.tenants import tenant_of_job

    job = deps().store.get_job(job_id)
    return tenant_of_job(job.tenant) if job is not None else None


@functools.cache
def pool_store():
    """The pending-batch pool, or None when the batch lane is off (nothing could flush it)."""
    from adapters.firestore.pool import FirestorePoolStore

    if not settings().batch_lane_enabled:
        return None
    return FirestorePoolStore(firestore_client(), job_store(),
                              retention_days=settings().records_retention_days)


@functools.cache
def idempotency_store():
    from adapters.firestore.idempotency import FirestoreIdempotencyStore

    return FirestoreIdempotencyStore(firestore_client())


@functools.cache
def dead_letters():
    """The dead-letter subscription the poller drains, or None when none is configured."""
    from google.cloud import pubsub_v1

    from adapters.pubsub_queue import PubSubDeadLetters

    s = settings()
    if not s.dead_letter_subscription:
        return None
    subscriber = pubsub_v1.SubscriberClient()
    return PubSubDeadLetters(subscriber, subscriber.subscription_path(s.google_cloud_project,
                                                                      s.dead_letter_subscription))


@functools.cache
def job_events():
    """The completion events' outbox and delivery (core/events.py): Firestore, the events
    topic and the webhook sender."""
    from adapters.firestore.events import FirestoreEventStore
    from adapters.pubsub_events import PubSubEventPublisher
    from adapters.webhook_sender import HttpWebhookSender
    from core.events import CompletionEvents, DeliveryPolicy, EventDeps

    s = settings()
    publisher = pubsub_publisher()
    return CompletionEvents(
        EventDeps(
            store=FirestoreEventStore(firestore_client(), retention_days=s.records_retention_days),
            publisher=PubSubEventPublisher(publisher, publisher.topic_path(s.google_cloud_project, s.events_topic),
                                           timeout=s.webhook_timeout_seconds),
            webhooks=HttpWebhookSender(timeout=s.webhook_timeout_seconds, allow_private=s.webhook_allow_insecure),
            clock=clock(),
            secret=s.webhook_key(),
        ),
        DeliveryPolicy(
            max_attempts=s.webhook_max_attempts,
            backoff_base=s.webhook_backoff_base_seconds,
            backoff_max=s.webhook_backoff_max_seconds,
            lease_seconds=s.event_lease_seconds,
        ),
        owner_prefix=f"inline-{instance_id()}",
    )


# --- the one composition root ---------------------------------------------------------------


@dataclass(frozen=True)
class Deps:
    """Every collaborator the entry points use. `batch_lane` and `pool` are None with the
    batch lane off; `dead_letters` (adapters.pubsub_queue.PubSubDeadLetters: pull and ack) is
    None without a dead-letter subscription. `batches` is `store`: the same Firestore adapter."""
    clock: Clock
    store: JobStore
    batches: BatchStore
    queue: WorkQueue
    sink: ImageSink
    generator: ImageGenerator
    limiter: RateLimiter
    breaker: CircuitBreaker
    accounting: Accounting
    catalog: Catalog
    model_halts: ModelHalts
    model_watch: ModelWatch
    events: CompletionEvents
    idempotency: IdempotencyStore
    batch_lane: BatchLane | None
    pool: PoolStore | None
    dead_letters: Any
    nudges: BatchNudges


@functools.cache
def deps() -> Deps:
    """This instance's collaborators, built once (each client once, shared by its adapters)."""
    store = job_store()
    return Deps(
        clock=clock(), store=store, batches=store, queue=work_queue(), sink=image_sink(), generator=image_generator(),
        limiter=rate_limiter(), breaker=breaker(), accounting=accounting(), catalog=catalog(),
        model_halts=model_halts(), model_watch=model_watch(), events=job_events(), idempotency=idempotency_store(),
        batch_lane=batch_lane(), pool=pool_store(), dead_letters=dead_letters(), nudges=batch_nudges(),
    )


def worker_deps() -> WorkerDeps:
    """What the interactive worker needs (core/worker.py), with the limits of the settings."""
    from core.pool import NoPool
    from core.worker import WorkerDeps

    d = deps()
    return WorkerDeps(
        store=d.store, generator=d.generator, sink=d.sink, limiter=d.limiter, clock=d.clock, breaker=d.breaker,
        pool=d.pool if d.pool is not None else NoPool(),  # None with the batch lane off: nothing would flush it
        batch_lane=d.pool is not None, accounting=d.accounting, events=d.events, catalog=d.catalog,
        model_halts=d.model_halts, limits=worker_limits(settings()),
    )


def worker_limits(s: Settings) -> WorkerLimits:
    from core.worker import WorkerLimits

    return WorkerLimits(max_attempts=s.max_attempts, max_wait=s.max_wait_seconds, lease_seconds=s.lease_seconds,
                        upload_budget=s.upload_budget_seconds)


def poller_deps() -> PollerDeps:
    """What a poller tick works with (core/poller.py)."""
    from adapters.pubsub_queue import decode_work_message
    from core.expanding import ExpandNudges
    from core.poller import PollerDeps

    d, s = deps(), settings()
    nudges: ExpandNudges = d.nudges
    if not s.batch_nudges_topic:  # nothing would push an expansion: the tick runs it
        from core.expanding import InlineExpansions

        owner = f"tick-{instance_id()}-{uuid.uuid4().hex[:8]}"
        nudges = InlineExpansions(expand_deps(), owner, d.clock.now() + s.expand_budget_seconds)
    return PollerDeps(
        store=d.store, queue=d.queue, clock=d.clock, sink=d.sink, events=d.events, accounting=d.accounting,
        model_watch=d.model_watch, model_halts=d.model_halts, decode=decode_work_message,
        dead_letters=d.dead_letters, batches=d.batches if d.batch_lane else None, pool=d.pool, batch_lane=d.batch_lane,
        nudges=nudges,
    )


def poller_policy() -> PollerPolicy:
    from core.poller import PollerPolicy

    s = settings()
    return PollerPolicy(
        budget_seconds=s.poller_budget_seconds, republish_grace_seconds=s.republish_grace_seconds,
        stuck_lease_grace_seconds=s.stuck_lease_grace_seconds, stuck_queued_seconds=s.stuck_queued_seconds,
        pool_flush_items=s.pool_flush_items, pool_max_age_seconds=s.pool_max_age_seconds,
        batch_items_per_batch=s.batch_items_per_batch, accept_abandon_seconds=s.accept_abandon_seconds,
        default_model=s.default_model,
    )


def route_deps() -> RouteDeps:
    """What choosing a lane reads (core/submitting.py), also for the dry run."""
    from core.submitting import RouteDeps

    d, s = deps(), settings()
    return RouteDeps(
        interactive_threshold=s.interactive_threshold, batch_available=s.batch_lane_enabled, breaker=d.breaker,
        accounting=d.accounting, catalog=d.catalog, model_halts=d.model_halts,
    )


def submit_deps() -> SubmitDeps:
    from core.submitting import SubmitDeps

    d, s = deps(), settings()
    return SubmitDeps(
        route=route_deps(), store=d.store, queue=d.queue, clock=d.clock, idempotency=d.idempotency,
        batch=d.batch_lane, batch_max_requests=s.batch_items_per_batch,
        batch_submit_budget=s.batch_submit_budget_seconds, idempotency_ttl_seconds=s.idempotency_ttl_seconds,
        idempotency_takeover_seconds=s.idempotency_takeover_seconds, staging=staged_sources(), nudges=d.nudges,
    )


def expand_deps() -> ExpandDeps:
    """What expanding an accepted job needs (core/expanding.py)."""
    from core.expanding import ExpandDeps, Ramp

    d, s = deps(), settings()
    staged = staged_sources()
    return ExpandDeps(
        store=d.store, sources=staged, staged=staged, queue=d.queue, clock=d.clock,
        batches=d.batches if d.batch_lane else None, accounting=d.accounting, sink=d.sink, events=d.events,
        intent_nudges=d.nudges if d.batch_lane else None,
        ramp=Ramp(s.expand_ramp_start_per_second, s.expand_ramp_growth, s.expand_ramp_period_seconds),
        chunk_items=s.expand_chunk_items, lease_seconds=s.expand_lease_seconds,
        batch_max_requests=s.batch_items_per_batch, max_items=s.max_items_per_source,
        max_attempts=s.expand_max_attempts,
    )


def status_deps() -> StatusDeps:
    from core.jobs import StatusDeps

    d = deps()
    return StatusDeps(store=d.store, batches=d.batches, prices=d.accounting.prices, events=d.events)


# What each entry point's first request would otherwise build: deps(), every client and adapter
# (one instance serves one function, but they share most clients, and the rest cost little).
_WARM_UP = {"pubsub_worker": ("deps", "connect"), "http_api": ("deps", "staged_sources", "connect", "warm_batch_api"),
            "scheduled_poller": ("deps", "staged_sources", "connect", "warm_batch_api"),
            "gemini_webhook": ("deps", "connect")}
# The modules those import: most of the cost (about 1.5 s of the 2 s).
_WARM_UP_MODULES = (
    "google.cloud.firestore", "google.cloud.storage", "google.cloud.pubsub_v1", "google.genai",
    "adapters.firestore.jobs", "adapters.firestore.ratelimit", "adapters.firestore.events", "adapters.gcs_sink",
    "adapters.gemini_generator",
    "adapters.gemini_batches", "adapters.pubsub_queue", "adapters.pubsub_events", "adapters.webhook_sender",
    "adapters.pubsub_nudges",
)
_warm_up_thread: threading.Thread | None = None


def connect() -> None:
    """Open the Firestore channel before the first request, with one small read (the model
    halts, which the API, the worker and the poller read anyway; the webhook function reads
    batch intents, over the same channel): a client opens its channel on its first call, which
    took 0.7 s of a new API instance's first POST /v1/jobs on the local stack (0.9 s against
    0.05 s for the next ones); in the cloud the first call also sets up TLS and fetches a token."""
    model_halts().all(fresh=True)


def warm_batch_api() -> None:
    """The SDK's batch models, built now rather than in the first batches.get (an ingest's)."""
    from adapters.gemini_batches import warm_up_sdk

    if settings().batch_lane_enabled:
        warm_up_sdk()


def warm_up(target: str) -> None:
    """Build what the entry point `target` works with (what _WARM_UP lists for it)."""
    for name in _WARM_UP.get(target, ()):
        globals()[name]()


def start_warm_up() -> None:
    """Prepare the function this instance serves before its first request: the first delivery
    otherwise waits about 2 s for the SDK imports and clients.

    functions-framework sets FUNCTION_TARGET, then imports main.py in gunicorn's master process,
    which then forks the worker that serves requests (functions-framework-python:
    src/functions_framework/_function_registry.py get_function_target, and _http/gunicorn.py,
    a gunicorn BaseApplication given the loaded app). Modules imported now are inherited by the
    worker; clients are not fork-safe (gRPC channels), and a thread started now would not
    survive the fork, or would fork in the middle of an import. So: import here, and build the
    clients on a thread started in the forked worker (a server that does not fork builds them
    on the first request, as without warm-up). Off unless WARM_UP_CLIENTS is set, so tests that
    import main never build a client; the variable is read directly because no Settings
    should be cached at import."""
    if os.environ.get("WARM_UP_CLIENTS", "").strip().lower() not in ("1", "true", "yes", "on"):
        return
    target = os.environ.get("FUNCTION_TARGET", "")
    for module in _WARM_UP_MODULES:
        importlib.import_module(module)
    os.register_at_fork(after_in_child=lambda: _start_warm_up_thread(target))


def _start_warm_up_thread(target: str) -> threading.Thread:
    global _warm_up_thread
    _warm_up_thread = threading.Thread(target=_warm_up, args=(target,), name="warm-up", daemon=True)
    _warm_up_thread.start()
    return _warm_up_thread


def wait_for_warm_up(timeout: float = 30.0) -> None:
    """Requests wait for a warm-up under way, rather than build each client a second time."""
    if _warm_up_thread is not None:
        _warm_up_thread.join(timeout)


def _warm_up(target: str) -> None:
    log = logging.getLogger("imagefleet")
    started = time.monotonic()
    try:
        if not settings().warm_up_clients:
            return
        warm_up(target)
    except Exception:  # the first request builds whatever failed here, and reports it
        log.warning("warming up the %s clients failed", target, exc_info=True)
        return
    log.info("%s clients built in %.2f s", target, time.monotonic() - started,
             extra={"warm_up_seconds": round(time.monotonic() - started, 3)})
