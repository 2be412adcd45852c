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

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(self.reads + other.reads, self.writes + other.writes, self.deletes + other.deletes)


class FirestoreOps:
    """A running total of the operations of every client instrumented with it, also by
    collection id (what docs/cost.md breaks the figures down by)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = OpCounts()
        self._by_collection: dict[tuple[str, str], int] = {}

    def add(self, collection: str, reads: int = 0, writes: int = 0, deletes: int = 0) -> None:
        with self._lock:
            c = self._counts
            self._counts = OpCounts(c.reads + reads, c.writes + writes, c.deletes + deletes)
            for kind, n in (("reads", reads), ("writes", writes), ("deletes", deletes)):
                if n:
                    self._by_collection[(collection, kind)] = self._by_collection.get((collection, kind), 0) + n

    def counts(self) -> OpCounts:
        return self._counts

    def by_collection(self) -> dict[tuple[str, str], int]:
        """{(collection id, "reads" | "writes" | "deletes"): operations}"""
        with self._lock:
            return dict(self._by_collection)


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
        for write in _request(args, kwargs).writes:
            if write.delete:
                self._ops.add(_collection_of(write.delete), deletes=1)
            else:
                self._ops.add(_collection_of(write.update.name or write.transform.document), writes=1)
        return response

    def batch_get_documents(self, *args, **kwargs):
        for response in self._api.batch_get_documents(*args, **kwargs):
            name = response.found.name or response.missing
            if name:  # a response may carry only a transaction
                self._ops.add(_collection_of(name), reads=1)
            yield response

    def run_query(self, *args, **kwargs):
        collection = _queried(_request(args, kwargs))
        documents = 0
        try:
            for response in self._api.run_query(*args, **kwargs):
                if response.document:
                    documents += 1
                    self._ops.add(collection, reads=1)
                yield response
        finally:  # also when the reader stops early (a limit(1) read by any())
            if not documents:
                self._ops.add(collection, reads=1)

    def run_aggregation_query(self, *args, **kwargs):
        request = _request(args, kwargs)
        collection = _queried(request.structured_aggregation_query)
        counted = 0
        for response in self._api.run_aggregation_query(*args, **kwargs):
            for value in response.result.aggregate_fields.values():
                counted += int(value.integer_value or 0)
            yield response
        self._ops.add(collection, reads=max(1, math.ceil(counted / 1000)))


def _request(args, kwargs):
    from google.cloud.firestore_v1.types import firestore as types

    request = kwargs.get("request", args[0] if args else None)
    if isinstance(request, dict):  # the SDK passes dicts; the counting reads them as messages
        kind = {"writes": types.CommitRequest, "documents": types.BatchGetDocumentsRequest,
                "structured_aggregation_query": types.RunAggregationQueryRequest}
        for field, message in kind.items():
            if field in request:
                return message(request)
        return types.RunQueryRequest(request)
    return request


def _collection_of(name: str) -> str:
    """projects/p/databases/d/documents/jobs/J/items/K -> items"""
    parts = name.split("/documents/", 1)[-1].split("/")
    return parts[-2] if len(parts) >= 2 else "?"


def _queried(request) -> str:
    try:
        return request.structured_query.from_[0].collection_id or "?"
    except (AttributeError, IndexError):
        return "?"
