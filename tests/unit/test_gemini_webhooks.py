"""Gemini's batch webhooks, received: the Standard Webhooks signature check, reading the event,
making its intent due at once, and the route and the nudge through the entry points."""
import base64
import json

import functions_framework
import pytest

from core import gemini_webhooks as gw
from tests.unit.test_batches import Env
from tests.unit.test_entrypoints import SOURCE, api, fakes, post_job  # noqa: F401 - fixtures

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_800_000_000
BODY = b'{"type":"batch.succeeded","version":"v1","data":{"id":"batches/abc"}}'


def headers(body=BODY, key=KEY, msg_id="msg_1", timestamp=NOW, signature=None):
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature or gw.signature(key, msg_id, str(timestamp), body)}


def verify(h, body=BODY, now=NOW, tolerance=300):
    return gw.verify(KEY, h, body, now=now, tolerance_seconds=tolerance)


def test_a_good_signature_is_accepted_and_names_the_message():
    assert verify(headers()) == "msg_1"


def test_the_signature_is_the_spec_example_computed_independently():
    # HMAC-SHA256 over "{id}.{timestamp}.{body}" with the key under whsec_, base64, "v1," first.
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(KEY, b"msg_1.%d." % NOW + BODY, hashlib.sha256).digest()).decode()
    assert headers()["webhook-signature"] == "v1," + expected


@pytest.mark.parametrize("change", [
    lambda h: (h, BODY.replace(b"abc", b"abd")),                          # tampered body
    lambda h: ({**h, "webhook-id": "msg_2"}, BODY),                        # another id, same signature
    lambda h: ({**h, "webhook-signature": headers(key=b"x" * 32)["webhook-signature"]}, BODY),  # wrong secret
    lambda h: ({**h, "webhook-signature": "v1a," + h["webhook-signature"][3:]}, BODY),  # not a v1 entry
    lambda h: ({**h, "webhook-signature": "v1,"}, BODY),
])
def test_anything_not_signed_with_our_secret_is_rejected(change):
    h, body = change(headers())
    with pytest.raises(gw.WebhookRejected, match="signature"):
        verify(h, body)


@pytest.mark.parametrize("now", [NOW + 301, NOW - 301])
def test_stale_and_future_timestamps_are_rejected(now):
    with pytest.raises(gw.WebhookRejected, match="window"):
        verify(headers(), now=now)
    assert verify(headers(), now=now, tolerance=400) == "msg_1"


def test_one_matching_signature_among_several_is_enough():
    good = headers()["webhook-signature"]
    other = headers(key=b"y" * 32)["webhook-signature"]
    assert verify({**headers(), "webhook-signature": f"{other} {good}"}) == "msg_1"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_rejected(missing):
    h = headers()
    del h[missing]
    with pytest.raises(gw.WebhookRejected, match="missing"):
        verify(h)


@pytest.mark.parametrize("timestamp", ["-1", "1e9", "soon", "1800000000.5"])
def test_timestamps_that_are_not_unix_seconds_are_rejected(timestamp):
    with pytest.raises(gw.WebhookRejected, match="Unix"):
        verify({**headers(), "webhook-timestamp": timestamp})


def test_the_secret_must_be_whsec_base64():
    assert gw.decode_gemini_secret(SECRET) == KEY
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError) as e:
            gw.decode_gemini_secret(bad)
        assert bad not in str(e.value)


@pytest.mark.parametrize("data, name", [({"id": "abc"}, "batches/abc"), ({"id": "batches/abc"}, "batches/abc"),
                                        ({"name": "batches/x"}, "batches/x"), ({}, None)])
def test_events_name_their_batch_by_id_or_resource_name(data, name):
    assert gw.read_event("m", json.dumps({"type": "batch.failed", "data": data}).encode()).batch_name == name


@pytest.mark.parametrize("body", [b"[]", b"{}", b"not json", b'{"type": 3}'])
def test_unreadable_events_are_value_errors(body):
    with pytest.raises(ValueError):
        gw.read_event("m", body)


class Nudges:
    def __init__(self):
        self.sent = []

    def nudge(self, intent_id):
        self.sent.append(intent_id)


def submitted(env):
    job = env.submit(3)
    env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    return intent


def test_an_end_event_makes_its_intent_due_ahead_of_the_queue_and_nudges_it():
    env, nudges = Env(), Nudges()
    intent = submitted(env)
    event = gw.BatchEvent("m", "batch.succeeded", intent.gemini_batch)
    assert gw.on_batch_event(event, batches=env.store, nudges=nudges, clock=env.clock) == "nudged"
    assert nudges.sent == [intent.intent_id]
    assert env.store.get_intent(intent.intent_id).next_check_at == 0.0
    # Repeated (at-least-once): the same answer, one more nudge, nothing else.
    assert gw.on_batch_event(event, batches=env.store, nudges=nudges, clock=env.clock) == "nudged"


def test_other_batches_and_events_are_acknowledged_without_a_nudge():
    env, nudges = Env(), Nudges()
    intent = submitted(env)
    for event, outcome in [(gw.BatchEvent("m", "batch.succeeded", "batches/not-ours"), "unknown_batch"),
                           (gw.BatchEvent("m", "video.generated", intent.gemini_batch), "ignored"),
                           (gw.BatchEvent("m", "batch.failed", None), "ignored")]:
        assert gw.on_batch_event(event, batches=env.store, nudges=nudges, clock=env.clock) == outcome
    assert nudges.sent == []


def test_a_nudge_ingests_the_batch_and_a_finished_intent_is_left_alone():
    env, nudges = Env(), Nudges()
    intent = submitted(env)
    env.api.finish(intent.gemini_batch)
    assert gw.reconcile_nudged(env.lane, nudges, intent.intent_id, "nudge", deadline=1e12) == "ingested"
    assert env.store.get_intent(intent.intent_id).state.value == "finished"
    event = gw.BatchEvent("m", "batch.succeeded", intent.gemini_batch)
    assert gw.on_batch_event(event, batches=env.store, nudges=nudges, clock=env.clock) == "finished"
    assert gw.reconcile_nudged(env.lane, nudges, intent.intent_id, "nudge", deadline=1e12) == "skipped"
    assert nudges.sent == []


def test_a_nudge_that_meets_a_lease_is_busy_and_handed_back():
    env, nudges = Env(), Nudges()
    intent = submitted(env)
    env.api.finish(intent.gemini_batch)
    env.store.claim_intent(intent.intent_id, "a-tick", now=env.clock.now(), lease_seconds=60)
    assert gw.reconcile_nudged(env.lane, nudges, intent.intent_id, "nudge", deadline=1e12) == "busy"
    assert env.store.get_intent(intent.intent_id).lease_owner == "a-tick"


# --- through the entry points ----------------------------------------------------------------


@pytest.fixture
def with_secret(fakes, monkeypatch):
    import wiring

    monkeypatch.setenv("GEMINI_WEBHOOK_SECRET", SECRET)
    wiring.get_settings.cache_clear()
    fakes.clock.t = NOW
    return fakes


@pytest.fixture
def receiver(fakes):
    return functions_framework.create_app("gemini_webhook", SOURCE, "http").test_client()


def send(receiver, body=BODY, **kw):
    return receiver.post("/", data=body, headers=headers(body, **kw), content_type="application/json")


def test_the_receiver_is_off_without_a_secret(receiver):
    assert send(receiver).status_code == 404


def test_the_receiver_answers_post_only(receiver, with_secret):
    r = receiver.get("/")
    assert r.status_code == 405 and r.get_json()["error"]["reason"] == "method_not_allowed"


def test_the_receiver_answers_401_with_a_json_error_to_a_bad_signature(receiver, with_secret):
    r = send(receiver, key=b"z" * 32)
    assert r.status_code == 401 and r.get_json()["error"]["reason"] == "unauthenticated"
    assert with_secret.nudges.sent == []


def test_a_webhook_then_its_nudge_ingest_a_batch_without_a_tick(api, receiver, with_secret):
    r = post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(12)]})
    job_id = r.get_json()["job_id"]
    (batch_name,) = with_secret.batch_api.batches
    with_secret.batch_api.finish(batch_name)
    body = json.dumps({"type": "batch.succeeded", "data": {"id": batch_name}}).encode()
    r = send(receiver, body)
    assert r.status_code == 200 and r.get_json() == {"outcome": "nudged"}
    (intent_id,) = with_secret.nudges.sent
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    push = {"message": {"data": base64.b64encode(json.dumps({"intent_id": intent_id}).encode()).decode(),
                        "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}
    assert poller.post("/", json=push).get_json() == {"nudge": "ingested"}
    assert api.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    assert poller.post("/", json={"message": {"data": "bm90IGpzb24="}}).get_json() == {"nudge": "unreadable"}
    assert poller.post("/", json=push).get_json() == {"nudge": "skipped"}  # finished: acknowledged


def test_a_busy_nudge_is_a_503_so_that_pubsub_pushes_it_again(api, with_secret):
    post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(12)]})
    (intent,) = [i for i in with_secret.store.intents.values()]
    with_secret.store.claim_intent(intent["intent_id"], "a-tick", now=with_secret.clock.now(), lease_seconds=60)
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    data = base64.b64encode(json.dumps({"intent_id": intent["intent_id"]}).encode()).decode()
    assert poller.post("/", json={"message": {"data": data}}).status_code == 503
