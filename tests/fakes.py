"""In-memory fakes of the core's ports, for fast unit tests. Contract tests keep them honest."""
from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Sequence

from core.errors import GenerationError
from core.models import GeneratedImage, Item, ItemState, Job, JobStatus, StoredImage, TERMINAL_JOB_STATUSES


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


class InMemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.items: dict[str, dict[str, dict]] = {}
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

    def mark_published(self, job_id: str, now: float) -> None:
        self.jobs[job_id].update(published=True, updated_at=now)

    def unpublished_jobs(self, older_than: float, limit: int) -> list[Job]:
        jobs = [Job.from_dict(d) for d in self.jobs.values() if not d["published"]]
        return [j for j in jobs if j.created_at < older_than][:limit]

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

    def claim_item(self, job_id, key, owner, now, lease_seconds) -> Item | None:
        with self.lock:
            d = self.items.get(job_id, {}).get(key)
            if d is None:
                return None
            item = Item.from_dict(copy.deepcopy(d))
            if item.terminal:
                return None
            if item.state is ItemState.RUNNING and (item.lease_expires_at or 0) > now:
                return None
            d.update(state=ItemState.RUNNING.value, lease_owner=owner,
                     lease_expires_at=now + lease_seconds, updated_at=now)
            return Item.from_dict(copy.deepcopy(d))

    def finish_item(self, job_id, key, owner, updates) -> bool:
        with self.lock:
            d = self.items.get(job_id, {}).get(key)
            if d is None or d.get("lease_owner") != owner:
                return False
            d.update(copy.deepcopy(updates))
            return True

    def set_job_running(self, job_id: str, now: float) -> None:
        self._transition(job_id, JobStatus.RUNNING, now, {JobStatus.QUEUED})

    def complete_job(self, job_id: str, status: JobStatus, now: float) -> None:
        self._transition(job_id, status, now, {JobStatus.QUEUED, JobStatus.RUNNING}, finished_at=now)

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

    def put_png(self, name: str, data: bytes, metadata: dict[str, str]) -> StoredImage:
        uri = f"gs://{self.bucket}/{name}"
        if name in self.objects:
            return StoredImage(uri=uri, created=False)
        self.writes += 1
        self.objects[name] = (data, dict(metadata))
        return StoredImage(uri=uri, created=True)


class ScriptedImageGenerator:
    """Answers each call with the next scripted outcome: a GenerationError to raise, or 'ok'."""

    def __init__(self, script: Iterable[object] = ()) -> None:
        self.script = list(script)
        self.calls: list[str] = []

    def generate(self, prompt: str, aspect_ratio: str, image_size: str | None) -> GeneratedImage:
        self.calls.append(prompt)
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, GenerationError):
            raise outcome
        return GeneratedImage(
            data=b"\x89PNG\r\n\x1a\n" + prompt.encode(), mime_type="image/png",
            finish_reason="STOP", model_version="fake-image-model", output_tokens=1290,
        )


class InMemorySlotStore:
    """The SlotStore of core.ratelimit in memory (one process: a lock stands in for transactions)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._blocked_until = 0.0
        self.slots: dict[int, str] = {}
        self.leases: dict[str, tuple[str | None, float]] = {}

    def blocked_until(self) -> float:
        return self._blocked_until

    def push_blocked_until(self, until: float) -> None:
        with self.lock:
            self._blocked_until = max(self._blocked_until, until)

    def last_slot(self) -> int | None:
        return max(self.slots) if self.slots else None

    def try_claim_slot(self, slot: int, owner: str, expire_at: float) -> bool:
        with self.lock:
            if slot in self.slots:
                return False
            self.slots[slot] = owner
            return True

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


class NoLimiter:
    """A RateLimiter that never waits."""

    def __init__(self) -> None:
        self.pushed_back: list[float] = []

    def acquire(self, owner: str, max_wait: float) -> None:
        return None

    def release(self, owner: str) -> None:
        return None

    def push_back(self, until: float) -> None:
        self.pushed_back.append(until)
