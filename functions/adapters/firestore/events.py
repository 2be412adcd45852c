"""Firestore outbox of the completion events: events/{event_id}, one document per event.

Created create-only by whoever finalizes the job; then leased and updated by compare-and-set
on the read's update_time (common.compare_and_set), like items and batch intents.
Both queries are on one field each (job_id ==, next_attempt_at <=), so Firestore's automatic
single-field indexes answer them and no composite index is needed.
"""
from __future__ import annotations

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from adapters.firestore.common import _ts, create_only, data_of, take_lease, update_if_leased
from core.events import Event, EventState
from core.retention import expire_at
from core.transitions import EventAttempt


class FirestoreEventStore:
    def __init__(self, client: firestore.Client, collection: str = "events", retention_days: int = 30) -> None:
        self.db = client
        self.events = client.collection(collection)
        self.retention_days = retention_days

    def create_event(self, event: Event) -> bool:
        # expire_at: the TTL policy on events deletes it RECORDS_RETENTION_DAYS after its creation.
        data = {**event.to_dict(), "expire_at": _ts(expire_at(event.created_at, self.retention_days))}
        return create_only(lambda: self.events.document(event.event_id).create(data))

    def get_event(self, event_id: str) -> Event | None:
        snap = self.events.document(event_id).get()
        return Event.from_dict(data_of(snap)) if snap.exists else None

    def events_of_job(self, job_id: str) -> list[Event]:
        query = self.events.where(filter=FieldFilter("job_id", "==", job_id))
        return sorted((Event.from_dict(data_of(s)) for s in query.stream()), key=lambda e: (e.created_at, e.event_id))

    def due_events(self, now: float, limit: int) -> list[Event]:
        # Only pending events have a number in next_attempt_at (it is null once delivered or
        # failed), and a range filter matches numbers only.
        query = (self.events.where(filter=FieldFilter("next_attempt_at", "<=", now))
                 .order_by("next_attempt_at").limit(limit))
        return [Event.from_dict(data_of(s)) for s in query.stream()]

    def claim_event(self, event_id: str, owner: str, now: float, lease_seconds: float) -> Event | None:
        def due(data: dict) -> bool:
            return data.get("state") == EventState.PENDING.value and (data.get("next_attempt_at") or 0) <= now

        data = take_lease(self.db, self.events.document(event_id), owner, now, lease_seconds, eligible=due)
        return Event.from_dict(data) if data else None

    def update_event(self, event_id: str, owner: str, attempt: EventAttempt) -> bool:
        return update_if_leased(self.db, self.events.document(event_id), owner, attempt.as_fields())
