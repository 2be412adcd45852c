"""FirestoreJobStore and friends on the emulator: every growing record carries the expire_at its
TTL policy acts on, and a job's item counts (core/item_counts.py) stay equal to what count()
queries over its items say, through repeated, redelivered and concurrent state changes."""
from __future__ import annotations

import datetime as dt
import os
import threading

import pytest

from core.item_counts import shard_of
from core.models import ItemState, JobStatus
from core.models import PoolEntry
from core.retention import DAY_SECONDS, day_expire_at
from core.transitions import BatchFailed, BatchSucceeded, IngestProgress, ItemChange, Requeued
from tests.fakes import ended
from tests.integration.test_contracts import make_intents, make_job

DAYS = 7


@pytest.fixture
def client(firestore_clean):
    from google.cloud import firestore

    return firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])


@pytest.fixture
def store(client):
    from adapters.firestore.jobs import FirestoreJobStore

    return FirestoreJobStore(client, retention_days=DAYS)


def expiry(doc) -> float:
    value = doc.to_dict()["expire_at"]
    assert isinstance(value, dt.datetime), value  # a Timestamp: the only type a TTL policy acts on
    return value.timestamp()


def test_a_job_its_items_counts_and_intents_expire_with_the_job(store, client):
    job, items = make_job(3)
    job.status = JobStatus.ACCEPTING
    store.create_job_doc(job)
    store.create_items(job.job_id, items, job_created_at=job.created_at)
    _, intents = make_intents(job)
    store.create_intents(intents)
    want = job.created_at + DAYS * DAY_SECONDS
    job_ref = client.collection("jobs").document(job.job_id)
    assert expiry(job_ref.get()) == want
    assert [expiry(d) for d in job_ref.collection("items").stream()] == [want] * 3
    assert {expiry(d) for d in job_ref.collection("item_counts").stream()} == {want}
    assert {expiry(client.collection("batches").document(i.intent_id).get()) for i in intents} == {want}


def test_items_of_a_resumed_accept_keep_the_jobs_expiry_not_their_own_time(store, client):
    job, items = make_job(2)
    later = [type(it)(**{**it.__dict__, "updated_at": job.created_at + 500}) for it in items]
    store.create_job(job, items[:1])
    store.create_items(job.job_id, later, job_created_at=job.created_at)
    docs = client.collection("jobs").document(job.job_id).collection("items").stream()
    assert {expiry(d) for d in docs} == {job.created_at + DAYS * DAY_SECONDS}


def test_events_pool_entries_and_usage_shards_expire(client, store):
    from adapters.firestore.events import FirestoreEventStore
    from adapters.firestore.usage import FirestoreCounterStore
    from adapters.firestore.pool import FirestorePoolStore
    from core.events import Event

    FirestoreEventStore(client, retention_days=DAYS).create_event(
        Event(event_id="e1", type="job.completed", job_id="j", body="{}", created_at=1000.0))
    FirestorePoolStore(client, store, retention_days=DAYS).add(PoolEntry("j", "k", pooled_at=2000.0))
    counters = FirestoreCounterStore(client, shards=1, retention_days=DAYS)
    counters.add("2026-03-08", {"images": 1})  # a 23-hour day (DST starts in the US)
    counters.add("2026-03-08", {"images": 1})
    assert expiry(client.collection("events").document("e1").get()) == 1000.0 + DAYS * DAY_SECONDS
    assert expiry(client.collection("pool").document("j~k").get()) == 2000.0 + DAYS * DAY_SECONDS
    shard = client.collection("usage").document("2026-03-08").collection("shards").document("0").get()
    assert expiry(shard) == day_expire_at("2026-03-08", DAYS)
    assert shard.to_dict()["images"] == 2


# --- item counts -------------------------------------------------------------------------------


def assert_counts_match_queries(store, job_id):
    assert store._count_shards(job_id), "the job should be counted by its shards"
    assert store.count_items(job_id) == store._count_by_queries(job_id)


def test_counts_follow_claims_finishes_and_requeues_and_ignore_repeats(store):
    job, items = make_job(6)
    store.create_job(job, items)
    assert store.count_items(job.job_id)[ItemState.QUEUED] == 6
    assert store.claim_item(job.job_id, "k0", "w", 200.0, 60)
    assert store.claim_item(job.job_id, "k0", "w2", 300.0, 60)  # a redelivery after the lease ran out
    # A change that keeps the lease (as a batch result does), so that it can land twice.
    done = BatchSucceeded(300.0, "intent-1", 1, "gs://b/k0.png", {}, "STOP", None)
    assert store.finish_item(job.job_id, "k0", "w2", done)
    assert store.finish_item(job.job_id, "k0", "w2", done)  # the same finish again: counts once
    assert store.claim_item(job.job_id, "k1", "w", 200.0, 60)
    assert store.finish_item(job.job_id, "k1", "w", ended(ItemState.DEAD_LETTERED, 210.0))
    assert store.requeue_item(job.job_id, "k1", ItemState.DEAD_LETTERED, Requeued(220.0, None))
    assert not store.requeue_item(job.job_id, "k1", ItemState.DEAD_LETTERED, Requeued(220.0, None))
    assert_counts_match_queries(store, job.job_id)
    counts = store.count_items(job.job_id)
    assert (counts[ItemState.QUEUED], counts[ItemState.SUCCEEDED], counts[ItemState.RUNNING]) == (5, 1, 0)
    assert store.count_succeeded_by_lane(job.job_id) == {"batch": 1}


def test_a_checkpoint_written_twice_counts_its_items_once(store):
    job, _ = make_job(4)
    items, intents = make_intents(job, n_keys_each=4)
    store.create_job(job, items)
    store.create_intents(intents)
    store.claim_intent(intents[0].intent_id, "poller", 100.0, 60)
    intent_id = intents[0].intent_id
    results: dict[str, ItemChange] = {
        f"k{i}": BatchSucceeded(200.0, intent_id, 1, f"gs://b/k{i}.png", {}, "STOP", None) if i
        else BatchFailed(200.0, "refused", 1, intent_id) for i in range(4)}
    assert store.checkpoint(intent_id, "poller", IngestProgress(200.0, 4), results)
    # Again: a poller that died before it could note the first one.
    assert store.checkpoint(intent_id, "poller", IngestProgress(200.0, 4), results)
    assert_counts_match_queries(store, job.job_id)
    assert store.count_succeeded_by_lane(job.job_id) == {"batch": 3}
    assert not store.checkpoint(intent_id, "someone-else", IngestProgress(200.0, 4), results)


def test_a_checkpoint_past_one_firestore_batch_counts_every_item(store):
    job, _ = make_job(700)
    items, intents = make_intents(job, n_keys_each=700)
    store.create_job(job, items)
    store.create_intents(intents)
    store.claim_intent(intents[0].intent_id, "poller", 100.0, 60)
    results = {it.key: BatchSucceeded(200.0, intents[0].intent_id, 1, f"gs://b/{it.key}.png", {}, "STOP", None)
               for it in items}
    assert store.checkpoint(intents[0].intent_id, "poller", IngestProgress(200.0, 700), results)
    assert_counts_match_queries(store, job.job_id)
    assert store.count_items(job.job_id)[ItemState.SUCCEEDED] == 700


def test_concurrent_finishers_of_one_job_lose_no_count(store):
    job, items = make_job(24, lane="interactive")
    store.create_job(job, items)
    assert len({shard_of(it.key, 4) for it in items}) > 1  # the changes spread over shards

    def work(keys):
        for key in keys:
            store.claim_item(job.job_id, key, f"w-{key}", 200.0, 60)
            store.finish_item(job.job_id, key, f"w-{key}", ended(ItemState.SUCCEEDED, 210.0))

    keys = [it.key for it in items]
    threads = [threading.Thread(target=work, args=(keys[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_counts_match_queries(store, job.job_id)
    assert store.count_items(job.job_id)[ItemState.SUCCEEDED] == 24


def test_a_job_written_before_counts_were_kept_is_counted_by_queries(store, client):
    from google.cloud import firestore

    job, items = make_job(3, lane="interactive")
    store.create_job(job, items)
    counts = client.collection("jobs").document(job.job_id).collection("item_counts")
    for doc in counts.stream():
        doc.reference.delete()
    for doc in client.collection("jobs").document(job.job_id).collection("items").stream():
        doc.reference.update({"count_shard": firestore.DELETE_FIELD})
    store.claim_item(job.job_id, "k0", "w", 200.0, 60)
    store.finish_item(job.job_id, "k0", "w", ended(ItemState.SUCCEEDED, 210.0))
    assert not store._count_shards(job.job_id)  # nothing counted for an item without a shard
    counts = store.count_items(job.job_id)
    assert (counts[ItemState.QUEUED], counts[ItemState.SUCCEEDED]) == (2, 1)
    assert store.count_succeeded_by_lane(job.job_id) == {"interactive": 1}
