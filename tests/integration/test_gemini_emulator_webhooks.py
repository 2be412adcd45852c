"""The emulator's webhooks through the real google-genai SDK: the WebhookService calls the SDK
makes, webhook_config on batch create, and signed, retried, at-least-once deliveries to a
receiver on this machine, with the faults (drop, duplicate, bad signature)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google import genai
from google.genai import errors, types

from core.gemini_webhooks import decode_gemini_secret, verify
from infra.gemini_emulator import BackgroundEmulator
from tests.integration.test_gemini_emulator_batches import STARTUP, Admin

MODEL = "gemini-2.5-flash-image"
LINE = {"key": "k", "request": {"contents": [{"parts": [{"text": "a cat"}]}]}}


class Receiver:
    """An HTTP endpoint that answers the next `answers` (then 200) and records every request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.answers: list[int] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.cond:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    code = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.cond.notify_all()
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[dict, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received)


@pytest.fixture(scope="module")
def emulator():
    with BackgroundEmulator({**STARTUP, "webhooks": {"poll_seconds": 0.05, "retry_base_seconds": 0.1}}) as emu:
        yield emu


@pytest.fixture
def admin(emulator):
    helper = Admin(emulator.base_url)
    assert helper.call("POST", "/_emulator/reset")[0] == 200  # keeps registrations: the test's client drops them
    return helper


@pytest.fixture
def client(emulator, admin):
    client = genai.Client(api_key="key-a", http_options=types.HttpOptions(base_url=emulator.base_url))
    for w in client.webhooks.list().webhooks or []:
        client.webhooks.delete(id=w.id)
    return client


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def batch(client, **config):
    uploaded = client.files.upload(file=__import__("io").BytesIO((json.dumps(LINE) + "\n").encode()),
                                   config=types.UploadFileConfig(mime_type="jsonl", display_name="in"))
    return client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "d", **config})


def deliveries(admin):
    return admin.call("GET", "/_emulator/webhooks/deliveries")[1]["deliveries"]


def test_create_returns_the_secret_once_and_list_get_delete_follow(client):
    hook = client.webhooks.create(name="imagefleet", subscribed_events=["batch.succeeded", "batch.failed"],
                                  uri="https://example.com/hook")
    assert hook.new_signing_secret.startswith("whsec_") and len(decode_gemini_secret(hook.new_signing_secret)) == 32
    assert hook.subscribed_events == ["batch.succeeded", "batch.failed"] and hook.state == "enabled"
    got = client.webhooks.get(id=hook.id)
    assert got.new_signing_secret is None and got.uri == "https://example.com/hook"
    assert [w.id for w in client.webhooks.list().webhooks] == [hook.id]
    client.webhooks.delete(id=hook.id)
    assert not client.webhooks.list().webhooks
    with pytest.raises(Exception):
        client.webhooks.get(id=hook.id)


def test_a_bad_registration_is_a_400(client):
    with pytest.raises(Exception) as e:
        client.webhooks.create(subscribed_events=["batch.exploded"], uri="https://example.com/hook")
    assert "400" in str(e.value)


def test_an_ended_batch_is_delivered_signed_without_anyone_polling(client, admin, receiver):
    hook = client.webhooks.create(subscribed_events=["batch.succeeded"], uri=receiver.url)
    job = batch(client)
    ((headers, body),) = receiver.wait_for(1)  # nobody called batches.get: the dispatcher ended it
    key = decode_gemini_secret(hook.new_signing_secret)
    assert verify(key, headers, body, now=time.time(), tolerance_seconds=60) == headers["webhook-id"]
    event = json.loads(body)
    assert event["type"] == "batch.succeeded" and event["data"]["id"] == job.name
    assert event["data"]["output_file_uri"].startswith("files/batch-")
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_SUCCEEDED"
    assert [d["status"] for d in deliveries(admin)] == ["delivered"]


def test_failed_attempts_are_retried_with_the_same_id(client, admin, receiver):
    client.webhooks.create(subscribed_events=["batch.failed"], uri=receiver.url)
    receiver.answers = [500, 503]
    admin.configure({"batch": {"outcome_script": ["failed"]}})
    batch(client)
    got = receiver.wait_for(3)
    assert len({h["webhook-id"] for h, _ in got}) == 1 and json.loads(got[0][1])["type"] == "batch.failed"
    # The emulator records an attempt once the receiver's answer is back, a moment after the
    # receiver has counted the request: wait for the record, not for the request.
    deadline = time.monotonic() + 20
    while deliveries(admin)[0]["status"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
    (d,) = deliveries(admin)
    assert d["attempts"] == [500, 503, 200] and d["status"] == "delivered"


def test_faults_duplicate_and_bad_signature(client, admin, receiver):
    hook = client.webhooks.create(subscribed_events=["batch.succeeded"], uri=receiver.url)
    admin.configure({"webhooks": {"duplicate": True, "bad_signature": True}})
    batch(client)
    got = receiver.wait_for(2)
    assert got[0][0]["webhook-id"] == got[1][0]["webhook-id"]
    key = decode_gemini_secret(hook.new_signing_secret)
    for headers, body in got:
        with pytest.raises(Exception, match="signature"):
            verify(key, headers, body, now=time.time(), tolerance_seconds=60)


def test_dropped_events_are_logged_and_never_sent(client, admin, receiver):
    client.webhooks.create(subscribed_events=["batch.succeeded"], uri=receiver.url)
    admin.configure({"webhooks": {"drop": True}})
    job = batch(client)
    deadline = time.monotonic() + 20
    while not deliveries(admin) and time.monotonic() < deadline:
        client.batches.get(name=job.name)  # wait on progress: the batch's end queues the event
    assert [d["status"] for d in deliveries(admin)] == ["dropped"] and receiver.received == []


def test_webhook_config_uris_replace_the_registered_ones_and_carry_user_metadata(client, admin, receiver):
    client.webhooks.create(subscribed_events=["batch.succeeded"], uri="http://127.0.0.1:9/never")
    batch(client, webhook_config={"uris": [receiver.url], "user_metadata": {"intent": "i1"}})
    ((headers, body),) = receiver.wait_for(1)
    assert json.loads(body)["data"]["user_metadata"] == {"intent": "i1"}
    assert "webhook-signature" not in headers  # dynamic webhooks are signed otherwise (README.md)
    assert [d["uri"] for d in deliveries(admin)] == [receiver.url]


def test_a_malformed_webhook_config_is_a_400(client):
    with pytest.raises(errors.ClientError):
        batch(client, webhook_config={"uris": ["ftp://x"]})


def test_the_registration_tool_prints_only_the_secret_and_refuses_a_second_registration(emulator, admin):
    import os
    import subprocess
    import sys

    env = {**os.environ, "GEMINI_API_KEY": "key-a", "GOOGLE_GEMINI_BASE_URL": emulator.base_url}
    tool = str(__import__("pathlib").Path(__file__).parents[2] / "tools" / "register_gemini_webhook.py")
    argv = [sys.executable, tool, "--uri", "https://example.com/hook"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert len(decode_gemini_secret(first.stdout)) == 32 and "registered" in first.stderr
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and again.stdout == "" and "--replace" in again.stderr
    replaced = subprocess.run(argv + ["--replace"], env=env, capture_output=True, text=True, timeout=60)
    assert replaced.returncode == 0 and replaced.stdout != first.stdout
    client = genai.Client(api_key="key-a", http_options=types.HttpOptions(base_url=emulator.base_url))
    hooks = client.webhooks.list().webhooks
    assert [(w.uri, w.subscribed_events) for w in hooks] == [
        ("https://example.com/hook", ["batch.succeeded", "batch.failed", "batch.expired"])]
    client.webhooks.delete(id=hooks[0].id)
