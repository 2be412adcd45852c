"""The local stack: the emulators answer through the real SDKs with the semantics the code
relies on, the push subscription feeds a functions-framework worker, and stopping the stack
leaves no process behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests

from infra.local import Ports, Stack
from infra.local.stack import group_alive


def test_firestore_round_trip_and_create_only(firestore_clean):
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import firestore

    db = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    ref = db.collection("stack-check").document(uuid.uuid4().hex)

    ref.create({"n": 1})

    assert ref.get().to_dict() == {"n": 1}
    with pytest.raises(AlreadyExists):
        ref.create({"n": 2})


def test_firestore_wipe_empties_the_project(emulators):
    from google.cloud import firestore

    db = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    db.collection("stack-check").document("left-over").set({"n": 1})

    emulators.wipe_firestore()

    assert list(db.collection("stack-check").stream()) == []


def test_pubsub_publish_and_pull(emulators):
    from google.cloud import pubsub_v1

    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, f"t-{uuid.uuid4().hex}")).name
    sub = subscriber.create_subscription(
        name=subscriber.subscription_path(project, f"s-{uuid.uuid4().hex}"), topic=topic
    ).name

    publisher.publish(topic, b"hello", kind="check").result(timeout=30)

    received = []
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        received = subscriber.pull(subscription=sub, max_messages=10, timeout=10).received_messages
    assert [(m.message.data, m.message.attributes["kind"]) for m in received] == [(b"hello", "check")]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in received])


def test_gcs_create_only_write_is_refused_the_second_time(emulators):
    from google.api_core.exceptions import PreconditionFailed
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    bucket = client.bucket(os.environ["IMAGES_BUCKET"])  # created by the stack
    name = f"check/{uuid.uuid4().hex}.png"

    bucket.blob(name).upload_from_string(b"first", content_type="image/png", if_generation_match=0)

    with pytest.raises(PreconditionFailed):
        bucket.blob(name).upload_from_string(b"second", content_type="image/png", if_generation_match=0)
    assert bucket.blob(name).download_as_bytes() == b"first"


def test_gcs_client_without_credentials_stays_anonymous(emulators):
    # google-cloud-storage 3.x uses anonymous credentials when STORAGE_EMULATOR_HOST is set, so
    # wiring.py's plain storage.Client(project=...) never looks for real credentials locally.
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])

    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.bucket(os.environ["IMAGES_BUCKET"]).exists()


def test_gemini_emulator_answers_and_resets(gemini_clean):
    assert requests.get(f"{gemini_clean}/_emulator/healthz", timeout=10).status_code == 200
    assert os.environ["GOOGLE_GEMINI_BASE_URL"] == gemini_clean


# --- the whole stack, with a throwaway worker ----------------------------------------------

WORKER_SOURCE = '''
import base64, json, os, time
import functions_framework

LOG = os.environ["DELIVERY_LOG"]


@functions_framework.http
def http_api(request):
    names = ("GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS", "FIRESTORE_EMULATOR_HOST",
             "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_GEMINI_BASE_URL",
             "GEMINI_API_KEY", "IMAGES_BUCKET", "WORK_TOPIC", "EXTRA_SETTING", "THREADS")
    return {name: os.environ.get(name) for name in names}


@functions_framework.cloud_event
def pubsub_worker(cloud_event):
    message = cloud_event.data["message"]
    with open(LOG, "a") as f:
        f.write(json.dumps({"data": base64.b64decode(message["data"]).decode(),
                            "source": cloud_event["source"], "pid": os.getpid()}) + "\\n")
    if message.get("attributes", {}).get("fail") == "once" and not os.path.exists(LOG + ".failed"):
        open(LOG + ".failed", "w").close()
        raise RuntimeError("a 500 makes the emulator push again")


@functions_framework.http
def scheduled_poller(request):
    return "ok"


@functions_framework.http
def gemini_webhook(request):
    return "ok"
'''


def _deliveries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_push_subscription_feeds_the_worker_and_stop_leaves_nothing(tmp_path):
    source = tmp_path / "functions"
    source.mkdir()
    (source / "main.py").write_text(textwrap.dedent(WORKER_SOURCE))
    log = tmp_path / "deliveries.jsonl"
    stack = Stack(ports=Ports.free(), project="demo-stack-check", state_dir=tmp_path / "state", gemini=False,
                  functions=True, functions_dir=source, worker_threads=2,
                  function_env={"DELIVERY_LOG": str(log), "EXTRA_SETTING": "7"})

    with stack:
        from google.cloud import pubsub_v1

        os.environ.update(stack.env())
        publisher = pubsub_v1.PublisherClient()
        env = requests.get(stack.url("api"), timeout=10).json()
        publisher.publish(stack.topic_path, b"ok").result(timeout=30)
        publisher.publish(stack.topic_path, b"flaky", fail="once").result(timeout=30)
        deliveries = _wait_for(lambda: (d := _deliveries(log)) and len(d) >= 3 and d)
        stack.restart("worker")
        publisher.publish(stack.topic_path, b"after restart").result(timeout=30)
        after = _wait_for(lambda: [d for d in _deliveries(log) if d["data"] == "after restart"])
        pgids = [p.pid for p in stack.processes.values()]
        ports = stack.ports

    # The function processes get the emulators, the caller's settings, and no real credentials.
    assert env["GOOGLE_CLOUD_PROJECT"] == "demo-stack-check"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] is None
    assert env["FIRESTORE_EMULATOR_HOST"] == f"127.0.0.1:{ports.firestore}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{ports.gcs}"
    assert env["EXTRA_SETTING"] == "7" and env["THREADS"] is None  # THREADS only for the worker
    # Push works, a 500 is pushed again, and the CloudEvent source names the topic as Eventarc's does.
    assert sorted(d["data"] for d in deliveries) == ["flaky", "flaky", "ok"]
    assert {d["source"] for d in deliveries} == {
        "//pubsub.googleapis.com/projects/demo-stack-check/topics/imagefleet-work"
    }
    # The restarted worker is a new process on the same port.
    assert after[0]["pid"] != deliveries[0]["pid"]
    # Nothing is left: no process group (gcloud's JVMs included), no listening port.
    assert not [pgid for pgid in pgids if group_alive(pgid)]
    for port in ports.as_dict().values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    assert not stack.processes


def test_a_process_that_dies_while_starting_reports_its_log(tmp_path):
    source = tmp_path / "functions"
    source.mkdir()
    (source / "main.py").write_text("raise ImportError('the function cannot be imported')\n")
    stack = Stack(ports=Ports.free(), project="demo-stack-check", state_dir=tmp_path / "state", gemini=False,
                  functions=True, functions_dir=source)

    with pytest.raises(Exception) as excinfo:
        stack.start()

    assert "the function cannot be imported" in str(excinfo.value)
    assert "api.log" in str(excinfo.value)
    assert not stack.processes


def test_sigkill_of_gcloud_alone_would_orphan_the_jvm(tmp_path):
    """Why the stack kills process groups: the emulator JVM is gcloud's grandchild."""
    stack = Stack(ports=Ports.free(), project="demo-stack-check", state_dir=tmp_path / "state", gemini=False)
    with stack:
        pubsub = stack.processes["pubsub"]
        os.kill(pubsub.pid, signal.SIGKILL)  # gcloud only, not its group
        pubsub.popen.wait(timeout=10)
        time.sleep(0.5)
        orphan_alive = group_alive(pubsub.pid)
        answers = requests.get(stack.url("pubsub"), timeout=5).status_code == 200
    assert orphan_alive and answers
    assert not group_alive(pubsub.pid)
