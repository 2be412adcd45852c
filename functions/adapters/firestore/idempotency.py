"""Idempotency-Key records: idempotency/{key_id} (TTL on expire_at)."""
from __future__ import annotations

from google.cloud import firestore

from adapters.firestore.common import _ts, compare_and_set, create_only


class FirestoreIdempotencyStore:
    def __init__(self, client: firestore.Client, collection: str = "idempotency") -> None:
        self.db = client
        self.records = client.collection(collection)

    def begin(self, key_id: str, record: dict) -> tuple[dict, bool]:
        ref = self.records.document(key_id)
        # expire_at as a timestamp: the TTL policy in Terraform deletes records after a day.
        if create_only(lambda: ref.create({**record, "expire_at": _ts(record["expires_at"])})):
            return record, True
        snap = ref.get()
        return (snap.to_dict() or {}), False

    def take_over(self, key_id: str, started_at: float, now: float) -> bool:
        def decide(data: dict | None) -> dict | None:
            if data is None or data.get("started_at") != started_at:
                return None
            return {"started_at": now}

        return compare_and_set(self.db, self.records.document(key_id), decide)
