"""Firestore persistence: jobs, their items, and the shared rate limiter's slots and leases.

Layout:
  jobs/{job_id}                       the job (written at submit and at a few transitions)
  jobs/{job_id}/items/{item_key}      one document per image: each is written by one worker at a
                                      time, so no document sees more than a few writes per second
  jobs/{job_id}/item_counts/{n}       the job's item counts by state, in COUNT_SHARDS shards
                                      (core/item_counts.py), changed with every item state change
  batches/{intent_id}                 one batch intent: recorded before the Gemini batch exists
  ratelimit/{limiter_id}              blocked_until, written only when a 429 pushes everyone back
  ratelimit/{limiter_id}/slots/{n}    the chain of blocks of send slots, create-only (TTL on expire_at)
  ratelimit/{limiter_id}/leases/{i}   the concurrency leases
  breakers/{breaker_id}               the circuit breaker (written on transitions and 429s only)
  usage/{day}/shards/{n}              daily counters, sharded: increments spread over n documents
  pool/{job_id}~{key}                 the pending-batch pool's index of diverted items
  idempotency/{key_id}                Idempotency-Key records (TTL on expires_at)

Every document of a collection that grows with use carries expire_at, a Timestamp that the
TTL policies of infra/terraform/firestore.tf act on: RETENTION_DAYS (RECORDS_RETENTION_DAYS)
after the job's submission for a job, its items, counts, intents and events.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from core.item_counts import add_deltas, count_deltas, shard_of, totals
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
from core.errors import NotFound
from core.ratelimit import SlotBlock, spend_after
from core.retention import day_expire_at, expire_at

_log = logging.getLogger(__name__)
# Free leases one lease query returns: a few, so that contending instances can pick different ones.
_LEASE_CANDIDATES = 3
_LEASE_RECHECK_SECONDS = 5.0
# Firestore accepts at most 500 writes in one batch.
_BATCH_LIMIT = 500
_PARALLEL_COMMITS = 8
# A job's item counts live in this many shards. A state change writes one of them, and an image
# makes two or three (queued -> running -> succeeded); Firestore's best practices keep a
# document's sustained writes near one per second
# (https://firebase.google.com/docs/firestore/best-practices, "Hotspots"), which one counter per
# job would pass when a job's images finish faster than one every two seconds. Four shards take a
# job to about two images a second sustained, more in bursts, and a status read costs four
# reads. Jobs remember nothing of this number: changing it orphans the counts of existing jobs.
COUNT_SHARDS = 4


def data_of(snap) -> dict[str, Any]:
    """A snapshot's fields; {} for a missing document (the SDK types to_dict() as Optional)."""
    return snap.to_dict() or {}


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


class FirestoreJobStore:
    def __init__(self, client: firestore.Client, collection: str = "jobs", intents: str = "batches",
                 retention_days: int = 30) -> None:
        self.db = client
        self.jobs = client.collection(collection)
        self.intents = client.collection(intents)
        self.retention_days = retention_days

    def _items(self, job_id: str):
        return self.jobs.document(job_id).collection("items")

    def _counts(self, job_id: str):
        return self.jobs.document(job_id).collection("item_counts")

    def _expire(self, start: float) -> dt.datetime:
        return _ts(expire_at(start, self.retention_days))

    def _job_doc(self, job: Job) -> dict:
        return {**job.to_dict(), "expire_at": self._expire(job.created_at)}

    def create_job(self, job: Job, items: Sequence[Item]) -> None:
        # Items first, job last: a reader that finds the job document finds all its items.
        self._create_items(job.job_id, items, job.created_at, keep_existing=False)
        self.jobs.document(job.job_id).create(self._job_doc(job))

    def get_job(self, job_id: str) -> Job | None:
        snap = self.jobs.document(job_id).get()
        return Job.from_dict(data_of(snap)) if snap.exists else None

    def create_job_doc(self, job: Job) -> bool:
        try:
            self.jobs.document(job.job_id).create(self._job_doc(job))
            return True
        except gexc.Conflict:
            return False

    def create_items(self, job_id: str, items: Sequence[Item], job_created_at: float | None = None) -> None:
        self._create_items(job_id, items, job_created_at, keep_existing=True)

    def _create_items(self, job_id: str, items: Sequence[Item], job_created_at: float | None,
                      keep_existing: bool) -> None:
        """Each item with its counter shard and the job's expire_at (its own creation time when
        the job's is not given); each batch with the counts of the items it creates."""
        items_ref = self._items(job_id)
        docs = []
        for item in items:
            data = {**item.to_dict(), "count_shard": shard_of(item.key, COUNT_SHARDS),
                    "expire_at": self._expire(item.updated_at if job_created_at is None else job_created_at)}
            docs.append((items_ref.document(item.key), data))
        self._write_all(docs, keep_existing=keep_existing, counted=job_id)

    def finish_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda data: {"status": JobStatus.QUEUED.value, "updated_at": now})

    def touch_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda data: {"updated_at": now})

    def fail_accepting(self, job_id: str, error: str, now: float, idle_since: float) -> bool:
        return self._accepting_cas(job_id, lambda data: None if data["updated_at"] > idle_since else {
            "status": JobStatus.FAILED.value, "error": error, "updated_at": now, "finished_at": now})

    def accepting_jobs(self, limit: int) -> list[Job]:
        query = self.jobs.where(filter=FieldFilter("status", "==", JobStatus.ACCEPTING.value)).limit(limit)
        return [Job.from_dict(data_of(s)) for s in query.stream()]

    def _accepting_cas(self, job_id: str, decide: Callable[[dict], dict | None]) -> bool:
        return compare_and_set(self.db, self.jobs.document(job_id), lambda data: (
            decide(data) if data is not None and data["status"] == JobStatus.ACCEPTING.value else None))

    def mark_published(self, job_id: str, now: float) -> None:
        self.jobs.document(job_id).update({"published": True, "updated_at": now})

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        # Equality only, so no composite index is needed; the age filter is applied here.
        query = self.jobs.where(filter=FieldFilter("published", "==", False)).limit(limit)
        jobs = [Job.from_dict(data_of(s)) for s in query.stream()]
        return [j for j in jobs if j.created_at < older_than]

    def get_item(self, job_id: str, key: str) -> Item | None:
        snap = self._items(job_id).document(key).get()
        return Item.from_dict(data_of(snap)) if snap.exists else None

    def list_items(self, job_id: str, start_after_index: int | None, limit: int) -> list[Item]:
        query = self._items(job_id).order_by("index")
        if start_after_index is not None:
            query = query.start_after({"index": start_after_index})
        return [Item.from_dict(data_of(s)) for s in query.limit(limit).stream()]

    def count_items(self, job_id: str) -> dict[ItemState, int]:
        shards = self._count_shards(job_id)
        return totals(shards)[0] if shards else self._count_by_queries(job_id)

    def _count_shards(self, job_id: str) -> list[dict]:
        """The job's counter shards; none for a job whose items were written before counts were
        kept (or that has no item yet), which the count() queries answer instead."""
        refs = [self._counts(job_id).document(str(n)) for n in range(COUNT_SHARDS)]
        return [data_of(s) for s in self.db.get_all(refs) if s.exists]

    def _count_by_queries(self, job_id: str) -> dict[ItemState, int]:
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

    def _change_item(self, job_id: str, key: str, decide: Callable[[dict | None], dict | None],
                     attempts: int = 5) -> bool:
        """compare_and_set for an item, its counter shard moved in the same atomic batch: the
        item's write is conditional on the version read, and the counts move by what changed
        between that version and the new one, so a repeated change moves nothing twice."""
        ref = self._items(job_id).document(key)
        for _ in range(attempts):
            snap = ref.get()
            before = snap.to_dict() if snap.exists else None
            updates = decide(before)
            if updates is None or before is None:
                return False
            batch = self.db.batch()
            batch.update(ref, updates, option=self.db.write_option(last_update_time=snap.update_time))
            self._move_counts(batch, job_id, {before.get("count_shard"): count_deltas(before, {**before, **updates})})
            try:
                batch.commit()
                return True
            except (gexc.FailedPrecondition, gexc.Conflict):
                continue
        return False

    def _move_counts(self, batch, job_id: str, deltas_by_shard: dict, expire: dt.datetime | None = None) -> None:
        """Add the counter increments to `batch`. Items written before counts were kept have no
        shard (None): their job is counted by queries."""
        for shard, deltas in deltas_by_shard.items():
            if shard is None or not (deltas or expire):
                continue
            update: dict = {field: firestore.Increment(n) for field, n in deltas.items()}
            if expire is not None:
                update["expire_at"] = expire
            batch.set(self._counts(job_id).document(str(shard)), update, merge=True)

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

        return claimed[0] if self._change_item(job_id, key, decide) else None

    def finish_item(self, job_id: str, key: str, owner: str, updates: dict) -> bool:
        return self._change_item(job_id, key, lambda data: (
            updates if data is not None and data.get("lease_owner") == owner else None))

    def set_job_running(self, job_id: str, now: float) -> None:
        self._transition(job_id, JobStatus.RUNNING, now, allowed_from={JobStatus.QUEUED})

    def complete_job(self, job_id: str, status: JobStatus, now: float, manifest_uri: str | None = None) -> None:
        def decide(data: dict | None) -> dict | None:
            if data is None:
                return None
            current = JobStatus(data["status"])
            if current in (JobStatus.QUEUED, JobStatus.RUNNING):
                return {"status": status.value, "updated_at": now, "finished_at": now, "manifest_uri": manifest_uri}
            # A job that ended before its items did (cancelled, or failed while accepting) gets
            # its manifest once they have.
            if current in TERMINAL_JOB_STATUSES and manifest_uri and not data.get("manifest_uri"):
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
        job = self.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def running_jobs(self, limit: int, after: str | None = None) -> list[Job]:
        # Documents come in id order by default
        # (https://firebase.google.com/docs/firestore/query-data/order-limit-data); it is named
        # for the cursor, which the single-field index on status still serves.
        query = (self.jobs.where(filter=FieldFilter("status", "==", JobStatus.RUNNING.value))
                 .order_by("__name__"))
        if after is not None:
            query = query.start_after({"__name__": after})
        return [Job.from_dict(data_of(s)) for s in query.limit(limit).stream()]

    def expired_leases(self, before: float, limit: int) -> list[Item]:
        return self._stale(ItemState.RUNNING, "lease_expires_at", before, limit)

    def untouched_queued_items(self, before: float, limit: int) -> list[Item]:
        return self._stale(ItemState.QUEUED, "updated_at", before, limit)

    def _stale(self, state: ItemState, field: str, before: float, limit: int) -> list[Item]:
        # A collection-group query over every job's items: two equalities and a range, which
        # needs the composite indexes in infra/terraform/firestore.tf (items_stale_*). The
        # limit bounds the reads one poller tick pays, whatever the backlog.
        query = (self.db.collection_group("items")
                 .where(filter=FieldFilter("lane", "==", "interactive"))
                 .where(filter=FieldFilter("state", "==", state.value))
                 .where(filter=FieldFilter(field, "<", before))
                 .order_by(field).limit(limit))
        return [Item.from_dict(data_of(s)) for s in query.stream()]

    def mark_unpublished(self, job_id: str, now: float) -> None:
        self.jobs.document(job_id).update({"published": False, "updated_at": now})

    def requeue_item(self, job_id: str, key: str, expected: ItemState, updates: dict) -> bool:
        def decide(data: dict | None) -> dict | None:
            return updates if data is not None and data.get("state") == expected.value else None

        return self._change_item(job_id, key, decide)

    def count_succeeded_by_lane(self, job_id: str) -> dict[str, int]:
        shards = self._count_shards(job_id)
        if shards:
            return totals(shards)[1]
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

    def _intent_doc(self, intent: BatchIntent) -> dict:
        return {**intent.to_dict(), "expire_at": self._expire(intent.created_at)}

    def create_intent(self, intent: BatchIntent) -> bool:
        try:
            self.intents.document(intent.intent_id).create(self._intent_doc(intent))
            return True
        except gexc.Conflict:
            return False

    def create_intents(self, intents: Sequence[BatchIntent]) -> None:
        self._write_all([(self.intents.document(i.intent_id), self._intent_doc(i)) for i in intents],
                        keep_existing=True)

    def get_intent(self, intent_id: str) -> BatchIntent | None:
        snap = self.intents.document(intent_id).get()
        return BatchIntent.from_dict(data_of(snap)) if snap.exists else None

    def intents_of_job(self, job_id: str) -> list[BatchIntent]:
        query = self.intents.where(filter=FieldFilter("job_id", "==", job_id))
        return sorted((BatchIntent.from_dict(data_of(s)) for s in query.stream()), key=lambda i: i.intent_id)

    def active_intents(self, limit: int) -> list[BatchIntent]:
        states = [s.value for s in ACTIVE_INTENT_STATES]
        query = self.intents.where(filter=FieldFilter("state", "in", states)).limit(limit)
        return [BatchIntent.from_dict(data_of(s)) for s in query.stream()]

    def claim_intent(self, intent_id: str, owner: str, now: float, lease_seconds: float) -> BatchIntent | None:
        data = take_lease(self.db, self.intents.document(intent_id), owner, now, lease_seconds,
                          eligible=lambda d: d["state"] != IntentState.FINISHED.value)
        return BatchIntent.from_dict(data) if data else None

    def update_intent(self, intent_id: str, owner: str, updates: dict) -> bool:
        return update_if_leased(self.db, self.intents.document(intent_id), owner, updates)

    def checkpoint(self, intent_id: str, owner: str, intent_updates: dict, item_updates: dict[str, dict]) -> bool:
        """Item updates and the intent's progress in one atomic batch (split past 500 writes,
        the intent going in the last one), conditional on the lease; the items' counts move in
        the same batches, from the items as read, each write conditional on that version."""
        for _ in range(5):
            done = self._try_checkpoint(intent_id, owner, intent_updates, item_updates)
            if done is not None:
                return done
        return False

    def _try_checkpoint(self, intent_id: str, owner: str, intent_updates: dict,
                        item_updates: dict[str, dict]) -> bool | None:
        """True when written, False when the lease is lost, None when something changed between
        the reads and the write (try again)."""
        ref = self.intents.document(intent_id)
        snap = ref.get()
        if not snap.exists or snap.get("lease_owner") != owner:
            return False
        job_id = snap.get("job_id")
        items_ref = self._items(job_id)
        refs = [items_ref.document(k) for k in item_updates]
        found = {s.id: s for s in self.db.get_all(refs) if s.exists} if refs else {}
        missing = [k for k in item_updates if k not in found]
        if missing:
            raise gexc.NotFound(f"items {missing[:5]} of job {job_id} do not exist")
        keys = list(item_updates)
        step = _BATCH_LIMIT - 1 - COUNT_SHARDS  # room for the counters and the intent in each batch
        chunks = [keys[i : i + step] for i in range(0, len(keys), step)] or [[]]
        try:
            for n, chunk in enumerate(chunks):
                # Earlier chunks go alone: item results are idempotent, and after a crash they
                # are written again (moving no count: the items read as already changed).
                batch = self.db.batch()
                deltas: dict = {}
                for key in chunk:
                    before, updates = data_of(found[key]), item_updates[key]
                    batch.update(items_ref.document(key), updates,
                                 option=self.db.write_option(last_update_time=found[key].update_time))
                    moved = count_deltas(before, {**before, **updates})
                    add_deltas(deltas.setdefault(before.get("count_shard"), {}), moved)
                self._move_counts(batch, job_id, deltas)
                if n == len(chunks) - 1:
                    batch.update(ref, intent_updates, option=self.db.write_option(last_update_time=snap.update_time))
                batch.commit()
        except (gexc.FailedPrecondition, gexc.Conflict):
            return None
        return True

    def get_items(self, job_id: str, keys: Sequence[str]) -> list[Item]:
        refs = [self._items(job_id).document(k) for k in keys]
        found = {s.id: Item.from_dict(data_of(s)) for s in self.db.get_all(refs) if s.exists}
        return [found[k] for k in keys if k in found]

    def _write_all(self, docs: list, keep_existing: bool = False, counted: str | None = None) -> None:
        """Create documents in batches of 500, several batches at a time (a 10,000-item job
        is 20 commits: in parallel they take a fraction of the time).

        `keep_existing`, for documents an earlier attempt may have written: a batch that meets
        an existing document fails as a whole (create is atomic per batch), and is redone one
        document at a time, keeping the existing ones (same job id, same request).

        `counted`: the docs are items of this job, and each batch also counts the items it
        creates (so an item that already existed is not counted again)."""

        def creating(chunk: list):
            batch = self.db.batch()
            deltas: dict = {}
            for ref, data in chunk:
                batch.create(ref, data)
                if counted:
                    add_deltas(deltas.setdefault(data["count_shard"], {}), count_deltas(None, data))
            if counted and chunk:
                self._move_counts(batch, counted, deltas, expire=chunk[0][1]["expire_at"])
            return batch

        def commit(chunk: list) -> None:
            try:
                creating(chunk).commit()
            except gexc.Conflict:
                if not keep_existing:
                    raise
                for one in chunk:
                    try:
                        creating([one]).commit()
                    except gexc.Conflict:
                        pass

        size = _BATCH_LIMIT - (COUNT_SHARDS if counted else 0)
        chunks = [docs[i : i + size] for i in range(0, len(docs), size)]
        if len(chunks) <= 1:
            for chunk in chunks:
                commit(chunk)
            return
        with ThreadPoolExecutor(min(_PARALLEL_COMMITS, len(chunks))) as pool:
            list(pool.map(commit, chunks))  # list(): re-raise the first failure

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


class FirestorePoolStore:
    """The pending-batch pool's entries; the items themselves live under their jobs."""

    def __init__(self, client: firestore.Client, jobs: FirestoreJobStore, collection: str = "pool",
                 retention_days: int = 30) -> None:
        self.db = client
        self.jobs = jobs
        self.entries = client.collection(collection)
        self.retention_days = retention_days

    def add(self, entry) -> None:
        try:
            self.entries.document(f"{entry.job_id}~{entry.key}").create(
                {"job_id": entry.job_id, "key": entry.key, "pooled_at": entry.pooled_at, "urgent": entry.urgent,
                 "expire_at": _ts(expire_at(entry.pooled_at, self.retention_days))})
        except gexc.Conflict:
            pass

    def oldest(self, limit: int) -> list:
        from core.pool import PoolEntry

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
