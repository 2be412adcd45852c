"""callback_url and completion events through the entry points (functions-framework's test client,
in-memory fakes; the fixtures are test_entrypoints.py's)."""
import base64
import json

import functions_framework
import pytest

import wiring
from core.errors import DeliveryFailed
from tests.unit.test_entrypoints import SOURCE, api, fakes, post_job, push, worker  # noqa: F401 - fixtures

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
ONE = {"requests": [{"prompt": "a lighthouse", "key": "one"}]}


@pytest.fixture
def signed(fakes, monkeypatch):
    """A deployment with a webhook signing secret (and the fakes' delivery using it)."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    wiring.get_settings.cache_clear()
    fakes.events.secret = wiring.settings().webhook_key()
    return fakes


def problems(r) -> dict[str, str]:
    assert r.status_code == 400, r.get_data(as_text=True)
    return {f["field"]: f["problem"] for f in r.get_json()["error"]["fields"]}


def test_without_a_signing_secret_a_callback_url_is_refused(api, fakes):
    r = post_job(api, {**ONE, "callback_url": "https://hooks.example.com/x"})

    assert problems(r) == {"callback_url": "this deployment has no webhook signing secret"}
    assert fakes.store.jobs == {}


@pytest.mark.parametrize("url, problem", [
    ("http://hooks.example.com/x", "callback_url must use https"),
    ("https://10.0.0.7/x", "callback_url's host 10.0.0.7 is not a public address"),
    ("https://169.254.169.254/computeMetadata/v1/", "callback_url's host 169.254.169.254 is not a public address"),
    ("https://metadata.google.internal/x", "callback_url's host metadata.google.internal is an internal name"),
    ("https://localhost/x", "callback_url's host localhost is an internal name"),
    ("not a url", "callback_url contains whitespace, a control character or a backslash"),
    ("https://hooks.example.com/" + "x" * 2048, "String should have at most 2048 characters"),
    (42, "Input should be a valid string"),
])
def test_bad_callback_urls_get_400_naming_the_field(api, signed, url, problem):
    r = post_job(api, {**ONE, "callback_url": url})

    assert problems(r) == {"callback_url": problem}
    assert signed.store.jobs == {} and signed.queue.messages == []


def test_a_job_keeps_its_callback_url_and_its_status_lists_its_event(api, worker, signed):
    job_id = post_job(api, {**ONE, "callback_url": "https://hooks.example.com/done?t=1"}).get_json()["job_id"]
    assert signed.store.get_job(job_id).callback_url == "https://hooks.example.com/done?t=1"

    assert push(worker, json.dumps({"job_id": job_id, "item_key": "one"}).encode()).status_code == 200

    [(url, body, headers)] = signed.events.webhooks.requests
    assert url == "https://hooks.example.com/done?t=1" and headers["webhook-id"] == f"{job_id}.completed.r1"
    assert json.loads(body)["data"]["status"] == "succeeded"
    [event] = api.get(f"/v1/jobs/{job_id}").get_json()["events"]
    assert event == {"event_id": f"{job_id}.completed.r1", "type": "job.completed", "state": "delivered",
                     "attempts": 1, "last_error": None, "delivered_at": signed.clock.now()}


def test_insecure_mode_accepts_a_local_receiver(api, signed, monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOW_INSECURE", "true")
    wiring.get_settings.cache_clear()

    r = post_job(api, {**ONE, "callback_url": "http://127.0.0.1:9000/hook"})

    assert r.status_code == 202, r.get_data(as_text=True)


def test_cancel_answers_with_the_cancelled_jobs_event(api, signed):
    job_id = post_job(api, {**ONE, "callback_url": "https://hooks.example.com/x"}).get_json()["job_id"]

    r = api.delete(f"/v1/jobs/{job_id}")

    assert r.status_code == 200
    assert [(e["state"], e["attempts"]) for e in r.get_json()["events"]] == [("delivered", 1)]
    assert json.loads(signed.events.webhooks.requests[0][1])["data"]["status"] == "cancelled"


def test_the_poller_retries_due_events_and_reports_them(api, worker, signed):
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    signed.events.webhooks.script = [DeliveryFailed("HTTP 500")]
    job_id = post_job(api, {**ONE, "callback_url": "https://hooks.example.com/x"}).get_json()["job_id"]
    push(worker, json.dumps({"job_id": job_id, "item_key": "one"}).encode())
    [event] = api.get(f"/v1/jobs/{job_id}").get_json()["events"]
    assert (event["state"], event["attempts"], event["last_error"]) == ("pending", 1, "webhook: HTTP 500")

    assert poller.post("/").get_json()["events"]["due"] == 0  # not due yet
    signed.clock.advance(signed.events.policy.backoff_base)
    tick = poller.post("/").get_json()

    assert tick["events"] == {"due": 1, "delivered": 1, "retrying": 0, "failed": 0, "skipped": 0, "errors": 0}
    [event] = api.get(f"/v1/jobs/{job_id}").get_json()["events"]
    assert (event["state"], event["attempts"]) == ("delivered", 2)


def test_a_batch_job_emits_its_event_when_the_poller_finishes_it(api, signed):
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    body = {"requests": [{"prompt": f"p{i}"} for i in range(12)], "callback_url": "https://hooks.example.com/x"}
    job_id = post_job(api, body).get_json()["job_id"]
    (batch_name,) = signed.batch_api.batches
    signed.batch_api.finish(batch_name)

    poller.post("/")

    [(_, body, _)] = signed.events.webhooks.requests
    assert json.loads(body)["data"] | {"counts": None} == {
        "job_id": job_id, "status": "succeeded", "lane": "batch", "item_count": 12, "counts": None,
        "manifest_uri": f"gs://test-bucket/{job_id}/manifest.jsonl", "round": 1}
