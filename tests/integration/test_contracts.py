"""Contract tests: one body runs against the in-memory fake and the real adapter on its emulator.

If a fake drifts from the real thing, the unit tests built on it stop being evidence; these
tests are what keeps them honest."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid

import pytest

from core.models import Item, ItemState, Job, JobStatus, Lane
from core.transitions import BatchFailed, BatchRecorded, BatchSucceeded, IngestProgress, IntentFinished
from PIL import Image

from tests.fakes import InMemoryImageSink, InMemoryJobStore, InMemorySlotStore, ended, tiny_png


def make_job(n: int = 3, job_id: str | None = None, lane: str | None = None) -> tuple[Job, list[Item]]:
    job_id = job_id or uuid.uuid4().hex
    job = Job(job_id=job_id, lane=Lane.INTERACTIVE, status=JobStatus.QUEUED, model="m",
              item_count=n, created_at=100.0, updated_at=100.0)
    items = [Item(job_id=job_id, key=f"k{i}", index=i, prompt=f"p{i}", aspect_ratio="1:1",
                  domain=None, quality="standard", lane=lane, updated_at=100.0) for i in range(n)]
    return job, items


@pytest.fixture(params=["memory", "firestore"])
def job_store(request):
    if request.param == "memory":
        return InMemoryJobStore()
    request.getfixturevalue("firestore_clean")
    from google.cloud import firestore

    from adapters.firestore.jobs import FirestoreJobStore

    return FirestoreJobStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]))


@pytest.fixture(params=["memory", "firestore"])
def slot_store(request):
    if request.param == "memory":
        return InMemorySlotStore()
    request.getfixturevalue("firestore_clean")
    from google.cloud import firestore

    from adapters.firestore.ratelimit import FirestoreSlotStore

    return FirestoreSlotStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]), "test-model")


@pytest.fixture(params=["memory", "gcs"])
def sink(request):
    if request.param == "memory":
        return InMemoryImageSink(bucket="contract-bucket")
    request.getfixturevalue("emulators")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from adapters.gcs_sink import GcsImageSink

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"contract-{uuid.uuid4().hex[:12]}")
    return GcsImageSink(client, bucket.name)


# --- JobStore ----------------------------------------------------------------------------


def test_job_round_trip_listing_and_counts(job_store):
    job, items = make_job(5)
    job_store.create_job(job, items)
    assert job_store.get_job(job.job_id) == job
    assert job_store.get_job("missing") is None
    assert job_store.get_item(job.job_id, "k3") == items[3]
    assert job_store.get_item(job.job_id, "nope") is None
    assert [i.key for i in job_store.list_items(job.job_id, None, 2)] == ["k0", "k1"]
    assert [i.key for i in job_store.list_items(job.job_id, 1, 10)] == ["k2", "k3", "k4"]
    counts = job_store.count_items(job.job_id)
    assert counts[ItemState.QUEUED] == 5 and counts[ItemState.SUCCEEDED] == 0
    assert job_store.has_unfinished_items(job.job_id)


def test_a_jobs_tenant_is_stored_and_none_reads_back_as_none(job_store):
    mine, items = make_job(1)
    mine.tenant = "acme"
    legacy, _ = make_job(0)
    job_store.create_job(mine, items)
    job_store.create_job(legacy, [])
    assert job_store.get_job(mine.job_id).tenant == "acme"
    assert job_store.get_job(legacy.job_id).tenant is None


def test_unfinished_items_tracks_queued_and_running(job_store):
    job, items = make_job(2)
    job_store.create_job(job, items)
    for key in ("k0", "k1"):
        job_store.claim_item(job.job_id, key, "w", now=200.0, lease_seconds=60)
    assert job_store.has_unfinished_items(job.job_id)
    job_store.finish_item(job.job_id, "k0", "w", ended(ItemState.FAILED, 210.0))
    assert job_store.has_unfinished_items(job.job_id)
    job_store.finish_item(job.job_id, "k1", "w", ended(ItemState.SUCCEEDED, 210.0))
    assert not job_store.has_unfinished_items(job.job_id)


def test_unpublished_jobs_and_mark_published(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    assert [j.job_id for j in job_store.unpublished_jobs(older_than=101.0, limit=10)] == [job.job_id]
    assert job_store.unpublished_jobs(older_than=99.0, limit=10) == []
    job_store.mark_published(job.job_id, 102.0)
    assert job_store.unpublished_jobs(older_than=1e12, limit=10) == []
    assert job_store.get_job(job.job_id).published


def test_a_claim_for_one_lane_refuses_an_item_moved_to_the_other(job_store):
    from core.transitions import Diverted

    job, items = make_job(1)
    assert items[0].lane is None  # an item that records no lane is the interactive lane's
    job_store.create_job(job, items)
    assert job_store.claim_item(job.job_id, "k0", "a", now=200.0, lease_seconds=60, lane="interactive")
    assert job_store.finish_item(job.job_id, "k0", "a", Diverted(201.0))
    assert job_store.claim_item(job.job_id, "k0", "b", now=202.0, lease_seconds=60, lane="interactive") is None
    item = job_store.get_item(job.job_id, "k0")
    assert (item.lane, item.state, item.lease_owner) == ("batch", ItemState.QUEUED, None)
    assert job_store.claim_item(job.job_id, "k0", "c", now=203.0, lease_seconds=60, lane="batch").lease_owner == "c"


def test_claim_is_exclusive_until_the_lease_expires(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    claimed = job_store.claim_item(job.job_id, "k0", "a", now=200.0, lease_seconds=60)
    assert claimed.state is ItemState.RUNNING and claimed.lease_owner == "a"
    assert job_store.claim_item(job.job_id, "k0", "b", now=230.0, lease_seconds=60) is None
    again = job_store.claim_item(job.job_id, "k0", "b", now=261.0, lease_seconds=60)
    assert again.lease_owner == "b"
    # The old owner lost its lease: its late write must not land.
    assert not job_store.finish_item(job.job_id, "k0", "a", ended(ItemState.SUCCEEDED, 262.0))
    assert job_store.finish_item(job.job_id, "k0", "b", ended(ItemState.SUCCEEDED, 262.0))
    assert job_store.get_item(job.job_id, "k0").state is ItemState.SUCCEEDED
    assert job_store.claim_item(job.job_id, "k0", "c", now=999.0, lease_seconds=60) is None
    assert job_store.claim_item(job.job_id, "missing", "c", now=999.0, lease_seconds=60) is None


def test_concurrent_claims_have_exactly_one_winner(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    winners = []

    def claim(owner):
        if job_store.claim_item(job.job_id, "k0", owner, now=300.0, lease_seconds=60):
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_job_transitions_only_move_forward(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    job_store.set_job_running(job.job_id, 110.0)
    assert job_store.get_job(job.job_id).status is JobStatus.RUNNING
    job_store.complete_job(job.job_id, JobStatus.SUCCEEDED, 120.0)
    job_store.complete_job(job.job_id, JobStatus.FAILED, 130.0)
    job_store.set_job_running(job.job_id, 140.0)
    done = job_store.get_job(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.finished_at == 120.0


def test_large_jobs_are_written_in_several_batches(job_store):
    job, items = make_job(1201)
    job_store.create_job(job, items)
    assert job_store.count_items(job.job_id)[ItemState.QUEUED] == 1201
    assert job_store.list_items(job.job_id, 1199, 10)[0].key == "k1200"


# --- SlotStore ---------------------------------------------------------------------------


def test_blocks_are_create_only_and_the_last_one_is_found(slot_store):
    from core.models import SlotBlock

    assert slot_store.last_block() is None
    assert slot_store.try_claim_block(SlotBlock(0, 1000, 4), "a", 5000.0)
    assert not slot_store.try_claim_block(SlotBlock(0, 1000, 1), "b", 5000.0)
    assert slot_store.try_claim_block(SlotBlock(1, 1004, 16), "b", 5000.0)
    assert slot_store.last_block() == SlotBlock(1, 1004, 16)


def test_free_leases_are_found_by_one_query_and_taken_once(slot_store):
    taken = [slot_store.try_take_lease(f"o{i}", capacity=5, now=10.0, ttl=30.0) for i in range(6)]
    assert sorted(t for t in taken if t is not None) == ["0", "1", "2", "3", "4"] and taken[5] is None
    slot_store.release_lease(taken[2], "o2")
    assert slot_store.try_take_lease("x", capacity=5, now=11.0, ttl=30.0) == taken[2]


def test_leases_deleted_under_a_live_store_are_created_again(slot_store, request):
    assert slot_store.try_take_lease("a", capacity=2, now=10.0, ttl=30.0) is not None
    if request.node.callspec.params["slot_store"] == "firestore":
        for snap in slot_store.leases.stream():
            snap.reference.delete()
    else:
        slot_store.leases.clear()
    taken = [slot_store.try_take_lease("b", capacity=2, now=11.0, ttl=30.0) for _ in range(2)]
    assert taken[0] is not None or taken[1] is not None


def test_blocked_until_only_moves_forward(slot_store):
    assert slot_store.blocked_until() == 0.0
    slot_store.push_blocked_until(500.0)
    slot_store.push_blocked_until(400.0)
    assert slot_store.blocked_until() == 500.0


def test_a_limiter_follows_its_store_when_the_documents_are_deleted_under_it(slot_store, request):
    """The store is the truth, the limiter's cache only a copy: a push-back as long as a daily
    quota's (a day) must end when its document goes (a wipe between e2e tests, an operator
    deleting it), not live on in a running instance and refuse every send until tomorrow."""
    from core.errors import RateLimited
    from core.ratelimit import RateLimit, SlotRateLimiter
    from tests.fakes import FakeClock

    clock = FakeClock()
    limiter = SlotRateLimiter(RateLimit(requests_per_window=60, window_seconds=60, concurrency=2),
                              slot_store, clock)
    limiter.acquire("a", max_wait=5)
    limiter.release("a")
    limiter.push_back(clock.now() + 86_400)
    with pytest.raises(RateLimited):
        limiter.acquire("b", max_wait=5)
    if request.node.callspec.params["slot_store"] == "firestore":
        request.getfixturevalue("emulators").wipe_firestore()
    else:
        slot_store._blocked_until = 0.0
        slot_store.blocks.clear()
        slot_store.leases.clear()
    clock.sleep(2.0)  # past the cache's refresh
    limiter.acquire("b", max_wait=5)
    limiter.acquire("c", max_wait=5)  # a second lease and a second slot after the wipe
    assert slot_store.blocked_until() == 0.0 and slot_store.last_block() is not None


def test_leases_cap_concurrency_and_expire(slot_store):
    a = slot_store.try_take_lease("a", capacity=2, now=10.0, ttl=30.0)
    b = slot_store.try_take_lease("b", capacity=2, now=10.0, ttl=30.0)
    assert a is not None and b is not None and a != b
    assert slot_store.try_take_lease("c", capacity=2, now=20.0, ttl=30.0) is None
    slot_store.release_lease(a, "not-the-owner")
    assert slot_store.try_take_lease("c", capacity=2, now=20.0, ttl=30.0) is None
    slot_store.release_lease(a, "a")
    assert slot_store.try_take_lease("c", capacity=2, now=20.0, ttl=30.0) == a
    assert slot_store.try_take_lease("d", capacity=2, now=41.0, ttl=30.0) is not None  # b expired


def test_stale_items_are_found_across_jobs_oldest_first_interactive_only(job_store):
    job_a, items_a = make_job(3)
    job_b, items_b = make_job(2)
    for it in items_a + items_b:
        it.lane = "interactive"
    items_b[1].lane = "batch"  # the batch lane's items are never swept
    job_store.create_job(job_a, items_a)
    job_store.create_job(job_b, items_b)
    job_store.claim_item(job_a.job_id, "k0", "w", now=100.0, lease_seconds=10)  # expires 110
    job_store.claim_item(job_b.job_id, "k0", "w", now=90.0, lease_seconds=10)  # expires 100
    job_store.claim_item(job_a.job_id, "k1", "w", now=200.0, lease_seconds=10)  # live at 150
    expired = job_store.expired_leases(before=150.0, limit=10)
    assert [(it.job_id, it.key) for it in expired] == [(job_b.job_id, "k0"), (job_a.job_id, "k0")]
    assert len(job_store.expired_leases(before=150.0, limit=1)) == 1
    queued = job_store.untouched_queued_items(before=150.0, limit=10)
    assert {(it.job_id, it.key) for it in queued} == {(job_a.job_id, "k2")}  # b/k1 is batch


# --- ImageSink ---------------------------------------------------------------------------


def stored(data: bytes, **metadata) -> tuple[bytes, str, dict]:
    """An image as the worker stores it: its bytes, Content-Type and facts in the metadata."""
    from core import images
    from core.jsonl import image_facts, stored_metadata

    facts = image_facts(data)
    return data, images.CONTENT_TYPES[facts["format"]], {**metadata, **stored_metadata(facts)}


def test_images_are_written_once_and_a_second_write_reports_the_first(sink):
    name = f"{uuid.uuid4().hex}/k0.png"
    first_png, second_png = tiny_png("first"), tiny_png("second")
    first = sink.put_image(name, *stored(first_png, job_id="j", item_key="k0"))
    assert first.created and first.uri.endswith(f"/{name}") and first.uri.startswith("gs://")
    second = sink.put_image(name, *stored(second_png, job_id="j", item_key="k0"))
    assert not second.created and second.uri == first.uri
    # The facts of the object that is stored, not of the bytes that were discarded.
    assert second.facts == {"sha256": hashlib.sha256(first_png).hexdigest(), "bytes": len(first_png),
                            "format": "png", "width": 4, "height": 3}


def test_find_image_finds_an_earlier_attempts_object_under_any_extension(sink):
    job = uuid.uuid4().hex
    assert sink.find_image(f"{job}/k1", ("png", "jpg", "webp")) is None
    sink.put_image(f"{job}/k1.x.png", *stored(tiny_png("another key whose name starts alike")))
    assert sink.find_image(f"{job}/k1", ("png", "jpg", "webp")) is None
    jpeg = io.BytesIO()
    Image.new("RGB", (6, 5)).save(jpeg, format="JPEG")
    sink.put_image(f"{job}/k1.jpg", *stored(jpeg.getvalue()))
    found = sink.find_image(f"{job}/k1", ("png", "jpg", "webp"))
    assert found is not None and found.uri.endswith(f"{job}/k1.jpg") and not found.created
    assert found.facts == {"sha256": hashlib.sha256(jpeg.getvalue()).hexdigest(), "bytes": len(jpeg.getvalue()),
                           "format": "jpeg", "width": 6, "height": 5}


def gcs_bucket(prefix: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    return client, client.create_bucket(f"{prefix}-{uuid.uuid4().hex[:12]}")


def test_gcs_object_carries_content_type_and_metadata(emulators):
    from adapters.gcs_sink import GcsImageSink

    client, bucket = gcs_bucket("meta")
    data, content_type, metadata = stored(tiny_png("k"), job_id="j", finish_reason="STOP")
    GcsImageSink(client, bucket.name).put_image("j/k.png", data, content_type, metadata)
    blob = bucket.get_blob("j/k.png")
    assert blob.content_type == "image/png"
    assert blob.metadata == {"job_id": "j", "finish_reason": "STOP", "sha256": hashlib.sha256(data).hexdigest(),
                             "format": "png", "width": "4", "height": "3"}
    assert blob.download_as_bytes() == data


def test_an_unanswering_gcs_fails_the_upload_within_its_bound(emulators):
    """fake-gcs-server frozen (SIGSTOP): connections are accepted and never answered. The
    upload, with the client's retries, gives up after the sink's bound, as StorageUnavailable."""
    from adapters.gcs_sink import GcsImageSink
    from core.errors import StorageUnavailable

    client, bucket = gcs_bucket("frozen")
    sink = GcsImageSink(client, bucket.name, upload_seconds=2.0)
    emulators.pause("gcs")
    try:
        # With the client's default retry (120 s) these would outlast the test's timeout.
        with pytest.raises(StorageUnavailable):
            sink.put_image("j/k.png", *stored(tiny_png("k")))
        with pytest.raises(StorageUnavailable):
            sink.find_image("j/k", ("png",))
    finally:
        emulators.resume("gcs")
    # The request the client gave up on may still be served once the server runs again (it was
    # queued, not lost): the next try then finds that object and reports it, as a 412.
    again = sink.put_image("j/k.png", *stored(tiny_png("k")))
    assert again.created or again.facts["sha256"] == hashlib.sha256(tiny_png("k")).hexdigest()
    assert sink.find_image("j/k", ("png",)) is not None


_FORBIDDEN = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.delete "
                         "access to the Google Cloud Storage object.", "errors": [{"reason": "forbidden"}]}}).encode()


class _ForbidOverwrites:
    """A proxy in front of fake-gcs-server that answers a refused create-only insert (412) with
    the 403 Cloud Storage gives a caller without storage.objects.delete, and refuses every
    insert under `denied/` with 403 (a caller with no create permission there at all)."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.forbidden = 0  # 403s answered

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and b'"name": "denied/' in body:  # the multipart upload's metadata
                    proxy.forbidden += 1
                    return self._answer(403, "application/json", _FORBIDDEN)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                status, data = answer.status, answer.read()
                content_type = answer.getheader("Content-Type", "application/json")
                if status == 412 and self.command == "POST" and "ifGenerationMatch=0" in self.path:
                    status, content_type, data = 403, "application/json", _FORBIDDEN
                    proxy.forbidden += 1
                self._answer(status, content_type, data)

            def _answer(self, status, content_type, data):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_duplicate_told_403_instead_of_412_reports_the_stored_object(emulators, monkeypatch):
    """Without storage.objects.delete, a create-only insert over an existing object may be
    refused with 403: the stored object is reported as written, with its own facts. A 403 where
    no object exists is a real refusal and is raised."""
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from adapters.gcs_sink import GcsImageSink

    proxy = _ForbidOverwrites(emulators.url("gcs"))
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
        bucket = client.create_bucket(f"forbid-{uuid.uuid4().hex[:12]}")
        sink = GcsImageSink(client, bucket.name)
        first, second = tiny_png("first"), tiny_png("second")
        assert sink.put_image("j/k.png", *stored(first)).created
        again = sink.put_image("j/k.png", *stored(second))
        assert not again.created and again.facts["sha256"] == hashlib.sha256(first).hexdigest()
        assert bucket.get_blob("j/k.png").download_as_bytes() == first and proxy.forbidden == 1
        with pytest.raises(gexc.Forbidden):
            sink.put_image("denied/k.png", *stored(second))
        assert proxy.forbidden == 2
    finally:
        proxy.close()


# --- WorkQueue ---------------------------------------------------------------------------


def test_pubsub_queue_publishes_one_decodable_message_per_item(emulators):
    from google.cloud import pubsub_v1

    from adapters.pubsub_queue import PubSubWorkQueue, decode_work_message

    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, f"t-{uuid.uuid4().hex}")).name
    sub = subscriber.create_subscription(
        name=subscriber.subscription_path(project, f"s-{uuid.uuid4().hex}"), topic=topic
    ).name
    PubSubWorkQueue(publisher, topic).publish_items("job1", ["a", "b", "c"])

    received = []
    for _ in range(10):
        resp = subscriber.pull(subscription=sub, max_messages=10, timeout=10)
        received += resp.received_messages
        if len(received) >= 3:
            break
    got = sorted(decode_work_message(m.message.data) for m in received)
    assert got == [("job1", "a"), ("job1", "b"), ("job1", "c")]
    assert {m.message.attributes["job_id"] for m in received} == {"job1"}
    with pytest.raises(ValueError):
        decode_work_message(b'{"job_id": "x"}')
    with pytest.raises(ValueError):
        decode_work_message(json.dumps({"job_id": 1, "item_key": "k"}).encode())


# --- BatchStore --------------------------------------------------------------------------


def make_intents(job, n_keys_each=2):
    from core.batches import plan_intents

    items = [Item(job_id=job.job_id, key=f"k{i}", index=i, prompt="p", aspect_ratio="1:1", domain=None,
                  quality="standard") for i in range(job.item_count)]
    return items, plan_intents(job, items, max_requests=n_keys_each, now=100.0)


def test_intents_are_written_with_the_job_and_found_by_state(job_store):
    job, _ = make_job(5)
    items, intents = make_intents(job)
    job_store.create_job(job, items)
    job_store.create_intents(intents)
    assert [i.intent_id for i in job_store.intents_of_job(job.job_id)] == [i.intent_id for i in intents]
    assert job_store.get_intent(intents[2].intent_id).keys == ["k4"]
    assert len(job_store.active_intents(10)) == 3
    assert not job_store.create_intent(intents[0])  # create-only
    assert job_store.get_items(job.job_id, ["k3", "missing", "k0"])[0].key == "k3"
    assert [i.key for i in job_store.get_items(job.job_id, ["k3", "missing", "k0"])] == ["k3", "k0"]


def test_intent_leases_and_conditional_updates(job_store):
    from core.models import IntentState

    job, _ = make_job(2)
    items, (intent,) = make_intents(job)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    claimed = job_store.claim_intent(intent.intent_id, "a", now=200.0, lease_seconds=60)
    assert claimed.lease_owner == "a" and claimed.keys == ["k0", "k1"]
    assert job_store.claim_intent(intent.intent_id, "b", now=230.0, lease_seconds=60) is None
    submitted = BatchRecorded(231.0, "batches/x", "BATCH_STATE_PENDING")
    assert not job_store.update_intent(intent.intent_id, "b", submitted)
    assert job_store.update_intent(intent.intent_id, "a", submitted)
    assert job_store.claim_intent(intent.intent_id, "b", now=261.0, lease_seconds=60).gemini_batch == "batches/x"
    # a's lease is gone: its checkpoint must not land, b's must, items and intent together
    assert not job_store.checkpoint(intent.intent_id, "a", IngestProgress(262.0, 9),
                                    {"k0": BatchFailed(262.0, "refused", 1, intent.intent_id)})
    image = BatchSucceeded(262.0, intent.intent_id, 1, "gs://b/k0.png", {}, "STOP", None)
    assert job_store.checkpoint(intent.intent_id, "b", IngestProgress(262.0, 1), {"k0": image})
    assert job_store.get_intent(intent.intent_id).lines_done == 1
    assert job_store.get_item(job.job_id, "k0").gcs_uri == "gs://b/k0.png"
    assert job_store.get_intent(intent.intent_id).state is IntentState.SUBMITTED
    assert job_store.checkpoint(intent.intent_id, "b", IntentFinished(263.0, "succeeded"), {})
    assert job_store.active_intents(10) == []
    assert job_store.claim_intent(intent.intent_id, "c", now=999.0, lease_seconds=60) is None


def test_due_intents_come_longest_due_first_page_by_page(job_store):
    job, _ = make_job(6)
    items, intents = make_intents(job, n_keys_each=1)  # six intents, due at 100.0 (their creation)
    job_store.create_job(job, items)
    job_store.create_intents(intents)
    ids = [i.intent_id for i in intents]
    for n, intent_id in enumerate(ids[:3]):  # the first three were looked at later: due later
        job_store.claim_intent(intent_id, "p", now=150.0, lease_seconds=60)
        assert job_store.release_intent(intent_id, "p", next_check_at=150.0 + n)
    assert not job_store.release_intent(ids[3], "p", next_check_at=1.0)  # holds no lease on it
    first = job_store.due_intents(now=200.0, limit=4)
    assert [i.intent_id for i in first] == ids[3:] + ids[:1]
    rest = job_store.due_intents(now=200.0, limit=4, after=(first[-1].next_check_at, first[-1].intent_id))
    assert [i.intent_id for i in rest] == ids[1:3]
    assert [i.intent_id for i in job_store.due_intents(now=150.5, limit=10)] == ids[3:] + ids[:1]
    assert job_store.get_intent(ids[0]).lease_owner is None


def test_a_finished_intent_is_never_due_again(job_store):
    from core.transitions import IntentFinished

    job, _ = make_job(2)
    items, (intent,) = make_intents(job)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    job_store.claim_intent(intent.intent_id, "p", now=150.0, lease_seconds=60)
    assert job_store.update_intent(intent.intent_id, "p", IntentFinished(155.0, "succeeded"))
    assert job_store.release_intent(intent.intent_id, "p", next_check_at=160.0)  # the lease goes back...
    assert job_store.due_intents(now=1e12, limit=10) == []  # ...but it is not due again
    assert job_store.get_intent(intent.intent_id).lease_owner is None


def test_checkpoints_larger_than_one_firestore_batch(job_store):
    job, _ = make_job(1200)
    items, (intent,) = make_intents(job, n_keys_each=1200)
    job_store.create_job(job, items)
    job_store.create_intents([intent])
    job_store.claim_intent(intent.intent_id, "a", now=200.0, lease_seconds=60)
    results = {f"k{i}": BatchSucceeded(201.0, intent.intent_id, 1, f"gs://b/k{i}.png", {}, "STOP", None)
               for i in range(1200)}
    assert job_store.checkpoint(intent.intent_id, "a", IngestProgress(201.0, 1200), results)
    assert job_store.count_items(job.job_id)[ItemState.SUCCEEDED] == 1200


def test_cancel_and_complete_with_a_manifest(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    assert job_store.cancel_job(job.job_id, 110.0)
    assert not job_store.cancel_job(job.job_id, 111.0)
    job_store.complete_job(job.job_id, JobStatus.SUCCEEDED, 120.0, manifest_uri="gs://b/j/manifest.jsonl")
    done = job_store.get_job(job.job_id)
    assert done.status is JobStatus.CANCELLED and done.manifest_uri == "gs://b/j/manifest.jsonl"
    other, other_items = make_job(1)
    job_store.create_job(other, other_items)
    job_store.complete_job(other.job_id, JobStatus.FAILED, 130.0, manifest_uri="gs://b/o/manifest.jsonl")
    assert job_store.get_job(other.job_id).status is JobStatus.FAILED
    assert not job_store.cancel_job(other.job_id, 140.0)


def test_one_finalizer_at_a_time_per_round(job_store):
    job, items = make_job(1)
    job_store.create_job(job, items)
    assert job_store.claim_finalizing(job.job_id, "f1", 100.0, 60.0)
    assert not job_store.claim_finalizing(job.job_id, "f2", 159.0, 60.0)  # f1 holds it
    assert job_store.claim_finalizing(job.job_id, "f1", 159.0, 60.0)  # its own, again
    assert job_store.claim_finalizing(job.job_id, "f2", 219.5, 60.0)  # f1's ran out
    assert job_store.claim_finalizing(job.job_id, "f2", 220.0, 0.0)  # given up: a lease ending now
    assert job_store.claim_finalizing(job.job_id, "f3", 220.0, 60.0)
    job_store.complete_job(job.job_id, JobStatus.SUCCEEDED, 221.0, manifest_uri="gs://b/j/manifest.jsonl")
    job_store.reopen_job(job.job_id, 222.0)  # a retry's round is finalized anew
    assert job_store.claim_finalizing(job.job_id, "f4", 223.0, 60.0)
    assert not job_store.claim_finalizing("missing", "f1", 100.0, 60.0)


def test_manifests_are_written_once(sink):
    name = f"{uuid.uuid4().hex}/manifest.jsonl"
    assert sink.put_manifest(name, b'{"key":"a"}\n').created
    assert not sink.put_manifest(name, b'{"key":"b"}\n').created
