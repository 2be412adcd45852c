"""Domain types shared by the use cases, the adapters and the entry points."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Lane(str, enum.Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class JobStatus(str, enum.Enum):
    # The job document is written first, in ACCEPTING, then its items and batch intents; only
    # the flip to QUEUED lets anything act on it (see core/accepting.py).
    ACCEPTING = "accepting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


# The extensions an item's image may have, by the format its bytes hold (core.images.EXTENSIONS).
IMAGE_EXTENSIONS = ("png", "jpg", "webp")


def object_name(job_id: str, item_key: str, extension: str = "png") -> str:
    """Deterministic object name: a retried or duplicated item can only ever write one of these
    (every attempt first looks for any of them, see worker.process_item).

    Both parts come from a safe charset (server-made job ids, validated client keys); the
    extension comes from the format detected in the bytes."""
    return f"{job_id}/{item_key}.{extension}"


def _known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
    """Stored documents may carry fields a newer or older version wrote: keep ours only."""
    return {k: v for k, v in d.items() if k in cls.__dataclass_fields__}


TERMINAL_ITEM_STATES = frozenset(
    {ItemState.SUCCEEDED, ItemState.FAILED, ItemState.DEAD_LETTERED, ItemState.CANCELLED}
)
TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.PARTIALLY_SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)


@dataclass(frozen=True)
class ItemSpec:
    """One image to generate, as the client asked for it (already validated)."""

    key: str
    prompt: str
    aspect_ratio: str = "1:1"
    domain: str | None = None
    quality: str = "standard"


@dataclass(frozen=True)
class JobSpec:
    items: tuple[ItemSpec, ...]
    requested_lane: str = "auto"
    callback_url: str | None = None
    tenant: str | None = None  # the submitting API key's tenant (core/tenants.py)


@dataclass
class Job:
    job_id: str
    lane: Lane
    status: JobStatus
    model: str
    item_count: int
    created_at: float
    updated_at: float
    published: bool = False
    finished_at: float | None = None
    manifest_uri: str | None = None
    estimated_cost_usd: float | None = None
    route_reason: str | None = None
    callback_url: str | None = None  # where the job.completed webhook goes (validated at submit)
    round: int = 1  # 1 + the times POST :retry re-opened the job: one job.completed per round
    error: str | None = None  # why the job failed as a whole (the API stopped while accepting it)

    @property
    def accept_failed(self) -> bool:
        """Failed before it was ever queued: whatever its abandoned submitter wrote must not run."""
        return self.status is JobStatus.FAILED and self.error is not None
    tenant: str | None = None  # who submitted it; None: stored before tenants, i.e. "default"
    # While accepting: where its source is and how far it was expanded (core/expanding.py).
    # None for a job accepted with all its items at once (before background expansion).
    expansion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "lane": self.lane.value,
            "status": self.status.value,
            "model": self.model,
            "item_count": self.item_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "published": self.published,
            "finished_at": self.finished_at,
            "manifest_uri": self.manifest_uri,
            "estimated_cost_usd": self.estimated_cost_usd,
            "route_reason": self.route_reason,
            "callback_url": self.callback_url,
            "round": self.round,
            "error": self.error,
            "tenant": self.tenant,
            "expansion": self.expansion,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(
            job_id=d["job_id"],
            lane=Lane(d["lane"]),
            status=JobStatus(d["status"]),
            model=d["model"],
            item_count=d["item_count"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            published=d.get("published", False),
            finished_at=d.get("finished_at"),
            manifest_uri=d.get("manifest_uri"),
            estimated_cost_usd=d.get("estimated_cost_usd"),
            route_reason=d.get("route_reason"),
            callback_url=d.get("callback_url"),
            round=d.get("round", 1),
            error=d.get("error"),
            tenant=d.get("tenant"),
            expansion=d.get("expansion"),
        )


@dataclass
class Item:
    job_id: str
    key: str
    index: int
    prompt: str
    aspect_ratio: str
    domain: str | None
    quality: str
    state: ItemState = ItemState.QUEUED
    attempts: int = 0
    quota_retries: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    gcs_uri: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    output_tokens: int | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None  # "png" | "jpeg" | "webp", read from the stored bytes
    width: int | None = None
    height: int | None = None
    lane: str | None = None
    batch_intent: str | None = None
    pooled_at: float | None = None  # set when the breaker diverted it to the batch lane
    updated_at: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_ITEM_STATES

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(**_known_fields(cls, {**d, "state": ItemState(d["state"])}))

    def public(self) -> dict[str, Any]:
        """The item as the status API shows it."""
        return {
            "key": self.key,
            "index": self.index,
            "prompt": self.prompt,
            "state": self.state.value,
            "attempts": self.attempts,
            "gcs_uri": self.gcs_uri,
            "error": self.error,
            "finish_reason": self.finish_reason,
            "lane": self.lane,
        }


@dataclass(frozen=True)
class GeneratedImage:
    """A successful generateContent call, reduced to what we store."""

    data: bytes
    mime_type: str
    finish_reason: str
    model_version: str | None = None
    text: str | None = None
    output_tokens: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredImage:
    uri: str
    created: bool  # False when the object already existed (an earlier attempt wrote it)
    facts: dict | None = None  # the stored object's sha256, bytes, format, width, height


class IntentState(str, enum.Enum):
    """Where a batch intent is: the record we write before Gemini knows about the batch."""

    PENDING = "pending"  # recorded, no input file yet
    CREATING = "creating"  # input uploaded, batches.create may have been called
    SUBMITTED = "submitted"  # the Gemini batch name is recorded
    INGESTING = "ingesting"  # SUCCEEDED: results are being streamed into GCS
    FINISHED = "finished"


ACTIVE_INTENT_STATES = (IntentState.PENDING, IntentState.CREATING, IntentState.SUBMITTED, IntentState.INGESTING)


@dataclass
class BatchIntent:
    """One Gemini batch job, recorded before it is created (batches.create is not idempotent)."""

    intent_id: str
    job_id: str
    model: str
    keys: list[str]
    attempt: int
    created_at: float
    updated_at: float
    state: IntentState = IntentState.PENDING
    gemini_batch: str | None = None
    gemini_state: str | None = None
    input_file: str | None = None
    output_file: str | None = None
    key_fingerprint: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    lines_done: int = 0
    bytes_done: int = 0  # the results file's byte offset just past line lines_done (0: not recorded)
    results_errors: int = 0
    outcome: str | None = None
    finished_at: float | None = None
    submitted_at: float | None = None  # when the Gemini batch was recorded: the local deadline counts from it
    submit_failures: int = 0  # refused uploads/creates in a row; past a limit the items fail
    error: str | None = None  # the last refusal's message, shown in the job's status
    input_uploaded_at: float | None = None  # when input_file was uploaded: a retried create reuses it while young
    next_attempt_at: float | None = None  # after a 429, no upload or create before this time
    quota_waits: int = 0  # 429s in a row on upload or create; they never count as failed attempts
    # When a poller tick should look at it next: ticks take the longest-due first, so however
    # many intents are active each gets its turn. Set while active, None once finished.
    next_check_at: float | None = None
    # When a tick last published a nudge for this intent's ingest (None: never): it publishes
    # no other until a grace period has passed.
    ingest_requested_at: float | None = None
    # len(keys), stored beside them so that a job's status can show it without reading the keys
    # (BatchStore.intent_page). None: stored before it was kept, or read without keys.
    key_count: int | None = None

    def __post_init__(self) -> None:
        if self.next_check_at is None and self.state in ACTIVE_INTENT_STATES:
            self.next_check_at = self.created_at
        if self.keys:  # the keys, when read, are the truth
            self.key_count = len(self.keys)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        d["keys"] = list(self.keys)
        return d

    @property
    def batch_name(self) -> str:
        """The Gemini batch's name: set once the intent is past `creating`."""
        if self.gemini_batch is None:
            raise ValueError(f"intent {self.intent_id} has no Gemini batch yet")
        return self.gemini_batch

    @property
    def results_file(self) -> str:
        """The results file's name: set when the batch succeeded, before ingesting."""
        if self.output_file is None:
            raise ValueError(f"intent {self.intent_id}: its succeeded batch named no results file")
        return self.output_file

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchIntent:
        return cls(**_known_fields(cls, {**d, "state": IntentState(d["state"])}))

    def public(self) -> dict[str, Any]:
        return {
            "intent_id": self.intent_id,
            "state": self.state.value,
            "gemini_batch": self.gemini_batch,
            "gemini_state": self.gemini_state,
            "attempt": self.attempt,
            "items": self.key_count if self.key_count is not None else len(self.keys),
            "outcome": self.outcome,
            "error": self.error,
            "submit_failures": self.submit_failures,
        }


@dataclass(frozen=True)
class BatchInfo:
    """What batches.get tells us, normalised."""

    name: str
    state: str  # BATCH_STATE_* (JOB_STATE_* is normalised to it)
    display_name: str | None = None
    output_file: str | None = None


@dataclass(frozen=True)
class PoolEntry:
    """An item waiting in the pending-batch pool (core/pool.py)."""

    job_id: str
    key: str
    pooled_at: float
    urgent: bool = False  # flush at the next tick, whatever the pool's size and age (:retry)


@dataclass(frozen=True)
class SlotBlock:
    """Block `seq` of the rate limiter's chain (core/ratelimit.py): slots start .. start + size - 1."""

    seq: int
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size
