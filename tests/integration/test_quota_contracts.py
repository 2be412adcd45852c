"""Contract tests for the quota stores: breaker, usage counters, pending-batch pool,
Idempotency-Key records and the new job-store methods, fake vs Firestore emulator."""
from __future__ import annotations

import os
import threading

import pytest

from core.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Decision
from core.models import ItemState, JobStatus
from core.models import PoolEntry
from core.transitions import BatchSucceeded, Diverted, Requeued
from tests.fakes import (
    FakeClock, InMemoryBreakerStore, InMemoryCounterStore, InMemoryIdempotencyStore, InMemoryPoolStore, ended,
)
from tests.integration.test_contracts import job_store, make_job  # noqa: F401 (fixture)


def _client():
    from google.cloud import firestore

    return firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])


@pytest.fixture(params=["memory", "firestore"])
def breaker_store(request):
    if request.param == "memory":
        return InMemoryBreakerStore()
    request.getfixturevalue("firestore_clean")
    from adapters.firestore.breaker import FirestoreBreakerStore

    return FirestoreBreakerStore(_client(), "test-model")


@pytest.fixture(params=["memory", "firestore"])
def counters(request):
    if request.param == "memory":
        return InMemoryCounterStore()
    request.getfixturevalue("firestore_clean")
    from adapters.firestore.usage import FirestoreCounterStore

    return FirestoreCounterStore(_client(), shards=4)


@pytest.fixture(params=["memory", "firestore"])
def idempotency(request):
    if request.param == "memory":
        return InMemoryIdempotencyStore()
    request.getfixturevalue("firestore_clean")
    from adapters.firestore.idempotency import FirestoreIdempotencyStore

    return FirestoreIdempotencyStore(_client())


def pool_for(job_store):  # noqa: F811
    if not hasattr(job_store, "db"):
        return InMemoryPoolStore(job_store)
    from adapters.firestore.pool import FirestorePoolStore

    return FirestorePoolStore(job_store.db, job_store)


def test_breaker_state_round_trips_and_only_one_of_many_becomes_the_probe(breaker_store):
    clock = FakeClock()
    breakers = [CircuitBreaker(breaker_store, clock, BreakerPolicy(threshold=2, cooldown_seconds=10, cache_seconds=0))
                for _ in range(6)]
    breakers[0].on_quota_failure("a", "PerMinute", per_day=False)
    breakers[1].on_quota_failure("b", "PerMinute", per_day=False)
    assert breakers[5].view().state is BreakerState.OPEN
    clock.advance(11)
    decisions = {}
    threads = [threading.Thread(target=lambda i=i: decisions.__setitem__(i, breakers[i].before_send(f"w{i}")))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(d.value for d in decisions.values()) == ["divert"] * 5 + ["send"]
    [probe] = [i for i, d in decisions.items() if d is Decision.SEND]
    breakers[probe].on_success(f"w{probe}")
    v = breakers[0].view()
    assert v.state is BreakerState.CLOSED and [t["to"] for t in v.transitions] == ["open", "half_open", "closed"]


def test_counters_add_up_across_shards_and_threads(counters):
    def work():
        for _ in range(10):
            counters.add("2026-11-25", {"requests": 1, "spend_usd": 0.039}, {"PerDay": 1})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = counters.read("2026-11-25")
    assert totals["requests"] == 40 and totals["spend_usd"] == pytest.approx(40 * 0.039)
    assert totals["quota_errors_by_id"] == {"PerDay": 40}
    assert counters.read("2026-11-26") == {"quota_errors_by_id": {}, "by_tenant": {}}


def test_counters_per_tenant_add_up_beside_the_totals(counters):
    def work(tenant):
        for _ in range(5):
            counters.add("2026-11-25", {"images": 1, "reserved_usd": 0.5}, None, {tenant: {"images": 1}})

    threads = [threading.Thread(target=work, args=(t,)) for t in ("acme", "glob-ex_2", "acme")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = counters.read("2026-11-25")
    assert totals["images"] == 15 and totals["by_tenant"] == {"acme": {"images": 10}, "glob-ex_2": {"images": 5}}


def test_idempotency_records_are_created_once_and_taken_over_once(idempotency):
    rec, created = idempotency.begin("key", {"job_id": "j1", "body_sha256": "h", "started_at": 1.0,
                                             "expires_at": 86401.0})
    again, created_again = idempotency.begin("key", {"job_id": "j2", "body_sha256": "h", "started_at": 2.0,
                                                     "expires_at": 86402.0})
    assert created and not created_again and again["job_id"] == "j1"
    results = []
    threads = [threading.Thread(target=lambda: results.append(idempotency.take_over("key", 1.0, 500.0)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_pool_entries_and_item_reservation(job_store):  # noqa: F811
    pool = pool_for(job_store)
    job, items = make_job(3)
    job_store.create_job(job, items)
    for it in items[:2]:
        assert job_store.claim_item(job.job_id, it.key, "w", 100.0, 60)
        job_store.finish_item(job.job_id, it.key, "w", Diverted(100.0 + it.index))
        pool.add(PoolEntry(job.job_id, it.key, 100.0 + it.index))
    pool.add(PoolEntry(job.job_id, "k0", 999.0, urgent=True))  # create-only: the first entry stays
    pool.add(PoolEntry(job.job_id, "k2", 102.0, urgent=True))
    assert [(e.key, e.pooled_at, e.urgent) for e in pool.oldest(10)] == [
        ("k0", 100.0, False), ("k1", 101.0, False), ("k2", 102.0, True)]
    pool.remove([e for e in pool.oldest(10) if e.key == "k2"])
    assert pool.count() == 2
    assert pool.reserve_item(job.job_id, "k0", "intent-1")
    assert not pool.reserve_item(job.job_id, "k0", "intent-2")  # one intent per item
    assert not pool.reserve_item(job.job_id, "k2", "intent-1")  # never pooled
    assert job_store.get_item(job.job_id, "k0").batch_intent == "intent-1"
    pool.remove(pool.oldest(10))
    assert pool.oldest(10) == [] and pool.count() == 0


def test_reopen_requeue_and_lane_counts(job_store):  # noqa: F811
    job, items = make_job(2)
    job_store.create_job(job, items)
    job_store.claim_item(job.job_id, "k0", "w", 100.0, 60)
    job_store.finish_item(job.job_id, "k0", "w", BatchSucceeded(110.0, "intent-1", 1, "gs://b/k0.png", {}, "STOP", None))
    job_store.claim_item(job.job_id, "k1", "w", 100.0, 60)
    job_store.finish_item(job.job_id, "k1", "w", ended(ItemState.DEAD_LETTERED, 110.0))
    job_store.complete_job(job.job_id, JobStatus.PARTIALLY_SUCCEEDED, 200.0, manifest_uri="gs://b/m")
    assert job_store.count_succeeded_by_lane(job.job_id) == {"batch": 1}
    reopened = job_store.reopen_job(job.job_id, 300.0)
    assert (reopened.status, reopened.round, reopened.manifest_uri) == (JobStatus.RUNNING, 2, None)
    assert job_store.reopen_job(job.job_id, 301.0).round == 2  # running: left as it is
    assert [j.job_id for j in job_store.running_jobs(10)] == [job.job_id]
    assert job_store.requeue_item(job.job_id, "k1", ItemState.DEAD_LETTERED, Requeued(301.0, "retried after: x"))
    assert not job_store.requeue_item(job.job_id, "k1", ItemState.DEAD_LETTERED, Requeued(301.0, "retried after: x"))
    assert job_store.get_item(job.job_id, "k1").state is ItemState.QUEUED
    job_store.mark_unpublished(job.job_id, 302.0)
    assert not job_store.get_job(job.job_id).published


# --- the spend dimension of the shared rate limiter ----------------------------------------


from tests.integration.test_contracts import slot_store  # noqa: E402,F401 (fixture)


def test_spend_is_admitted_only_while_it_fits_the_window(slot_store):  # noqa: F811
    assert slot_store.try_spend(0.6, 1.0, 600.0, now=1000.0) is None
    assert slot_store.try_spend(0.4, 1.0, 600.0, now=1010.0) is None
    assert slot_store.try_spend(0.1, 1.0, 600.0, now=1020.0) == pytest.approx(580.0)  # refused: nothing recorded
    assert slot_store.try_spend(0.1, 1.0, 600.0, now=1601.0) is None  # the first spend has left the window
    assert slot_store.try_spend(0.6, 1.0, 600.0, now=1602.0) == pytest.approx(8.0)  # 0.4 + 0.1 + 0.6 > 1


def test_concurrent_spenders_never_exceed_the_limit(slot_store):  # noqa: F811
    admitted = []

    def spend(i):
        for _ in range(20):  # retry lost races, as the limiter does
            wait = slot_store.try_spend(0.25, 1.0, 600.0, now=2000.0)
            if wait is None:
                admitted.append(i)
                return
            if wait > 1:
                return  # refused: the window is full

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 4  # $1 of $0.25 requests, whatever the interleaving


def test_running_jobs_come_in_id_order_from_a_cursor(job_store):  # noqa: F811
    ids = ["0a" + "0" * 30, "5f" + "0" * 30, "c3" + "0" * 30]
    for job_id in reversed(ids):
        job, items = make_job(1, job_id=job_id)
        job_store.create_job(job, items)
        job_store.set_job_running(job_id, 100.0)
    queued, queued_items = make_job(1, job_id="77" + "0" * 30)
    job_store.create_job(queued, queued_items)
    assert [j.job_id for j in job_store.running_jobs(10)] == ids
    assert [j.job_id for j in job_store.running_jobs(10, after=ids[0])] == ids[1:]
    assert [j.job_id for j in job_store.running_jobs(1, after="40")] == [ids[1]]
    assert job_store.running_jobs(10, after=ids[2]) == []
