"""In-memory fakes of the core's ports, for fast unit tests. Contract tests keep them honest."""
from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from core import expanding
from core.checkpoints import Checkpointed, applies
from core.errors import GenerationError, InvalidRequest, PermissionDenied, StorageUnavailable
from core.jobs import finalizing_claim
from core.models import (
    ACTIVE_INTENT_STATES, BatchInfo, BatchIntent, GeneratedImage, IntentState, Item, ItemState, Job, JobStatus, Lane,
    StoredImage, TERMINAL_JOB_STATUSES,
)
from core.transitions import (
    Cancelled, DeadLettered, EventAttempt, Ending, ExpansionChange, Failed, IntentChange, ItemChange, Succeeded,
)


def ended(state: ItemState, at: float) -> Ending:
    """The change a worker would end an item with in `state`, for tests that need an item
    finished without running it."""
    if state is ItemState.SUCCEEDED:
        return Succeeded(at, "gs://test-bucket/image.png", {}, attempts=1, quota_retries=0, finish_reason="STOP",
                         output_tokens=None)
    if state is ItemState.FAILED:
        return Failed(at, "refused", attempts=1, quota_retries=0)
    if state is ItemState.DEAD_LETTERED:
        return DeadLettered(at, "gave up", attempts=1, quota_retries=0)
    if state is ItemState.CANCELLED:
        return Cancelled(at)
    raise ValueError(f"{state} is not terminal")


class FakeClock:
    """Time that only moves when someone sleeps or a test advances it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.slept.append(seconds)
            self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def wait(self, wake: threading.Condition, woken: Callable[[], bool], seconds: float) -> None:
        """Nobody else moves this time, so a wait lasts its whole length: sleep it."""
        self.sleep(seconds)


class InMemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.items: dict[str, dict[str, dict]] = {}
        self.intents: dict[str, dict] = {}
        self.lock = threading.Lock()

    def create_job(self, job: Job, items: Sequence[Item]) -> None:
        with self.lock:
            if job.job_id in self.jobs:
                raise ValueError(f"job {job.job_id} exists")
            self.items[job.job_id] = {it.key: it.to_dict() for it in items}
            self.jobs[job.job_id] = job.to_dict()

    def get_job(self, job_id: str) -> Job | None:
        d = self.jobs.get(job_id)
        return Job.from_dict(copy.deepcopy(d)) if d else None

    def create_job_doc(self, job: Job) -> bool:
        with self.lock:
            if job.job_id in self.jobs:
                return False
            self.jobs[job.job_id] = job.to_dict()
            self.items.setdefault(job.job_id, {})
            return True

    def create_items(self, job_id: str, items: Sequence[Item], job_created_at: float | None = None) -> None:
        with self.lock:
            found = self.items.setdefault(job_id, {})
            for it in items:
                found.setdefault(it.key, it.to_dict())

    def finish_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda d: {"status": JobStatus.QUEUED.value, "updated_at": now})

    def touch_accepting(self, job_id: str, now: float) -> bool:
        return self._accepting_cas(job_id, lambda d: {"updated_at": now})

    def fail_accepting(self, job_id: str, error: str, now: float, idle_since: float) -> bool:
        return self._accepting_cas(job_id, lambda d: None if d["updated_at"] > idle_since else {
            "status": JobStatus.FAILED.value, "error": error, "updated_at": now, "finished_at": now})

    def accepting_jobs(self, limit: int, idle_since: float | None = None) -> list[Job]:
        return [Job.from_dict(copy.deepcopy(self.jobs[i])) for i in sorted(self.jobs)
                if self.jobs[i]["status"] == JobStatus.ACCEPTING.value
                and (idle_since is None or self.jobs[i]["updated_at"] <= idle_since)][:limit]

    def _accepting_cas(self, job_id: str, decide) -> bool:
        with self.lock:
            d = self.jobs.get(job_id)
            if d is None or d["status"] != JobStatus.ACCEPTING.value:
                return False
            updates = decide(d)
            if updates is None:
                return False
            d.update(updates)
            return True

    def claim_expansion(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job | None:
        with self.lock:
            d = self.jobs.get(job_id)
            updates = expanding.claim_updates(copy.deepcopy(d), owner, now, lease_seconds)
            if d is None or updates is None:
                return None
            d.update(copy.deepcopy(updates))
            return Job.from_dict(copy.deepcopy(d))

    def item_indexes(self, job_id: str, keys) -> dict[str, int]:
        found = self.items.get(job_id, {})
        return {k: found[k]["index"] for k in keys if k in found}

    def update_expansion(self, job_id: str, owner: str, change: ExpansionChange) -> bool:
        return self._holder_cas(job_id, owner, change.as_fields())

    def _holder_cas(self, job_id: str, owner: str, updates: dict) -> bool:
        return self._job_cas(job_id, lambda d: expanding.holder_updates(d, owner, updates))

    def _job_cas(self, job_id: str, decide) -> bool:
        """The adapter's compare_and_set on a job document: decide(current) or nothing."""
        with self.lock:
            d = self.jobs.get(job_id)
            decided = decide(d)
            if d is None or decided is None:
                return False
            d.update(copy.deepcopy(decided))
            return True

    def mark_published(self, job_id: str, now: float) -> None:
        self.jobs[job_id].update(published=True, updated_at=now)

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        jobs = [Job.from_dict(copy.deepcopy(self.jobs[i])) for i in sorted(self.jobs) if not self.jobs[i]["published"]]
        return [j for j in jobs if j.created_at < older_than and j.status is not JobStatus.ACCEPTING][:limit]

    def get_item(self, job_id: str, key: str) -> Item | None:
        d = self.items.get(job_id, {}).get(key)
        return Item.from_dict(copy.deepcopy(d)) if d else None

    def list_items(self, job_id: str, start_after_index: int | None, limit: int) -> list[Item]:
        items = sorted(self.items.get(job_id, {}).values(), key=lambda d: d["index"])
        if start_after_index is not None:
            items = [d for d in items if d["index"] > start_after_index]
        return [Item.from_dict(copy.deepcopy(d)) for d in items[:limit]]

    def count_items(self, job_id: str) -> dict[ItemState, int]:
        counts = {s: 0 for s in ItemState}
        for d in self.items.get(job_id, {}).values():
            counts[ItemState(d["state"])] += 1
        return counts

    def has_unfinished_items(self, job_id: str) -> bool:
        unfinished = {ItemState.QUEUED.value, ItemState.RUNNING.value}
        return any(d["state"] in unfinished for d in self.items.get(job_id, {}).values())

    def claim_item(self, job_id, key, owner, now, lease_seconds, lane=None) -> Item | None:
        with self.lock:
            d = self.items.get(job_id, {}).get(key)
            if d is None:
                return None
            item = Item.from_dict(copy.deepcopy(d))
            if item.terminal or (lane is not None and (item.lane or Lane.INTERACTIVE.value) != lane):
                return None
            if item.state is ItemState.RUNNING and (item.lease_expires_at or 0) > now:
                return None
            d.update(state=ItemState.RUNNING.value, lease_owner=owner,
                     lease_expires_at=now + lease_seconds, updated_at=now)
            return Item.from_dict(copy.deepcopy(d))

    def finish_item(self, job_id: str, key: str, owner: str, change: ItemChange) -> bool:
        with self.lock:
            d = self.items.get(job_id, {}).get(key)
            if d is None or d.get("lease_owner") != owner:
                return False
            d.update(copy.deepcopy(change.as_fields()))
            return True

    def set_job_running(self, job_id: str, now: float) -> None:
        self._transition(job_id, JobStatus.RUNNING, now, {JobStatus.QUEUED})

    def claim_finalizing(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        return self._job_cas(job_id, lambda d: finalizing_claim(d, owner, now, lease_seconds))

    def complete_job(self, job_id: str, status: JobStatus, now: float, manifest_uri: str | None = None) -> None:
        with self.lock:
            d = self.jobs.get(job_id)
            if d is None:
                return
            current = JobStatus(d["status"])
            if current in (JobStatus.QUEUED, JobStatus.RUNNING):
                d.update(status=status.value, updated_at=now, finished_at=now, manifest_uri=manifest_uri)
            elif current in TERMINAL_JOB_STATUSES and manifest_uri and not d.get("manifest_uri"):
                d.update(updated_at=now, finished_at=now, manifest_uri=manifest_uri)

    def reopen_job(self, job_id: str, now: float) -> Job:
        with self.lock:
            d = self.jobs[job_id]
            status = JobStatus(d["status"])
            if status in TERMINAL_JOB_STATUSES and status is not JobStatus.CANCELLED:
                d.update(status=JobStatus.RUNNING.value, round=d.get("round", 1) + 1, finished_at=None,
                         manifest_uri=None, updated_at=now)
        return self.get_job(job_id)

    def running_jobs(self, limit: int, after: str | None = None) -> list[Job]:
        found = sorted((d for d in self.jobs.values() if d["status"] == "running"
                        and (after is None or d["job_id"] > after)), key=lambda d: d["job_id"])
        return [Job.from_dict(copy.deepcopy(d)) for d in found[:limit]]

    def mark_unpublished(self, job_id: str, now: float) -> None:
        self.jobs[job_id].update(published=False, updated_at=now)

    def expired_leases(self, before: float, limit: int) -> list[Item]:
        return self._stale(ItemState.RUNNING, "lease_expires_at", before, limit)

    def untouched_queued_items(self, before: float, limit: int) -> list[Item]:
        return self._stale(ItemState.QUEUED, "updated_at", before, limit)

    def _stale(self, state: ItemState, field: str, before: float, limit: int) -> list[Item]:
        """As the Firestore query: equality on lane and state, a range on `field`, oldest first."""
        found = [d for items in self.items.values() for d in items.values()
                 if d.get("lane") == "interactive" and d["state"] == state.value
                 and isinstance(d.get(field), (int, float)) and d[field] < before]
        found.sort(key=lambda d: d[field])
        return [Item.from_dict(copy.deepcopy(d)) for d in found[:limit]]

    def requeue_item(self, job_id: str, key: str, expected: ItemState, change: ItemChange) -> bool:
        with self.lock:
            d = self.items.get(job_id, {}).get(key)
            if d is None or d["state"] != expected.value:
                return False
            d.update(copy.deepcopy(change.as_fields()))
            return True

    def count_succeeded_by_lane(self, job_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.items.get(job_id, {}).values():
            if d["state"] == ItemState.SUCCEEDED.value and d.get("lane"):
                out[d["lane"]] = out.get(d["lane"], 0) + 1
        return out

    def cancel_job(self, job_id: str, now: float) -> bool:
        with self.lock:
            d = self.jobs.get(job_id)
            if d is None or JobStatus(d["status"]) not in (JobStatus.QUEUED, JobStatus.RUNNING):
                return False
            d.update(status=JobStatus.CANCELLED.value, updated_at=now)
            return True

    # --- BatchStore ---

    def create_intent(self, intent: BatchIntent) -> bool:
        with self.lock:
            if intent.intent_id in self.intents:
                return False
            self.intents[intent.intent_id] = intent.to_dict()
            return True

    def create_intents(self, intents: Sequence[BatchIntent]) -> None:
        with self.lock:
            for intent in intents:
                self.intents.setdefault(intent.intent_id, intent.to_dict())

    def get_intent(self, intent_id: str) -> BatchIntent | None:
        d = self.intents.get(intent_id)
        return BatchIntent.from_dict(copy.deepcopy(d)) if d else None

    def intents_of_job(self, job_id: str) -> list[BatchIntent]:
        found = [BatchIntent.from_dict(copy.deepcopy(d)) for d in self.intents.values() if d["job_id"] == job_id]
        return sorted(found, key=lambda i: i.intent_id)

    def intent_page(self, job_id: str, after: str | None, limit: int, *, with_keys: bool = False) -> list[BatchIntent]:
        ids = sorted(i for i, d in self.intents.items() if d["job_id"] == job_id and (after is None or i > after))
        page = [copy.deepcopy(self.intents[i]) for i in ids[:limit]]
        return [BatchIntent.from_dict(d if with_keys else {**d, "keys": []}) for d in page]

    def count_intents(self, job_id: str) -> int:
        return sum(1 for d in self.intents.values() if d["job_id"] == job_id)

    def active_intents(self, limit: int) -> list[BatchIntent]:
        active = {s.value for s in ACTIVE_INTENT_STATES}
        found = [BatchIntent.from_dict(copy.deepcopy(d)) for d in self.intents.values() if d["state"] in active]
        return sorted(found, key=lambda i: i.intent_id)[:limit]

    def due_intents(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[BatchIntent]:
        # Like Firestore's range filter: only documents with a number in next_check_at, whatever
        # their state (finished ones hold None there).
        due = sorted((d["next_check_at"], i) for i, d in self.intents.items()
                     if isinstance(d.get("next_check_at"), (int, float)) and d["next_check_at"] <= now)
        due = [c for c in due if after is None or c > after]
        return [BatchIntent.from_dict(copy.deepcopy(self.intents[i])) for _, i in due[:limit]]

    def release_intent(self, intent_id: str, owner: str, next_check_at: float) -> bool:
        with self.lock:
            d = self.intents.get(intent_id)
            if d is None or d.get("lease_owner") != owner:
                return False
            d.update(lease_owner=None, lease_expires_at=None)
            if d["state"] != IntentState.FINISHED.value:
                d["next_check_at"] = next_check_at
            return True

    def intent_of_batch(self, batch_name: str) -> BatchIntent | None:
        found = [d for d in self.intents.values() if d.get("gemini_batch") == batch_name]
        return BatchIntent.from_dict(copy.deepcopy(found[0])) if found else None

    def make_due(self, intent_id: str, next_check_at: float) -> bool:
        with self.lock:
            d = self.intents.get(intent_id)
            if d is None or d["state"] == IntentState.FINISHED.value:
                return False
            d["next_check_at"] = next_check_at
            return True

    def claim_intent(self, intent_id, owner, now, lease_seconds) -> BatchIntent | None:
        with self.lock:
            d = self.intents.get(intent_id)
            if d is None or d["state"] == IntentState.FINISHED.value:
                return None
            if d.get("lease_owner") and (d.get("lease_expires_at") or 0) > now:
                return None
            d.update(lease_owner=owner, lease_expires_at=now + lease_seconds)
            return BatchIntent.from_dict(copy.deepcopy(d))

    def update_intent(self, intent_id: str, owner: str, change: IntentChange) -> bool:
        with self.lock:
            d = self.intents.get(intent_id)
            if d is None or d.get("lease_owner") != owner:
                return False
            d.update(copy.deepcopy(change.as_fields()))
            return True

    def checkpoint(self, intent_id: str, owner: str, change: IntentChange,
                   results: Mapping[str, ItemChange]) -> Checkpointed | None:
        with self.lock:
            d = self.intents.get(intent_id)
            if d is None or d.get("lease_owner") != owner:
                return None
            items = self.items[d["job_id"]]
            missing = [k for k in results if k not in items]
            if missing:  # nothing is written, as Firestore's NotFound leaves it
                raise KeyError(f"items {missing[:5]} do not exist")
            d.update(copy.deepcopy(change.as_fields()))
            applied = {key for key, result in results.items() if applies(items[key], result)}
            for key in applied:
                items[key].update(copy.deepcopy(results[key].as_fields()))
            return Checkpointed(frozenset(applied), frozenset(set(results) - applied))

    def get_items(self, job_id: str, keys: Sequence[str]) -> list[Item]:
        items = self.items.get(job_id, {})
        return [Item.from_dict(copy.deepcopy(items[k])) for k in keys if k in items]

    def _transition(self, job_id, status, now, allowed_from, **extra) -> None:
        with self.lock:
            d = self.jobs.get(job_id)
            if d is None:
                return
            current = JobStatus(d["status"])
            if current in allowed_from and current not in TERMINAL_JOB_STATUSES:
                d.update(status=status.value, updated_at=now, **extra)


class InMemoryWorkQueue:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.fail_after: int | None = None

    def publish_items(self, job_id: str, keys: Iterable[str]) -> None:
        for key in keys:
            if self.fail_after is not None and len(self.messages) >= self.fail_after:
                raise ConnectionError("publish failed")
            self.messages.append((job_id, key))


class InMemoryImageSink:
    def __init__(self, bucket: str = "test-bucket") -> None:
        self.bucket = bucket
        self.objects: dict[str, tuple[bytes, dict]] = {}
        self.writes = 0
        self.finds = 0
        self.unavailable_puts = 0  # the next n put_image calls raise StorageUnavailable
        self.unavailable_finds = 0

    def put_image(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredImage:
        if self.unavailable_puts:
            self.unavailable_puts -= 1
            raise StorageUnavailable(f"uploading {name}: 503")
        uri = f"gs://{self.bucket}/{name}"
        if name in self.objects:
            return StoredImage(uri=uri, created=False, facts=self._facts(name))
        self.writes += 1
        self.objects[name] = (data, {**metadata, "content_type": content_type})
        return StoredImage(uri=uri, created=True, facts=self._facts(name))

    def find_image(self, stem: str, extensions) -> StoredImage | None:
        self.finds += 1
        if self.unavailable_finds:
            self.unavailable_finds -= 1
            raise StorageUnavailable(f"listing {stem}.*: 503")
        for ext in extensions:
            name = f"{stem}.{ext}"
            if name in self.objects:
                return StoredImage(uri=f"gs://{self.bucket}/{name}", created=False, facts=self._facts(name))
        return None

    def _facts(self, name: str) -> dict:
        """As GcsImageSink reads them: from the object's metadata, its size from the object."""
        data, metadata = self.objects[name]
        facts = {"sha256": metadata.get("sha256"), "bytes": len(data), "format": metadata.get("format")}
        for side in ("width", "height"):
            facts[side] = int(metadata[side]) if metadata.get(side) else None
        return facts

    def put_manifest(self, name: str, data: bytes) -> StoredImage:
        return self.put_image(name, data, "application/jsonl", {})

    def compose(self, name: str, sources: Sequence[str]) -> StoredImage:
        if len(sources) > 32:
            raise ValueError(f"compose takes at most 32 sources, not {len(sources)}")
        data = b"".join(self.objects[source][0] for source in sources)  # KeyError, as GCS's 404
        return self.put_manifest(name, data)

    def existing_uri(self, name: str) -> str | None:
        return f"gs://{self.bucket}/{name}" if name in self.objects else None


class ScriptedImageGenerator:
    """Answers each call with the next scripted outcome: a GenerationError to raise, or 'ok'."""

    def __init__(self, script: Iterable[object] = ()) -> None:
        self.script = list(script)
        self.calls: list[str] = []
        self.requests: list[dict] = []  # what each call asked for

    def generate(self, prompt: str, aspect_ratio: str, image_size: str | None,
                 model: str | None = None) -> GeneratedImage:
        self.calls.append(prompt)
        self.requests.append({"aspect_ratio": aspect_ratio, "image_size": image_size, "model": model})
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        data = outcome if isinstance(outcome, bytes) else tiny_png(prompt)
        return GeneratedImage(
            data=data, mime_type="image/png",
            finish_reason="STOP", model_version="fake-image-model", output_tokens=1290,
        )


def tiny_png(text: str, size: tuple[int, int] = (4, 3)) -> bytes:
    """A complete PNG (stdlib only) whose bytes differ per text: a tEXt chunk carries it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    width, height = size
    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"prompt\x00" + text.encode()) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


class InMemorySlotStore:
    """The SlotStore of core.ratelimit in memory (one process: a lock stands in for transactions)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._blocked_until = 0.0
        self.blocks: dict[int, object] = {}  # seq -> SlotBlock
        self.owners: dict[int, str] = {}
        self.reads = 0  # blocked_until and last_block reads, to check the limiter's cost
        self.leases: dict[str, tuple[str | None, float]] = {}

    def blocked_until(self) -> float:
        self.reads += 1
        return self._blocked_until

    def push_blocked_until(self, until: float) -> None:
        with self.lock:
            self._blocked_until = max(self._blocked_until, until)

    def last_block(self):
        self.reads += 1
        return self.blocks[max(self.blocks)] if self.blocks else None

    def try_claim_block(self, block, owner: str, expire_at: float) -> bool:
        with self.lock:
            if block.seq in self.blocks:
                return False
            self.blocks[block.seq] = block
            self.owners[block.seq] = owner
            return True

    def slots(self) -> list[int]:
        """Every slot of every block, in order."""
        return sorted(s for b in self.blocks.values() for s in range(b.start, b.end))

    def try_take_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        with self.lock:
            for index in range(capacity):
                holder, expires = self.leases.get(str(index), (None, 0.0))
                if holder is None or expires <= now:
                    self.leases[str(index)] = (owner, now + ttl)
                    return str(index)
            return None

    def release_lease(self, lease_id: str, owner: str) -> None:
        with self.lock:
            if self.leases.get(lease_id, (None, 0))[0] == owner:
                self.leases[lease_id] = (None, 0.0)

    def try_spend(self, amount: float, limit: float, window: float, now: float) -> float | None:
        from core.ratelimit import spend_after

        with self.lock:
            self.spend, wait = spend_after(getattr(self, "spend", []), amount, limit, window, now)
            return wait


class NoLimiter:
    """A RateLimiter that never waits."""

    def __init__(self) -> None:
        self.pushed_back: list[float] = []

    def acquire(self, owner: str, max_wait: float, cost: float | None = None) -> None:
        return None

    def release(self, owner: str) -> None:
        return None

    def push_back(self, until: float) -> None:
        self.pushed_back.append(until)


class FakeBatchApi:
    """The Files and Batch APIs in memory. Tests move batches along with finish()/set_state()."""

    def __init__(self, fingerprint: str = "fp-test") -> None:
        self.files: dict[str, bytes] = {}
        self.stream_offsets: list[int] = []  # the byte offset each stream_file started from
        self.batches: dict[str, dict] = {}
        self.fingerprint = fingerprint
        self.created = 0
        self.uploads = 0
        self.fail_create_after_creating = False
        self.cancelled: list[str] = []
        self.deleted_files: list[str] = []
        # Errors raised, one per call, by the next uploads / creates (as GeminiBatchApi raises them).
        self.upload_errors: list[Exception] = []
        self.create_errors: list[Exception] = []

    def key_fingerprint(self) -> str:
        return self.fingerprint

    def upload_jsonl(self, data: bytes, display_name: str) -> str:
        if self.upload_errors:
            raise self.upload_errors.pop(0)
        self.uploads += 1
        name = f"files/f{self.uploads:04d}"
        self.files[name] = data
        return name

    def create_batch(self, model: str, input_file: str, display_name: str) -> BatchInfo:
        if self.create_errors:
            raise self.create_errors.pop(0)
        name = f"batches/b{len(self.batches):04d}"
        requests = [json.loads(line) for line in self.files[input_file].splitlines() if line.strip()]
        self.batches[name] = {"state": "BATCH_STATE_PENDING", "display_name": display_name,
                              "requests": requests, "output_file": None}
        self.created += 1
        if self.fail_create_after_creating:
            raise ConnectionError("connection reset after the batch was created")
        return BatchInfo(name=name, state="BATCH_STATE_PENDING", display_name=display_name)

    def find_batch(self, display_name: str) -> BatchInfo | None:
        for name, b in self.batches.items():
            if b["display_name"] == display_name:
                return BatchInfo(name=name, state=b["state"], display_name=display_name, output_file=b["output_file"])
        return None

    def get_batch(self, name: str) -> BatchInfo | None:
        b = self.batches.get(name)
        if b is None:
            return None
        return BatchInfo(name=name, state=b["state"], display_name=b["display_name"], output_file=b["output_file"])

    def cancel_batch(self, name: str) -> None:
        self.cancelled.append(name)
        if self.batches[name]["state"] not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
            # As the API (and our emulator): cancel works only while the batch is pending or running.
            raise InvalidRequest(f"400 FAILED_PRECONDITION: batch {name} has already ended")
        self.batches[name]["state"] = "BATCH_STATE_CANCELLED"

    def set_state(self, name: str, state: str) -> None:
        self.batches[name]["state"] = state

    def finish(self, name: str, outcome: Callable[[str, dict], dict] | None = None) -> list[bytes]:
        """SUCCEEDED with one result line per request; outcome(key, request) gives the line's
        body ({"response": ...} or {"error": ...}); the default is a tiny PNG."""
        b = self.batches[name]
        lines = []
        for req in b["requests"]:
            body = outcome(req["key"], req["request"]) if outcome else None
            lines.append(json.dumps({"key": req["key"], **(body or png_response(req["key"]))}).encode())
        out = f"files/batch-{name.split('/')[1]}"
        self.files[out] = b"\n".join(lines) + b"\n"
        b.update(state="BATCH_STATE_SUCCEEDED", output_file=out)
        return lines

    def stream_file(self, name: str, sink, offset: int = 0) -> None:
        if name not in self.files:
            raise PermissionDenied(f"403 PERMISSION_DENIED: You do not have permission to access the File {name}")
        self.stream_offsets.append(offset)
        data = self.files[name][offset:]
        for start in range(0, len(data), 7):  # odd chunk size: lines straddle chunks
            sink.write(data[start : start + 7])

    def delete_file(self, name: str) -> None:
        if name not in self.files:
            raise PermissionDenied(f"403 PERMISSION_DENIED: You do not have permission to access the File {name}")
        self.deleted_files.append(name)
        del self.files[name]


def png_response(text: str, size: tuple[int, int] = (4, 3)) -> dict:
    """A GenerateContentResponse carrying a real (tiny) PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, format="PNG")
    return {"response": {
        "candidates": [{"content": {"parts": [
            {"text": f"image of {text}"},
            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(buffer.getvalue()).decode()}},
        ], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"candidatesTokenCount": 1290}, "modelVersion": "fake-image-model",
    }}


class InMemoryBreakerStore:
    def __init__(self) -> None:
        self.doc: dict | None = None
        self.writes = 0
        self.lock = threading.Lock()

    def read(self) -> dict | None:
        return copy.deepcopy(self.doc)

    def compare_and_set(self, decide) -> bool:
        with self.lock:
            update = decide(copy.deepcopy(self.doc))
            if update is None:
                return False
            self.doc = {**(self.doc or {}), **copy.deepcopy(update)}
            self.writes += 1
            return True


class InMemoryCounterStore:
    def __init__(self) -> None:
        self.days: dict[str, dict] = {}
        self.adds = 0
        self.lock = threading.Lock()

    def add(self, day: str, deltas: dict[str, float], by_quota_id: dict[str, int] | None = None,
            by_tenant: dict[str, dict[str, float]] | None = None) -> None:
        with self.lock:
            self.adds += 1
            totals = self.days.setdefault(day, {"quota_errors_by_id": {}, "by_tenant": {}})
            for name, value in deltas.items():
                totals[name] = totals.get(name, 0) + value
            for qid, n in (by_quota_id or {}).items():
                totals["quota_errors_by_id"][qid] = totals["quota_errors_by_id"].get(qid, 0) + n
            for tenant, counters in (by_tenant or {}).items():
                mine = totals["by_tenant"].setdefault(tenant, {})
                for name, value in counters.items():
                    mine[name] = mine.get(name, 0) + value

    def read(self, day: str) -> dict:
        return copy.deepcopy(self.days.get(day, {"quota_errors_by_id": {}, "by_tenant": {}}))


class InMemoryPoolStore:
    def __init__(self, jobs: InMemoryJobStore) -> None:
        self.jobs = jobs
        self.entries: dict[tuple[str, str], object] = {}

    def add(self, entry) -> None:
        self.entries.setdefault((entry.job_id, entry.key), entry)

    def oldest(self, limit: int) -> list:
        return sorted(self.entries.values(), key=lambda e: e.pooled_at)[:limit]

    def count(self) -> int:
        return len(self.entries)

    def remove(self, entries) -> None:
        for e in entries:
            self.entries.pop((e.job_id, e.key), None)

    def reserve_item(self, job_id: str, key: str, intent_id: str) -> bool:
        with self.jobs.lock:
            d = self.jobs.items.get(job_id, {}).get(key)
            if d is None or d["state"] != ItemState.QUEUED.value or d.get("pooled_at") is None or d.get("batch_intent"):
                return False
            d["batch_intent"] = intent_id
            return True


class InMemoryIdempotencyStore:
    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.lock = threading.Lock()

    def begin(self, key_id: str, record: dict) -> tuple[dict, bool]:
        with self.lock:
            if key_id in self.records:
                return copy.deepcopy(self.records[key_id]), False
            self.records[key_id] = copy.deepcopy(record)
            return record, True

    def take_over(self, key_id: str, started_at: float, now: float) -> bool:
        with self.lock:
            d = self.records.get(key_id)
            if d is None or d.get("started_at") != started_at:
                return False
            d["started_at"] = now
            return True
# --- completion events --------------------------------------------------------------------------


class InMemoryEventStore:
    """The outbox of core/events.py (FirestoreEventStore in memory)."""

    def __init__(self) -> None:
        from core.events import Event

        self._event = Event
        self.events: dict[str, dict] = {}
        self.lock = threading.Lock()

    def create_event(self, event) -> bool:
        with self.lock:
            if event.event_id in self.events:
                return False
            self.events[event.event_id] = event.to_dict()
            return True

    def get_event(self, event_id: str):
        d = self.events.get(event_id)
        return self._event.from_dict(copy.deepcopy(d)) if d else None

    def events_of_job(self, job_id: str) -> list:
        found = [self._event.from_dict(copy.deepcopy(d)) for d in self.events.values() if d["job_id"] == job_id]
        return sorted(found, key=lambda e: (e.created_at, e.event_id))

    def due_events(self, now: float, limit: int) -> list:
        # Like Firestore's range filter: only documents with a number in next_attempt_at.
        due = [d for d in self.events.values()
               if isinstance(d.get("next_attempt_at"), (int, float)) and d["next_attempt_at"] <= now]
        due.sort(key=lambda d: d["next_attempt_at"])
        return [self._event.from_dict(copy.deepcopy(d)) for d in due[:limit]]

    def claim_event(self, event_id: str, owner: str, now: float, lease_seconds: float):
        with self.lock:
            d = self.events.get(event_id)
            if d is None or d["state"] != "pending" or (d.get("next_attempt_at") or 0) > now:
                return None
            if d.get("lease_owner") and (d.get("lease_expires_at") or 0) > now:
                return None
            d.update(lease_owner=owner, lease_expires_at=now + lease_seconds)
            return self._event.from_dict(copy.deepcopy(d))

    def update_event(self, event_id: str, owner: str, attempt: EventAttempt) -> bool:
        with self.lock:
            d = self.events.get(event_id)
            if d is None or d.get("lease_owner") != owner:
                return False
            d.update(copy.deepcopy(attempt.as_fields()))
            return True


class InMemoryEventPublisher:
    """The events topic: keeps what was published; `fail` makes every publish fail."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []
        self.fail: str | None = None

    def publish_event(self, data: bytes, attributes: dict[str, str]) -> None:
        from core.errors import DeliveryFailed

        if self.fail:
            raise DeliveryFailed(self.fail)
        self.messages.append((data, dict(attributes)))


class ScriptedWebhookSender:
    """Answers each POST with the next scripted outcome: a DeliveryFailed to raise, or "ok"
    (also once the script is used up); records every request."""

    def __init__(self, script: Iterable[object] = ()) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.requests.append((url, body, dict(headers)))
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, Exception):
            raise outcome


class InMemoryModelHaltStore:
    """core.model_halts.ModelHaltStore in memory."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.lock = threading.Lock()

    def read_all(self) -> dict[str, dict]:
        return copy.deepcopy(self.docs)

    def compare_and_set(self, model: str, decide) -> bool:
        with self.lock:
            update = decide(copy.deepcopy(self.docs.get(model)))
            if update is None:
                return False
            self.docs[model] = {**self.docs.get(model, {}), **copy.deepcopy(update)}
            return True


class FakeModelsApi:
    """core.model_watch.ModelsApi: serves the ids in `served`; raises `error` when set."""

    def __init__(self, served: Iterable[str] = ()) -> None:
        self.served = set(served)
        self.error: Exception | None = None
        self.calls: list[str] = []

    def get_model(self, model: str) -> dict | None:
        self.calls.append(model)
        if self.error is not None:
            raise self.error
        if model not in self.served:
            return None
        return {"name": f"models/{model}", "display_name": model, "supported_actions": ["generateContent"]}


# --- do-nothing collaborators of the worker, and one call to build its deps ------------------


class NoBreaker:
    """core.ports.Breaker that never blocks and halts nothing: a 403 costs the item an attempt."""

    def view(self, fresh: bool = False):
        from core.breaker import BreakerView

        return BreakerView.from_dict(None)

    def hold_ends_by(self, when: float) -> bool:
        return True

    def before_send(self, owner: str):
        from core.breaker import Decision

        return Decision.SEND

    def on_success(self, owner: str) -> None:
        pass

    def on_quota_failure(self, owner: str, quota_id: str | None, per_day: bool) -> None:
        pass

    def on_permission_denied(self, owner: str, reason: str) -> bool:
        return False


class NoModelHalts:
    """core.ports.ModelHaltRegistry that records no halt: a missing model costs an attempt."""

    parks_items = False

    def halted(self, model: str, fresh: bool = False):
        return None

    def halt(self, model: str, reason: str, source: str) -> bool:
        return False


class _NoPrices:
    def per_image(self, lane, model: str | None = None, size: str | None = None) -> None:
        return None  # the rate limiter charges its own flat cost


class NoAccounting:
    """core.ports.UsageMeter that counts nothing."""

    prices = _NoPrices()

    def add(self, deltas: dict, quota_id: str | None = None, **context) -> None:
        pass

    def image_produced(self, lane, model: str | None = None, size: str | None = None) -> dict:
        return {}

    def item_unsuccessful(self, lane, counter: str, model: str | None = None, size: str | None = None) -> dict:
        return {}

    def diverted(self, model: str | None = None, size: str | None = None) -> dict:
        return {}


class NoEvents:
    """core.ports.EventOutbox that records no event."""

    def has_completion(self, job: Job) -> bool:
        return True  # so finalize_job_if_done never records one

    def record_completion(self, job: Job, counts: dict) -> None:
        pass

    def events_of_job(self, job_id: str) -> list:
        return []


_LIMITS = ("max_attempts", "max_wait", "lease_seconds", "upload_budget")


def worker_deps(**given):
    """core.worker.WorkerDeps for a unit test in one call: in-memory fakes and do-nothing
    collaborators, replaced by the ones `given` (None means not given). The limits are given by
    name too (max_attempts=3, max_wait=30, lease_seconds=120 unless given); a given pool turns
    the batch lane on."""
    from core.catalog import Catalog
    from core.pool import NoPool
    from core.worker import WorkerDeps, WorkerLimits

    given = {k: v for k, v in given.items() if v is not None}
    limits = {"max_attempts": 3, "max_wait": 30.0, "lease_seconds": 120.0}
    limits.update({k: given.pop(k) for k in _LIMITS if k in given})
    defaults = {
        "store": InMemoryJobStore(), "generator": ScriptedImageGenerator(), "sink": InMemoryImageSink(),
        "limiter": NoLimiter(), "clock": FakeClock(), "breaker": NoBreaker(), "pool": NoPool(),
        "accounting": NoAccounting(), "events": NoEvents(), "catalog": Catalog({}, ""),
        "model_halts": NoModelHalts(), "batch_lane": "pool" in given,
    }
    return WorkerDeps(**{**defaults, **given}, limits=WorkerLimits(**limits))


class InMemoryBatchNudges:
    """BatchNudges: the intents nudged, in order; and the jobs whose expansion was asked for."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.expansions: list[str] = []

    def nudge(self, intent_id: str) -> None:
        self.sent.append(intent_id)

    def expand(self, job_id: str) -> None:
        self.expansions.append(job_id)
