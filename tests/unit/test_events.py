"""Completion events on in-memory fakes: the outbox written by finalize_job_if_done, the delivery
state machine, its backoff and its leases."""
import base64
import json
import logging

import pytest

from core import jobs, submitting
from core.errors import DeliveryFailed
from core.events import (
    CompletionEvents, Delivery, DeliveryPolicy, EventDeps, EventState, backoff_seconds, completion_event_id,
    deliver_due_events, deliver_event,
)
from core.models import ItemState, JobStatus
from tests.fakes import (
    InMemoryEventPublisher, InMemoryEventStore, ScriptedWebhookSender, ended,
)
from tests.unit.conftest import Env as UseCaseEnv

KEY = bytes(range(32))
URL = "https://hooks.example.com/imagefleet"
POLICY = DeliveryPolicy(max_attempts=4, backoff_base=30.0, backoff_max=3600.0, lease_seconds=60.0)


class Env(UseCaseEnv):
    """The use cases with a completion-event outbox and its delivery (the webhook scripted)."""

    def __init__(self, secret=KEY, webhook_script=(), policy=POLICY):
        super().__init__()
        self.event_store = InMemoryEventStore()
        self.publisher = InMemoryEventPublisher()
        self.webhooks = ScriptedWebhookSender(webhook_script)
        self.events = CompletionEvents(EventDeps(store=self.event_store, publisher=self.publisher,
                                                 webhooks=self.webhooks, clock=self.clock, secret=secret), policy)
        self.policy = policy

    def submit(self, n=2, callback_url=URL):
        spec = self.spec(n, callback_url=callback_url)
        return submitting.submit_job(submitting.Submission(spec, self.model), self.submit_deps())

    def finish(self, job_id, key, state=ItemState.SUCCEEDED):
        """Give an item a terminal state directly, as a worker does before it finalizes."""
        self.store.claim_item(job_id, key, "w", self.clock.now(), 60)
        self.store.finish_item(job_id, key, "w", ended(state, self.clock.now()))

    def finalize(self, job_id, events="default"):
        return jobs.finalize_job_if_done(job_id, store=self.store, clock=self.clock, sink=self.sink,
                                             events=self.events if events == "default" else events)

    def event(self, job_id, round_=1):
        return self.event_store.get_event(completion_event_id(job_id, round_))

    def deliver_due(self, owner="poller"):
        return deliver_due_events(Delivery(store=self.event_store, publisher=self.publisher, webhooks=self.webhooks,
                                           clock=self.clock, secret=KEY, policy=self.policy), owner)


@pytest.fixture
def env():
    return Env()


# --- the outbox --------------------------------------------------------------------------------


def test_a_finished_job_records_one_event_and_delivers_it_at_once(env):
    job = env.submit(2)
    for key in ("k0", "k1"):
        assert env.process(job.job_id, key).ack

    event = env.event(job.job_id)
    assert event.event_id == f"{job.job_id}.completed.r1"
    assert (event.state, event.attempts, event.pubsub_done, event.webhook_done) == (EventState.DELIVERED, 1, True, True)
    assert event.delivered_at == env.clock.now() and event.next_attempt_at is None
    payload = json.loads(event.body)
    assert payload == {
        "type": "job.completed",
        "timestamp": "2027-01-15T08:00:00.000Z",  # the job's finished_at (FakeClock starts at 1.8e9)
        "data": {"job_id": job.job_id, "status": "succeeded", "lane": "interactive", "item_count": 2,
                 "counts": {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "dead_lettered": 0,
                            "cancelled": 0},
                 "manifest_uri": f"gs://test-bucket/{job.job_id}/manifest.jsonl", "round": 1},
    }
    [(data, attributes)] = env.publisher.messages
    assert data == event.body.encode()
    assert attributes == {"type": "job.completed", "job_id": job.job_id, "event_id": event.event_id}
    [(url, body, headers)] = env.webhooks.requests
    assert (url, body) == (URL, event.body.encode())
    assert headers["webhook-id"] == event.event_id
    assert headers["webhook-timestamp"] == str(int(env.clock.now()))
    assert headers["webhook-signature"].startswith("v1,")


def test_finalizing_twice_records_one_event(env):
    job = env.submit(1)
    env.finish(job.job_id, "k0")

    assert env.finalize(job.job_id) is JobStatus.SUCCEEDED
    assert env.finalize(job.job_id) is JobStatus.SUCCEEDED
    assert env.process(job.job_id, "k0").ack  # a redelivered message finalizes once more

    assert len(env.event_store.events) == 1
    assert len(env.publisher.messages) == 1 and len(env.webhooks.requests) == 1


def test_an_unfinished_job_records_nothing(env):
    job = env.submit(2)
    env.finish(job.job_id, "k0")

    assert env.finalize(job.job_id) is None
    assert env.event_store.events == {}


def test_a_crash_between_the_status_and_the_event_is_repaired_by_the_next_finalize(env):
    job = env.submit(1)
    env.finish(job.job_id, "k0")

    class CrashingOutbox(CompletionEvents):
        def record_completion(self, job, counts):
            raise SystemExit("killed between complete_job and the outbox write")

    crashing = CrashingOutbox(EventDeps(store=env.event_store, publisher=env.publisher, webhooks=env.webhooks,
                                        clock=env.clock, secret=KEY), POLICY)
    with pytest.raises(SystemExit):
        env.finalize(job.job_id, events=crashing)
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED
    assert env.event_store.events == {}

    # The message was not acked, so Pub/Sub redelivers it: the item is finished, the job too.
    assert env.process(job.job_id, "k0").ack

    assert env.event(job.job_id).state is EventState.DELIVERED
    assert json.loads(env.event(job.job_id).body)["data"]["status"] == "succeeded"


def test_a_job_finalized_without_events_gets_its_event_later(env):
    job = env.submit(1)
    env.finish(job.job_id, "k0")
    env.finalize(job.job_id, events=None)

    env.finalize(job.job_id)

    assert env.event(job.job_id).state is EventState.DELIVERED


def test_a_cancelled_job_emits_its_event_once_its_running_items_have_ended(env):
    job = env.submit(3)
    env.store.claim_item(job.job_id, "k0", "busy-worker", env.clock.now(), 120)  # with the model

    status = jobs.cancel_job(job.job_id, store=env.store, clock=env.clock, sink=env.sink, events=env.events)

    assert status["status"] == "cancelled" and status["events"] == []  # k0 is still running
    assert env.event_store.events == {}
    env.store.finish_item(job.job_id, "k0", "busy-worker", ended(ItemState.SUCCEEDED, env.clock.now()))
    env.finalize(job.job_id)
    event = env.event(job.job_id)
    data = json.loads(event.body)["data"]
    assert (data["status"], data["counts"]["succeeded"], data["counts"]["cancelled"]) == ("cancelled", 1, 2)
    assert data["manifest_uri"] and event.state is EventState.DELIVERED


def test_a_job_whose_items_were_all_queued_emits_its_event_on_cancel(env):
    job = env.submit(2)

    status = jobs.cancel_job(job.job_id, store=env.store, clock=env.clock, sink=env.sink, events=env.events)

    assert [e["state"] for e in status["events"]] == ["delivered"]
    assert json.loads(env.webhooks.requests[0][1])["data"]["status"] == "cancelled"


def test_each_round_has_its_own_event(env):
    job = env.submit(1)
    env.finish(job.job_id, "k0")
    env.finalize(job.job_id)
    env.store.jobs[job.job_id]["round"] = 2  # a retry of the finished job (done elsewhere) bumps it

    env.finalize(job.job_id)

    assert sorted(env.event_store.events) == [f"{job.job_id}.completed.r1", f"{job.job_id}.completed.r2"]
    assert json.loads(env.event(job.job_id, 2).body)["data"]["round"] == 2


def test_the_status_shows_the_events(env):
    job = env.submit(1, callback_url=None)
    env.finish(job.job_id, "k0")
    env.finalize(job.job_id)

    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(env.store, events=env.events))

    assert status["events"] == [{"event_id": f"{job.job_id}.completed.r1", "type": "job.completed",
                                 "state": "delivered", "attempts": 1, "last_error": None,
                                 "delivered_at": env.clock.now()}]
    assert env.webhooks.requests == []  # no callback_url: Pub/Sub only


def test_a_broken_inline_delivery_never_breaks_finalize(env, caplog):
    env.webhooks.script = [RuntimeError("a bug in the sender")]
    job = env.submit(1)
    env.finish(job.job_id, "k0")

    assert env.finalize(job.job_id) is JobStatus.SUCCEEDED

    assert "inline delivery of event" in caplog.text
    assert env.event(job.job_id).state is EventState.PENDING
    env.clock.advance(POLICY.lease_seconds + 1)  # the crashed attempt's lease runs out
    assert env.deliver_due()["delivered"] == 1


# --- delivery ----------------------------------------------------------------------------------


def finished_job(env, **kw):
    """A finished job whose event is recorded but not yet delivered."""
    env.events.deliver_inline = False
    job = env.submit(1, **kw)
    env.finish(job.job_id, "k0")
    env.finalize(job.job_id)
    env.events.deliver_inline = True
    return job


def test_a_failing_webhook_is_retried_alone_with_backoff_until_it_is_accepted(env):
    env.webhooks.script = [DeliveryFailed("HTTP 500"), DeliveryFailed("no answer within 10s")]
    job = finished_job(env)
    start = env.clock.now()

    assert env.deliver_due() == {"due": 1, "delivered": 0, "retrying": 1, "failed": 0, "skipped": 0, "errors": 0}
    event = env.event(job.job_id)
    assert (event.state, event.attempts, event.pubsub_done, event.webhook_done) == (EventState.PENDING, 1, True, False)
    assert event.last_error == "webhook: HTTP 500"
    assert start + 15 <= event.next_attempt_at <= start + 30  # base 30 s, equal jitter
    assert env.deliver_due()["due"] == 0  # not due yet

    env.clock.t = event.next_attempt_at
    assert env.deliver_due()["retrying"] == 1
    event = env.event(job.job_id)
    assert event.attempts == 2 and event.last_error == "webhook: no answer within 10s"
    assert env.clock.now() + 30 <= event.next_attempt_at <= env.clock.now() + 60

    env.clock.t = event.next_attempt_at
    assert env.deliver_due()["delivered"] == 1
    event = env.event(job.job_id)
    assert (event.state, event.attempts, event.last_error) == (EventState.DELIVERED, 3, None)
    assert len(env.publisher.messages) == 1  # published once, on the first attempt
    ids = {headers["webhook-id"] for _, _, headers in env.webhooks.requests}
    assert len(env.webhooks.requests) == 3 and ids == {event.event_id}


def test_a_failing_publish_is_retried_alone(env):
    env.publisher.fail = "ServiceUnavailable: 503"
    job = finished_job(env)

    env.deliver_due()
    event = env.event(job.job_id)
    assert (event.pubsub_done, event.webhook_done, event.last_error) == (False, True, "pubsub: ServiceUnavailable: 503")

    env.publisher.fail = None
    env.clock.t = event.next_attempt_at
    env.deliver_due()
    assert env.event(job.job_id).state is EventState.DELIVERED
    assert len(env.webhooks.requests) == 1 and len(env.publisher.messages) == 1


def test_an_event_fails_for_good_after_max_attempts(env, caplog):
    env.webhooks.script = [DeliveryFailed("HTTP 503")] * POLICY.max_attempts
    job = finished_job(env)

    for _ in range(POLICY.max_attempts):
        env.clock.t = env.event(job.job_id).next_attempt_at
        env.deliver_due()

    event = env.event(job.job_id)
    assert (event.state, event.attempts, event.last_error) == (EventState.FAILED, POLICY.max_attempts, "webhook: HTTP 503")
    assert event.next_attempt_at is None and env.event_store.due_events(1e12, 10) == []
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert event.event_id in error.getMessage() and "hooks.example.com" in error.getMessage()
    assert "/imagefleet" not in error.getMessage()  # the host only: a path may hold a token


def test_410_gone_stops_at_once(env):
    env.webhooks.script = [DeliveryFailed("HTTP 410", permanent=True)]
    job = finished_job(env)

    assert env.deliver_due()["failed"] == 1
    assert env.event(job.job_id).state is EventState.FAILED


def test_retry_after_is_honoured_up_to_the_cap(env):
    env.webhooks.script = [DeliveryFailed("HTTP 429", retry_after=600), DeliveryFailed("HTTP 503", retry_after=1e9)]
    job = finished_job(env)

    env.deliver_due()
    assert env.event(job.job_id).next_attempt_at == env.clock.now() + 600
    env.clock.t = env.event(job.job_id).next_attempt_at
    env.deliver_due()
    assert env.event(job.job_id).next_attempt_at == env.clock.now() + POLICY.backoff_max


def test_nothing_is_sent_unsigned():
    env = Env(secret=None)
    job = finished_job(env)

    env.events.deliver(env.event(job.job_id).event_id, "poller")

    event = env.event(job.job_id)
    assert env.webhooks.requests == [] and event.pubsub_done and not event.webhook_done
    assert event.last_error == "webhook: this deployment has no webhook signing secret"


def test_a_leased_event_is_not_delivered_twice_at_once(env):
    job = finished_job(env)
    event_id = env.event(job.job_id).event_id
    assert env.event_store.claim_event(event_id, "poller-a", env.clock.now(), 60) is not None

    assert env.deliver_due(owner="poller-b") == {"due": 1, "delivered": 0, "retrying": 0, "failed": 0,
                                                 "skipped": 1, "errors": 0}
    assert env.webhooks.requests == [] and env.publisher.messages == []
    env.clock.advance(61)  # poller-a died: its lease runs out
    assert env.deliver_due(owner="poller-b")["delivered"] == 1


def test_a_deliverer_that_lost_its_lease_does_not_overwrite_its_successor(env):
    job = finished_job(env)
    event_id = env.event(job.job_id).event_id

    class SlowSender(ScriptedWebhookSender):
        def post(self, url, body, headers):
            super().post(url, body, headers)
            if len(self.requests) == 1:  # the first deliverer stalls past its lease...
                env.clock.advance(61)
                assert deliver_event(event_id, "b", Delivery(store=env.event_store, publisher=env.publisher,
                                                             webhooks=self, clock=env.clock, secret=KEY,
                                                             policy=POLICY)) == "delivered"
                raise DeliveryFailed("HTTP 500")  # ...and then fails

    outcome = deliver_event(event_id, "a", Delivery(store=env.event_store, publisher=env.publisher,
                                                    webhooks=SlowSender(), clock=env.clock, secret=KEY, policy=POLICY))

    assert outcome == "skipped"
    event = env.event(job.job_id)
    assert (event.state, event.attempts, event.last_error) == (EventState.DELIVERED, 1, None)


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_in_the_upper_half():
    lowest = [backoff_seconds(n, base=30, cap=3600, rand=lambda: 0.0) for n in range(1, 10)]
    highest = [backoff_seconds(n, base=30, cap=3600, rand=lambda: 1.0) for n in range(1, 10)]

    assert highest == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert lowest == [h / 2 for h in highest]
    assert backoff_seconds(3, base=30, cap=3600, rand=lambda: 0.5) == 90
    assert backoff_seconds(10_000, base=30, cap=3600) <= 3600  # no overflow


def test_the_default_schedule_spans_about_an_hour():
    policy = DeliveryPolicy()
    waits = [backoff_seconds(n, base=policy.backoff_base, cap=policy.backoff_max, rand=lambda: 1.0)
             for n in range(1, policy.max_attempts)]
    assert sum(waits) == 30 * (2 ** 7 - 1)  # 7 waits between 8 attempts: 3810 s at most


def test_signatures_verify_with_the_reference_library_end_to_end():
    import time

    from standardwebhooks.webhooks import Webhook

    env = Env()
    env.clock.t = time.time()  # the library checks the timestamp against the real clock
    job = env.submit(1)
    env.finish(job.job_id, "k0")
    env.finalize(job.job_id)

    [(_, body, headers)] = env.webhooks.requests
    secret = "whsec_" + base64.b64encode(KEY).decode()
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == job.job_id
