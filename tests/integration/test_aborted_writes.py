"""Create-only writes on the emulator when Firestore aborts some commits (contention).

google.api_core makes ABORTED and ALREADY_EXISTS both `Conflict`s. A store that took an abort for
"the document exists" dropped documents silently: a batch of a job's items aborted, then each
item created alone, one of those aborted too, and that item was never written while the
expansion counted it. These tests abort chosen commits (nothing written, as Firestore does) and
check that every document and every count still lands exactly once."""
from __future__ import annotations

import os

import pytest
from google.api_core import exceptions as gexc

from core.models import BatchIntent, ItemState, JobStatus
from tests.integration.test_contracts import make_intents, make_job


@pytest.fixture
def client(firestore_clean):
    from google.cloud import firestore

    return firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])


@pytest.fixture
def store(client):
    from adapters.firestore.jobs import FirestoreJobStore

    return FirestoreJobStore(client)


class AbortingBatches:
    """Wraps a client's batch(): the commits numbered in `aborts` (0 = the first) raise ABORTED
    without writing anything; every other commit is the real one."""

    def __init__(self, db, aborts: set[int]) -> None:
        self.db, self.aborts, self.commits = db, aborts, 0
        self.real_batch = db.batch

    def __call__(self):
        batch = self.real_batch()
        real_commit = batch.commit

        def commit(*args, **kwargs):
            n, self.commits = self.commits, self.commits + 1
            if n in self.aborts:
                raise gexc.Aborted("Too much contention on these documents. Please try again.")
            return real_commit(*args, **kwargs)

        batch.commit = commit
        return batch


def test_items_whose_batch_and_single_creates_are_aborted_are_all_written_and_counted(store, client):
    job, items = make_job(5)
    job.status = JobStatus.ACCEPTING
    store.create_job_doc(job)
    store.create_items(job.job_id, items[:2], job_created_at=job.created_at)  # an earlier attempt's
    # The batch meets existing items (ALREADY_EXISTS: one at a time, in order); the creates of
    # the first two new ones (items 2 and 3, commits 3 and 4) abort once each.
    store.db.batch = AbortingBatches(store.db, aborts={3, 4})
    store.create_items(job.job_id, items, job_created_at=job.created_at)
    stored = client.collection("jobs").document(job.job_id).collection("items").stream()
    assert sorted(d.to_dict()["key"] for d in stored) == sorted(it.key for it in items)
    assert store.count_items(job.job_id).get(ItemState.QUEUED) == 5


def test_an_aborted_batch_of_new_items_is_tried_again_not_taken_as_existing(store, client):
    job, items = make_job(4)
    job.status = JobStatus.ACCEPTING
    store.create_job_doc(job)
    aborting = AbortingBatches(store.db, aborts={0, 1})
    store.db.batch = aborting
    store.create_items(job.job_id, items, job_created_at=job.created_at)
    assert aborting.commits == 3  # two aborts, then the batch itself: no one-by-one fallback
    assert store.count_items(job.job_id).get(ItemState.QUEUED) == 4


def test_an_abort_that_persists_is_raised(store):
    job, items = make_job(2)
    job.status = JobStatus.ACCEPTING
    store.create_job_doc(job)
    store.db.batch = AbortingBatches(store.db, aborts=set(range(100)))
    with pytest.raises(gexc.Aborted):
        store.create_items(job.job_id, items, job_created_at=job.created_at)
    assert store.count_items(job.job_id).get(ItemState.QUEUED, 0) == 0


def abort_first_create(collection, doc_id: str, monkeypatch) -> list[int]:
    """Make `collection.document(doc_id).create` raise ABORTED (writing nothing) on its first
    call and create for real after; returns the list of calls, one entry per call."""
    ref = collection.document(doc_id)
    real_create, calls = ref.create, []

    def create(data):
        calls.append(1)
        if len(calls) == 1:
            raise gexc.Aborted("contention")
        return real_create(data)

    monkeypatch.setattr(type(collection), "document", lambda self, _id: _Ref(ref, create))
    return calls


class _Ref:
    def __init__(self, ref, create) -> None:
        self._ref, self.create = ref, create

    def __getattr__(self, name):
        return getattr(self._ref, name)


def test_an_aborted_intent_create_is_tried_again(store, client, monkeypatch):
    job, _ = make_job(2)
    _, intents = make_intents(job)
    intent: BatchIntent = intents[0]
    calls = abort_first_create(store.intents, intent.intent_id, monkeypatch)
    assert store.create_intent(intent) is True and len(calls) == 2
    assert client.collection("batches").document(intent.intent_id).get().exists
    assert store.create_intent(intent) is False  # now it exists


def test_an_aborted_event_create_is_tried_again(client, monkeypatch):
    from adapters.firestore.events import FirestoreEventStore
    from core.events import Event

    outbox = FirestoreEventStore(client)
    event = Event(event_id="job-1.done", type="job.finished", job_id="job-1", body="{}", created_at=1.0,
                  next_attempt_at=1.0)
    calls = abort_first_create(outbox.events, event.event_id, monkeypatch)
    assert outbox.create_event(event) is True and len(calls) == 2
    assert outbox.create_event(event) is False
