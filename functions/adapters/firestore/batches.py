"""Batch intents: batches/{intent_id}, one per Gemini batch, recorded before the batch exists.
FirestoreJobStore (jobs.py) is built on this class: a checkpoint writes an intent and its
job's items in one atomic batch, so the two share the client and the items' helpers.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from adapters.firestore.common import (
    _BATCH_LIMIT,
    COUNT_SHARDS,
    compare_and_set,
    create_only,
    data_of,
    take_lease,
    update_if_leased,
)
from core.checkpoints import Checkpointed, applies
from core.item_counts import add_deltas, count_deltas
from core.models import ACTIVE_INTENT_STATES, BatchIntent, IntentState
from core.transitions import IntentChange, ItemChange

_PARALLEL_CHUNKS = 4  # a checkpoint's item commits in flight at once, before the intent's


# What a job's status reads of its intents: every field but the keys.
_SUMMARY_FIELDS = [f for f in BatchIntent.__dataclass_fields__ if f != "keys"]


def _get(snap, field: str):
    """A snapshot's field, None when the document has none (DocumentSnapshot.get raises KeyError)."""
    try:
        return snap.get(field)
    except KeyError:
        return None


class FirestoreBatchIntents:
    """The BatchStore half of FirestoreJobStore. What it uses of the job half:"""

    db: firestore.Client
    intents: Any  # the batches collection
    _check_times_ready = False  # see _backfill_check_times

    def _items(self, job_id: str) -> Any:
        raise NotImplementedError

    def _item_snaps(self, job_id: str, keys: Sequence[str]) -> dict:
        raise NotImplementedError

    def _expire(self, start: float) -> dt.datetime:
        raise NotImplementedError

    def _move_counts(self, batch, job_id: str, deltas_by_shard: dict, expire: dt.datetime | None = None) -> None:
        raise NotImplementedError

    def _write_all(self, docs: list, keep_existing: bool = False, counted: str | None = None) -> None:
        raise NotImplementedError

    def _intent_doc(self, intent: BatchIntent) -> dict:
        return {**intent.to_dict(), "expire_at": self._expire(intent.created_at)}

    def create_intent(self, intent: BatchIntent) -> bool:
        return create_only(lambda: self.intents.document(intent.intent_id).create(self._intent_doc(intent)))

    def create_intents(self, intents: Sequence[BatchIntent]) -> None:
        self._write_all([(self.intents.document(i.intent_id), self._intent_doc(i)) for i in intents],
                        keep_existing=True)

    def get_intent(self, intent_id: str) -> BatchIntent | None:
        snap = self.intents.document(intent_id).get()
        return BatchIntent.from_dict(data_of(snap)) if snap.exists else None

    def intents_of_job(self, job_id: str) -> list[BatchIntent]:
        query = self.intents.where(filter=FieldFilter("job_id", "==", job_id))
        return sorted((BatchIntent.from_dict(data_of(s)) for s in query.stream()), key=lambda i: i.intent_id)

    def intent_page(self, job_id: str, after: str | None, limit: int, *, with_keys: bool = False) -> list[BatchIntent]:
        # Equality on job_id ordered by id: the single-field index serves it, no composite
        # index. Without keys, a field mask leaves out the intent's biggest field (up to
        # BATCH_MAX_REQUESTS keys) so that the page costs the same for a job of any size
        # (https://cloud.google.com/firestore/docs/query-data/queries#query_operators ,
        # "select": https://cloud.google.com/python/docs/reference/firestore/latest/query).
        query = self.intents.where(filter=FieldFilter("job_id", "==", job_id)).order_by("__name__")
        if not with_keys:
            query = query.select(_SUMMARY_FIELDS)
        if after is not None:
            query = query.start_after({"__name__": after})
        snaps = list(query.limit(limit).stream())
        if with_keys:
            return [BatchIntent.from_dict(data_of(s)) for s in snaps]
        return self._summaries(snaps)

    def _summaries(self, snaps: list) -> list[BatchIntent]:
        """The intents read without keys; one recorded before key_count was kept is read whole
        (once: such intents belong to jobs older than the field)."""
        legacy = [s.reference for s in snaps if _get(s, "key_count") is None]
        whole = {s.id: s for s in self.db.get_all(legacy)} if legacy else {}
        return [BatchIntent.from_dict(data_of(whole[s.id]) if s.id in whole else {**data_of(s), "keys": []})
                for s in snaps]

    def count_intents(self, job_id: str) -> int:
        query = self.intents.where(filter=FieldFilter("job_id", "==", job_id))
        return int(query.count().get()[0][0].value)

    def active_intents(self, limit: int) -> list[BatchIntent]:
        states = [s.value for s in ACTIVE_INTENT_STATES]
        query = self.intents.where(filter=FieldFilter("state", "in", states)).limit(limit)
        return [BatchIntent.from_dict(data_of(s)) for s in query.stream()]

    def due_intents(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[BatchIntent]:
        # One range filter, ordered by its own field and then by id (which every index ends
        # with), so the single-field index on next_check_at serves it: no composite index.
        # Finished intents hold null there, which a range on numbers never matches.
        self._backfill_check_times()
        query = (self.intents.where(filter=FieldFilter("next_check_at", "<=", now))
                 .order_by("next_check_at").order_by("__name__"))
        if after is not None:
            query = query.start_after({"next_check_at": after[0], "__name__": after[1]})
        return [BatchIntent.from_dict(data_of(s)) for s in query.limit(limit).stream()]

    def release_intent(self, intent_id: str, owner: str, next_check_at: float) -> bool:
        def decide(data: dict | None) -> dict | None:
            if data is None or data.get("lease_owner") != owner:
                return None
            due = {} if data["state"] == IntentState.FINISHED.value else {"next_check_at": next_check_at}
            return {"lease_owner": None, "lease_expires_at": None, **due}

        return compare_and_set(self.db, self.intents.document(intent_id), decide)

    def intent_of_batch(self, batch_name: str) -> BatchIntent | None:
        # Equality on one field: its single-field index serves it. A resubmitted intent's
        # successor has its own batch, so one name is at most one intent.
        query = self.intents.where(filter=FieldFilter("gemini_batch", "==", batch_name)).limit(1)
        found = [BatchIntent.from_dict(data_of(s)) for s in query.stream()]
        return found[0] if found else None

    def make_due(self, intent_id: str, next_check_at: float) -> bool:
        # Whoever holds the lease keeps it: its release sets next_check_at again, and the
        # nudged reconcile that meets the lease simply skips.
        return compare_and_set(self.db, self.intents.document(intent_id), lambda d: (
            {"next_check_at": next_check_at}
            if d is not None and d["state"] != IntentState.FINISHED.value else None))

    def _backfill_check_times(self) -> None:
        """Intents recorded before next_check_at existed are invisible to due_intents: give
        the active ones theirs once per database (a marker document records that it was done;
        a sweep cut short is simply run again by the next instance)."""
        if self._check_times_ready:
            return
        marker = self.db.collection(f"{self.intents.id}_meta").document("next_check_at")
        if not marker.get().exists:
            states = [s.value for s in ACTIVE_INTENT_STATES]
            for snap in self.intents.where(filter=FieldFilter("state", "in", states)).stream():
                compare_and_set(self.db, snap.reference, lambda d: (
                    {"next_check_at": d.get("updated_at") or d["created_at"]}
                    if d is not None and d["state"] in states and d.get("next_check_at") is None else None))
            try:
                marker.create({"done_at": firestore.SERVER_TIMESTAMP})
            except gexc.Conflict:
                pass  # another instance finished the same sweep
        self._check_times_ready = True

    def claim_intent(self, intent_id: str, owner: str, now: float, lease_seconds: float) -> BatchIntent | None:
        data = take_lease(self.db, self.intents.document(intent_id), owner, now, lease_seconds,
                          eligible=lambda d: d["state"] != IntentState.FINISHED.value)
        return BatchIntent.from_dict(data) if data else None

    def update_intent(self, intent_id: str, owner: str, change: IntentChange) -> bool:
        return update_if_leased(self.db, self.intents.document(intent_id), owner, change.as_fields())

    def checkpoint(self, intent_id: str, owner: str, change: IntentChange,
                   results: Mapping[str, ItemChange]) -> Checkpointed | None:
        """Item updates and the intent's progress in one atomic batch (split past 500 writes,
        the intent going in the last one), conditional on the lease; the items' counts move in
        the same batches, from the items as read, each write conditional on that version. An
        item that already has a result keeps it (core/checkpoints.py): its change is not written."""
        intent_updates = change.as_fields()
        applied: set[str] = set()  # by an earlier try's chunks that committed before a conflict
        for _ in range(5):
            done = self._try_checkpoint(intent_id, owner, intent_updates, results, applied)
            if done is not None:
                return Checkpointed(frozenset(applied), frozenset(set(results) - applied)) if done else None
        return None

    def _try_checkpoint(self, intent_id: str, owner: str, intent_updates: dict,
                        results: Mapping[str, ItemChange], applied: set[str]) -> bool | None:
        """True when written, False when the lease is lost, None when something changed between
        the reads and the write (try again). Adds the keys it writes to `applied`. One read of
        the intent and one batched read of the items (get_all), then one commit per 500 writes
        (those before the last side by side)."""
        ref = self.intents.document(intent_id)
        snap = ref.get()
        if not snap.exists or snap.get("lease_owner") != owner:
            return False
        job_id = snap.get("job_id")
        todo = [k for k in results if k not in applied]  # a retry reads only what is not written
        found = self._item_snaps(job_id, todo)
        missing = [k for k in todo if k not in found]
        if missing:
            raise gexc.NotFound(f"items {missing[:5]} of job {job_id} do not exist")
        keys = [k for k in todo if applies(data_of(found[k]), results[k])]
        step = _BATCH_LIMIT - 1 - COUNT_SHARDS  # room for the counters and the intent in each batch
        *earlier, last = [keys[i : i + step] for i in range(0, len(keys), step)] or [[]]
        try:
            # Earlier chunks go alone, side by side: after a crash or a conflict their items read
            # as having a result, and are left as they are (moving no count). The last carries
            # the intent, so its progress lands only once every item before it has.
            if earlier:
                self._commit_earlier(job_id, found, results, earlier, applied)
            batch = self.db.batch()
            self._stage_items(batch, job_id, {k: found[k] for k in last}, results)
            batch.update(ref, intent_updates, option=self.db.write_option(last_update_time=snap.update_time))
            batch.commit()
            applied.update(last)
        except (gexc.FailedPrecondition, gexc.Conflict):
            return None
        return True

    def _commit_earlier(self, job_id: str, found: dict, results: Mapping[str, ItemChange],
                        chunks: list[list[str]], applied: set[str]) -> None:
        """Commit the chunks side by side; each one that lands adds its keys to `applied`, also
        when another fails (whose error is raised once all are done)."""
        def commit(chunk: list[str]) -> None:
            batch = self.db.batch()
            self._stage_items(batch, job_id, {k: found[k] for k in chunk}, results)
            batch.commit()

        with ThreadPoolExecutor(min(len(chunks), _PARALLEL_CHUNKS)) as pool:
            futures = [(chunk, pool.submit(commit, chunk)) for chunk in chunks]
        errors = [e for _, f in futures if (e := f.exception()) is not None]
        applied.update(k for chunk, f in futures if f.exception() is None for k in chunk)
        if errors:
            raise errors[0]

    def _stage_items(self, batch, job_id: str, snaps: dict, results: Mapping[str, ItemChange]) -> None:
        """Each item's update, conditional on the version read, and the counts it moves."""
        deltas: dict = {}
        for key, snap in snaps.items():
            before, updates = data_of(snap), results[key].as_fields()
            batch.update(snap.reference, updates, option=self.db.write_option(last_update_time=snap.update_time))
            moved = count_deltas(before, {**before, **updates})
            add_deltas(deltas.setdefault(before.get("count_shard"), {}), moved)
        self._move_counts(batch, job_id, deltas)
