"""Batch records, their state machine and their Operation JSON. No HTTP, no threads, no I/O
except unlinking the files a discarded batch leaves behind.

Timeline of a batch, all on the emulator clock and fixed at create time::

    created ──pending_s──► RUNNING ──running_s──► terminal
                                       (SUCCEEDED also waits for the results to be written)

States are derived lazily: :func:`advance` is called with the current time whenever someone
looks, so a fake clock moves batches deterministically and nothing needs a timer. The planned
terminal state (``outcome``) is chosen at create time (config rules/script) or forced later.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra.gemini_emulator.filestore import random_id
from infra.gemini_emulator.wire import rfc3339

PENDING = "BATCH_STATE_PENDING"
RUNNING = "BATCH_STATE_RUNNING"
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
FAILED = "BATCH_STATE_FAILED"
CANCELLED = "BATCH_STATE_CANCELLED"
EXPIRED = "BATCH_STATE_EXPIRED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
STATE_OF_OUTCOME = {"succeeded": SUCCEEDED, "failed": FAILED, "cancelled": CANCELLED, "expired": EXPIRED}
BATCH_ID_LENGTH = 36

_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main."
BATCH_TYPE = _TYPE + "GenerateContentBatch"
OUTPUT_TYPE = _TYPE + "GenerateContentBatchOutput"
# google.rpc.Code 13 (INTERNAL). The real API's error for a FAILED batch was never observed.
FAILED_ERROR = {"code": 13, "message": "The batch failed (injected by the Gemini emulator)."}


def parse_state(value: str) -> str:
    """``BATCH_STATE_X``, the SDK's ``JOB_STATE_X`` or a bare ``x`` -> ``BATCH_STATE_X``."""
    name = value.upper()
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        name = name.removeprefix(prefix)
    state = "BATCH_STATE_" + name
    if state not in TERMINAL:
        raise ValueError(f"state must be one of {sorted(TERMINAL)}, got {value!r}")
    return state


@dataclass
class BatchRecord:
    id: str
    owner: str  # API key
    model: str
    display_name: str | None
    seq: int
    created: float  # emulator clock
    pending_s: float
    running_s: float
    outcome: str  # planned terminal outcome: a key of STATE_OF_OUTCOME
    request_count: int
    input_file: str | None  # "files/<id>" for file input; None for inlined requests
    state: str = PENDING
    updated: float = 0.0
    ended: float | None = None
    # Progress, written by the worker thread under the state lock.
    succeeded: int = 0
    failed: int = 0
    final_counts: tuple[int, int] | None = None  # (succeeded, failed) frozen at a non-success end
    results_ready_at: float | None = None  # when the worker finished writing results
    billed_prompts: list[str] = field(default_factory=list)  # lines that got an image: billed on success
    output_path: Path | None = None  # the finished results file, until it becomes a File
    output_size: int = 0
    output_sha256: str = ""
    inline_results: list[dict[str, Any]] | None = None
    input_link: Path | None = None  # private hard link to the input file, owned by the worker
    error: dict[str, Any] | None = None
    input_tokens: int = 0  # estimated at create, for the enqueued-tokens limit
    cancel: threading.Event = field(default_factory=threading.Event)
    worker: concurrent.futures.Future[None] | None = None
    discarded: bool = False  # cancelled, deleted, reset: the worker must throw its output away
    webhook_config: dict[str, Any] | None = None  # {"uris": [...], "user_metadata": {...}} from create

    def __post_init__(self) -> None:
        self.updated = self.updated or self.created

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def output_file_id(self) -> str:
        return f"batch-{self.id}"

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def advance(record: BatchRecord, now: float) -> bool:
    """Move ``record`` along its timeline up to ``now``; True if it just became terminal."""
    if record.done:
        return False
    run_at = record.created + record.pending_s
    if now < run_at:
        return False
    if record.state == PENDING:
        record.state, record.updated = RUNNING, run_at
    due = run_at + record.running_s
    if record.outcome == "succeeded":
        if record.results_ready_at is None:
            return False  # still writing results: a big batch simply runs longer
        due = max(due, record.results_ready_at)
    if now < due:
        return False
    finish(record, STATE_OF_OUTCOME[record.outcome], due)
    return True


def finish(record: BatchRecord, state: str, at: float) -> None:
    """End the batch in ``state`` at clock time ``at``. Anything but SUCCEEDED stops the worker
    and freezes the counts at what had been processed (those results are never delivered)."""
    record.state, record.updated, record.ended = state, at, at
    if state != SUCCEEDED:
        record.final_counts = (record.succeeded, record.failed)
        record.cancel.set()
    if state == FAILED and record.error is None:
        record.error = dict(FAILED_ERROR)


def collapse_timeline(record: BatchRecord, now: float) -> None:
    """Make every remaining wait of the timeline end by ``now`` (forcing a state)."""
    elapsed = max(0.0, now - record.created)
    record.pending_s = min(record.pending_s, elapsed)
    record.running_s = min(record.running_s, max(0.0, elapsed - record.pending_s))


def batch_stats(record: BatchRecord) -> dict[str, str]:
    """int64 counts as strings, zero counts omitted (proto3 JSON), as the real API sends."""
    if record.state == PENDING:
        succeeded = failed = 0
    elif record.final_counts is not None:
        succeeded, failed = record.final_counts
    else:
        succeeded, failed = record.succeeded, record.failed
    stats = {"requestCount": str(record.request_count)}
    pending = record.request_count - succeeded - failed
    for key, value in (
        ("successfulRequestCount", succeeded),
        ("failedRequestCount", failed),
        ("pendingRequestCount", pending),
    ):
        if value:
            stats[key] = str(value)
    return stats


def _output(record: BatchRecord, include_inline: bool) -> dict[str, Any] | None:
    if record.state != SUCCEEDED:
        return None
    if record.input_file is not None:
        return {"responsesFile": f"files/{record.output_file_id}"}
    if not include_inline:
        return None  # list never inlines responses (the cookbook: call get for those)
    return {"inlinedResponses": {"inlinedResponses": record.inline_results or []}}


def operation(record: BatchRecord, wall: Callable[[float], float], *, include_inline: bool = True) -> dict[str, Any]:
    """The long-running Operation the API returns for create, get and list."""
    meta: dict[str, Any] = {"@type": BATCH_TYPE, "model": f"models/{record.model}"}
    if record.display_name is not None:
        meta["displayName"] = record.display_name
    if record.input_file is not None:
        meta["inputConfig"] = {"fileName": record.input_file}
    output = _output(record, include_inline)
    if output is not None:
        meta["output"] = output
    meta["createTime"] = rfc3339(wall(record.created))
    meta["updateTime"] = rfc3339(wall(record.updated))
    if record.ended is not None:
        meta["endTime"] = rfc3339(wall(record.ended))
    meta["batchStats"] = batch_stats(record)
    meta["state"] = record.state
    meta["name"] = record.name
    body: dict[str, Any] = {"name": record.name, "metadata": meta}
    if record.done:
        body["done"] = True
    if output is not None:
        # Mirrored for non-SDK clients; the SDK reads only metadata.output.
        body["response"] = {"@type": OUTPUT_TYPE, **output}
    if record.state == FAILED and record.error is not None:
        body["error"] = record.error
    return body


class BatchStore:
    def __init__(self) -> None:
        self.records: dict[str, BatchRecord] = {}
        self._seq = 0
        self.script_pos = 0
        self.create_script_pos = 0
        self.created = 0
        self.rejected_scripted = 0
        self.rejected_max_concurrent = 0
        self.rejected_max_enqueued = 0
        self.deleted = 0
        self.line_outcomes: Counter[str] = Counter()
        self.lines_succeeded = 0
        self.lines_failed = 0
        self.images_generated = 0

    def new_record(self, **kwargs: Any) -> BatchRecord:
        while True:
            batch_id = random_id(BATCH_ID_LENGTH)
            if batch_id not in self.records:
                break
        self._seq += 1
        record = BatchRecord(id=batch_id, seq=self._seq, **kwargs)
        self.records[batch_id] = record
        self.created += 1
        return record

    def lookup(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        """The batch if it exists and ``owner`` may see it (``None``: the admin API, any owner)."""
        record = self.records.get(batch_id)
        if record is None or (owner is not None and record.owner != owner):
            return None
        return record

    def active_count(self) -> int:
        return sum(1 for r in self.records.values() if not r.done)

    def enqueued(self, model: str) -> tuple[int, int]:
        """(requests, input tokens) of the model's PENDING and RUNNING batches."""
        active = [r for r in self.records.values() if not r.done and r.model == model]
        return sum(r.request_count for r in active), sum(r.input_tokens for r in active)

    def owned_by(self, owner: str) -> list[BatchRecord]:
        """The owner's batches, newest first."""
        return sorted((r for r in self.records.values() if r.owner == owner), key=lambda r: -r.seq)

    def remove(self, record: BatchRecord) -> None:
        self.records.pop(record.id, None)
        self.deleted += 1
        discard(record)

    def clear(self) -> None:
        for record in list(self.records.values()):
            discard(record)
        self.records.clear()

    def snapshot(self, script_len: int, create_script_len: int = 0) -> dict[str, Any]:
        return {
            "created": self.created,
            "rejected_scripted": self.rejected_scripted,
            "create_script_remaining": max(0, create_script_len - self.create_script_pos),
            "rejected_max_concurrent": self.rejected_max_concurrent,
            "rejected_max_enqueued": self.rejected_max_enqueued,
            "deleted": self.deleted,
            "by_state": dict(sorted(Counter(r.state for r in self.records.values()).items())),
            "lines": {
                "succeeded": self.lines_succeeded,
                "failed": self.lines_failed,
                "by_outcome": dict(sorted(self.line_outcomes.items())),
            },
            "images_generated": self.images_generated,
            "outcome_script_remaining": max(0, script_len - self.script_pos),
        }


def discard(record: BatchRecord) -> None:
    """Stop the worker and delete whatever results it wrote; a running worker deletes its own
    partial file when it sees ``cancel``, and a finishing one checks ``discarded``."""
    record.discarded = True
    record.cancel.set()
    record.inline_results = None
    for path in (record.output_path, record.input_link):
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    record.output_path = None
