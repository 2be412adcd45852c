"""Jobs and their items: jobs/{job_id}, jobs/{job_id}/items/{item_key} and
jobs/{job_id}/item_counts/{n}. The batch intents (batches.py) are part of the same store: a
checkpoint writes an intent, its job's items and their counts in one batch.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from adapters.firestore.batches import FirestoreBatchIntents
from adapters.firestore.common import (
    _BATCH_LIMIT, COUNT_SHARDS, _ts, compare_and_set, create_only, data_of, item_doc_id,
)
from core import expanding
from core.item_counts import add_deltas, count_deltas, shard_of, totals
from core.jobs import finalizing_claim
from core.models import (
    Item,
    ItemState,
    Job,
    JobStatus,
    Lane,
    TERMINAL_JOB_STATUSES,
)
from core.errors import NotFound
from core.retention import expire_at
from core.transitions import ExpansionChange, ItemChange

_PARALLEL_COMMITS = 8


class FirestoreJobStore(FirestoreBatchIntents):
    def __init__(self, client: firestore.Client, collection: str = "jobs", intents: str = "batches",
                 retention_days: int = 30) -> None:
        self.db = client
        self.jobs = client.collection(collection)
        self.intents = client.collection(intents)
        self.retention_days = retention_days

    def _items(self, job_id: str):
        return self.jobs.document(job_id).collection("items")

    def item_ref(self, job_id: str, key: str) -> firestore.DocumentReference:
        """An item's document, for the pool's reservation of it (a field no count depends on)."""
        snap = self._item_snaps(job_id, [key]).get(key)
        return snap.reference if snap is not None else self._item_doc(job_id, key)

    def _item_doc(self, job_id: str, key: str) -> firestore.DocumentReference:
        return self._items(job_id).document(item_doc_id(job_id, key))

    def _item_snaps(self, job_id: str, keys: Sequence[str]) -> dict:
        """The existing items' snapshots by key, read in one call; an item written before the
        hashed ids (item_doc_id) is found under its bare key, with a second read for the misses."""
        if not keys:
            return {}
        by_id = {item_doc_id(job_id, k): k for k in keys}
        found = {by_id[s.id]: s for s in self.db.get_all([self._items(job_id).document(i) for i in by_id])
                 if s.exists}
        missing = [k for k in keys if k not in found]
        if missing:
            refs = [self._items(job_id).document(k) for k in missing]
            found.update({s.id: s for s in self.db.get_all(refs) if s.exists})
        return found

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
        return create_only(lambda: self.jobs.document(job.job_id).create(self._job_doc(job)))

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
            docs.append((items_ref.document(item_doc_id(job_id, item.key)), data))
        self._write_all(docs, keep_existing=keep_existing, counted=job_id)

    def finish_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda data: {"status": JobStatus.QUEUED.value, "updated_at": now})

    def touch_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda data: {"updated_at": now})

    def fail_accepting(self, job_id: str, error: str, now: float, idle_since: float) -> bool:
        return self._accepting_cas(job_id, lambda data: None if data["updated_at"] > idle_since else {
            "status": JobStatus.FAILED.value, "error": error, "updated_at": now, "finished_at": now})

    def accepting_jobs(self, limit: int, idle_since: float | None = None) -> list[Job]:
        return self._scan(FieldFilter("status", "==", JobStatus.ACCEPTING.value), limit,
                          lambda job: idle_since is None or job.updated_at <= idle_since)

    def _scan(self, equality: FieldFilter, limit: int, keep: Callable[[Job], bool], page: int = 100) -> list[Job]:
        """Up to `limit` jobs matching one equality that `keep` accepts, read page by page in id
        order (equality plus the id needs no composite index) until found or exhausted: a
        filter Firestore cannot apply without a composite index is applied here, and the jobs
        it drops never hide the ones behind them."""
        found: list[Job] = []
        after = None
        while len(found) < limit:
            query = self.jobs.where(filter=equality).order_by("__name__")
            if after is not None:
                query = query.start_after({"__name__": after})
            snaps = list(query.limit(page).stream())
            found += [job for job in (Job.from_dict(data_of(s)) for s in snaps) if keep(job)]
            if len(snaps) < page:
                break
            after = snaps[-1].id
        return found[:limit]

    def _accepting_cas(self, job_id: str, decide: Callable[[dict], dict | None]) -> bool:
        return compare_and_set(self.db, self.jobs.document(job_id), lambda data: (
            decide(data) if data is not None and data["status"] == JobStatus.ACCEPTING.value else None))

    def claim_expansion(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job | None:
        leased: list[dict] = []

        def decide(data: dict | None) -> dict | None:
            updates = expanding.claim_updates(data, owner, now, lease_seconds)
            leased[:] = [{**(data or {}), **updates}] if updates is not None else []
            return updates

        ok = compare_and_set(self.db, self.jobs.document(job_id), decide)
        return Job.from_dict(leased[0]) if ok and leased else None

    def item_indexes(self, job_id: str, keys: Sequence[str]) -> dict[str, int]:
        # One read per key, no fallback to bare-key ids: an expanded job's items all have hashed ids.
        refs = [self._item_doc(job_id, k) for k in dict.fromkeys(keys)]
        return {s.get("key"): s.get("index") for s in self.db.get_all(refs) if s.exists} if refs else {}

    def update_expansion(self, job_id: str, owner: str, change: ExpansionChange) -> bool:
        return self._holder_cas(job_id, owner, change.as_fields())

    def _holder_cas(self, job_id: str, owner: str, updates: dict) -> bool:
        """A write to an accepting job whose expansion `owner` holds (core.expanding.holder_updates)."""
        return compare_and_set(self.db, self.jobs.document(job_id),
                               lambda data: expanding.holder_updates(data, owner, updates))

    def mark_published(self, job_id: str, now: float) -> None:
        self.jobs.document(job_id).update({"published": True, "updated_at": now})

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        return self._scan(FieldFilter("published", "==", False), limit,
                          lambda job: job.created_at < older_than and job.status is not JobStatus.ACCEPTING)

    def get_item(self, job_id: str, key: str) -> Item | None:
        snap = self._item_snaps(job_id, [key]).get(key)
        return Item.from_dict(data_of(snap)) if snap is not None else None

    def list_items(self, job_id: str, start_after_index: int | None, limit: int) -> list[Item]:
        # Firestore serves this from the single-field index on `index`: its cost follows the page,
        # not the job (https://firebase.google.com/docs/firestore/query-data/index-overview, "An
        # index behind every query"). The emulator has no such index: every query over a job's
        # items, whatever its shape (ordered or not, a range, an equality, a cursor), takes time
        # in proportion to the job's items, while reads by id do not (tests/bench/bench_status.py).
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
        snap = self._item_snaps(job_id, [key]).get(key)
        if snap is None:
            return False
        ref = snap.reference
        for attempt in range(attempts):
            if attempt:
                snap = ref.get()  # the first attempt's read is the lookup's
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
        self, job_id: str, key: str, owner: str, now: float, lease_seconds: float, lane: str | None = None
    ) -> Item | None:
        claimed: list[Item] = []

        def decide(data: dict | None) -> dict | None:
            if data is None:
                return None
            item = Item.from_dict(data)
            if item.terminal or (lane is not None and (item.lane or Lane.INTERACTIVE.value) != lane):
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

    def finish_item(self, job_id: str, key: str, owner: str, change: ItemChange) -> bool:
        fields = change.as_fields()
        return self._change_item(job_id, key, lambda data: (
            fields if data is not None and data.get("lease_owner") == owner else None))

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

    def claim_finalizing(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        return compare_and_set(self.db, self.jobs.document(job_id),
                               lambda data: finalizing_claim(data, owner, now, lease_seconds))

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

    def requeue_item(self, job_id: str, key: str, expected: ItemState, change: ItemChange) -> bool:
        fields = change.as_fields()

        def decide(data: dict | None) -> dict | None:
            return fields if data is not None and data.get("state") == expected.value else None

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

    def get_items(self, job_id: str, keys: Sequence[str]) -> list[Item]:
        found = {k: Item.from_dict(data_of(s)) for k, s in self._item_snaps(job_id, list(dict.fromkeys(keys))).items()}
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

        def commit(chunk: list) -> bool:
            return create_only(lambda: creating(chunk).commit())  # a new batch for each try

        def commit_all(chunk: list) -> None:
            if commit(chunk):
                return
            if not keep_existing:
                raise gexc.AlreadyExists(f"{len(chunk)} documents, one of which exists")
            for one in chunk:
                commit([one])  # False: it exists, kept

        size = _BATCH_LIMIT - (COUNT_SHARDS if counted else 0)
        chunks = [docs[i : i + size] for i in range(0, len(docs), size)]
        if len(chunks) <= 1:
            for chunk in chunks:
                commit_all(chunk)
            return
        with ThreadPoolExecutor(min(_PARALLEL_COMMITS, len(chunks))) as pool:
            list(pool.map(commit_all, chunks))  # list(): re-raise the first failure

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
