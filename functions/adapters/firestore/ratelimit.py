"""The shared rate limiter: ratelimit/{limiter_id} (blocked_until), its slots/{n}, leases/{i}
and spend/window documents.
"""
from __future__ import annotations

import random

from google.api_core import exceptions as gexc
from google.cloud import firestore

from adapters.firestore.common import _ts, compare_and_set, data_of
from core.ratelimit import spend_after


class FirestoreSlotStore:
    """The SlotStore of core.ratelimit on Firestore."""

    def __init__(self, client: firestore.Client, limiter_id: str, collection: str = "ratelimit"):
        self.db = client
        self.root = client.collection(collection).document(limiter_id)
        self.slots = self.root.collection("slots")
        self.leases = self.root.collection("leases")

    def blocked_until(self) -> float:
        snap = self.root.get()
        return float(snap.get("blocked_until")) if snap.exists and data_of(snap).get("blocked_until") else 0.0

    def push_blocked_until(self, until: float) -> None:
        def decide(data: dict | None) -> dict | None:
            return {"blocked_until": until} if until > (data or {}).get("blocked_until", 0.0) else None

        compare_and_set(self.db, self.root, decide)

    def last_slot(self) -> int | None:
        query = self.slots.order_by("slot", direction=firestore.Query.DESCENDING).limit(1)
        for snap in query.stream():
            return int(snap.get("slot"))
        return None

    def try_claim_slot(self, slot: int, owner: str, expire_at: float) -> bool:
        try:
            # Zero-padded ids keep the documents in time order in the console.
            self.slots.document(f"{slot:015d}").create(
                {"slot": slot, "owner": owner, "expire_at": _ts(expire_at)}
            )
            return True
        except gexc.Conflict:
            return False

    def try_take_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        candidates = list(range(capacity))
        random.shuffle(candidates)  # spread contending instances over the leases

        def decide(data: dict | None) -> dict | None:
            if data and data.get("owner") and data.get("expires_at", 0) > now:
                return None
            return {"owner": owner, "expires_at": now + ttl}

        for index in candidates:
            ref = self.leases.document(str(index))
            if compare_and_set(self.db, ref, decide, attempts=1):
                return ref.id
        return None

    def release_lease(self, lease_id: str, owner: str) -> None:
        def decide(data: dict | None) -> dict | None:
            return {"owner": None, "expires_at": 0} if data and data.get("owner") == owner else None

        compare_and_set(self.db, self.leases.document(lease_id), decide)

    def try_spend(self, amount: float, limit: float, window: float, now: float) -> float | None:
        # One small document holds the window's spends (pruned on every write), changed by
        # compare-and-set: one write per admitted request, which the quota already keeps to a
        # few per second.
        waits: list[float | None] = [None]

        def decide(data: dict | None) -> dict | None:
            entries = [(e["t"], e["usd"]) for e in (data or {}).get("entries", [])]
            kept, waits[0] = spend_after(entries, amount, limit, window, now)
            if waits[0] is not None:
                return None
            return {"entries": [{"t": t, "usd": usd} for t, usd in kept]}

        written = compare_and_set(self.db, self.root.collection("spend").document("window"), decide)
        if waits[0] is None and not written:
            return 0.05  # lost every compare-and-set to other writers: look again shortly
        return waits[0]
