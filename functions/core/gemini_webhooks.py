"""Gemini's batch webhooks, received: the Standard Webhooks signature check, the event's
reading, and what a verified event does to the batch lane (the intent is due at once and a
nudge starts its reconcile without waiting for the next scheduled tick).

Polling stays the source of truth: an event only says "look now". A lost, late, repeated or
forged event changes nothing but how soon the batch is looked at, because the nudged tick
asks batches.get exactly as a scheduled one does, under the intent's lease.

Evidence for the wire format:
  - https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
    (signed content "{webhook-id}.{webhook-timestamp}.{body}", HMAC-SHA256 with the base64 key
    after `whsec_`, `v1,<base64>` entries separated by spaces, constant-time comparison,
    a timestamp tolerance against replays);
  - https://ai.google.dev/gemini-api/docs/webhooks (static webhooks signed with that scheme,
    at-least-once delivery retried for up to 24 h, event names batch.succeeded, batch.failed...).
Standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from core.batches import BatchLane
from core.models import IntentState
from core.ports import BatchNudges, BatchStore, Clock

log = logging.getLogger("imagefleet")

# The batch events that end a batch: each makes its intent worth a look now. The SDK's
# WebhookSubscribedEvent (google-genai 3.4.0, _gaos/types/webhooks/webhook.py) lists
# batch.succeeded, batch.expired and batch.failed; the JS SDK's Webhook type also lists
# batch.cancelled (https://googleapis.github.io/js-genai/ Webhooks.Webhook).
BATCH_EVENTS = frozenset({"batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"})
# What the registration subscribes to: every end we did not cause ourselves (a cancel is ours,
# recorded when we make it).
SUBSCRIBED_EVENTS = ("batch.succeeded", "batch.failed", "batch.expired")
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookRejected(Exception):
    """The request is not a genuine, fresh Gemini webhook (answered 401); the message says why
    without echoing anything secret."""


@dataclass(frozen=True)
class BatchEvent:
    webhook_id: str
    type: str
    batch_name: str | None  # "batches/<id>", or None when the event names no batch


def decode_gemini_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret. Its length is Gemini's to choose (the spec
    asks for 24 to 64 random bytes), so only "base64 and not trivially short" is checked.
    ValueError otherwise; the message never contains the secret."""
    try:
        key = base64.b64decode(secret.strip().removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("GEMINI_WEBHOOK_SECRET must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("GEMINI_WEBHOOK_SECRET decodes to fewer than 16 bytes")
    return key


def verify(key: bytes, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_seconds: float) -> str:
    """The webhook-id of a request whose signature is one of ours and whose timestamp is
    within tolerance of `now` (either side: a timestamp from the future is as suspect as an
    old one); WebhookRejected otherwise."""
    msg_id, timestamp, signatures = (headers.get(h) or "" for h in HEADERS)
    if not (msg_id and timestamp and signatures):
        raise WebhookRejected("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookRejected("webhook-timestamp is not a Unix time in seconds")
    if abs(now - int(timestamp)) > tolerance_seconds:
        raise WebhookRejected("webhook-timestamp is outside the accepted window")
    expected = signature(key, msg_id, timestamp, body).encode()
    matched = False
    for entry in signatures.split(" "):  # several during a secret rotation: any one may match
        version, _, _ = entry.partition(",")
        if version == "v1" and hmac.compare_digest(entry.encode(), expected):
            matched = True
    if not matched:
        raise WebhookRejected("no webhook-signature matches")
    return msg_id


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), over the body's exact bytes."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def read_event(webhook_id: str, body: bytes) -> BatchEvent:
    """The event of a verified body: {"type": ..., "data": {"id": ...}}. ValueError when it is
    not that shape. The docs show a bare batch id in data.id; the resource name
    ("batches/<id>") is accepted as well, and data.name when id is missing."""
    event = json.loads(body)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("the event has no type")
    data = event.get("data")
    ident = (data.get("id") or data.get("name")) if isinstance(data, dict) else None
    if not isinstance(ident, str) or not ident.strip("/"):
        return BatchEvent(webhook_id, event["type"], None)
    name = ident if ident.startswith("batches/") else f"batches/{ident}"
    return BatchEvent(webhook_id, event["type"], name)


def on_batch_event(event: BatchEvent, *, batches: BatchStore, nudges: BatchNudges, clock: Clock) -> str:
    """Make the event's intent due ahead of every other and nudge it. What happened, for the
    log and the answer: ignored (not a batch end), unknown_batch (not one of ours: static
    webhooks are per project, so another application's batches come here too), finished
    (nothing left to do) or nudged. Raises when the store or the nudge fails: the caller
    answers 5xx and Gemini delivers again."""
    if event.type not in BATCH_EVENTS or event.batch_name is None:
        return "ignored"
    intent = batches.intent_of_batch(event.batch_name)
    if intent is None:
        return "unknown_batch"
    if intent.state is IntentState.FINISHED or not batches.make_due(intent.intent_id, 0.0):
        return "finished"
    nudges.nudge(intent.intent_id)
    log.info("intent %s: Gemini says %s; nudged", intent.intent_id, event.type,
             extra={"job_id": intent.job_id, "batch_intent": intent.intent_id, "webhook_id": event.webhook_id})
    return "nudged"


class NoNudges:
    """BatchNudges when no nudge topic is configured: the event has made its intent due at
    once, and the next scheduled tick reconciles it."""

    def nudge(self, intent_id: str) -> None:
        log.info("intent %s: no nudge topic; the next tick reconciles it", intent_id)

    def expand(self, job_id: str) -> None:
        # The poller's tick expands accepting jobs itself when it has no topic (wiring.poller_deps).
        log.info("job %s: no nudge topic; the next tick expands it", job_id)


def reconcile_nudged(lane: BatchLane, nudges: BatchNudges, intent_id: str, owner: str, deadline: float) -> str:
    """A nudge, delivered to the poller: reconcile that one intent now. An ingest that ran out
    of budget (checkpointed) nudges itself again, so a webhook-started ingest does not wait
    for the next scheduled tick to go on. "busy" when the intent is unfinished but could not be
    worked on (another holds its lease, or its job is still being accepted): a tick holding it
    may have asked batches.get just before the batch ended, so the caller hands the nudge back
    for a later delivery rather than drop it."""
    outcome = lane.reconcile_intent(intent_id, owner, deadline)
    if outcome == "paused":  # a lane with nudges of its own has published the next one ("renudged")
        nudges.nudge(intent_id)
    if outcome == "skipped":
        current = lane.store.get_intent(intent_id)
        if current is not None and current.state is not IntentState.FINISHED:
            return "busy"
    return outcome
