"""The collaborators the use cases need, as Protocols. Adapters implement them; fakes live in core.fakes."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from core.models import (
    BatchInfo, BatchIntent, GeneratedImage, Item, ItemState, Job, JobStatus, PoolEntry, SlotBlock, StoredImage,
)
from core.checkpoints import Checkpointed
from core.transitions import EventAttempt, ExpansionChange, IntentChange, ItemChange

if TYPE_CHECKING:  # core.events uses these ports in its own annotations
    from core.breaker import BreakerView, Decision
    from core.events import Event
    from core.model_halts import ModelHalt


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, wake: threading.Condition, woken: Callable[[], bool], seconds: float) -> None:
        """Wait up to `seconds` for `woken()` to hold, checked under `wake` (the caller does not
        hold it) when it is notified. A clock whose time only moves by sleeping (tests) sleeps
        the whole `seconds` instead."""


class JobStore(Protocol):
    def create_job(self, job: Job, items: Sequence[Item]) -> None:
        """Write the job and all its items. Items are written in batches; the job document last."""

    def get_job(self, job_id: str) -> Job | None: ...

    # --- accepting a job (core/accepting.py): the job first, then its items, then the flip ---

    def create_job_doc(self, job: Job) -> bool:
        """Create-only: False when the job document exists."""

    def create_items(self, job_id: str, items: Sequence[Item], job_created_at: float | None = None) -> None:
        """Create the items that are absent; existing ones (an earlier attempt's) are kept.
        `job_created_at`: when their job was submitted, which their retention counts from."""

    def finish_accepting(self, job_id: str, now: float) -> bool:
        """accepting -> queued; False when the job is not accepting (any more)."""

    def touch_accepting(self, job_id: str, now: float) -> bool:
        """Set updated_at of an accepting job (a resumed submission claims it); False otherwise."""

    def fail_accepting(self, job_id: str, error: str, now: float, idle_since: float) -> bool:
        """accepting -> failed with `error`, only if nobody touched the job since `idle_since`."""

    def accepting_jobs(self, limit: int, idle_since: float | None = None) -> list[Job]:
        """Up to `limit` jobs in status accepting, untouched since `idle_since` when given: every
        accepting job is looked at (in id order, page by page), so young ones never hide old."""

    # --- expanding an accepted job in the background (core/expanding.py) ---

    def claim_expansion(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job | None:
        """Lease the expansion of an accepting job (unless another holds a live lease on it):
        the job as leased, or None."""

    def item_indexes(self, job_id: str, keys: Sequence[str]) -> dict[str, int]:
        """The index of each of these items that exists (a job written by its expansion only)."""

    def update_expansion(self, job_id: str, owner: str, change: ExpansionChange) -> bool:
        """Apply an expansion change (a checkpoint, queued, failed: core/transitions.py) to an
        accepting job whose expansion owner holds; False when it is not (lost or finished)."""

    def mark_published(self, job_id: str, now: float) -> None: ...

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        """Up to `limit` unpublished jobs created before `older_than` and no longer accepting,
        found among all unpublished jobs (in id order, page by page)."""

    def get_item(self, job_id: str, key: str) -> Item | None: ...

    def list_items(
        self, job_id: str, start_after_index: int | None, limit: int
    ) -> list[Item]: ...

    def count_items(self, job_id: str) -> dict[ItemState, int]: ...

    def has_unfinished_items(self, job_id: str) -> bool:
        """True while any item is queued or running (cheaper than count_items)."""

    def claim_item(
        self, job_id: str, key: str, owner: str, now: float, lease_seconds: float, lane: str | None = None
    ) -> Item | None:
        """Atomically move a queued (or lease-expired running) item to running under owner's lease;
        with `lane`, only an item still in that lane (checked in the same atomic step, so a
        delivery that read the item just before another diverted it cannot then claim it); an
        item that records no lane is the interactive lane's.

        Returns the claimed item, or None when the item is terminal, leased by someone else or
        in another lane (get_item says which)."""

    def finish_item(self, job_id: str, key: str, owner: str, change: ItemChange) -> bool:
        """Apply the change to the item if owner still holds its lease. Returns False otherwise."""

    def complete_job(self, job_id: str, status: JobStatus, now: float, manifest_uri: str | None = None) -> None:
        """Set a terminal status unless the job already has one."""

    def cancel_job(self, job_id: str, now: float) -> bool:
        """Move a queued or running job to cancelled; False if it had already ended."""

    def set_job_running(self, job_id: str, now: float) -> None: ...

    def claim_finalizing(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        """Take the job's finalizing lease (core.jobs.finalizing_claim); False while another
        finalizer holds it."""

    def reopen_job(self, job_id: str, now: float) -> Job:
        """For :retry: a finished (not cancelled) job goes back to running in a new round,
        with no manifest; a queued or running one is left as it is. Returns the job after."""

    def mark_unpublished(self, job_id: str, now: float) -> None: ...

    def running_jobs(self, limit: int, after: str | None = None) -> list[Job]:
        """Jobs in status running, in job id order; with `after`, only those whose id is greater
        (equality and the id order: no composite index)."""

    def requeue_item(self, job_id: str, key: str, expected: ItemState, change: ItemChange) -> bool:
        """Apply the change only if the item is still in state `expected`."""

    def count_succeeded_by_lane(self, job_id: str) -> dict[str, int]: ...

    def expired_leases(self, before: float, limit: int) -> list[Item]:
        """Interactive items, of any job, running under a lease that expired before `before`."""

    def untouched_queued_items(self, before: float, limit: int) -> list[Item]:
        """Interactive items, of any job, queued and not updated since `before`."""


class WorkQueue(Protocol):
    def publish_items(self, job_id: str, keys: Iterable[str]) -> None:
        """Publish one message per item. Raises on failure; duplicates are harmless."""


class ImageSink(Protocol):
    def put_image(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredImage:
        """Create the object only if absent; an existing object is reported, not overwritten,
        with its own facts (read from its metadata), not those of the bytes passed in.
        StorageUnavailable when the store cannot be reached within the sink's time bound."""

    def find_image(self, stem: str, extensions: Sequence[str]) -> StoredImage | None:
        """The stored object `stem.<ext>` for any of `extensions`, with its facts (sha256,
        bytes, format, width, height): what an earlier attempt that died before its commit wrote.
        StorageUnavailable when the store cannot be reached."""

    def put_manifest(self, name: str, data: bytes) -> StoredImage:
        """Create a JSONL object only if absent."""

    def compose(self, name: str, sources: Sequence[str]) -> StoredImage:
        """Create the JSONL object `name` only if absent, as the concatenation of `sources` (at
        most 32) in order."""

    def existing_uri(self, name: str) -> str | None:
        """The URI of the object `name`, or None when there is none."""


class StagedSources(Protocol):
    def put_staged(self, name: str, data: bytes) -> tuple[str, int, int]:
        """Create the object only if absent (an existing one, an earlier attempt's with the
        same body, is kept): its gs:// uri, generation and size."""


class ImageGenerator(Protocol):
    def generate(self, prompt: str, aspect_ratio: str, image_size: str | None,
                 model: str | None = None) -> GeneratedImage:
        """Call the model once (the job's model; None = the generator's default). Raises a
        core.errors.GenerationError subclass on failure."""


class RateLimiter(Protocol):
    def acquire(self, owner: str, max_wait: float, cost: float | None = None) -> None:
        """Block until owner may send one request (of expected price `cost`, in dollars; the
        configured one if None); RateLimited if not possible within max_wait."""

    def release(self, owner: str) -> None:
        """Give back the concurrency slot taken by acquire."""

    def push_back(self, until: float) -> None:
        """Nobody may send before `until` (epoch seconds): a 429 told us when the window frees."""


class BatchStore(Protocol):
    """Batch intents, kept beside the jobs (the Firestore adapter implements both)."""

    def create_intent(self, intent: BatchIntent) -> bool:
        """Create-only: False when an intent with that id exists."""

    def create_intents(self, intents: Sequence[BatchIntent]) -> None:
        """Create the intents that are absent; existing ones are kept."""

    def get_intent(self, intent_id: str) -> BatchIntent | None: ...

    def intents_of_job(self, job_id: str) -> list[BatchIntent]: ...

    def intent_page(self, job_id: str, after: str | None, limit: int, *, with_keys: bool = False) -> list[BatchIntent]:
        """Up to `limit` of the job's intents in id order, after the intent id `after`. Without
        keys (keys empty, key_count set) unless asked: a page costs the same whatever the size
        of its batches."""

    def count_intents(self, job_id: str) -> int: ...

    def active_intents(self, limit: int) -> list[BatchIntent]: ...

    def due_intents(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[BatchIntent]:
        """Active intents whose next_check_at has come, the longest-due first (ties by id);
        `after` is the (next_check_at, intent_id) of the previous page's last one."""

    def release_intent(self, intent_id: str, owner: str, next_check_at: float) -> bool:
        """Give up owner's lease and, unless the intent is finished, set when it is due again."""

    def claim_intent(self, intent_id: str, owner: str, now: float, lease_seconds: float) -> BatchIntent | None:
        """Lease an unfinished intent unless someone else holds a live lease on it."""

    def intent_of_batch(self, batch_name: str) -> BatchIntent | None:
        """The intent whose Gemini batch is `batch_name` ("batches/<id>"), if any."""

    def make_due(self, intent_id: str, next_check_at: float) -> bool:
        """Set an unfinished intent's next_check_at (whoever holds its lease); False when it is
        finished or missing."""

    def update_intent(self, intent_id: str, owner: str, change: IntentChange) -> bool:
        """Apply the change if owner still holds the lease."""

    def checkpoint(self, intent_id: str, owner: str, change: IntentChange,
                   results: Mapping[str, ItemChange]) -> Checkpointed | None:
        """Atomically change the intent (if owner holds the lease; None if not) and the job's
        items, by key; an item that already has a result keeps it (core.checkpoints.applies)."""

    def get_items(self, job_id: str, keys: Sequence[str]) -> list[Item]: ...


class BatchApi(Protocol):
    """The Gemini Files and Batch APIs, as the batch lane uses them."""

    def key_fingerprint(self) -> str:
        """A fingerprint of the API key the batches are created with (never the key)."""

    def upload_jsonl(self, data: bytes, display_name: str) -> str:
        """Upload a JSONL input file; its name (files/...)."""

    def create_batch(self, model: str, input_file: str, display_name: str) -> BatchInfo: ...

    def find_batch(self, display_name: str) -> BatchInfo | None:
        """The batch with this display name, if one exists (for recovery after a crash)."""

    def get_batch(self, name: str) -> BatchInfo | None:
        """None when the batch does not exist (any more)."""

    def cancel_batch(self, name: str) -> None: ...

    def stream_file(self, name: str, sink, offset: int = 0) -> None:
        """Stream a generated file's bytes from byte `offset` into sink.write(chunk); errors
        from sink propagate."""

    def delete_file(self, name: str) -> None: ...


class IdempotencyStore(Protocol):
    """Idempotency-Key records: which job a key made, and a hash of the body it came with."""

    def begin(self, key_id: str, record: dict) -> tuple[dict, bool]:
        """Create the record if absent. Returns (the stored record, True if this call created it)."""

    def take_over(self, key_id: str, started_at: float, now: float) -> bool:
        """Restart an abandoned record: True for exactly one caller that saw started_at."""
# --- completion events (core/events.py) ------------------------------------------------------


class EventOutbox(Protocol):
    """What finalize_job_if_done needs to record a job's job.completed event."""

    def has_completion(self, job: Job) -> bool:
        """True when the event of this job's current round is recorded."""

    def record_completion(self, job: Job, counts: dict[ItemState, int]) -> None:
        """Record the event (create-only: a second call changes nothing), then try to deliver it."""

    def events_of_job(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events as the status API shows them."""


class EventStore(Protocol):
    """The outbox's documents (events/{event_id})."""

    def create_event(self, event: Event) -> bool:
        """Create-only: False when an event with that id exists."""

    def get_event(self, event_id: str) -> Event | None: ...

    def events_of_job(self, job_id: str) -> list[Event]:
        """Oldest first."""

    def due_events(self, now: float, limit: int) -> list[Event]:
        """Pending events whose next_attempt_at has come, the longest-waiting first."""

    def claim_event(self, event_id: str, owner: str, now: float, lease_seconds: float) -> Event | None:
        """Lease a pending, due event unless someone else holds a live lease on it."""

    def update_event(self, event_id: str, owner: str, attempt: EventAttempt) -> bool:
        """Record the attempt if owner still holds the lease."""


class EventPublisher(Protocol):
    def publish_event(self, data: bytes, attributes: dict[str, str]) -> None:
        """Publish one message to the events topic; DeliveryFailed when it was not accepted."""


class WebhookSender(Protocol):
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        """POST body to url without following redirects; DeliveryFailed unless the answer is 2xx."""


# --- the worker's guards (core/worker.py) ------------------------------------------------------


class Breaker(Protocol):
    """The circuit breaker between the interactive lane and Gemini (core/breaker.py)."""

    def view(self, fresh: bool = False) -> BreakerView: ...

    def hold_ends_by(self, when: float) -> bool:
        """Will a HOLD be decided before `when`?"""

    def before_send(self, owner: str) -> Decision: ...

    def on_success(self, owner: str) -> None: ...

    def on_quota_failure(self, owner: str, quota_id: str | None, per_day: bool) -> None: ...

    def on_permission_denied(self, owner: str, reason: str) -> bool:
        """Halt the lane after a 403. True when the lane is halted (the item is not at fault);
        False when nothing halts it, and the 403 costs the item an attempt like a transient error."""


class ModelHaltRegistry(Protocol):
    """The models whose items wait for the model to come back (core/model_halts.py)."""

    # False for a registry that records no halt: nothing would ever publish a parked item again,
    # so a missing model costs the item an attempt like a transient error.
    parks_items: bool

    def halted(self, model: str, fresh: bool = False) -> ModelHalt | None: ...

    def halt(self, model: str, reason: str, source: str) -> bool:
        """Halt the model; True only for the write that halted it."""


class PriceList(Protocol):
    def per_image(self, lane: Any, model: str | None = None, size: str | None = None) -> float | None:
        """One image's price; None lets the rate limiter use its own flat cost."""


class UsageMeter(Protocol):
    """The daily usage counters (core/accounting.py), as the worker adds to them."""

    @property
    def prices(self) -> PriceList: ...  # read-only, so Accounting's Prices satisfies it

    def add(self, deltas: dict[str, float], quota_id: str | None = None, **context) -> None: ...

    def image_produced(self, lane: Any, model: str | None = None, size: str | None = None) -> dict[str, float]: ...

    def item_unsuccessful(self, lane: Any, counter: str, model: str | None = None,
                          size: str | None = None) -> dict[str, float]: ...

    def diverted(self, model: str | None = None, size: str | None = None) -> dict[str, float]: ...


class BatchNudges(Protocol):
    def nudge(self, intent_id: str) -> None:
        """Ask for one intent's reconcile now (a Pub/Sub message the poller is pushed)."""

    def expand(self, job_id: str) -> None:
        """Ask for one accepted job's expansion (core/expanding.py), on the same topic."""


class CounterStore(Protocol):
    def add(self, day: str, deltas: dict[str, float], by_quota_id: dict[str, int] | None = None,
            by_tenant: dict[str, dict[str, float]] | None = None) -> None:
        """Add the deltas to the day's counters (atomically per call, never read-modify-write)."""

    def read(self, day: str) -> dict:
        """The day's totals: {name: value, ..., "quota_errors_by_id": {quotaId: n},
        "by_tenant": {tenant: {name: value}}}."""


class BreakerStore(Protocol):
    def read(self) -> dict | None: ...

    def compare_and_set(self, decide: Callable[[dict | None], dict | None]) -> bool:
        """Write decide(current) unless someone wrote in between; False if declined or lost."""


class ModelHaltStore(Protocol):
    def read_all(self) -> dict[str, dict]:
        """{model id: record} of every model ever halted (cleared ones have halted=False)."""

    def compare_and_set(self, model: str, decide: Callable[[dict | None], dict | None]) -> bool:
        """Write decide(current) to the model's record unless someone wrote in between."""


class ModelsApi(Protocol):
    def get_model(self, model: str) -> dict | None:
        """The model as models.get describes it, or None when Gemini answers 404 for it."""


class PoolStore(Protocol):
    def add(self, entry: PoolEntry) -> None:
        """Create-only: an existing entry is left as it is."""

    def oldest(self, limit: int) -> list[PoolEntry]:
        """Entries in pooled_at order."""

    def remove(self, entries: Sequence[PoolEntry]) -> None: ...

    def reserve_item(self, job_id: str, key: str, intent_id: str) -> bool:
        """Set the item's batch_intent if it is a queued, pooled item with none yet."""

    def count(self) -> int:
        """How many entries wait (GET /v1/stats)."""


class SlotStore(Protocol):
    def blocked_until(self) -> float: ...

    def push_blocked_until(self, until: float) -> None:
        """Move blocked_until forward (never back)."""

    def last_block(self) -> SlotBlock | None:
        """The block with the highest seq, or None."""

    def try_claim_block(self, block: SlotBlock, owner: str, expire_at: float) -> bool:
        """Create block `block.seq` if absent. True when this call created it."""

    def try_take_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        """Take one of `capacity` concurrency leases that is free or expired; its id, or None."""

    def release_lease(self, lease_id: str, owner: str) -> None: ...

    def try_spend(self, amount: float, limit: float, window: float, now: float) -> float | None:
        """Record `amount` spent at `now` if the spend recorded in (now - window, now] plus
        `amount` stays within `limit`: None. Otherwise record nothing and return the seconds
        until enough of that spend has left the window."""
