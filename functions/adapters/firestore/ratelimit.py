"""The shared rate limiter: ratelimit/{limiter_id} (blocked_until), its chain of blocks of send
slots (slots/{n}), leases/{i} and spend/window documents.
"""
from __future__ import annotations

import logging
import random
import threading
import time

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from adapters.firestore.common import _ts, compare_and_set, data_of
from core.models import SlotBlock
from core.ratelimit import spend_after

_log = logging.getLogger(__name__)
# Free leases one lease query returns: a few, so that contending instances can pick different ones.
_LEASE_CANDIDATES = 3
_LEASE_RECHECK_SECONDS = 5.0


class FirestoreSlotStore:
    """The SlotStore of core.ratelimit on Firestore.

    `reads` and `writes` count the documents this store read and wrote (a query bills one read
    per document returned, and one when it returns none), so the limiter's own cost can be
    measured; the worker logs them with each block claim."""

    def __init__(self, client: firestore.Client, limiter_id: str, collection: str = "ratelimit"):
        self.db = client
        self.root = client.collection(collection).document(limiter_id)
        # "slots": the collection that held one document per slot before blocks; its TTL policy
        # (infra/terraform/firestore.tf) applies unchanged.
        self.blocks = self.root.collection("slots")
        self.leases = self.root.collection("leases")
        self.reads = 0
        self.writes = 0
        self._lease_capacity = 0  # leases 0..capacity-1 are known to exist
        self._lease_lock = threading.Lock()
        self._leases_checked_at = 0.0

    def blocked_until(self) -> float:
        self.reads += 1
        snap = self.root.get()
        return float(snap.get("blocked_until")) if snap.exists and data_of(snap).get("blocked_until") else 0.0

    def push_blocked_until(self, until: float) -> None:
        def decide(data: dict | None) -> dict | None:
            return {"blocked_until": until} if until > (data or {}).get("blocked_until", 0.0) else None

        self.reads += 1
        self.writes += compare_and_set(self.db, self.root, decide)

    def last_block(self) -> SlotBlock | None:
        self.reads += 1
        query = self.blocks.order_by("seq", direction=firestore.Query.DESCENDING).limit(1)
        for snap in query.stream():
            return SlotBlock(seq=int(snap.get("seq")), start=int(snap.get("start")), size=int(snap.get("size")))
        return None

    def try_claim_block(self, block: SlotBlock, owner: str, expire_at: float) -> bool:
        self.writes += 1
        try:
            # Zero-padded ids keep the documents in chain order in the console.
            self.blocks.document(f"{block.seq:015d}").create({
                "seq": block.seq, "start": block.start, "size": block.size,
                "owner": owner, "expire_at": _ts(expire_at),
            })
        except gexc.Conflict:
            return False
        _log.info("rate limiter block claimed", extra={
            "limiter_block_size": block.size, "limiter_reads": self.reads, "limiter_writes": self.writes})
        return True

    def try_take_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        self._create_leases(capacity)
        with self._lease_lock:  # the threads of one instance would all race for the same few
            return self._take_free_lease(owner, capacity, now, ttl)

    def _take_free_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        # One query finds free or expired leases (a released lease has expires_at 0), instead
        # of reading every lease in turn; a precondition on the read makes the take atomic.
        query = self.leases.where(filter=FieldFilter("expires_at", "<=", now)).limit(_LEASE_CANDIDATES)
        free = [snap for snap in query.stream() if snap.id.isdigit() and int(snap.id) < capacity]
        self.reads += max(1, len(free))
        if not free:
            self._check_leases_exist(capacity)
        random.shuffle(free)  # spread contending instances over the leases
        for snap in free:
            self.writes += 1
            try:
                snap.reference.update({"owner": owner, "expires_at": now + ttl},
                                      option=self.db.write_option(last_update_time=snap.update_time))
                return snap.id
            except (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound):
                continue
        return None

    def _check_leases_exist(self, capacity: int) -> None:
        """None free: every lease is taken, or lease documents were deleted under this instance
        (which then would wait forever). A count (one read per 1,000 documents) tells, at most
        every _LEASE_RECHECK_SECONDS; missing ones are created again on the next take."""
        if time.monotonic() - self._leases_checked_at < _LEASE_RECHECK_SECONDS:
            return
        self._leases_checked_at = time.monotonic()
        self.reads += 1
        if self.leases.count().get()[0][0].value < capacity:
            self._lease_capacity = 0

    def _create_leases(self, capacity: int) -> None:
        """Make sure leases 0..capacity-1 exist, once per instance: the query above only finds
        documents that exist. One listing, then one batch of creates for the missing ones."""
        with self._lease_lock:
            if capacity <= self._lease_capacity:
                return
            existing = {snap.id for snap in self.leases.select([]).stream()}
            self.reads += max(1, len(existing))
            missing = [str(i) for i in range(capacity) if str(i) not in existing]
            if missing:
                batch = self.db.batch()
                for lease_id in missing:
                    batch.create(self.leases.document(lease_id), {"owner": None, "expires_at": 0.0})
                self.writes += len(missing)
                try:
                    batch.commit()
                except gexc.Conflict:
                    return  # another instance created some meanwhile: list them again next time
            self._lease_capacity = capacity

    def release_lease(self, lease_id: str, owner: str) -> None:
        def decide(data: dict | None) -> dict | None:
            return {"owner": None, "expires_at": 0.0} if data and data.get("owner") == owner else None

        self.reads += 1
        self.writes += compare_and_set(self.db, self.leases.document(lease_id), decide)

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
