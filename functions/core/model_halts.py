"""Per-model halts: a model Gemini no longer serves is an incident, not a thousand failed items.

Beside the circuit breaker (core/breaker.py), which guards the project's quota and permission
for every model, each model has its own halt record. A 404 NOT_FOUND naming the model (or a
400 saying it is not supported) halts it: its items are handed back without spending an
attempt, as for a 403 halt, new jobs for it are refused with 503, and an ERROR with the
`model_halted` alert is logged once. The poller's models.get check clears the halt when the
model answers again (and halts a model that is gone before any item meets it); a cleared halt
stays `resume_pending` until the poller has published the model's parked items again.

One small document per model, changed by compare-and-set, read through a short per-instance
cache: the worker reads it before every send, so it must not be a hot document.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from core.jobs import _all_items
from core.models import ItemState, Lane
from core.ports import JobStore, ModelHaltStore, WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelHalt:
    model: str
    reason: str
    halted_at: float
    source: str  # "generate", "batch" or "models.get"

    def public(self) -> dict:
        return {"model": self.model, "reason": self.reason, "halted_at": self.halted_at, "source": self.source}


class ModelHalts:
    parks_items = True  # a halt is recorded, and lifting it publishes the parked items again

    def __init__(self, store: ModelHaltStore, clock, cache_seconds: float = 1.0) -> None:
        self.store, self.clock, self.cache_seconds = store, clock, cache_seconds
        self._cached: tuple[float, dict[str, ModelHalt]] | None = None
        self._lock = threading.Lock()

    def all(self, fresh: bool = False) -> dict[str, ModelHalt]:
        now = self.clock.now()
        with self._lock:
            cached = self._cached
        if not fresh and cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        halts = {
            model: ModelHalt(model, d.get("reason") or "", d.get("halted_at") or 0.0, d.get("source") or "")
            for model, d in self.store.read_all().items() if d.get("halted")
        }
        with self._lock:
            self._cached = (now, halts)
        return halts

    def halted(self, model: str, fresh: bool = False) -> ModelHalt | None:
        return self.all(fresh).get(model)

    def halt(self, model: str, reason: str, source: str) -> bool:
        """Halt the model; True (and the alert logged) only for the write that halted it."""
        now = self.clock.now()

        def decide(d):
            if d and d.get("halted"):
                return None
            return {"model": model, "halted": True, "reason": reason[:500], "halted_at": now, "source": source,
                    "updated_at": now}

        written = self._write(model, decide)
        if written:
            log.error("model %s halted: %s; its items wait (no attempt is spent) and new jobs for it are "
                      "refused until models.get finds it again or GEMINI_MODEL / the job's model changes",
                      model, reason, extra={"alert": "model_halted", "model": model, "halt_source": source})
        return written

    def clear(self, model: str, why: str) -> bool:
        now = self.clock.now()

        def decide(d):
            if not d or not d.get("halted"):
                return None
            return {"halted": False, "resume_pending": True, "cleared_at": now, "cleared_because": why[:200],
                    "updated_at": now}

        written = self._write(model, decide)
        if written:
            log.warning("model %s halt cleared: %s", model, why, extra={"model": model, "alert": "model_restored"})
        return written

    def pending_resumes(self) -> list[str]:
        """Models whose halt was lifted but whose parked items are not yet published again."""
        return sorted(m for m, d in self.store.read_all().items() if d.get("resume_pending") and not d.get("halted"))

    def resumed(self, model: str) -> bool:
        return self._write(model, lambda d: {"resume_pending": False, "updated_at": self.clock.now()}
                           if d and d.get("resume_pending") else None)

    def _write(self, model: str, decide) -> bool:
        written = self.store.compare_and_set(model, decide)
        with self._lock:
            self._cached = None
        return written


# --- resuming a restored model's work ---------------------------------------------------


def models_in_use(*, store: JobStore, default: str, limit: int = 100) -> set[str]:
    """The default model and those of running jobs: what the poller's models.get check watches."""
    return {default} | {job.model for job in store.running_jobs(limit)}


def resume_restored_models(*, model_halts: ModelHalts, store: JobStore, queue: WorkQueue) -> dict[str, int]:
    """Publish the parked items of every model whose halt was lifted, then mark it resumed.
    The mark comes last, so a poller that dies half-way leaves it for the next tick
    (duplicates are harmless: the worker skips a finished or leased item)."""
    done = {}
    for model in model_halts.pending_resumes():
        done[model] = resume_model(model, store=store, queue=queue)
        model_halts.resumed(model)
    return done


def resume_model(model: str, *, store: JobStore, queue: WorkQueue, limit: int = 1000) -> int:
    """Publish the model's interactive jobs' waiting items again: the parked ones (queued) and
    those a worker holds right now (running: it may be parking them as we read)."""
    published = 0
    for job in store.running_jobs(limit):
        if job.model != model or job.lane is not Lane.INTERACTIVE:
            continue
        keys = [it.key for it in _all_items(store, job.job_id)
                if it.state in (ItemState.QUEUED, ItemState.RUNNING) and it.lane != Lane.BATCH.value]
        if keys:
            queue.publish_items(job.job_id, keys)
            published += len(keys)
    if published:
        log.info("model %s is back: republished %d waiting items", model, published, extra={"model": model})
    return published
