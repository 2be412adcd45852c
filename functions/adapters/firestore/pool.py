"""The pending-batch pool's index of diverted items: pool/{job_id}~{key}. It also reserves
an item for a batch intent (the item's batch_intent field), on the item's document in jobs/.
"""
from __future__ import annotations

from google.cloud import firestore

from adapters.firestore.common import _BATCH_LIMIT, _ts, compare_and_set, create_only, data_of
from adapters.firestore.jobs import FirestoreJobStore
from core.models import ItemState
from core.retention import expire_at


class FirestorePoolStore:
    """The pending-batch pool's entries; the items themselves live under their jobs."""

    def __init__(self, client: firestore.Client, jobs: FirestoreJobStore, collection: str = "pool",
                 retention_days: int = 30) -> None:
        self.db = client
        self.jobs = jobs
        self.entries = client.collection(collection)
        self.retention_days = retention_days

    def add(self, entry) -> None:
        create_only(lambda: self.entries.document(f"{entry.job_id}~{entry.key}").create(
            {"job_id": entry.job_id, "key": entry.key, "pooled_at": entry.pooled_at, "urgent": entry.urgent,
             "expire_at": _ts(expire_at(entry.pooled_at, self.retention_days))}))  # False: pooled already

    def oldest(self, limit: int) -> list:
        from core.models import PoolEntry

        query = self.entries.order_by("pooled_at").limit(limit)
        return [PoolEntry(d["job_id"], d["key"], d["pooled_at"], bool(d.get("urgent")))
                for d in (data_of(s) for s in query.stream())]

    def count(self) -> int:
        return int(self.entries.count().get()[0][0].value)

    def remove(self, entries) -> None:
        refs = [self.entries.document(f"{e.job_id}~{e.key}") for e in entries]
        for start in range(0, len(refs), _BATCH_LIMIT):
            batch = self.db.batch()
            for ref in refs[start : start + _BATCH_LIMIT]:
                batch.delete(ref)
            batch.commit()

    def reserve_item(self, job_id: str, key: str, intent_id: str) -> bool:
        def decide(data: dict | None) -> dict | None:
            if (data is None or data.get("state") != ItemState.QUEUED.value or data.get("pooled_at") is None
                    or data.get("batch_intent")):
                return None
            return {"batch_intent": intent_id}

        return compare_and_set(self.db, self.jobs.item_ref(job_id, key), decide)
