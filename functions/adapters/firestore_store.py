"""Firestore persistence: jobs, their items, and the shared rate limiter's slots and leases.

Layout:
  jobs/{job_id}                       the job (written at submit and at a few transitions)
  jobs/{job_id}/items/{item_key}      one document per image: each is written by one worker at a
                                      time, so no document sees more than a few writes per second
  batches/{intent_id}                 one batch intent: recorded before the Gemini batch exists
  ratelimit/{limiter_id}              blocked_until, written only when a 429 pushes everyone back
  ratelimit/{limiter_id}/slots/{n}    the chain of blocks of send slots, create-only (TTL on expire_at)
  ratelimit/{limiter_id}/leases/{i}   the concurrency leases
  breakers/{breaker_id}               the circuit breaker (written on transitions and 429s only)
  usage/{day}/shards/{n}              daily counters, sharded: increments spread over n documents
  pool/{job_id}~{key}                 the pending-batch pool's index of diverted items
  idempotency/{key_id}                Idempotency-Key records (TTL on expires_at)
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from core.models import (
    ACTIVE_INTENT_STATES,
    BatchIntent,
    IntentState,
    Item,
    ItemState,
    Job,
    JobStatus,
    TERMINAL_JOB_STATUSES,
)
from core.ratelimit import SlotBlock, spend_after

_log = logging.getLogger(__name__)
# Free leases one lease query returns: a few, so that contending instances can pick different ones.
_LEASE_CANDIDATES = 3
_LEASE_RECHECK_SECONDS = 5.0
# Firestore accepts at most 500 writes in one batch.
_BATCH_LIMIT = 500
_PARALLEL_COMMITS = 8


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


class FirestoreJobStore:
    def __init__(self, client: firestore.Client, collection: str = "jobs", intents: str = "batches") -> None:
        self.db = client
        self.jobs = client.collection(collection)
        self.intents = client.collection(intents)

    def _items(self, job_id: str):
        return self.jobs.document(job_id).collection("items")

    def create_job(self, job: Job, items: Sequence[Item]) -> None:
        # Items first, job last: a reader that finds the job document finds all its items.
        items_ref = self._items(job.job_id)
        self._write_all([(items_ref.document(item.key), item.to_dict()) for item in items])
        self.jobs.document(job.job_id).create(job.to_dict())

    def get_job(self, job_id: str) -> Job | None:
        snap = self.jobs.document(job_id).get()
        return Job.from_dict(snap.to_dict()) if snap.exists else None

    def mark_published(self, job_id: str, now: float) -> None:
        self.jobs.document(job_id).update({"published": True, "updated_at": now})

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        # Equality only, so no composite index is needed; the age filter is applied here.
        query = self.jobs.where(filter=FieldFilter("published", "==", False)).limit(limit)
        jobs = [Job.from_dict(s.to_dict()) for s in query.stream()]
        return [j for j in jobs if j.created_at < older_than]

    def get_item(self, job_id: str, key: str) -> Item | None:
        snap = self._items(job_id).document(key).get()
        return Item.from_dict(snap.to_dict()) if snap.exists else None

    def list_items(self, job_id: str, start_after_index: int | None, limit: int) -> list[Item]:
        query = self._items(job_id).order_by("index")
        if start_after_index is not None:
            query = query.start_after({"index": start_after_index})
        return [Item.from_dict(s.to_dict()) for s in query.limit(limit).stream()]

    def count_items(self, job_id: str) -> dict[ItemState, int]:
        # Counts come from aggregation queries over the items, never from a counter on the
        # job document, which would be written once per item (a hot document).
        counts = {}
        for state in ItemState:
            query = self._items(job_id).where(filter=FieldFilter("state", "==", state.value))
            result = query.count().get()
            counts[state] = int(result[0][0].value)
        return counts

    def has_unfinished_items(self, job_id: str) -> bool:
        unfinished = [ItemState.QUEUED.value, ItemState.RUNNING.value]
        query = self._items(job_id).where(filter=FieldFilter("state", "in", unfinished)).limit(1)
        return any(True for _ in query.stream())

    def claim_item(
        self, job_id: str, key: str, owner: str, now: float, lease_seconds: float
    ) -> Item | None:
        claimed: list[Item] = []

        def decide(data: dict | None) -> dict | None:
            if data is None:
                return None
            item = Item.from_dict(data)
            if item.terminal:
                return None
            if item.state is ItemState.RUNNING and (item.lease_expires_at or 0) > now:
                return None
            updates = {
                "state": ItemState.RUNNING.value,
                "lease_owner": owner,
                "lease_expires_at": now + lease_seconds,
                "updated_at": now,
            }
            claimed[:] = [Item.from_dict({**data, **updates})]
            return updates

        return claimed[0] if compare_and_set(self.db, self._items(job_id).document(key), decide) else None

    def finish_item(self, job_id: str, key: str, owner: str, updates: dict) -> bool:
        return update_if_leased(self.db, self._items(job_id).document(key), owner, updates)

    def set_job_running(self, job_id: str, now: float) -> None:
        self._transition(job_id, JobStatus.RUNNING, now, allowed_from={JobStatus.QUEUED})

    def complete_job(self, job_id: str, status: JobStatus, now: float, manifest_uri: str | None = None) -> None:
        def decide(data: dict | None) -> dict | None:
            if data is None:
                return None
            current = JobStatus(data["status"])
            if current in (JobStatus.QUEUED, JobStatus.RUNNING):
                return {"status": status.value, "updated_at": now, "finished_at": now, "manifest_uri": manifest_uri}
            if current is JobStatus.CANCELLED and manifest_uri and not data.get("manifest_uri"):
                return {"updated_at": now, "finished_at": now, "manifest_uri": manifest_uri}
            return None

        compare_and_set(self.db, self.jobs.document(job_id), decide)

    def reopen_job(self, job_id: str, now: float) -> Job:
        def decide(data: dict | None) -> dict | None:
            if data is None or JobStatus(data["status"]) not in TERMINAL_JOB_STATUSES:
                return None
            if JobStatus(data["status"]) is JobStatus.CANCELLED:
                return None
            return {"status": JobStatus.RUNNING.value, "round": data.get("round", 1) + 1, "finished_at": None,
                    "manifest_uri": None, "updated_at": now}

        compare_and_set(self.db, self.jobs.document(job_id), decide)
        return self.get_job(job_id)

    def running_jobs(self, limit: int) -> list[Job]:
        query = self.jobs.where(filter=FieldFilter("status", "==", JobStatus.RUNNING.value)).limit(limit)
        return [Job.from_dict(s.to_dict()) for s in query.stream()]

    def mark_unpublished(self, job_id: str, now: float) -> None:
        self.jobs.document(job_id).update({"published": False, "updated_at": now})

    def requeue_item(self, job_id: str, key: str, expected: ItemState, updates: dict) -> bool:
        def decide(data: dict | None) -> dict | None:
            return updates if data is not None and data.get("state") == expected.value else None

        return compare_and_set(self.db, self._items(job_id).document(key), decide)

    def count_succeeded_by_lane(self, job_id: str) -> dict[str, int]:
        # Two equality filters: Firestore merges the single-field indexes, no composite needed.
        out = {}
        for lane in ("interactive", "batch"):
            query = (self._items(job_id).where(filter=FieldFilter("state", "==", ItemState.SUCCEEDED.value))
                     .where(filter=FieldFilter("lane", "==", lane)))
            n = int(query.count().get()[0][0].value)
            if n:
                out[lane] = n
        return out

    def cancel_job(self, job_id: str, now: float) -> bool:
        def decide(data: dict | None) -> dict | None:
            if data is None or JobStatus(data["status"]) not in (JobStatus.QUEUED, JobStatus.RUNNING):
                return None
            return {"status": JobStatus.CANCELLED.value, "updated_at": now}

        return compare_and_set(self.db, self.jobs.document(job_id), decide)

    # --- BatchStore ----------------------------------------------------------------------

    def create_job_with_intents(self, job: Job, items: Sequence[Item], intents: Sequence[BatchIntent]) -> None:
        self._write_all([(self.intents.document(i.intent_id), i.to_dict()) for i in intents])
        self.create_job(job, items)

    def create_intent(self, intent: BatchIntent) -> bool:
        try:
            self.intents.document(intent.intent_id).create(intent.to_dict())
            return True
        except gexc.Conflict:
            return False

    def get_intent(self, intent_id: str) -> BatchIntent | None:
        snap = self.intents.document(intent_id).get()
        return BatchIntent.from_dict(snap.to_dict()) if snap.exists else None

    def intents_of_job(self, job_id: str) -> list[BatchIntent]:
        query = self.intents.where(filter=FieldFilter("job_id", "==", job_id))
        return sorted((BatchIntent.from_dict(s.to_dict()) for s in query.stream()), key=lambda i: i.intent_id)

    def active_intents(self, limit: int) -> list[BatchIntent]:
        states = [s.value for s in ACTIVE_INTENT_STATES]
        query = self.intents.where(filter=FieldFilter("state", "in", states)).limit(limit)
        return [BatchIntent.from_dict(s.to_dict()) for s in query.stream()]

    def claim_intent(self, intent_id: str, owner: str, now: float, lease_seconds: float) -> BatchIntent | None:
        data = take_lease(self.db, self.intents.document(intent_id), owner, now, lease_seconds,
                          eligible=lambda d: d["state"] != IntentState.FINISHED.value)
        return BatchIntent.from_dict(data) if data else None

    def update_intent(self, intent_id: str, owner: str, updates: dict) -> bool:
        return update_if_leased(self.db, self.intents.document(intent_id), owner, updates)

    def checkpoint(self, intent_id: str, owner: str, intent_updates: dict, item_updates: dict[str, dict]) -> bool:
        """Item updates and the intent's progress in one atomic batch (split past 500 writes,
        the intent going in the last one), conditional on the lease."""
        ref = self.intents.document(intent_id)
        snap = ref.get()
        if not snap.exists or snap.get("lease_owner") != owner:
            return False
        items_ref = self._items(snap.get("job_id"))
        writes = [(items_ref.document(key), updates) for key, updates in item_updates.items()]
        step = _BATCH_LIMIT - 1  # room for the intent in the last batch
        chunks = [writes[i : i + step] for i in range(0, len(writes), step)] or [[]]
        for chunk in chunks[:-1]:
            # Item results are idempotent: after a crash they are simply written again.
            self._update_all(chunk)
        batch = self.db.batch()
        for doc, updates in chunks[-1]:
            batch.update(doc, updates)
        batch.update(ref, intent_updates, option=self.db.write_option(last_update_time=snap.update_time))
        try:
            batch.commit()
        except (gexc.FailedPrecondition, gexc.Conflict):
            return False
        return True

    def get_items(self, job_id: str, keys: Sequence[str]) -> list[Item]:
        refs = [self._items(job_id).document(k) for k in keys]
        found = {s.id: Item.from_dict(s.to_dict()) for s in self.db.get_all(refs) if s.exists}
        return [found[k] for k in keys if k in found]

    def _write_all(self, docs: list) -> None:
        """Create documents in batches of 500, several batches at a time (a 10,000-item job
        is 20 commits: in parallel they take a fraction of the time)."""

        def commit(chunk: list) -> None:
            batch = self.db.batch()
            for ref, data in chunk:
                batch.create(ref, data)
            batch.commit()

        chunks = [docs[i : i + _BATCH_LIMIT] for i in range(0, len(docs), _BATCH_LIMIT)]
        if len(chunks) <= 1:
            for chunk in chunks:
                commit(chunk)
            return
        with ThreadPoolExecutor(min(_PARALLEL_COMMITS, len(chunks))) as pool:
            list(pool.map(commit, chunks))  # list(): re-raise the first failure

    def _update_all(self, docs: list) -> None:
        batch = self.db.batch()
        for ref, updates in docs:
            batch.update(ref, updates)
        batch.commit()

    def _transition(
        self, job_id: str, status: JobStatus, now: float,
        allowed_from: set[JobStatus], extra: dict | None = None,
    ) -> None:
        def decide(data: dict | None) -> dict | None:
            if data is None:
                return None
            current = JobStatus(data["status"])
            if current not in allowed_from or current in TERMINAL_JOB_STATUSES:
                return None
            return {"status": status.value, "updated_at": now, **(extra or {})}

        compare_and_set(self.db, self.jobs.document(job_id), decide)


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
        return float(snap.get("blocked_until")) if snap.exists and snap.to_dict().get("blocked_until") else 0.0

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


class FirestoreCounterStore:
    """Daily counters as sharded documents: every add() increments one random shard with
    server-side increments (no read), so with n shards each document sees 1/n of the writes."""

    def __init__(self, client: firestore.Client, shards: int = 16, collection: str = "usage") -> None:
        self.db = client
        self.shards = shards
        self.days = client.collection(collection)

    def add(self, day: str, deltas: dict[str, float], by_quota_id: dict[str, int] | None = None,
            by_tenant: dict[str, dict[str, float]] | None = None) -> None:
        update: dict = {name: firestore.Increment(value) for name, value in deltas.items()}
        if by_quota_id:
            update["quota_errors_by_id"] = {qid: firestore.Increment(n) for qid, n in by_quota_id.items()}
        if by_tenant:  # tenant names are [a-z0-9_-]: safe as map keys (core/tenants.py)
            update["by_tenant"] = {tenant: {name: firestore.Increment(v) for name, v in counters.items()}
                                   for tenant, counters in by_tenant.items()}
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


class FirestorePoolStore:
    """The pending-batch pool's entries; the items themselves live under their jobs."""

    def __init__(self, client: firestore.Client, jobs: FirestoreJobStore, collection: str = "pool") -> None:
        self.db = client
        self.jobs = jobs
        self.entries = client.collection(collection)

    def add(self, entry) -> None:
        try:
            self.entries.document(f"{entry.job_id}~{entry.key}").create(
                {"job_id": entry.job_id, "key": entry.key, "pooled_at": entry.pooled_at, "urgent": entry.urgent})
        except gexc.Conflict:
            pass

    def oldest(self, limit: int) -> list:
        from core.pool import PoolEntry

        query = self.entries.order_by("pooled_at").limit(limit)
        return [PoolEntry(d["job_id"], d["key"], d["pooled_at"], bool(d.get("urgent")))
                for d in (s.to_dict() for s in query.stream())]

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

        return compare_and_set(self.db, self.jobs._items(job_id).document(key), decide)


class FirestoreIdempotencyStore:
    def __init__(self, client: firestore.Client, collection: str = "idempotency") -> None:
        self.db = client
        self.records = client.collection(collection)

    def begin(self, key_id: str, record: dict) -> tuple[dict, bool]:
        ref = self.records.document(key_id)
        try:
            # expire_at as a timestamp: the TTL policy in Terraform deletes records after a day.
            ref.create({**record, "expire_at": _ts(record["expires_at"])})
            return record, True
        except gexc.Conflict:
            snap = ref.get()
            return (snap.to_dict() or {}), False

    def take_over(self, key_id: str, started_at: float, now: float) -> bool:
        def decide(data: dict | None) -> dict | None:
            if data is None or data.get("started_at") != started_at:
                return None
            return {"started_at": now}

        return compare_and_set(self.db, self.records.document(key_id), decide)


def take_lease(
    client: firestore.Client,
    ref: firestore.DocumentReference,
    owner: str,
    now: float,
    lease_seconds: float,
    eligible: Callable[[dict], bool],
) -> dict | None:
    """Lease an eligible document unless someone else holds a live lease on it; the document
    as leased, or None."""
    leased: list[dict] = []

    def decide(data: dict | None) -> dict | None:
        if data is None or not eligible(data):
            return None
        if data.get("lease_owner") and (data.get("lease_expires_at") or 0) > now:
            return None
        updates = {"lease_owner": owner, "lease_expires_at": now + lease_seconds}
        leased[:] = [{**data, **updates}]
        return updates

    return leased[0] if compare_and_set(client, ref, decide) else None


def update_if_leased(client: firestore.Client, ref: firestore.DocumentReference, owner: str, updates: dict) -> bool:
    """Apply updates only while owner holds the document's lease."""
    def decide(data: dict | None) -> dict | None:
        return updates if data is not None and data.get("lease_owner") == owner else None

    return compare_and_set(client, ref, decide)


def compare_and_set(
    client: firestore.Client,
    ref: firestore.DocumentReference,
    decide: Callable[[dict | None], dict | None],
    attempts: int = 5,
) -> bool:
    """Optimistic read-modify-write: write decide(current) only if nobody wrote in between.

    A transaction would do, but Firestore's server SDK transactions lock the document, and
    under contention (a dozen workers releasing leases or pushing the limiter back) the
    lock waits cost about a second each. A precondition on the read's update_time (or
    create-if-absent) gives the same atomicity without locks. Returns True when written,
    False when decide() declined or every attempt lost the race."""
    for _ in range(attempts):
        snap = ref.get()
        updates = decide(snap.to_dict() if snap.exists else None)
        if updates is None:
            return False
        try:
            if snap.exists:
                ref.update(updates, option=client.write_option(last_update_time=snap.update_time))
            else:
                ref.create(updates)
            return True
        except (gexc.FailedPrecondition, gexc.Conflict):
            continue
    return False
