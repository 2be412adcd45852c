"""Every typed state change, applied by the in-memory fakes and by the Firestore adapters: each
store writes exactly the fields the change names and keeps every other field as it was."""
from __future__ import annotations

import dataclasses

import pytest

from core.events import EventState
from core.expanding import Expansion
from core.models import JobStatus
from core.transitions import EventAttempt, HandedBack, IngestProgress, QuotaBackOff
from tests.integration.test_contracts import job_store, make_intents, make_job  # noqa: F401 (fixture)
from tests.integration.test_event_contracts import event_store, make_event  # noqa: F401 (fixture)
from tests.unit.test_transitions import EXPANSION_CHANGES, INTENT_CHANGES, ITEM_CHANGES


def _stored(record) -> dict:
    """A stored record's fields, enums as their stored values."""
    return {k: getattr(v, "value", v) for k, v in dataclasses.asdict(record).items()}


def _assert_changed_only(before: dict, after: dict, fields: dict) -> None:
    assert {k: after[k] for k in fields} == fields
    assert {k: v for k, v in after.items() if k not in fields} == {k: v for k, v in before.items() if k not in fields}


@pytest.mark.parametrize("change, fields", ITEM_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_an_item_change_under_the_lease_writes_its_fields_and_keeps_the_rest(job_store, change, fields):  # noqa: F811
    job, items = make_job(1, lane="interactive")
    job_store.create_job(job, items)
    # An earlier attempt's facts, which a change that does not name them must keep.
    job_store.claim_item(job.job_id, "k0", "w0", 100.0, 60)
    job_store.finish_item(job.job_id, "k0", "w0", HandedBack(110.0, attempts=1, quota_retries=2, error="503 earlier"))
    job_store.claim_item(job.job_id, "k0", "w", 120.0, 60)
    before = _stored(job_store.get_item(job.job_id, "k0"))

    assert job_store.finish_item(job.job_id, "k0", "w", change)

    _assert_changed_only(before, _stored(job_store.get_item(job.job_id, "k0")), fields)


@pytest.mark.parametrize("change, fields", ITEM_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_an_item_change_in_a_checkpoint_writes_its_fields_and_keeps_the_rest(job_store, change, fields):  # noqa: F811
    job, _ = make_job(2, lane="batch")
    items, (intent,) = make_intents(job)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    job_store.claim_intent(intent.intent_id, "poller", 100.0, 60)
    before = _stored(job_store.get_item(job.job_id, "k1"))

    assert job_store.checkpoint(intent.intent_id, "poller", IngestProgress(101.0, 1), {"k1": change})

    _assert_changed_only(before, _stored(job_store.get_item(job.job_id, "k1")), fields)
    assert job_store.get_intent(intent.intent_id).lines_done == 1


@pytest.mark.parametrize("change, fields", INTENT_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_an_intent_change_writes_its_fields_and_keeps_the_rest(job_store, change, fields):  # noqa: F811
    job, _ = make_job(2, lane="batch")
    items, (intent,) = make_intents(job)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    job_store.claim_intent(intent.intent_id, "poller", 100.0, 60)
    assert job_store.update_intent(intent.intent_id, "poller", QuotaBackOff(101.0, 160.0, 1, "429 earlier"))
    before = _stored(job_store.get_intent(intent.intent_id))

    assert job_store.update_intent(intent.intent_id, "poller", change)

    _assert_changed_only(before, _stored(job_store.get_intent(intent.intent_id)), fields)


@pytest.mark.parametrize("change, fields", EXPANSION_CHANGES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_an_expansion_change_writes_its_fields_and_keeps_the_rest(job_store, change, fields):  # noqa: F811
    job, _ = make_job(3)
    job.status, job.error = JobStatus.ACCEPTING, None
    job.expansion = Expansion("gs://b/_accepted/j.jsonl", 7, items=2).to_dict()
    job_store.create_job_doc(job)
    job_store.claim_expansion(job.job_id, "a", 1.0, 60)
    before = _stored(job_store.get_job(job.job_id))

    assert job_store.update_expansion(job.job_id, "a", change)

    _assert_changed_only(before, _stored(job_store.get_job(job.job_id)), fields)
    assert not job_store.update_expansion(job.job_id, "b", change)  # another's lease: nothing written


@pytest.mark.parametrize("attempt", [
    EventAttempt(150.0, 1, EventState.DELIVERED, pubsub_done=True, webhook_done=True),
    EventAttempt(150.0, 1, EventState.PENDING, webhook_done=True, last_error="pubsub: 503", next_attempt_at=180.0),
    EventAttempt(150.0, 1, EventState.FAILED, last_error="webhook: 410"),
], ids=["delivered", "retrying", "failed"])
def test_an_event_attempt_writes_its_fields_and_keeps_the_rest(event_store, attempt):  # noqa: F811
    event = make_event(due=100.0)
    event_store.create_event(event)
    event_store.claim_event(event.event_id, "a", now=100.0, lease_seconds=60)
    before = _stored(event_store.get_event(event.event_id))

    assert event_store.update_event(event.event_id, "a", attempt)

    _assert_changed_only(before, _stored(event_store.get_event(event.event_id)), attempt.as_fields())
