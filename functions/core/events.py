"""Completion events: when a job ends, a `job.completed` event is recorded in an outbox and then
published to the events topic and POSTed, signed, to the job's callback_url, each until it
succeeds or the attempts run out.

Why an outbox: the job's terminal status and the event cannot be written in one step, and the
Pub/Sub publish and the webhook can fail or be cut off at any line. So the event is first a
create-only document whose id is derived from the job (`{job_id}.completed.r{round}`): every
finisher that sees the job ended records it, only the first one creates it, and a crash
between "job ended" and "event recorded" is repaired by the next finisher or poller tick that
calls finalize_job_if_done. Delivery leases the event (a compare-and-set, like items and batch
intents), so overlapping pollers never deliver one event at the same time, and records which of
its two channels is done, so a retry repeats only the one that failed. Delivery is at least
once: a crash after the POST and before the record repeats it, with the same webhook-id,
which receivers use as their idempotency key (Standard Webhooks).
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.backoff import backoff_seconds
from core.errors import DeliveryFailed
from core.models import ItemState, Job
from core.transitions import EventAttempt
from core.webhooks import signed_headers

if TYPE_CHECKING:
    from core.ports import Clock, EventPublisher, EventStore, WebhookSender

log = logging.getLogger(__name__)

JOB_COMPLETED = "job.completed"
_MAX_ERROR_CHARS = 500


class EventState(str, enum.Enum):
    PENDING = "pending"  # not yet delivered on every channel; next_attempt_at says when to try
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up: max attempts, or the receiver answered 410 Gone


@dataclass
class Event:
    event_id: str
    type: str
    job_id: str
    # The exact JSON text sent as the Pub/Sub data and the webhook body: stored as text, so
    # every retry sends and signs the same bytes.
    body: str
    created_at: float
    callback_url: str | None = None
    state: EventState = EventState.PENDING
    attempts: int = 0
    # Set only while pending: the due query is a range over this one field, and documents
    # without a number in it (delivered, failed) are not in that range.
    next_attempt_at: float | None = None
    last_error: str | None = None
    pubsub_done: bool = False
    webhook_done: bool = False
    delivered_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "state": EventState(d["state"])})

    def public(self) -> dict[str, Any]:
        """The event as the status API shows it."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at,
        }


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    # Longer than one delivery can take (the publish, and the webhook's connect and read
    # timeouts), so a live deliverer never loses its lease to another.
    lease_seconds: float = 60.0


def completion_event_id(job_id: str, round_: int) -> str:
    """The same for every finisher and every re-delivery of one completion; a new one per round."""
    return f"{job_id}.completed.r{round_}"


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def completion_payload(job: Job, counts: dict[ItemState, int], now: float) -> dict[str, Any]:
    """Standard Webhooks' shape: type, timestamp (when the event happened), data."""
    return {
        "type": JOB_COMPLETED,
        "timestamp": rfc3339(job.finished_at or now),
        "data": {
            "job_id": job.job_id,
            "status": job.status.value,
            "lane": job.lane.value,
            "item_count": job.item_count,
            "counts": {state.value: counts.get(state, 0) for state in ItemState},
            "manifest_uri": job.manifest_uri,
            "round": job.round,
        },
    }


def record_completion(job: Job, counts: dict[ItemState, int], *, store: EventStore, clock: Clock) -> Event | None:
    """Create the job's job.completed event, due now; None when it already exists."""
    now = clock.now()
    payload = completion_payload(job, counts, now)
    event = Event(
        event_id=completion_event_id(job.job_id, job.round), type=JOB_COMPLETED, job_id=job.job_id,
        body=json.dumps(payload, separators=(",", ":")), created_at=now, callback_url=job.callback_url,
        next_attempt_at=now, updated_at=now,
    )
    return event if store.create_event(event) else None


def _host(url: str | None) -> str:
    """What the logs name of a callback URL: its host (a path or query may hold a token)."""
    try:
        return urlsplit(url or "").hostname or "?"
    except ValueError:
        return "?"


@dataclass(frozen=True)
class Delivery:
    """What delivering an event needs: the outbox, both channels, the clock, the webhook
    signing secret (None: webhooks cannot be sent), the retry policy and the jitter source."""
    store: EventStore
    publisher: EventPublisher
    webhooks: WebhookSender
    clock: Clock
    secret: bytes | None
    policy: DeliveryPolicy
    rand: Callable[[], float] = random.random


def deliver_event(event_id: str, owner: str, deps: Delivery) -> str:
    """One delivery attempt of a due event, under its lease: publish it unless that is done,
    POST the webhook unless that is done (or there is no callback_url), then record the
    outcome. Returns "delivered", "retrying", "failed" or "skipped" (not due, already done, or
    leased by another deliverer)."""
    store, clock, policy = deps.store, deps.clock, deps.policy
    event = store.claim_event(event_id, owner, clock.now(), policy.lease_seconds)
    if event is None:
        return "skipped"
    attempt = _Attempt()
    if not event.pubsub_done:
        _publish(event, deps.publisher, attempt)
    if not event.webhook_done:
        _post_webhook(event, deps.webhooks, clock, deps.secret, attempt)
    attempts = event.attempts + 1
    now = clock.now()
    outcome, record = _record_outcome(event, attempt, attempts, now, policy, deps.rand)
    if not store.update_event(event_id, owner, record):
        # Our lease ran out and another deliverer took the event over: its record wins.
        log.warning("event %s: lost the lease before recording attempt %d", event_id, attempts)
        return "skipped"
    return outcome


@dataclass
class _Attempt:
    """What one delivery attempt did: the channels it delivered on and the errors met."""
    pubsub_done: bool = False
    webhook_done: bool = False
    errors: list[str] = field(default_factory=list)
    retry_after: float | None = None
    permanent: bool = False


def _publish(event: Event, publisher: EventPublisher, attempt: _Attempt) -> None:
    try:
        publisher.publish_event(event.body.encode(), {"type": event.type, "job_id": event.job_id,
                                                      "event_id": event.event_id})
        attempt.pubsub_done = True
    except DeliveryFailed as e:
        attempt.errors.append(f"pubsub: {e.reason}")


def _post_webhook(event: Event, webhooks: WebhookSender, clock: Clock, secret: bytes | None,
                  attempt: _Attempt) -> None:
    if not event.callback_url:
        attempt.webhook_done = True
    elif secret is None:
        # Never sent unsigned. Submit refuses callback URLs without a secret, so this is a
        # deployment that lost its secret after the job was accepted.
        attempt.errors.append("webhook: this deployment has no webhook signing secret")
    else:
        headers = signed_headers(secret, event.event_id, int(clock.now()), event.body)
        try:
            webhooks.post(event.callback_url, event.body.encode(), headers)
            attempt.webhook_done = True
        except DeliveryFailed as e:
            attempt.errors.append(f"webhook: {e.reason}")
            attempt.retry_after, attempt.permanent = e.retry_after, e.permanent


def _record_outcome(event: Event, attempt: _Attempt, attempts: int, now: float, policy: DeliveryPolicy,
                    rand: Callable[[], float]) -> tuple[str, EventAttempt]:
    """Delivered, retrying (when, after a backoff) or failed for good, and the attempt's record."""
    event_id = event.event_id
    channels = (attempt.pubsub_done, attempt.webhook_done)
    if not attempt.errors:
        log.info("event %s delivered (attempt %d)", event_id, attempts)
        return "delivered", EventAttempt(now, attempts, EventState.DELIVERED, *channels)
    last_error = "; ".join(attempt.errors)[:_MAX_ERROR_CHARS]
    if attempt.permanent or attempts >= policy.max_attempts:
        log.error("event %s failed for good after %d attempts (callback host %s): %s",
                  event_id, attempts, _host(event.callback_url), last_error)
        return "failed", EventAttempt(now, attempts, EventState.FAILED, *channels, last_error=last_error)
    delay = backoff_seconds(attempts, base=policy.backoff_base, cap=policy.backoff_max, rand=rand)
    if attempt.retry_after is not None:
        delay = max(delay, min(attempt.retry_after, policy.backoff_max))
    log.warning("event %s attempt %d failed (callback host %s): %s; next in %.1fs",
                event_id, attempts, _host(event.callback_url), last_error, delay)
    return "retrying", EventAttempt(now, attempts, EventState.PENDING, *channels, last_error=last_error,
                                    next_attempt_at=now + delay)


def deliver_due_events(deps: Delivery, owner: str, deadline: float | None = None, limit: int = 50) -> dict[str, int]:
    """One poller tick's worth of deliveries: every due event, oldest first, until the
    deadline. Overlapping ticks are safe: each event is leased."""
    summary = {"due": 0, "delivered": 0, "retrying": 0, "failed": 0, "skipped": 0, "errors": 0}
    clock = deps.clock
    for event in deps.store.due_events(clock.now(), limit):
        if deadline is not None and clock.now() >= deadline:
            break
        summary["due"] += 1
        try:
            summary[deliver_event(event.event_id, owner, deps)] += 1
        except Exception:  # noqa: BLE001 - one broken event must not starve the others
            log.exception("delivering event %s failed", event.event_id)
            summary["errors"] += 1
    return summary


@dataclass(frozen=True)
class EventDeps:
    """Where completion events are kept (the outbox), sent (the events topic, each job's
    webhook) and signed with (`secret`: None, webhooks are refused unsigned)."""
    store: EventStore
    publisher: EventPublisher
    webhooks: WebhookSender
    clock: Clock
    secret: bytes | None = None


class CompletionEvents:
    """The EventOutbox finalize_job_if_done is given, with what delivery needs, built once per
    instance by wiring. Recording delivers once at once (best effort, bounded by the webhook
    timeout), so webhooks arrive promptly; the poller retries whatever is still due."""

    def __init__(
        self, deps: EventDeps, policy: DeliveryPolicy, *, owner_prefix: str = "inline", deliver_inline: bool = True,
    ) -> None:
        self.store, self.publisher, self.webhooks, self.clock = deps.store, deps.publisher, deps.webhooks, deps.clock
        self.secret, self.policy = deps.secret, policy
        self.owner_prefix, self.deliver_inline = owner_prefix, deliver_inline

    # --- EventOutbox -----------------------------------------------------------------------

    def has_completion(self, job: Job) -> bool:
        return self.store.get_event(completion_event_id(job.job_id, job.round)) is not None

    def record_completion(self, job: Job, counts: dict[ItemState, int]) -> None:
        event = record_completion(job, counts, store=self.store, clock=self.clock)
        if event is None:
            return  # another finisher recorded it (and delivers it)
        log.info("job %s: recorded event %s", job.job_id, event.event_id)
        if not self.deliver_inline:
            return
        try:
            self.deliver(event.event_id, f"{self.owner_prefix}-{uuid.uuid4().hex[:8]}")
        except Exception:  # noqa: BLE001 - recorded: the poller delivers it
            log.exception("inline delivery of event %s failed; the poller will retry it", event.event_id)

    def events_of_job(self, job_id: str) -> list[dict[str, Any]]:
        return [e.public() for e in self.store.events_of_job(job_id)]

    # --- delivery --------------------------------------------------------------------------

    def deliver(self, event_id: str, owner: str) -> str:
        return deliver_event(event_id, owner, self.delivery())

    def deliver_due(self, owner: str, deadline: float | None = None, limit: int = 50) -> dict[str, int]:
        return deliver_due_events(self.delivery(), owner, deadline=deadline, limit=limit)

    def delivery(self) -> Delivery:
        # Built at each call from the attributes, which tests and wiring may replace.
        return Delivery(store=self.store, publisher=self.publisher, webhooks=self.webhooks, clock=self.clock,
                        secret=self.secret, policy=self.policy)
