"""Counts the Firestore document reads, writes and deletes a client makes, the way Firestore
bills them (https://cloud.google.com/firestore/pricing): a document fetched by id is one read,
found or not; a query is one read per document it returns, and one when it returns none; a
count() is one read per 1,000 index entries it counts, at least one; every write or delete in
a committed batch is one write or one delete (a field transform rides on its write). A write
whose batch fails is not counted. TTL deletes are billed too, but happen outside the functions.

The counts are kept by wrapping the client's API object (one interception point instead of a
counter call beside every read and write of the adapters). They cost an addition per
operation, and show what the functions would pay: docs/cost.md, tests/integration/test_firestore_ops.py.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class OpCounts:
    reads: int = 0
    writes: int = 0
    deletes: int = 0

    def __sub__(self, other: OpCounts) -> OpCounts:
        return OpCounts(self.reads - other.reads, self.writes - other.writes, self.deletes - other.deletes)


class FirestoreOps:
    """A running total of the operations of every client instrumented with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = OpCounts()

    def add(self, reads: int = 0, writes: int = 0, deletes: int = 0) -> None:
        with self._lock:
            c = self._counts
            self._counts = OpCounts(c.reads + reads, c.writes + writes, c.deletes + deletes)

    def counts(self) -> OpCounts:
        return self._counts


def count_ops(client, ops: FirestoreOps):
    """Make `client` (a firestore.Client) add its operations to `ops`; the client, for chaining."""
    api = client._firestore_api  # built now, with the emulator host or the real endpoint
    if not isinstance(api, _CountingApi):
        client._firestore_api_internal = _CountingApi(api, ops)
    return client


class _CountingApi:
    """The GAPIC FirestoreClient, with the billed calls counted; everything else passed through
    (the SDK also reads attributes such as _transport from it)."""

    def __init__(self, api, ops: FirestoreOps) -> None:
        self._api = api
        self._ops = ops

    def __getattr__(self, name: str):
        return getattr(self._api, name)

    def commit(self, *args, **kwargs):
        response = self._api.commit(*args, **kwargs)
        request = kwargs.get("request") or (args[0] if args else {})
        writes = request["writes"] if isinstance(request, dict) else request.writes
        deletes = sum(1 for w in writes if _is_delete(w))
        self._ops.add(writes=len(writes) - deletes, deletes=deletes)
        return response

    def batch_get_documents(self, *args, **kwargs):
        for response in self._api.batch_get_documents(*args, **kwargs):
            if response.found or response.missing:  # a response may carry only a transaction
                self._ops.add(reads=1)
            yield response

    def run_query(self, *args, **kwargs):
        documents = 0
        try:
            for response in self._api.run_query(*args, **kwargs):
                if response.document:
                    documents += 1
                    self._ops.add(reads=1)
                yield response
        finally:  # also when the reader stops early (a limit(1) read by any())
            if not documents:
                self._ops.add(reads=1)

    def run_aggregation_query(self, *args, **kwargs):
        counted = 0
        for response in self._api.run_aggregation_query(*args, **kwargs):
            for value in response.result.aggregate_fields.values():
                counted += int(value.integer_value or 0)
            yield response
        self._ops.add(reads=max(1, math.ceil(counted / 1000)))


def _is_delete(write) -> bool:
    if isinstance(write, dict):
        return bool(write.get("delete"))
    return bool(write.delete)
