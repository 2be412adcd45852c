"""Contract tests of the completion events' outbox (one body against the in-memory fake and the
Firestore adapter on the emulator), and the events topic publisher on the Pub/Sub emulator."""
from __future__ import annotations

import json
import os
import threading
import uuid

import pytest

from core.errors import DeliveryFailed
from core.events import Event, EventState
from core.transitions import EventAttempt
from tests.fakes import InMemoryEventStore


@pytest.fixture(params=["memory", "firestore"])
def event_store(request):
    if request.param == "memory":
        return InMemoryEventStore()
    request.getfixturevalue("firestore_clean")
    from google.cloud import firestore

    from adapters.firestore.events import FirestoreEventStore

    return FirestoreEventStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]))


def make_event(job_id: str | None = None, round_: int = 1, due: float = 100.0, **kw) -> Event:
    job_id = job_id or uuid.uuid4().hex
    return Event(event_id=f"{job_id}.completed.r{round_}", type="job.completed", job_id=job_id,
                 body=json.dumps({"type": "job.completed", "data": {"job_id": job_id}}), created_at=due,
                 callback_url="https://hooks.example.com/x", next_attempt_at=due, updated_at=due, **kw)


def test_events_are_created_once_and_found_by_id_and_job(event_store):
    first = make_event("j1", 1, due=100.0)
    second = make_event("j1", 2, due=200.0)
    assert event_store.create_event(first)
    assert not event_store.create_event(make_event("j1", 1, due=999.0))  # create-only
    assert event_store.create_event(second)
    assert event_store.create_event(make_event("j2"))

    assert event_store.get_event("j1.completed.r1") == first
    assert event_store.get_event("nope") is None
    assert [e.event_id for e in event_store.events_of_job("j1")] == ["j1.completed.r1", "j1.completed.r2"]
    assert event_store.events_of_job("j3") == []


def test_due_events_are_the_pending_ones_whose_time_has_come_oldest_first(event_store):
    for job_id, due in (("late", 300.0), ("early", 100.0), ("middle", 200.0), ("future", 900.0)):
        event_store.create_event(make_event(job_id, due=due))
    done = make_event("done", due=50.0)
    event_store.create_event(done)
    claimed = event_store.claim_event(done.event_id, "a", now=150.0, lease_seconds=60)
    assert event_store.update_event(done.event_id, "a", EventAttempt(150.0, 1, EventState.DELIVERED, True, True))

    assert claimed.lease_owner == "a"
    assert [e.job_id for e in event_store.due_events(now=300.0, limit=10)] == ["early", "middle", "late"]
    assert [e.job_id for e in event_store.due_events(now=300.0, limit=2)] == ["early", "middle"]
    assert event_store.due_events(now=99.0, limit=10) == []


def test_a_claim_is_exclusive_until_its_lease_expires_and_only_its_owner_may_update(event_store):
    event = make_event(due=100.0)
    event_store.create_event(event)

    assert event_store.claim_event(event.event_id, "a", now=99.0, lease_seconds=60) is None  # not due
    claimed = event_store.claim_event(event.event_id, "a", now=100.0, lease_seconds=60)
    assert (claimed.lease_owner, claimed.lease_expires_at, claimed.body) == ("a", 160.0, event.body)
    assert event_store.claim_event(event.event_id, "b", now=159.0, lease_seconds=60) is None
    assert event_store.claim_event(event.event_id, "b", now=161.0, lease_seconds=60).lease_owner == "b"
    # a's lease is gone: its late record must not land; b's must.
    assert not event_store.update_event(event.event_id, "a", EventAttempt(162.0, 9, EventState.PENDING))
    assert event_store.update_event(event.event_id, "b", EventAttempt(162.0, 1, EventState.PENDING, pubsub_done=True,
                                                                      last_error="webhook: 503",
                                                                      next_attempt_at=500.0))
    stored = event_store.get_event(event.event_id)
    assert (stored.attempts, stored.pubsub_done, stored.lease_owner, stored.next_attempt_at) == (1, True, None, 500.0)
    assert event_store.claim_event("missing", "c", now=999.0, lease_seconds=60) is None


def test_finished_events_cannot_be_claimed(event_store):
    for state in (EventState.DELIVERED, EventState.FAILED):
        event = make_event(due=100.0)
        event_store.create_event(event)
        event_store.claim_event(event.event_id, "a", now=100.0, lease_seconds=60)
        event_store.update_event(event.event_id, "a", EventAttempt(101.0, 1, state, last_error="gone"))

        assert event_store.claim_event(event.event_id, "b", now=1000.0, lease_seconds=60) is None


def test_concurrent_claims_have_exactly_one_winner(event_store):
    event = make_event(due=100.0)
    event_store.create_event(event)
    winners = []
    start = threading.Barrier(6)

    def claim(owner):
        start.wait()
        if event_store.claim_event(event.event_id, owner, now=120.0, lease_seconds=60):
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"poller-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(winners) == 1
    assert event_store.get_event(event.event_id).lease_owner == winners[0]


# --- the events topic ---------------------------------------------------------------------------


def test_the_pubsub_publisher_publishes_the_body_with_its_attributes(emulators):
    from google.cloud import pubsub_v1

    from adapters.pubsub_events import PubSubEventPublisher

    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, f"events-{uuid.uuid4().hex}")).name
    sub = subscriber.create_subscription(
        name=subscriber.subscription_path(project, f"events-{uuid.uuid4().hex}"), topic=topic).name
    body = b'{"type":"job.completed","data":{"job_id":"j1"}}'

    PubSubEventPublisher(publisher, topic).publish_event(
        body, {"type": "job.completed", "job_id": "j1", "event_id": "j1.completed.r1"})

    received = []
    for _ in range(10):
        received += subscriber.pull(subscription=sub, max_messages=10, timeout=10).received_messages
        if received:
            break
    [message] = [m.message for m in received]
    assert message.data == body
    assert dict(message.attributes) == {"type": "job.completed", "job_id": "j1", "event_id": "j1.completed.r1"}


def test_publishing_to_a_missing_topic_is_a_delivery_failure(emulators):
    from google.cloud import pubsub_v1

    from adapters.pubsub_events import PubSubEventPublisher

    publisher = pubsub_v1.PublisherClient()
    missing = publisher.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], f"missing-{uuid.uuid4().hex}")

    with pytest.raises(DeliveryFailed, match="NotFound"):
        PubSubEventPublisher(publisher, missing, timeout=30).publish_event(b"{}", {"type": "job.completed"})
