"""Gemini's batch webhooks end to end: the emulator ends a batch and POSTs the signed event to
the API, which nudges the poller through the batch-nudges push subscription; nobody calls the
scheduled tick. And the fallback: events signed wrong are refused with 401 and a tick still
completes the job. The e2e stack has no scheduler thread, so a job that completes here without
a tick() completed because of the webhook."""
from __future__ import annotations

import requests

from tests.e2e.helpers import (
    HTTP_TIMEOUT, assert_settled, configure_gemini, expanded, job_status, post_job, process_log, tick_until_settled,
    wait_until,
)

ITEMS = [{"key": f"k{i:02d}", "prompt": f"a lighthouse, take {i}"} for i in range(12)]


def deliveries(stack) -> list[dict]:
    r = requests.get(f"{stack.url('gemini')}/_emulator/webhooks/deliveries", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


def batch_job(stack) -> tuple[str, str]:
    r = post_job(stack, ITEMS)
    assert r.status_code == 202 and r.json()["lane"] == "batch", r.text
    job_id = expanded(stack, r.json()["job_id"])
    # The expansion nudges its intent to the poller, which creates the batch.
    [intent] = wait_until(stack, lambda: [b for b in job_status(stack, job_id)["batches"] if b["gemini_batch"]],
                          "the batch created")
    return job_id, intent["gemini_batch"]


def test_a_batch_job_completes_on_the_webhook_alone(stack, bucket):
    assert stack.scheduler_interval is None, "a scheduler thread would tick the poller behind our backs"
    configure_gemini(stack, {"webhooks": {"drop": False, "duplicate": True}})  # at least once: here twice
    job_id, batch = batch_job(stack)

    status = wait_until(stack, lambda: (s := job_status(stack, job_id))["status"] == "succeeded" and s.get(
        "manifest_uri") and s, f"job {job_id} completed by the webhook\n{process_log(stack, 'poller')}")

    assert_settled(status, bucket)
    sent = wait_until(stack, lambda: (found := [d for d in deliveries(stack) if d["batch"] == batch]) and all(
        d["status"] == "delivered" for d in found) and found, "both deliveries acknowledged")
    assert [(d["type"], d["status"], d["signed"]) for d in sent] == [("batch.succeeded", "delivered", True)] * 2
    assert len({d["webhook_id"] for d in sent}) == 1  # the same event twice, both acknowledged
    assert all(d["attempts"] == [200] for d in sent)
    assert "nudged intent" in process_log(stack, "poller", lines=400)


def test_events_signed_wrong_are_refused_and_the_tick_completes_the_job(stack, bucket):
    configure_gemini(stack, {"webhooks": {"drop": False, "bad_signature": True}})
    job_id, batch = batch_job(stack)
    refused = wait_until(stack, lambda: [d for d in deliveries(stack) if d["batch"] == batch and d["attempts"]],
                         "the forged event's first attempt")
    assert refused[0]["attempts"][0] == 401 and refused[0]["status"] != "delivered"
    assert job_status(stack, job_id)["status"] == "running"  # nothing was nudged

    status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded" and ticks["ingested"] == 1
    assert_settled(status, bucket)
