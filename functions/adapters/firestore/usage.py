"""Daily usage counters: usage/{day}/shards/{n}."""
from __future__ import annotations

import random

from google.cloud import firestore

from adapters.firestore.common import _ts
from core.retention import day_expire_at


class FirestoreCounterStore:
    """Daily counters as sharded documents: every add() increments one random shard with
    server-side increments (no read), so with n shards each document sees 1/n of the writes."""

    def __init__(self, client: firestore.Client, shards: int = 16, collection: str = "usage",
                 retention_days: int = 30) -> None:
        self.db = client
        self.shards = shards
        self.days = client.collection(collection)
        self.retention_days = retention_days

    def add(self, day: str, deltas: dict[str, float], by_quota_id: dict[str, int] | None = None,
            by_tenant: dict[str, dict[str, float]] | None = None) -> None:
        update: dict = {name: firestore.Increment(value) for name, value in deltas.items()}
        if by_quota_id:
            update["quota_errors_by_id"] = {qid: firestore.Increment(n) for qid, n in by_quota_id.items()}
        if by_tenant:  # tenant names are [a-z0-9_-]: safe as map keys (core/tenants.py)
            update["by_tenant"] = {tenant: {name: firestore.Increment(v) for name, v in counters.items()}
                                   for tenant, counters in by_tenant.items()}
        update["expire_at"] = _ts(day_expire_at(day, self.retention_days))  # the same for the whole day
        shard = self.days.document(day).collection("shards").document(str(random.randrange(self.shards)))
        shard.set(update, merge=True)

    def read(self, day: str) -> dict:
        totals: dict = {"quota_errors_by_id": {}, "by_tenant": {}}
        for snap in self.days.document(day).collection("shards").stream():
            for name, value in (snap.to_dict() or {}).items():
                if name == "quota_errors_by_id":
                    for qid, n in (value or {}).items():
                        totals[name][qid] = totals[name].get(qid, 0) + n
                elif name == "by_tenant":
                    for tenant, counters in (value or {}).items():
                        mine = totals[name].setdefault(tenant, {})
                        for counter, n in (counters or {}).items():
                            mine[counter] = mine.get(counter, 0) + n
                elif isinstance(value, (int, float)):
                    totals[name] = totals.get(name, 0) + value
        return totals
