"""Three hundred active batches on the real Firestore and the Gemini emulator, which (like
Gemini) limits the batches pending or running at once and refuses more with a 429 (here 40,
so that the limit is met): poller ticks take every due intent in turn, page after page, so
every batch is created, checked and ingested, none starved by the others."""
from __future__ import annotations

import os
import time

from google.cloud import firestore

from adapters.firestore.jobs import FirestoreJobStore
from catalog import load as load_catalog
from core import submitting
from core.batches import BatchLane, BatchLaneDeps, BatchLimits
from core.clock import SystemClock
from core.models import IntentState, ItemSpec, ItemState, JobSpec
from tests.fakes import InMemoryImageSink, InMemoryWorkQueue
from tests.integration.test_batch_api_contract import MODEL, EmulatedBatchApi

BATCHES = 300


def lane_on_emulators(base: str) -> BatchLane:
    store = FirestoreJobStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]))
    return BatchLane(
        BatchLaneDeps(store=store, jobs=store, api=EmulatedBatchApi(base), sink=InMemoryImageSink(),
                      clock=SystemClock(), catalog=load_catalog()),
        BatchLimits(lease_seconds=60.0, max_attempts=3, checkpoint_lines=50, quota_backoff_seconds=0.5))


def test_three_hundred_active_batches_all_progress(firestore_clean, gemini_clean):
    import requests

    requests.post(f"{gemini_clean}/_emulator/config", timeout=10, json={
        "image_scale": 0.05, "batch": {"pending_seconds": 0.5, "running_seconds": 3.0, "max_concurrent_batches": 40},
    }).raise_for_status()
    lane = lane_on_emulators(gemini_clean)
    spec = JobSpec(tuple(ItemSpec(key=f"k{i:03d}", prompt=f"prompt {i}") for i in range(BATCHES)), "batch")
    deps = submitting.SubmitDeps(route=submitting.RouteDeps(interactive_threshold=10, batch_available=True),
                                 store=lane.jobs, queue=InMemoryWorkQueue(), clock=lane.clock, batch=lane,
                                 batch_max_requests=1, batch_submit_budget=0.0)  # every batch is left to the poller
    job = submitting.submit_job(submitting.Submission(spec, MODEL), deps)
    deadline = time.monotonic() + 240
    checked: set[str] = set()
    for _tick in range(100):
        summary = lane.reconcile("poller", deadline=lane.clock.now() + 30.0, page=40)
        intents = lane.store.intents_of_job(job.job_id)
        checked |= {i.intent_id for i in intents if i.gemini_batch}
        if all(i.state is IntentState.FINISHED for i in intents):
            break
        assert time.monotonic() < deadline, f"not done: {summary}"
        time.sleep(0.3)
    assert len(checked) == BATCHES
    outcomes = {i.outcome for i in lane.store.intents_of_job(job.job_id)}
    assert outcomes == {"succeeded"}, outcomes
    items = lane.jobs.list_items(job.job_id, None, 1000)
    assert len(items) == BATCHES and {it.state for it in items} == {ItemState.SUCCEEDED}
    stats = requests.get(f"{gemini_clean}/_emulator/stats", timeout=10).json()
    assert stats["batches"]["rejected_max_concurrent"] > 0  # the 429s this was about did happen


def test_intents_recorded_before_next_check_at_existed_are_found(firestore_clean):
    """An intent document written by an older version has no next_check_at: the store gives
    the active ones theirs once, so the due query finds them; finished ones stay out."""
    client = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    old = {"job_id": "j", "model": MODEL, "keys": ["k"], "attempt": 1, "created_at": 100.0, "updated_at": 150.0}
    client.collection("batches").document("j-b000-a1").set({**old, "intent_id": "j-b000-a1", "state": "submitted"})
    client.collection("batches").document("j-b001-a1").set({**old, "intent_id": "j-b001-a1", "state": "finished"})
    due = FirestoreJobStore(client).due_intents(now=1e12, limit=10)
    assert [(i.intent_id, i.next_check_at) for i in due] == [("j-b000-a1", 150.0)]
    client.collection("batches").document("j-b002-a1").set({**old, "intent_id": "j-b002-a1", "state": "pending"})
    # Done once per database: a later version never writes an intent without the field.
    assert [i.intent_id for i in FirestoreJobStore(client).due_intents(now=1e12, limit=10)] == ["j-b000-a1"]
