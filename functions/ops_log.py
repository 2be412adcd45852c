"""Logs an instance's running Firestore operation counts (adapters/firestore/ops.py), so that
a benchmark can read what each function process spent from its logs: the counts live in the
process, and a function has no endpoint to ask for them. On only with
FIRESTORE_OPS_LOG_SECONDS.

One structured line per change, at most every `interval` seconds, with the totals since the
process started (not deltas), so a reader takes the last line of each pid and a lost or
truncated line costs nothing. The pid is in the line because gunicorn may run several worker
processes behind one function.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from adapters.firestore.ops import FirestoreOps, OpCounts

log = logging.getLogger("imagefleet.firestore_ops")


def start(ops: FirestoreOps, interval: float) -> threading.Thread:
    """Log `ops` on a daemon thread of this process (call it after any fork: threads do not
    survive one)."""
    thread = threading.Thread(target=_run, args=(ops, interval), name="firestore-ops-log", daemon=True)
    thread.start()
    return thread


def _run(ops: FirestoreOps, interval: float) -> None:
    logged = OpCounts()
    while True:
        time.sleep(interval)
        logged = log_if_changed(ops, logged)


def log_if_changed(ops: FirestoreOps, logged: OpCounts) -> OpCounts:
    """Log the totals when they differ from `logged`; the totals."""
    counts = ops.counts()
    if counts != logged:
        log.info("firestore ops so far: %d reads, %d writes, %d deletes", counts.reads, counts.writes,
                 counts.deletes, extra={"firestore_ops": {
                     "pid": os.getpid(), "reads": counts.reads, "writes": counts.writes, "deletes": counts.deletes,
                     "by_collection": {f"{c}.{kind}": n for (c, kind), n in sorted(ops.by_collection().items())}}})
    return counts
