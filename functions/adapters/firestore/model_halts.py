"""Per-model halt records (core/model_halts.py) in Firestore: one small document per model."""
from __future__ import annotations

from typing import Callable

from google.cloud import firestore

from adapters.firestore.common import compare_and_set


def _doc_id(model: str) -> str:
    # Model ids are [a-z0-9.-]; anything else is squashed so it can never form a path.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[:200] or "_"


class FirestoreModelHaltStore:
    def __init__(self, client: firestore.Client, collection: str = "model_halts") -> None:
        self.db = client
        self.halts = client.collection(collection)

    def read_all(self) -> dict[str, dict]:
        out = {}
        for snap in self.halts.stream():
            d = snap.to_dict() or {}
            out[d.get("model") or snap.id] = d
        return out

    def compare_and_set(self, model: str, decide: Callable[[dict | None], dict | None]) -> bool:
        return compare_and_set(self.db, self.halts.document(_doc_id(model)), decide)
