"""Every state change the use cases make to a stored item, batch intent or event, as a typed
value: one small frozen dataclass per kind, holding only what that kind sets.

The ports take these values, never a dict of fields. Each one says which stored fields it writes
(`as_fields()`), and both stores apply exactly that: the Firestore adapters write it as the
document update, the in-memory fakes merge it into their dicts. The mapping lives here, once,
rather than in each adapter because both keep the same document (the field names of
Item/BatchIntent/Event.to_dict, which core owns already): two copies of the mapping are what would
drift apart, and the contract tests could only catch a drift they happen to exercise.

A field set to None in an `as_fields()` result is written as null; a field left out is kept
as stored. Where a kind leaves a field alone in some cases (say an error only when there is
one), its docstring says so. An item change's `state` is the state it leaves the item in (None:
unchanged), which the batch lane's usage counters read.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

from core.models import IntentState, ItemState, JobStatus, Lane

if TYPE_CHECKING:  # core.events imports this module
    from core.events import EventState

# The stored image's facts an item records (core.images.ImageFacts.fields, or the sink's
# metadata): nothing else in a facts mapping is written.
IMAGE_FACT_FIELDS = ("sha256", "bytes", "format", "width", "height")

_RELEASED = {"lease_owner": None, "lease_expires_at": None}


def _facts(facts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: facts[k] for k in IMAGE_FACT_FIELDS if k in facts}


# --- items: the interactive lane, under the item's lease (JobStore.finish_item) -------------


@dataclass(frozen=True)
class LeaseRenewed:
    """The lease holder keeps the item for longer (before each upload try)."""
    until: float
    state: ClassVar[ItemState | None] = None

    def as_fields(self) -> dict[str, Any]:
        return {"lease_expires_at": self.until}


@dataclass(frozen=True)
class HandedBack:
    """Back to queued with the lease released, for the next delivery to claim at once. `error`
    None keeps the item's last error."""
    at: float
    attempts: int
    quota_retries: int
    error: str | None = None
    state: ClassVar[ItemState] = ItemState.QUEUED

    def as_fields(self) -> dict[str, Any]:
        fields = {"state": ItemState.QUEUED.value, **_RELEASED, "attempts": self.attempts,
                  "quota_retries": self.quota_retries, "updated_at": self.at}
        if self.error is not None:
            fields["error"] = self.error
        return fields


@dataclass(frozen=True)
class Diverted:
    """The breaker moved the item to the batch lane: queued there, pooled now, lease released."""
    at: float
    state: ClassVar[ItemState] = ItemState.QUEUED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.QUEUED.value, "lane": Lane.BATCH.value, "pooled_at": self.at,
                "batch_intent": None, **_RELEASED, "updated_at": self.at}


@dataclass(frozen=True)
class Succeeded:
    """This attempt's image is stored (or another attempt's object was found in its place)."""
    at: float
    gcs_uri: str
    facts: Mapping[str, Any]
    attempts: int
    quota_retries: int
    finish_reason: str
    output_tokens: int | None
    state: ClassVar[ItemState] = ItemState.SUCCEEDED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.SUCCEEDED.value, **_RELEASED, "updated_at": self.at, "attempts": self.attempts,
                "quota_retries": self.quota_retries, "gcs_uri": self.gcs_uri, "finish_reason": self.finish_reason,
                "output_tokens": self.output_tokens, "error": None, **_facts(self.facts)}


@dataclass(frozen=True)
class EarlierImageRecorded:
    """An earlier attempt stored the image and died before recording it: the item records that
    object (what the model answered then is not known: finish_reason and output_tokens are left)."""
    at: float
    gcs_uri: str
    facts: Mapping[str, Any]
    attempts: int
    quota_retries: int
    state: ClassVar[ItemState] = ItemState.SUCCEEDED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.SUCCEEDED.value, **_RELEASED, "updated_at": self.at, "attempts": self.attempts,
                "quota_retries": self.quota_retries, "gcs_uri": self.gcs_uri, "error": None, **_facts(self.facts)}


@dataclass(frozen=True)
class Failed:
    """The model refused the item for good (content, invalid request)."""
    at: float
    error: str
    attempts: int
    quota_retries: int
    state: ClassVar[ItemState] = ItemState.FAILED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.FAILED.value, **_RELEASED, "updated_at": self.at, "error": self.error,
                "attempts": self.attempts, "quota_retries": self.quota_retries}


@dataclass(frozen=True)
class DeadLettered:
    """Given up on: the worker after its last attempt, or Pub/Sub after its last delivery (which
    knows no attempt counts: None leaves them as stored)."""
    at: float
    error: str
    attempts: int | None = None
    quota_retries: int | None = None
    state: ClassVar[ItemState] = ItemState.DEAD_LETTERED

    def as_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"state": ItemState.DEAD_LETTERED.value, **_RELEASED, "updated_at": self.at,
                                  "error": self.error}
        if self.attempts is not None:
            fields["attempts"] = self.attempts
        if self.quota_retries is not None:
            fields["quota_retries"] = self.quota_retries
        return fields


@dataclass(frozen=True)
class Cancelled:
    """Its job was cancelled before the item ran."""
    at: float
    error: str = "job cancelled"
    state: ClassVar[ItemState] = ItemState.CANCELLED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.CANCELLED.value, **_RELEASED, "updated_at": self.at, "error": self.error}


# --- items: compare-and-set on the item's state (JobStore.requeue_item) ---------------------


@dataclass(frozen=True)
class Touched:
    """A queued item was published again: the stuck-item sweep leaves it alone for a while."""
    at: float
    state: ClassVar[ItemState | None] = None

    def as_fields(self) -> dict[str, Any]:
        return {"updated_at": self.at}


@dataclass(frozen=True)
class Requeued:
    """POST :retry gave a dead-lettered item a new round: no attempts spent, lease released, its
    last error kept as the reason (None: it had none). A batch item goes back to the pool."""
    at: float
    error: str | None
    to_pool: bool = False
    state: ClassVar[ItemState] = ItemState.QUEUED

    def as_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"state": ItemState.QUEUED.value, "attempts": 0, **_RELEASED,
                                  "updated_at": self.at, "error": self.error}
        if self.to_pool:
            fields.update(pooled_at=self.at, batch_intent=None)
        return fields


@dataclass(frozen=True)
class AcceptAbandoned:
    """The job's submitter died while accepting it: nothing ran the item, which fails with it."""
    at: float
    error: str
    state: ClassVar[ItemState] = ItemState.FAILED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.FAILED.value, "error": self.error, "updated_at": self.at}


# --- items: a batch's results (BatchStore.checkpoint); batch items hold no lease -------------


@dataclass(frozen=True)
class BatchSucceeded:
    """A result line's image, stored."""
    at: float
    intent_id: str
    attempts: int
    gcs_uri: str
    facts: Mapping[str, Any]
    finish_reason: str
    output_tokens: int | None
    state: ClassVar[ItemState] = ItemState.SUCCEEDED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.SUCCEEDED.value, "gcs_uri": self.gcs_uri, "finish_reason": self.finish_reason,
                "output_tokens": self.output_tokens, "attempts": self.attempts, "error": None,
                "lane": Lane.BATCH.value, "batch_intent": self.intent_id, "updated_at": self.at,
                **_facts(self.facts)}


@dataclass(frozen=True)
class BatchFailed:
    """Refused for good: by a result line (`intent_id` names its batch, which a later image line
    of the same batch still overrides), or because the batch's input was refused too often
    (`intent_id` None: left as stored)."""
    at: float
    error: str
    attempts: int
    intent_id: str | None = None
    state: ClassVar[ItemState] = ItemState.FAILED

    def as_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"state": ItemState.FAILED.value, "error": self.error, "attempts": self.attempts,
                                  "lane": Lane.BATCH.value}
        if self.intent_id is not None:
            fields["batch_intent"] = self.intent_id
        return {**fields, "updated_at": self.at}


@dataclass(frozen=True)
class BatchErrorNoted:
    """A retryable error line: the item stays unfinished for the next batch; its error is noted."""
    at: float
    error: str
    attempts: int
    state: ClassVar[ItemState | None] = None

    def as_fields(self) -> dict[str, Any]:
        return {"error": self.error, "attempts": self.attempts, "updated_at": self.at}


@dataclass(frozen=True)
class BatchDeadLettered:
    """Still unfinished after the last batch attempt."""
    at: float
    error: str
    attempts: int
    state: ClassVar[ItemState] = ItemState.DEAD_LETTERED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.DEAD_LETTERED.value, "updated_at": self.at, "error": self.error,
                "lane": Lane.BATCH.value, "attempts": self.attempts}


@dataclass(frozen=True)
class BatchCancelled:
    """The job was cancelled (or failed while accepting) with the item in a batch intent."""
    at: float
    error: str
    state: ClassVar[ItemState] = ItemState.CANCELLED

    def as_fields(self) -> dict[str, Any]:
        return {"state": ItemState.CANCELLED.value, "error": self.error, "updated_at": self.at}


# What the worker ends an item with (JobStore.finish_item, under its lease).
Ending = Union[Succeeded, EarlierImageRecorded, Failed, DeadLettered, Cancelled]

ItemChange = Union[
    LeaseRenewed, HandedBack, Diverted, Succeeded, EarlierImageRecorded, Failed, DeadLettered, Cancelled,
    Touched, Requeued, AcceptAbandoned,
    BatchSucceeded, BatchFailed, BatchErrorNoted, BatchDeadLettered, BatchCancelled,
]


# --- batch intents (BatchStore.update_intent, and the intent half of checkpoint) --------------


@dataclass(frozen=True)
class QuotaBackOff:
    """A 429 on upload or create: no try before `until`; `waits` 429s in a row."""
    at: float
    until: float
    waits: int
    error: str

    def as_fields(self) -> dict[str, Any]:
        return {"next_attempt_at": self.until, "quota_waits": self.waits, "error": self.error, "updated_at": self.at}


@dataclass(frozen=True)
class InputUploaded:
    """The batch's input file is uploaded (with the API key of this fingerprint)."""
    at: float
    input_file: str
    key_fingerprint: str

    def as_fields(self) -> dict[str, Any]:
        return {"state": IntentState.CREATING.value, "input_file": self.input_file, "input_uploaded_at": self.at,
                "key_fingerprint": self.key_fingerprint, "updated_at": self.at}


@dataclass(frozen=True)
class InputDropped:
    """The uploaded input cannot serve the next create (gone: a 403); the next try uploads anew."""
    at: float

    def as_fields(self) -> dict[str, Any]:
        return {"input_file": None, "input_uploaded_at": None, "updated_at": self.at}


@dataclass(frozen=True)
class InputRefused:
    """The service refused the input (`failures` times in a row, under the limit): upload anew."""
    at: float
    failures: int
    error: str

    def as_fields(self) -> dict[str, Any]:
        return {"submit_failures": self.failures, "error": self.error, "input_file": None,
                "input_uploaded_at": None, "updated_at": self.at}


@dataclass(frozen=True)
class BatchRecorded:
    """The Gemini batch exists and is named (created now, or found after a crash)."""
    at: float
    gemini_batch: str
    gemini_state: str

    def as_fields(self) -> dict[str, Any]:
        return {"state": IntentState.SUBMITTED.value, "gemini_batch": self.gemini_batch,
                "gemini_state": self.gemini_state, "submitted_at": self.at, "updated_at": self.at}


@dataclass(frozen=True)
class GeminiStateSeen:
    """batches.get reported a new state for the batch."""
    at: float
    gemini_state: str

    def as_fields(self) -> dict[str, Any]:
        return {"gemini_state": self.gemini_state, "updated_at": self.at}


@dataclass(frozen=True)
class IngestStarted:
    """The batch succeeded: its results file is to be ingested. Records the state seen too, in
    the same write (a GeminiStateSeen before it would cost a round trip per batch)."""
    at: float
    output_file: str | None

    def as_fields(self) -> dict[str, Any]:
        return {"state": IntentState.INGESTING.value, "gemini_state": "BATCH_STATE_SUCCEEDED",
                "output_file": self.output_file, "updated_at": self.at}


@dataclass(frozen=True)
class IngestProgress:
    """Every result line up to `lines_done` is recorded (a checkpoint while ingesting), and
    `bytes_done` is the results file's byte offset just past that line, where a resumed
    download starts."""
    at: float
    lines_done: int
    bytes_done: int = 0

    def as_fields(self) -> dict[str, Any]:
        return {"lines_done": self.lines_done, "bytes_done": self.bytes_done, "updated_at": self.at}


@dataclass(frozen=True)
class IngestRequested:
    """A nudge was published for the intent's ingest: a tick publishes no other before the
    grace period is over (a lost nudge is published again after it)."""
    at: float

    def as_fields(self) -> dict[str, Any]:
        return {"ingest_requested_at": self.at, "updated_at": self.at}


@dataclass(frozen=True)
class ResultsUnreadable:
    """The results file could not be read, `failures` ticks in a row."""
    at: float
    failures: int

    def as_fields(self) -> dict[str, Any]:
        return {"results_errors": self.failures, "updated_at": self.at}


@dataclass(frozen=True)
class IntentFinished:
    """Nothing more to do for the intent. An intent whose input was refused for good also
    records the refusals and the last message (None: left as stored)."""
    at: float
    outcome: str
    submit_failures: int | None = None
    error: str | None = None

    def as_fields(self) -> dict[str, Any]:
        # No next_check_at: a finished intent is never due again (BatchStore.due_intents).
        fields: dict[str, Any] = {"state": IntentState.FINISHED.value, "outcome": self.outcome,
                                  "finished_at": self.at, "updated_at": self.at, "next_check_at": None}
        if self.submit_failures is not None:
            fields["submit_failures"] = self.submit_failures
        if self.error is not None:
            fields["error"] = self.error
        return fields


IntentChange = Union[
    QuotaBackOff, InputUploaded, InputDropped, InputRefused, BatchRecorded, GeminiStateSeen,
    IngestStarted, IngestProgress, IngestRequested, ResultsUnreadable, IntentFinished,
]


# --- completion events (EventStore.update_event) ---------------------------------------------


@dataclass(frozen=True)
class EventAttempt:
    """One delivery attempt's record, its lease released. `state`: delivered, failed for good,
    or pending (retrying at `next_attempt_at`). A channel done in this attempt is recorded as
    done; one not done (False) is left as stored, since an earlier attempt may have done it."""
    at: float
    attempts: int
    state: EventState
    pubsub_done: bool = False
    webhook_done: bool = False
    last_error: str | None = None
    next_attempt_at: float | None = None

    def as_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"attempts": self.attempts, **_RELEASED, "updated_at": self.at}
        if self.pubsub_done:
            fields["pubsub_done"] = True
        if self.webhook_done:
            fields["webhook_done"] = True
        # Imported here: core.events imports this module for EventAttempt.
        from core.events import EventState

        if self.state is EventState.DELIVERED:
            fields.update(state=self.state.value, delivered_at=self.at, next_attempt_at=None, last_error=None)
        elif self.state is EventState.FAILED:
            fields.update(last_error=self.last_error, state=self.state.value, next_attempt_at=None)
        else:
            fields.update(last_error=self.last_error, next_attempt_at=self.next_attempt_at)
        return fields


# --- a job's background expansion, under its lease (JobStore.update_expansion) ----------------


@dataclass(frozen=True)
class ExpansionSaved:
    """A checkpoint of the expansion record (core.expanding.Expansion.to_dict), or the lease
    given back with it; the job stays accepting."""
    at: float
    expansion: Mapping[str, Any]

    def as_fields(self) -> dict[str, Any]:
        return {"expansion": dict(self.expansion), "updated_at": self.at}


@dataclass(frozen=True)
class ExpansionFinished:
    """accepting -> queued: every item is written, the count is known (and, for a caller's
    source, the estimate)."""
    at: float
    expansion: Mapping[str, Any]
    item_count: int
    estimated_cost_usd: float | None

    def as_fields(self) -> dict[str, Any]:
        return {"expansion": dict(self.expansion), "status": JobStatus.QUEUED.value, "item_count": self.item_count,
                "estimated_cost_usd": self.estimated_cost_usd, "updated_at": self.at}


@dataclass(frozen=True)
class ExpansionFailed:
    """accepting -> failed with the reason; the expansion record is left as it was."""
    at: float
    error: str

    def as_fields(self) -> dict[str, Any]:
        return {"status": JobStatus.FAILED.value, "error": self.error, "updated_at": self.at, "finished_at": self.at}


ExpansionChange = Union[ExpansionSaved, ExpansionFinished, ExpansionFailed]
