"""Completion events through the whole stack: a receiver in this process verifies each webhook
with the standardwebhooks library (not our signing code), and a pull subscription on the events
topic counts the job.completed messages."""
from __future__ import annotations

import http.server
import json
import threading
import uuid
import warnings

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.e2e.helpers import (
    HTTP_TIMEOUT, configure_gemini, gemini_stats, job_status, process_log, submit, tick, wait_for_job, wait_until,
)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers the scripted statuses in turn (then 204) and
    verifies every request it gets."""

    def __init__(self, secret: str, script: list[int] | None = None) -> None:
        self.verifier = Webhook(secret)
        self.script = list(script or [])
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver.verifier.verify(body, headers)
                    verified = True
                except Exception as e:  # noqa: BLE001 - recorded and asserted on
                    verified = f"{type(e).__name__}: {e}"
                receiver.requests.append({"path": self.path, "headers": headers, "body": body,
                                          "verified": verified})
                code = receiver.script.pop(0) if receiver.script else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{uuid.uuid4().hex}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def events_subscription(stack):
    """A pull subscription on the events topic made for this test (it sees only what is
    published from now on)."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    name = subscriber.subscription_path(stack.project, f"events-test-{uuid.uuid4().hex}")
    subscriber.create_subscription(name=name, topic=stack.events_topic_path)
    yield subscriber, name
    subscriber.delete_subscription(subscription=name)


def completed_messages(stack, events_subscription, job_id: str) -> list:
    """The job.completed messages of one job: pulled until one is there, then until a pull
    brings nothing more (so a duplicate already published would be counted)."""
    subscriber, name = events_subscription
    found: list = []

    def pull() -> int:
        # return_immediately (deprecated for production, where it starves subscribers): an empty
        # subscription answers at once instead of holding the pull for the whole timeout.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            response = subscriber.pull(request={"subscription": name, "max_messages": 50,
                                                "return_immediately": True}, timeout=HTTP_TIMEOUT)
        if response.received_messages:
            subscriber.acknowledge(subscription=name, ack_ids=[m.ack_id for m in response.received_messages])
        found.extend(m.message for m in response.received_messages if m.message.attributes["job_id"] == job_id)
        return len(response.received_messages)

    wait_until(stack, lambda: pull() >= 0 and found, f"the job.completed message of {job_id}")
    while pull():
        pass
    return found


def delivered_event(stack, job_id: str, poll: bool = False) -> dict:
    """Wait until the job's one event is delivered (calling the poller meanwhile when `poll`); it."""
    def done():
        if poll:
            tick(stack)
        status = job_status(stack, job_id)
        return status["events"] and status["events"][0]["state"] == "delivered" and status

    status = wait_until(stack, done, f"the event of job {job_id} to be delivered")
    [event] = status["events"]
    return event


def assert_matches_status(body: bytes, status: dict) -> None:
    payload = json.loads(body)
    assert payload["type"] == "job.completed" and payload["timestamp"].endswith("Z")
    assert payload["data"] == {
        "job_id": status["job_id"], "status": status["status"], "lane": status["lane"],
        "item_count": status["item_count"], "counts": status["counts"], "manifest_uri": status["manifest_uri"],
        "round": 1,
    }


def test_a_job_with_a_callback_url_gets_one_verified_webhook_and_one_message(stack, events_subscription):
    with Receiver(stack.webhook_secret) as receiver:
        job_id = submit(stack, [{"key": f"w{i}", "prompt": f"a lighthouse number {i}"} for i in range(3)],
                        callback_url=receiver.url)
        status = wait_for_job(stack, job_id)
        event = delivered_event(stack, job_id)

    assert status["status"] == "succeeded"
    assert (event["event_id"], event["attempts"], event["last_error"]) == (f"{job_id}.completed.r1", 1, None)
    [request] = receiver.requests
    assert request["verified"] is True, request["verified"]
    assert request["headers"]["webhook-id"] == event["event_id"]
    assert request["headers"]["content-type"] == "application/json"
    assert_matches_status(request["body"], job_status(stack, job_id))
    [message] = completed_messages(stack, events_subscription, job_id)
    assert message.data == request["body"]
    assert dict(message.attributes) == {"type": "job.completed", "job_id": job_id, "event_id": event["event_id"]}


def test_a_failing_receiver_gets_the_same_event_again_until_it_accepts(stack, events_subscription):
    with Receiver(stack.webhook_secret, script=[500, 500]) as receiver:
        job_id = submit(stack, [{"key": "only", "prompt": "a harbour at dawn"}], callback_url=receiver.url)
        wait_for_job(stack, job_id)
        # The worker's attempt right after the job ended was refused; nobody retries until the
        # poller is called (the e2e stack has no scheduler thread).
        [first] = wait_until(stack, lambda: [e for e in job_status(stack, job_id)["events"] if e["attempts"]],
                             "the first attempt to be recorded")
        assert (first["state"], first["attempts"], first["last_error"]) == ("pending", 1, "webhook: HTTP 500")

        event = delivered_event(stack, job_id, poll=True)

    assert (event["attempts"], event["last_error"]) == (3, None)
    assert [r["verified"] for r in receiver.requests] == [True, True, True]
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {event["event_id"]}
    assert len({r["body"] for r in receiver.requests}) == 1  # the same bytes, signed anew each time
    assert len(completed_messages(stack, events_subscription, job_id)) == 1  # published once, on the first attempt
    for name in ("api", "worker", "poller"):
        log = stack.log_path(name).read_text(errors="replace")
        assert stack.webhook_secret.removeprefix("whsec_") not in log, f"the {name} logged the secret"
        assert receiver.requests[0]["headers"]["webhook-signature"] not in log, f"the {name} logged a signature"
    assert "attempt 1 failed (callback host 127.0.0.1): webhook: HTTP 500" in process_log(stack, "worker", 400)


def test_a_cancelled_job_emits_its_event(stack, events_subscription):
    configure_gemini(stack, {"latency": {"mean_ms": 1500}})
    with Receiver(stack.webhook_secret) as receiver:
        job_id = submit(stack, [{"key": f"c{i}", "prompt": f"a picture nobody waits for {i}"} for i in range(4)],
                        callback_url=receiver.url)
        wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] >= 1, "a model call to start")
        r = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        event = delivered_event(stack, job_id)

    status = job_status(stack, job_id)
    assert status["status"] == "cancelled" and status["counts"]["cancelled"] >= 1
    [request] = receiver.requests
    assert request["verified"] is True, request["verified"]
    assert request["headers"]["webhook-id"] == event["event_id"]
    assert_matches_status(request["body"], status)
    assert len(completed_messages(stack, events_subscription, job_id)) == 1
