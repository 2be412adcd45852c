"""The two store calls of Gemini's webhooks, one body against the fake and Firestore: finding
an intent by its Gemini batch, and making it due ahead of every other."""
from __future__ import annotations

from core.transitions import BatchRecorded, IntentFinished
from tests.integration.test_contracts import job_store, make_intents, make_job  # noqa: F401 - fixture


def test_an_intent_is_found_by_its_batch_and_made_due_first(job_store):  # noqa: F811
    job, _ = make_job(3)
    items, intents = make_intents(job, n_keys_each=1)
    job_store.create_job(job, items)
    job_store.create_intents(intents)
    first, second, third = (i.intent_id for i in intents)
    for n, intent_id in enumerate((first, second)):
        job_store.claim_intent(intent_id, "p", now=150.0, lease_seconds=60)
        assert job_store.update_intent(intent_id, "p", BatchRecorded(150.0, f"batches/b{n}", "JOB_STATE_PENDING"))
        assert job_store.release_intent(intent_id, "p", next_check_at=150.0)
    assert job_store.intent_of_batch("batches/b1").intent_id == second
    assert job_store.intent_of_batch("batches/none") is None

    job_store.claim_intent(second, "holder", now=160.0, lease_seconds=60)
    assert job_store.make_due(second, 0.0)  # whoever holds the lease
    assert [i.intent_id for i in job_store.due_intents(now=200.0, limit=3)] == [second, third, first]
    assert job_store.get_intent(second).lease_owner == "holder"

    job_store.claim_intent(first, "p", now=170.0, lease_seconds=60)
    assert job_store.update_intent(first, "p", IntentFinished(170.0, "succeeded"))
    assert not job_store.make_due(first, 0.0)
    assert not job_store.make_due("no-such-intent", 0.0)
    assert first not in [i.intent_id for i in job_store.due_intents(now=200.0, limit=3)]
