"""What the Firestore stores share: compare-and-set, leases on a document, a snapshot's
fields, epoch seconds as a Timestamp, Firestore's batch limit and the item counts' shards.
Owns no collection.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

# Firestore accepts at most 500 writes in one batch.
_BATCH_LIMIT = 500
# A job's item counts live in this many shards. A state change writes one of them, and an image
# makes two or three (queued -> running -> succeeded); Firestore's best practices keep a
# document's sustained writes near one per second
# (https://firebase.google.com/docs/firestore/best-practices, "Hotspots"), which one counter per
# job would pass when a job's images finish faster than one every two seconds. Four shards take a
# job to about two images a second sustained, more in bursts, and a status read costs four
# reads. Jobs remember nothing of this number: changing it orphans the counts of existing jobs.
COUNT_SHARDS = 4


# A create-only write that Firestore aborts (contention) is tried this many times in all.
_CREATE_TRIES = 6


def create_only(commit: Callable[[], object], *, tries: int = _CREATE_TRIES,
                sleep: Callable[[float], None] = time.sleep) -> bool:
    """Run a create-only write (`commit`): True when it wrote, False when a document it creates
    already exists.

    google.api_core maps both ALREADY_EXISTS and ABORTED to subclasses of `Conflict`, but they
    mean opposite things: ALREADY_EXISTS, "some document that we attempted to create already
    exists"; ABORTED, "the operation was aborted, typically due to a concurrency issue"
    (https://firebase.google.com/docs/reference/android/com/google/firebase/firestore/FirebaseFirestoreException.Code),
    so nothing was written. The client library does not retry an aborted commit (its Commit
    retries only RESOURCE_EXHAUSTED and UNAVAILABLE). Taking an abort for "already there"
    silently drops the document: a whole batch of a job's items, then each item alone, under
    contention on their counter shards. So an abort is tried again, with a short jittered
    back-off, and raised when it persists, never taken as success or as existence."""
    for attempt in range(tries):
        try:
            commit()
            return True
        except gexc.AlreadyExists:
            return False
        except gexc.Aborted:
            if attempt == tries - 1:
                raise
            sleep(random.uniform(0.5, 1.0) * 0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def item_doc_id(job_id: str, key: str) -> str:
    """The document id of a job's item: a short hash of the job and the key, then the key.

    Keys are often sequential (item-00000, item-00001, ...), and Firestore advises against
    monotonically increasing document ids, which concentrate writes on one key range
    (https://cloud.google.com/firestore/docs/best-practices, "Document IDs" and "Hotspots"):
    the hash prefix spreads a job's items over the key space. The key stays whole in the id (so
    ids never collide) and in the document's `key` field, which is what everything shows.
    Every read or write of an item by its key goes through this function (items written before
    it existed have the bare key as their id: FirestoreJobStore falls back to that on a miss)."""
    return f"{hashlib.sha256(f'{job_id}/{key}'.encode()).hexdigest()[:8]}-{key}"


def data_of(snap) -> dict[str, Any]:
    """A snapshot's fields; {} for a missing document (the SDK types to_dict() as Optional)."""
    return snap.to_dict() or {}


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


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
