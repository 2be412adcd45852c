"""A batch checkpoint judges each item as it reads it in the checkpoint itself: an item that
already has a result keeps it, and the checkpoint says which changes it wrote. The fake and the
Firestore adapter agree (the same bodies run against both)."""
from __future__ import annotations

from core.models import ItemState
from core.transitions import BatchCancelled, BatchErrorNoted, BatchFailed, BatchSucceeded, IngestProgress
from tests.integration.test_contracts import job_store, make_intents, make_job  # noqa: F401 (fixture)


def _leased(job_store, n=4):  # noqa: F811
    job, _ = make_job(n)
    items, (intent,) = make_intents(job, n_keys_each=n)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    job_store.claim_intent(intent.intent_id, "p", now=200.0, lease_seconds=60)
    return job, intent


def _image(intent_id, key, at=201.0):
    return BatchSucceeded(at, intent_id, 1, f"gs://b/{key}.png", {}, "STOP", None)


def test_a_checkpoint_reports_what_it_wrote_and_keeps_items_that_have_a_result(job_store):  # noqa: F811
    job, intent = _leased(job_store)
    first = job_store.checkpoint(intent.intent_id, "p", IngestProgress(201.0, 2),
                                 {"k0": _image(intent.intent_id, "k0"), "k1": BatchCancelled(201.0, "elsewhere")})
    assert (first.applied, first.kept) == ({"k0", "k1"}, set())

    # A replay of those lines (a crash before the next checkpoint) and a new one.
    again = job_store.checkpoint(intent.intent_id, "p", IngestProgress(202.0, 3), {
        "k0": BatchFailed(202.0, "refused later", 1, intent_id=intent.intent_id),
        "k1": _image(intent.intent_id, "k1", 202.0),
        "k2": BatchErrorNoted(202.0, "503", 1)})

    assert (again.applied, again.kept) == ({"k2"}, {"k0", "k1"})
    k0, k1, k2 = (job_store.get_item(job.job_id, k) for k in ("k0", "k1", "k2"))
    assert (k0.state, k0.gcs_uri, k0.error) == (ItemState.SUCCEEDED, "gs://b/k0.png", None)
    assert (k1.state, k1.gcs_uri) == (ItemState.CANCELLED, None)
    assert (k2.state, k2.error) == (ItemState.QUEUED, "503")
    counts = job_store.count_items(job.job_id)
    assert (counts[ItemState.SUCCEEDED], counts[ItemState.CANCELLED], counts[ItemState.QUEUED]) == (1, 1, 2)
    assert job_store.get_intent(intent.intent_id).lines_done == 3


def test_an_image_beats_its_own_batch_refusal_but_not_another_batchs(job_store):  # noqa: F811
    job, intent = _leased(job_store)
    job_store.checkpoint(intent.intent_id, "p", IngestProgress(201.0, 2), {
        "k0": BatchFailed(201.0, "refused here", 1, intent_id=intent.intent_id),
        "k1": BatchFailed(201.0, "refused in an earlier batch", 1, intent_id="another-intent")})

    done = job_store.checkpoint(intent.intent_id, "p", IngestProgress(202.0, 4),
                                {k: _image(intent.intent_id, k, 202.0) for k in ("k0", "k1")})

    assert (done.applied, done.kept) == ({"k0"}, {"k1"})
    assert job_store.get_item(job.job_id, "k0").state is ItemState.SUCCEEDED
    assert job_store.get_item(job.job_id, "k1").state is ItemState.FAILED
    counts = job_store.count_items(job.job_id)
    assert (counts[ItemState.SUCCEEDED], counts[ItemState.FAILED]) == (1, 1)


def test_a_checkpoint_without_the_lease_writes_nothing_and_says_so(job_store):  # noqa: F811
    job, intent = _leased(job_store)
    assert job_store.checkpoint(intent.intent_id, "someone-else", IngestProgress(201.0, 1),
                                {"k0": _image(intent.intent_id, "k0")}) is None
    assert job_store.get_item(job.job_id, "k0").state is ItemState.QUEUED


def test_a_checkpoint_past_one_firestore_batch_keeps_what_has_a_result(job_store):  # noqa: F811
    job, intent = _leased(job_store, n=1100)
    job_store.checkpoint(intent.intent_id, "p", IngestProgress(201.0, 1),
                         {f"k{i}": BatchCancelled(201.0, "elsewhere") for i in range(0, 1100, 2)})

    done = job_store.checkpoint(intent.intent_id, "p", IngestProgress(202.0, 1100),
                                {f"k{i}": _image(intent.intent_id, f"k{i}", 202.0) for i in range(1100)})

    assert done.applied == {f"k{i}" for i in range(1, 1100, 2)} and len(done.kept) == 550
    counts = job_store.count_items(job.job_id)
    assert (counts[ItemState.SUCCEEDED], counts[ItemState.CANCELLED], counts[ItemState.QUEUED]) == (550, 550, 0)
