"""The circuit breaker: breakers/{breaker_id}, one document."""
from __future__ import annotations

from collections.abc import Callable

from google.cloud import firestore

from adapters.firestore.common import compare_and_set


class FirestoreBreakerStore:
    """The circuit breaker's one document."""

    def __init__(self, client: firestore.Client, breaker_id: str, collection: str = "breakers") -> None:
        self.db = client
        self.ref = client.collection(collection).document(breaker_id)

    def read(self) -> dict | None:
        snap = self.ref.get()
        return snap.to_dict() if snap.exists else None

    def compare_and_set(self, decide: Callable[[dict | None], dict | None]) -> bool:
        return compare_and_set(self.db, self.ref, decide)
