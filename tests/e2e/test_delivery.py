"""At-least-once delivery as the worker meets it: duplicated messages, and a worker killed
while its model call is in flight. Either way each item is generated and stored exactly once."""
from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import (
    LEASE_SECONDS, assert_settled, configure_gemini, gemini_requests, gemini_stats, item_docs,
    submit, wait_for_job, wait_until, worker_outcomes,
)

EXTRA_COPIES = 3


def test_duplicate_messages_generate_and_store_each_image_once(stack, bucket, publisher):
    keys = ["dup-a", "dup-b", "dup-c"]
    job_id = submit(stack, [{"key": k, "prompt": f"a duplicated picture {k}"} for k in keys])

    # The very message submit_job published, published again: the copies race the originals.
    futures = [
        publisher.publish(stack.topic_path, json.dumps({"job_id": job_id, "item_key": key}).encode(),
                          job_id=job_id, item_key=key)
        for key in keys for _ in range(EXTRA_COPIES)
    ]
    for future in futures:
        future.result(timeout=30)
    status = wait_for_job(stack, job_id)

    assert status["status"] == "succeeded"
    items = assert_settled(status, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    # Every copy is eventually acked (one that found the item leased was retried), and only
    # one of them generated the image; the others found it finished.
    for key in keys:
        def acked(key=key):
            done = [o.strip() for o in worker_outcomes(stack, job_id, key) if o.startswith("succeeded")]
            return sorted(done) if len(done) >= 1 + EXTRA_COPIES else None

        assert wait_until(stack, acked, f"the {1 + EXTRA_COPIES} copies of {key} to be acked") == \
            ["succeeded"] + ["succeeded already finished"] * EXTRA_COPIES
    stats = gemini_stats(stack)
    assert stats["by_outcome"] == {"ok": len(keys)}, stats


@pytest.mark.slow
def test_a_worker_killed_mid_item_leaves_it_to_a_redelivery(stack, db, bucket):
    # Long enough to kill the worker while the model call is in flight, short of the timeout.
    configure_gemini(stack, {"latency": {"mean_ms": 2500}})
    job_id = submit(stack, [{"key": "victim", "prompt": "a picture whose worker dies"}])
    wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] == 1, "the model call to start")
    assert item_docs(db, job_id)["victim"]["state"] == "running"

    stack.restart("worker")  # SIGKILL, then the same port again
    configure_gemini(stack, {"latency": {"mean_ms": 0}})

    # The dead worker's lease must run out before a redelivery may claim the item.
    status = wait_for_job(stack, job_id, timeout=LEASE_SECONDS + 30)
    assert status["status"] == "succeeded"
    items = assert_settled(status, bucket)
    # The killed attempt recorded nothing, so the redelivery's is the first on record.
    assert items["victim"]["attempts"] == 1
    calls = gemini_requests(stack, "whose worker dies")
    assert [(c["outcome"], c["status"]) for c in calls] == [("ok", "client_disconnected"), ("ok", 200)]
    assert item_docs(db, job_id)["victim"]["lease_owner"] is None
