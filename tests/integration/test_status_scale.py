"""A job's status costs the same whatever the job's size, on the Firestore emulator: the same
documents read, and about the same bytes, for a job with ten times the batches and ten times
the keys in each. Its batches are paged; intents written before key_count are still counted."""
from __future__ import annotations

import os
import uuid

import pytest

from adapters.firestore.ops import FirestoreOps, OpCounts, count_ops
from core import jobs
from core.models import BatchIntent, Job, JobStatus, Lane
from tests.integration.test_contracts import job_store  # noqa: F401 - the contract fixture (fake and Firestore)


class _CountingBytes:
    """The client's API with the bytes of the documents it returns counted (queries and gets)."""

    def __init__(self, api) -> None:
        self._api = api
        self.bytes = 0

    def __getattr__(self, name: str):
        return getattr(self._api, name)

    def run_query(self, *args, **kwargs):
        for response in self._api.run_query(*args, **kwargs):
            self.bytes += type(response).pb(response).ByteSize()
            yield response

    def batch_get_documents(self, *args, **kwargs):
        for response in self._api.batch_get_documents(*args, **kwargs):
            self.bytes += type(response).pb(response).ByteSize()
            yield response


@pytest.fixture
def counted(firestore_clean):
    from google.cloud import firestore

    from adapters.firestore.jobs import FirestoreJobStore

    ops = FirestoreOps()
    client = count_ops(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]), ops)
    wire = _CountingBytes(client._firestore_api)
    client._firestore_api_internal = wire
    return FirestoreJobStore(client), ops, wire


def batch_job(store, intents: int, keys_each: int) -> Job:
    job = Job(job_id=uuid.uuid4().hex, lane=Lane.BATCH, status=JobStatus.QUEUED, model="m",
              item_count=intents * keys_each, created_at=100.0, updated_at=100.0)
    store.create_job_doc(job)
    store.create_intents([
        BatchIntent(intent_id=f"{job.job_id}-e{n:07d}.000-a1", job_id=job.job_id, model="m",
                    keys=[f"item-{n}-{k:06d}" for k in range(keys_each)], attempt=1, created_at=100.0, updated_at=100.0)
        for n in range(intents)])
    return job


def status_cost(store, ops, wire, job_id: str, token: str | None = None) -> tuple[dict, OpCounts, int]:
    before, bytes_before = ops.counts(), wire.bytes
    status = jobs.get_job_status(job_id, jobs.StatusDeps(store, batches=store), page_size=10,
                                 batches_page_token=token)
    return status, ops.counts() - before, wire.bytes - bytes_before


def test_a_status_reads_the_same_for_a_job_ten_times_larger(counted, monkeypatch):
    store, ops, wire = counted
    monkeypatch.setattr(jobs, "BATCH_PAGE_SIZE", 5)
    small, large = batch_job(store, 10, 100), batch_job(store, 100, 1000)

    small_status, small_ops, small_bytes = status_cost(store, ops, wire, small.job_id)
    large_status, large_ops, large_bytes = status_cost(store, ops, wire, large.job_id)

    assert (small_status["batch_count"], large_status["batch_count"]) == (10, 100)
    assert [b["items"] for b in large_status["batches"]] == [1000] * 5
    assert large_ops == small_ops, (small_ops, large_ops)
    # Reading the keys again would cost the large job 100 times the small one's key bytes.
    assert large_bytes < small_bytes * 1.2, (small_bytes, large_bytes)


def test_the_batches_are_paged_in_id_order_to_the_last(counted, monkeypatch):
    store, ops, wire = counted
    monkeypatch.setattr(jobs, "BATCH_PAGE_SIZE", 4)
    job = batch_job(store, 10, 3)
    seen, token = [], None
    for _ in range(10):
        status, _, _ = status_cost(store, ops, wire, job.job_id, token)
        seen += [b["intent_id"] for b in status["batches"]]
        token = status["batches_next_page_token"]
        if token is None:
            break
    assert seen == sorted(i.intent_id for i in store.intents_of_job(job.job_id)) and len(seen) == 10


def test_an_intent_written_before_key_count_is_counted_from_its_keys(counted):
    from google.cloud import firestore

    store, _, _ = counted
    job = batch_job(store, 2, 7)
    legacy = store.intents.document(f"{job.job_id}-e0000000.000-a1")
    legacy.update({"key_count": firestore.DELETE_FIELD})
    assert "key_count" not in legacy.get().to_dict()

    page = store.intent_page(job.job_id, None, 10)

    assert [i.public()["items"] for i in page] == [7, 7]


def test_intents_are_paged_with_or_without_their_keys(job_store):  # noqa: F811 - the contract fixture
    job = batch_job(job_store, 5, 3)
    other = batch_job(job_store, 2, 1)  # another job's intents are never in the page
    ids = sorted(i.intent_id for i in job_store.intents_of_job(job.job_id))

    first = job_store.intent_page(job.job_id, None, 2)
    rest = job_store.intent_page(job.job_id, first[-1].intent_id, 10)
    whole = job_store.intent_page(job.job_id, ids[0], 1, with_keys=True)

    assert [i.intent_id for i in first + rest] == ids
    assert all(i.keys == [] and i.key_count == 3 and i.public()["items"] == 3 for i in first + rest)
    assert [(i.intent_id, len(i.keys)) for i in whole] == [(ids[1], 3)]
    assert (job_store.count_intents(job.job_id), job_store.count_intents(other.job_id)) == (5, 2)
    assert job_store.intent_page("nobody", None, 10) == [] and job_store.count_intents("nobody") == 0
