"""What the functions cost in Firestore operations, counted on the emulator (adapters/firestore/ops.py).

The entry points run in this process (functions-framework's test client) on the real adapters
and emulators: Firestore, Pub/Sub, fake-gcs-server and the Gemini emulator. The ceilings below
are the figures docs/cost.md states, with a little headroom: a change that makes an image cost
more Firestore operations fails here, and docs/cost.md is to be updated with it.

Run with -s to print the measured figures (docs/cost.md says how)."""
from __future__ import annotations

import base64
import functools
import json
import os
import pathlib
import time

import pytest

from adapters.firestore.common import COUNT_SHARDS
from adapters.firestore.ops import FirestoreOps, OpCounts, count_ops

SOURCE = str(pathlib.Path(__file__).parents[2] / "functions" / "main.py")
IMAGES = 50

# Firestore operations per image, per lane, as measured for docs/cost.md ("Measured"), plus ~10%.
# The interactive reads include views cached per instance for a second or two (usage totals,
# breaker, model halts): a slower run pays them more often, hence their wider margin.
CEILINGS = {
    "interactive": {"reads": 19.0, "writes": 11.3, "deletes": 0},
    "batch": {"reads": 5.6, "writes": 2.9, "deletes": 0},
}
# A status read (GET /v1/jobs/{id}?page_size=10): the job, the counter shards read twice (by
# state, and succeeded by lane for the cost), the page of items, the batch intents and the events.
STATUS_READS = 1 + 2 * COUNT_SHARDS + 10 + 1 + 1


@pytest.fixture
def wired(firestore_clean, gemini_clean, monkeypatch):
    """wiring.py's real clients against the emulators, its caches emptied before and after."""
    import wiring

    def clear():
        for value in vars(wiring).values():
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()

    # A quota of 600 a minute: sends a tenth of a second apart, longer than a Firestore round
    # trip, as with any real quota (a spacing shorter than the limiter's own writes makes it
    # take slot after slot, which no deployment sees). The test stays quick.
    monkeypatch.setenv("RATE_LIMIT_REQUESTS", "600")
    monkeypatch.setenv("RATE_LIMIT_IMAGES", "600")
    monkeypatch.setenv("INTERACTIVE_THRESHOLD", "1000")
    clear()
    yield wiring
    clear()


def clients():
    import functions_framework

    return (functions_framework.create_app("http_api", SOURCE, "http").test_client(),
            functions_framework.create_app("pubsub_worker", SOURCE, "cloudevent").test_client(),
            functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client())


def push(worker, job_id: str, key: str):
    envelope = {"message": {"data": base64.b64encode(json.dumps({"job_id": job_id, "item_key": key}).encode()).decode(),
                            "messageId": f"{job_id}-{key}", "attributes": {"job_id": job_id, "item_key": key}},
                "subscription": "projects/p/subscriptions/work-push"}
    headers = {"ce-id": f"{job_id}-{key}", "ce-specversion": "1.0", "Content-Type": "application/json",
               "ce-source": "//pubsub.googleapis.com/projects/p/topics/work",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"}
    return worker.post("/", data=json.dumps(envelope), headers=headers)


def submit(api, lane: str) -> str:
    body = {"requests": [{"prompt": f"a lighthouse at dawn, study {i}", "key": f"k{i:03d}"} for i in range(IMAGES)],
            "lane": lane}
    r = api.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 202, r.get_data(as_text=True)
    return r.get_json()["job_id"]


def expand(poller, job_id: str) -> None:
    """The job's expansion (core/expanding.py), as its nudge pushes it to the poller: part of
    what an image costs."""
    data = base64.b64encode(json.dumps({"expand_job_id": job_id}).encode()).decode()
    r = poller.post("/", json={"message": {"data": data, "messageId": f"expand-{job_id}"}})
    assert r.status_code == 200 and r.get_json() == {"expand": "done"}, r.get_data(as_text=True)


# --- the counting itself -----------------------------------------------------------------------


def test_operations_are_counted_as_firestore_bills_them(firestore_clean):
    from google.cloud import firestore

    ops = FirestoreOps()
    client = count_ops(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]), ops)
    things = client.collection("things")

    def used(action) -> OpCounts:
        before = ops.counts()
        action()
        return ops.counts() - before

    assert used(lambda: things.document("missing").get()) == OpCounts(reads=1)
    assert used(lambda: list(things.stream())) == OpCounts(reads=1)  # no result: still one read
    batch = client.batch()
    for n in range(3):
        batch.set(things.document(str(n)), {"n": n, "bumped": firestore.Increment(1)})
    assert used(batch.commit) == OpCounts(writes=3)  # a transform rides on its write
    assert used(lambda: list(things.stream())) == OpCounts(reads=3)
    assert used(lambda: any(True for _ in things.limit(5).stream())) == OpCounts(reads=1)  # stopped after one
    assert used(lambda: list(client.get_all([things.document("0"), things.document("nope")]))) == OpCounts(reads=2)
    for start in range(0, 2500, 500):
        batch = client.batch()
        for n in range(start, start + 500):
            batch.set(client.collection("many").document(str(n)), {"n": n})
        batch.commit()
    assert used(lambda: client.collection("many").count().get()) == OpCounts(reads=3)  # 1 per 1,000 counted
    batch = client.batch()
    batch.delete(things.document("0"))
    batch.update(things.document("1"), {"n": 10})
    assert used(batch.commit) == OpCounts(writes=1, deletes=1)
    assert ops.by_collection()[("many", "writes")] == 2500


# --- per image, per lane ---------------------------------------------------------------------------


def per_image(used: OpCounts) -> dict[str, float]:
    return {"reads": used.reads / IMAGES, "writes": used.writes / IMAGES, "deletes": used.deletes / IMAGES}


def report(lane: str, used: OpCounts, by_collection: dict, **extra) -> dict[str, float]:
    figures = per_image(used)
    print(f"\n{lane}: {IMAGES} images, total {used}, per image {figures} {extra}")
    for (collection, kind), n in sorted(by_collection.items()):
        if n:
            print(f"  {collection:14} {kind:8} {n / IMAGES:6.2f} per image")
    return figures


def delta(after: dict, before: dict) -> dict:
    return {k: n - before.get(k, 0) for k, n in after.items()}


# --- a status read ---------------------------------------------------------------------------


@pytest.mark.parametrize("items", [10, 2000])
def test_a_status_read_costs_the_same_few_reads_whatever_the_jobs_size(firestore_clean, items):
    from google.cloud import firestore

    from adapters.firestore.jobs import FirestoreJobStore
    from core import jobs
    from core.models import ItemState
    from tests.fakes import ended
    from tests.integration.test_contracts import make_job

    ops = FirestoreOps()
    store = FirestoreJobStore(count_ops(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]), ops))
    job, job_items = make_job(items)
    store.create_job(job, job_items)
    for key in ("k1", "k2", "k3"):
        store.claim_item(job.job_id, key, "w", 200.0, 60)
    store.finish_item(job.job_id, "k1", "w", ended(ItemState.SUCCEEDED, 210.0))
    store.finish_item(job.job_id, "k2", "w", ended(ItemState.FAILED, 210.0))

    before = ops.counts()
    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(store, batches=store), page_size=10)
    used = ops.counts() - before

    assert status["counts"]["succeeded"] == 1 and status["counts"]["running"] == 1
    assert status["counts"]["queued"] == items - 3 and len(status["items"]) == 10
    # No events outbox here: one read less than STATUS_READS.
    assert used == OpCounts(reads=STATUS_READS - 1), used


def test_interactive_lane_operations_per_image(wired):
    api, worker, poller = clients()
    ops = wired.firestore_ops()
    before, split = ops.counts(), ops.by_collection()
    job_id = submit(api, "interactive")
    expand(poller, job_id)
    for i in range(IMAGES):
        assert push(worker, job_id, f"k{i:03d}").status_code == 200
    used = ops.counts() - before
    assert api.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    figures = report("interactive", used, delta(ops.by_collection(), split))
    assert figures["writes"] >= 2  # each image's item is created and finished at least: the counting is on
    assert all(figures[kind] <= CEILINGS["interactive"][kind] for kind in figures), figures


def test_batch_lane_operations_per_image(wired, monkeypatch):
    # The ticks ingest inline here (no nudge topic), so the ingest's operations are counted in
    # this process; a nudged ingest does the same work in the push's request, plus one intent
    # write per batch (its ingest_requested_at).
    monkeypatch.setenv("BATCH_NUDGES_TOPIC", "")
    wired.get_settings.cache_clear()
    api, _, poller = clients()
    ops = wired.firestore_ops()
    idle = ops.counts()
    assert poller.post("/").status_code == 200  # a tick with nothing to do, for docs/cost.md
    idle_tick = ops.counts() - idle

    before, split = ops.counts(), ops.by_collection()
    job_id = submit(api, "batch")
    expand(poller, job_id)
    for intent in wired.deps().batches.intents_of_job(job_id):  # the nudges the expansion sent
        nudge = base64.b64encode(json.dumps({"intent_id": intent.intent_id}).encode()).decode()
        assert poller.post("/", json={"message": {"data": nudge, "messageId": intent.intent_id}}).status_code == 200
    wait_until(lambda: batches_of(wired, job_id) and all(state.endswith("SUCCEEDED")
                                                         for state in batches_of(wired, job_id)))
    ticks, status_reads, status_split = 0, OpCounts(), {}
    while True:
        asked, asked_split = ops.counts(), ops.by_collection()
        status = api.get(f"/v1/jobs/{job_id}").get_json()["status"]
        # A client's polling is not the image's cost.
        status_reads = status_reads + (ops.counts() - asked)
        for k, n in delta(ops.by_collection(), asked_split).items():
            status_split[k] = status_split.get(k, 0) + n
        if status == "succeeded":
            break
        ticks += 1
        assert ticks <= 3, "the poller should ingest a succeeded batch in a tick or two"
        assert poller.post("/").status_code == 200
    used = ops.counts() - before - status_reads
    figures = report("batch", used, delta(delta(ops.by_collection(), split), status_split), ticks=ticks,
                     idle_tick=idle_tick)
    assert figures["writes"] >= 2  # each image's item is created and finished at least: the counting is on
    assert all(figures[kind] <= CEILINGS["batch"][kind] for kind in figures), figures


def batches_of(wired, job_id: str) -> list[str]:
    """The states of the job's Gemini batches, asked of the Gemini emulator (no Firestore read)."""
    return [b.state.name for b in wired.genai_client().batches.list() if job_id in (b.display_name or "")]


def wait_until(done, timeout: float = 60.0) -> None:
    """Poll the emulator (no Firestore reads) until done() holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the Gemini emulator's batch did not finish"
        time.sleep(0.2)
