"""The stored fields of every typed state change: existing documents and both stores depend on
these names, so each kind is pinned to exactly what it writes (and what it leaves alone)."""
import pytest

from core.events import EventState
from core.models import ItemState
from core.transitions import (
    AcceptAbandoned, BatchCancelled, BatchDeadLettered, BatchErrorNoted, BatchFailed, BatchRecorded, BatchSucceeded,
    Cancelled, DeadLettered, Diverted, EarlierImageRecorded, EventAttempt, ExpansionFailed, ExpansionFinished,
    ExpansionSaved, Failed, GeminiStateSeen, HandedBack,
    IngestProgress, IngestRequested, IngestStarted, InputDropped, InputRefused, InputUploaded, IntentFinished,
    LeaseRenewed, QuotaBackOff, Requeued, ResultsUnreadable, Succeeded, Touched,
)

FACTS = {"sha256": "ab", "bytes": 10, "format": "png", "width": 2, "height": 3}
RELEASED = {"lease_owner": None, "lease_expires_at": None}

ITEM_CHANGES = [
    (LeaseRenewed(160.0), {"lease_expires_at": 160.0}),
    (HandedBack(5.0, attempts=2, quota_retries=1),
     {"state": "queued", **RELEASED, "attempts": 2, "quota_retries": 1, "updated_at": 5.0}),
    (HandedBack(5.0, attempts=2, quota_retries=1, error="503"),
     {"state": "queued", **RELEASED, "attempts": 2, "quota_retries": 1, "updated_at": 5.0, "error": "503"}),
    (Diverted(5.0),
     {"state": "queued", "lane": "batch", "pooled_at": 5.0, "batch_intent": None, **RELEASED, "updated_at": 5.0}),
    (Succeeded(5.0, "gs://b/j/k.png", {**FACTS, "other": 1}, attempts=1, quota_retries=0, finish_reason="STOP",
               output_tokens=None),
     {"state": "succeeded", **RELEASED, "updated_at": 5.0, "attempts": 1, "quota_retries": 0,
      "gcs_uri": "gs://b/j/k.png", "finish_reason": "STOP", "output_tokens": None, "error": None, **FACTS}),
    (EarlierImageRecorded(5.0, "gs://b/j/k.png", FACTS, attempts=3, quota_retries=2),
     {"state": "succeeded", **RELEASED, "updated_at": 5.0, "attempts": 3, "quota_retries": 2,
      "gcs_uri": "gs://b/j/k.png", "error": None, **FACTS}),
    (Failed(5.0, "refused", attempts=1, quota_retries=0),
     {"state": "failed", **RELEASED, "updated_at": 5.0, "error": "refused", "attempts": 1, "quota_retries": 0}),
    (DeadLettered(5.0, "gave up", attempts=3, quota_retries=1),
     {"state": "dead_lettered", **RELEASED, "updated_at": 5.0, "error": "gave up", "attempts": 3,
      "quota_retries": 1}),
    (DeadLettered(5.0, "Pub/Sub gave up"),
     {"state": "dead_lettered", **RELEASED, "updated_at": 5.0, "error": "Pub/Sub gave up"}),
    (Cancelled(5.0), {"state": "cancelled", **RELEASED, "updated_at": 5.0, "error": "job cancelled"}),
    (Touched(5.0), {"updated_at": 5.0}),
    (Requeued(5.0, None),
     {"state": "queued", "attempts": 0, **RELEASED, "updated_at": 5.0, "error": None}),
    (Requeued(5.0, "retried after: x", to_pool=True),
     {"state": "queued", "attempts": 0, **RELEASED, "updated_at": 5.0, "error": "retried after: x",
      "pooled_at": 5.0, "batch_intent": None}),
    (AcceptAbandoned(5.0, "abandoned"), {"state": "failed", "error": "abandoned", "updated_at": 5.0}),
    (BatchSucceeded(5.0, "i-1", 2, "gs://b/j/k.png", FACTS, "STOP", 1290),
     {"state": "succeeded", "gcs_uri": "gs://b/j/k.png", "finish_reason": "STOP", "output_tokens": 1290,
      "attempts": 2, "error": None, "lane": "batch", "batch_intent": "i-1", "updated_at": 5.0, **FACTS}),
    (BatchFailed(5.0, "refused", 2, intent_id="i-1"),
     {"state": "failed", "error": "refused", "attempts": 2, "lane": "batch", "batch_intent": "i-1",
      "updated_at": 5.0}),
    (BatchFailed(5.0, "input refused", 1),
     {"state": "failed", "error": "input refused", "attempts": 1, "lane": "batch", "updated_at": 5.0}),
    (BatchErrorNoted(5.0, "503", 2), {"error": "503", "attempts": 2, "updated_at": 5.0}),
    (BatchDeadLettered(5.0, "gave up", 3),
     {"state": "dead_lettered", "updated_at": 5.0, "error": "gave up", "lane": "batch", "attempts": 3}),
    (BatchCancelled(5.0, "job cancelled"), {"state": "cancelled", "error": "job cancelled", "updated_at": 5.0}),
]


@pytest.mark.parametrize("change, fields", ITEM_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_each_item_change_writes_exactly_its_fields(change, fields):
    assert change.as_fields() == fields
    state = fields.get("state")
    assert change.state == (ItemState(state) if state else None)  # what the batch lane's usage counts


INTENT_CHANGES = [
    (QuotaBackOff(5.0, 65.0, 2, "429"),
     {"next_attempt_at": 65.0, "quota_waits": 2, "error": "429", "updated_at": 5.0}),
    (InputUploaded(5.0, "files/x", "fp"),
     {"state": "creating", "input_file": "files/x", "input_uploaded_at": 5.0, "key_fingerprint": "fp",
      "updated_at": 5.0}),
    (InputDropped(5.0), {"input_file": None, "input_uploaded_at": None, "updated_at": 5.0}),
    (InputRefused(5.0, 2, "400"),
     {"submit_failures": 2, "error": "400", "input_file": None, "input_uploaded_at": None, "updated_at": 5.0}),
    (BatchRecorded(5.0, "batches/x", "BATCH_STATE_PENDING"),
     {"state": "submitted", "gemini_batch": "batches/x", "gemini_state": "BATCH_STATE_PENDING",
      "submitted_at": 5.0, "updated_at": 5.0}),
    (GeminiStateSeen(5.0, "BATCH_STATE_RUNNING"), {"gemini_state": "BATCH_STATE_RUNNING", "updated_at": 5.0}),
    (IngestStarted(5.0, "files/out"), {"state": "ingesting", "gemini_state": "BATCH_STATE_SUCCEEDED",
                                       "output_file": "files/out", "updated_at": 5.0}),
    (IngestProgress(5.0, 200, 4096), {"lines_done": 200, "bytes_done": 4096, "updated_at": 5.0}),
    (IngestRequested(5.0), {"ingest_requested_at": 5.0, "updated_at": 5.0}),
    (ResultsUnreadable(5.0, 2), {"results_errors": 2, "updated_at": 5.0}),
    (IntentFinished(5.0, "succeeded"),
     {"state": "finished", "outcome": "succeeded", "finished_at": 5.0, "updated_at": 5.0, "next_check_at": None}),
    (IntentFinished(5.0, "refused 3 times", submit_failures=3, error="400"),
     {"state": "finished", "outcome": "refused 3 times", "finished_at": 5.0, "updated_at": 5.0,
      "next_check_at": None, "submit_failures": 3, "error": "400"}),
]


@pytest.mark.parametrize("change, fields", INTENT_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_each_intent_change_writes_exactly_its_fields(change, fields):
    assert change.as_fields() == fields


EXPANSION = {"source_uri": "gs://b/_accepted/j.jsonl", "generation": 7, "items": 12, "owner": "a", "lease_until": 9.0}
EXPANSION_CHANGES = [
    (ExpansionSaved(5.0, EXPANSION), {"expansion": EXPANSION, "updated_at": 5.0}),
    (ExpansionFinished(5.0, {**EXPANSION, "owner": None}, 12, 0.48),
     {"expansion": {**EXPANSION, "owner": None}, "status": "queued", "item_count": 12, "estimated_cost_usd": 0.48,
      "updated_at": 5.0}),
    (ExpansionFailed(5.0, "the source is gone"),
     {"status": "failed", "error": "the source is gone", "updated_at": 5.0, "finished_at": 5.0}),
]


@pytest.mark.parametrize("change, fields", EXPANSION_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_each_expansion_change_writes_exactly_its_fields(change, fields):
    assert change.as_fields() == fields


def test_an_event_attempt_records_its_outcome_and_only_the_channels_it_delivered_on():
    base = {"attempts": 2, **RELEASED, "updated_at": 5.0}
    delivered = EventAttempt(5.0, 2, EventState.DELIVERED, webhook_done=True)
    assert delivered.as_fields() == {**base, "webhook_done": True, "state": "delivered", "delivered_at": 5.0,
                                     "next_attempt_at": None, "last_error": None}
    retrying = EventAttempt(5.0, 2, EventState.PENDING, pubsub_done=True, last_error="webhook: 503",
                            next_attempt_at=65.0)
    # Still pending: the state is not written, and webhook_done is left as an earlier attempt wrote it.
    assert retrying.as_fields() == {**base, "pubsub_done": True, "last_error": "webhook: 503", "next_attempt_at": 65.0}
    failed = EventAttempt(5.0, 2, EventState.FAILED, last_error="webhook: 410")
    assert failed.as_fields() == {**base, "last_error": "webhook: 410", "state": "failed", "next_attempt_at": None}
