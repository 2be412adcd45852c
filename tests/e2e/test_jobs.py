"""Jobs through the interactive lane, from the 202 to the images and the manifest in GCS: the
happy path, each kind of model failure ending in the item state it should, and a cancel."""
from __future__ import annotations

import hashlib
import io

import pytest
import requests
from PIL import Image

from tests.e2e.helpers import (
    GEMINI_TIMEOUT_SECONDS, HTTP_TIMEOUT, MAX_ATTEMPTS, MODEL, assert_settled, configure_gemini,
    gemini_requests, gemini_stats, item_docs, job_status, objects, post_job, prompt_rules, submit,
    wait_for_job, wait_until, worker_outcomes,
)


def test_five_prompts_become_five_pngs_of_the_asked_shape(stack, db, bucket):
    asked = {
        "fox": ("a red fox in the snow", "1:1"),
        "harbour": ("a harbour at dusk", "16:9"),
        "tower": ("a lighthouse on a cliff", "9:16"),
        "map": ("an old map of the coast", "4:3"),
        "card": ("a botanical drawing of a fern", "3:4"),
    }
    items = [{"key": k, "prompt": p, "aspect_ratio": ar} for k, (p, ar) in asked.items()]
    items[0]["domain"] = "wildlife"

    r = post_job(stack, items)

    assert r.status_code == 202
    accepted = r.json()
    job_id = accepted["job_id"]
    assert accepted["status_url"] == f"/v1/jobs/{job_id}" == r.headers["Location"]
    assert (accepted["lane"], accepted["item_count"]) == ("interactive", 5)
    status = wait_for_job(stack, job_id)
    assert status["status"] == "succeeded"
    assert status["counts"]["succeeded"] == 5
    assert [it["key"] for it in status["items"]] == list(asked)  # in submission order
    got = assert_settled(status, bucket)
    assert {k: (it["attempts"], it["finish_reason"], it["error"]) for k, it in got.items()} == \
        {k: (1, "STOP", None) for k in asked}
    blobs = objects(bucket, job_id)
    docs = item_docs(db, job_id)
    for key, (_, ratio) in asked.items():
        blob = blobs[f"{job_id}/{key}.png"]
        assert blob.content_type == "image/png"
        data = blob.download_as_bytes()
        # The image's facts travel with it, so a later attempt reads them without a download.
        assert blob.metadata == {"job_id": job_id, "item_key": key, "model": MODEL, "finish_reason": "STOP",
                                 "lane": "interactive", "sha256": hashlib.sha256(data).hexdigest(), "format": "png",
                                 "width": str(Image.open(io.BytesIO(data)).width),
                                 "height": str(Image.open(io.BytesIO(data)).height)}
        image = Image.open(io.BytesIO(blob.download_as_bytes()))
        image.load()  # decodes the whole PNG, not just its header
        assert image.format == "PNG"
        w, h = (int(n) for n in ratio.split(":"))
        assert image.width / image.height == pytest.approx(w / h, rel=0.03), (key, image.size)
        assert (docs[key]["width"], docs[key]["height"]) == image.size
    assert blobs[f"{job_id}/manifest.jsonl"].content_type == "application/jsonl"
    job_doc = db.collection("jobs").document(job_id).get().to_dict()
    assert (job_doc["status"], job_doc["published"]) == ("succeeded", True)
    assert job_doc["finished_at"] >= job_doc["created_at"]
    # The domain reaches the model with the prompt.
    assert "Domain: wildlife" in str(gemini_requests(stack, "a red fox")[0]["body"])
    assert gemini_stats(stack)["by_outcome"] == {"ok": 5}


def test_refusals_fail_their_items_and_a_503_is_retried(stack, bucket):
    # Every prompt but the flaky one is decided by a rule, so the one-entry script can only
    # ever be taken by the flaky prompt's first request, whatever the delivery order.
    configure_gemini(stack, prompt_rules(
        ("[blocked]", "blocked"), ("[image-safety]", "image_safety"), ("[ok]", "ok")))
    configure_gemini(stack, {"faults": {"script": ["503"]}})
    job_id = submit(stack, [
        {"key": "blocked", "prompt": "[blocked] a forbidden thing"},
        {"key": "unsafe", "prompt": "[image-safety] an unsafe picture"},
        {"key": "flaky", "prompt": "a picture the model drops once"},
        {"key": "fine-1", "prompt": "[ok] a quiet lake"},
        {"key": "fine-2", "prompt": "[ok] a busy market"},
    ])

    status = wait_for_job(stack, job_id)

    assert status["status"] == "partially_succeeded"
    assert {k: v for k, v in status["counts"].items() if v} == {"succeeded": 3, "failed": 2}
    items = assert_settled(status, bucket)
    assert {k: (it["state"], it["attempts"]) for k, it in items.items()} == {
        "blocked": ("failed", 1),
        "unsafe": ("failed", 1),
        "flaky": ("succeeded", 2),
        "fine-1": ("succeeded", 1),
        "fine-2": ("succeeded", 1),
    }
    assert "blocked" in items["blocked"]["error"]
    assert "IMAGE_SAFETY" in items["unsafe"]["error"]
    assert items["flaky"]["error"] is None  # the success clears the 503 of the first attempt
    assert [e["outcome"] for e in gemini_requests(stack, "the model drops once")] == ["503", "ok"]
    assert gemini_stats(stack)["by_outcome"] == {"ok": 3, "503": 1, "blocked": 1, "image_safety": 1}


def test_a_persistent_500_is_dead_lettered_after_max_attempts(stack, db, bucket):
    configure_gemini(stack, prompt_rules(("[always-500]", "500")))
    job_id = submit(stack, [
        {"key": "broken", "prompt": "[always-500] a picture the model never makes"},
        {"key": "fine", "prompt": "a picture it makes"},
    ])

    status = wait_for_job(stack, job_id)

    assert status["status"] == "partially_succeeded"
    items = assert_settled(status, bucket)
    broken = items["broken"]
    assert (broken["state"], broken["attempts"]) == ("dead_lettered", MAX_ATTEMPTS)
    assert broken["error"].startswith(f"gave up after {MAX_ATTEMPTS} attempts: 500")
    assert (items["fine"]["state"], items["fine"]["attempts"]) == ("succeeded", 1)
    assert [e["outcome"] for e in gemini_requests(stack, "[always-500]")] == ["500"] * MAX_ATTEMPTS
    assert item_docs(db, job_id)["broken"]["lease_owner"] is None


def test_a_hung_model_call_times_out_and_the_retry_succeeds(stack, db, bucket):
    configure_gemini(stack, prompt_rules(("[ok]", "ok")))
    configure_gemini(stack, {"faults": {"script": ["hang"]}})  # hang_seconds 10 > timeout 3
    job_id = submit(stack, [
        {"key": "slow", "prompt": "a picture that hangs the first time"},
        {"key": "fine", "prompt": "[ok] a picture that does not"},
    ])

    status = wait_for_job(stack, job_id)

    assert status["status"] == "succeeded"
    items = assert_settled(status, bucket)
    assert (items["slow"]["attempts"], items["fine"]["attempts"]) == (2, 1)
    first, second = gemini_requests(stack, "hangs the first time")
    # The worker hung up after GEMINI_TIMEOUT_SECONDS, long before the emulator's 10 s.
    assert (first["outcome"], first["status"]) == ("hang", "client_disconnected")
    assert (second["outcome"], second["status"]) == ("ok", 200)
    assert second["time"] - first["time"] >= GEMINI_TIMEOUT_SECONDS
    assert second["time"] - first["time"] < 10


def test_a_cancelled_job_keeps_what_finished_and_drops_the_rest(stack, bucket):
    # Slow enough that the cancel arrives while the first items are with the model.
    configure_gemini(stack, {"latency": {"mean_ms": 1500}})
    job_id = submit(stack, [{"key": f"c{i}", "prompt": f"a picture nobody waits for {i}"} for i in range(5)])
    wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] >= 1, "a model call to start")

    r = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)

    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    # The calls in flight finish; the job is settled once they have.
    status = wait_until(stack, lambda: (s := job_status(stack, job_id))["manifest_uri"] and s,
                      f"job {job_id} to get its manifest after the cancel")
    assert status["status"] == "cancelled"
    items = assert_settled(status, bucket)
    states = {it["state"] for it in items.values()}
    assert states <= {"succeeded", "cancelled"} and "cancelled" in states, items
    succeeded = sum(it["state"] == "succeeded" for it in items.values())
    # The worker drops the messages of the items the API cancelled: each is acked as it finds it.
    for key, it in items.items():
        wait_until(stack, lambda key=key, it=it: any(
            o.startswith(it["state"]) for o in worker_outcomes(stack, job_id, key)),
            f"the message of {key} ({it['state']}) to be acked")
    # A cancelled item never reached the model.
    assert gemini_stats(stack)["by_outcome"] == {"ok": succeeded}
    again = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)
    assert again.status_code == 409 and again.json()["error"]["reason"] == "conflict"
