"""Fixtures of the unit tests."""
from __future__ import annotations

import pytest

from tests.unit.scripted_http import ScriptedServer


@pytest.fixture
def serve():
    """Start a ScriptedServer with its replies; every one started is stopped after the test."""
    servers = []

    def start(*replies) -> ScriptedServer:
        servers.append(ScriptedServer(list(replies)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


class Env:
    """The use cases on in-memory fakes, as most unit test files drive them: a job store, a work
    queue, a sink, a scripted generator and a fake clock. The optional collaborators (breaker,
    accounting, catalog, halts, pool, events) are None until a test file's `env` fixture sets
    them: submission then skips them, and the worker gets do-nothing ones (tests.fakes.worker_deps).
    `limits` are the worker limits every process() is given (max_attempts=..., lease_seconds=...)."""

    model = "gemini-2.5-flash-image"
    interactive_threshold = 10

    def __init__(self):
        from tests.fakes import (
            FakeClock, InMemoryIdempotencyStore, InMemoryImageSink, InMemoryJobStore, InMemoryWorkQueue, NoLimiter,
            ScriptedImageGenerator,
        )

        self.store, self.queue, self.clock = InMemoryJobStore(), InMemoryWorkQueue(), FakeClock()
        self.sink, self.generator, self.limiter = InMemoryImageSink(), ScriptedImageGenerator(), NoLimiter()
        self.idempotency = InMemoryIdempotencyStore()
        self.breaker = self.accounting = self.catalog = self.halts = self.pool = self.events = None
        self.limits: dict = {}

    def spec(self, n: int, lane: str = "auto", callback_url: str | None = None, **fields):
        from core.models import ItemSpec, JobSpec

        return JobSpec(tuple(ItemSpec(key=f"k{i}", prompt=f"prompt {i}", **fields) for i in range(n)), lane,
                       callback_url)

    def submit_deps(self, **given):
        from core.submitting import RouteDeps, SubmitDeps

        route = RouteDeps(interactive_threshold=self.interactive_threshold, batch_available=given.get("batch") is not None,
                          breaker=self.breaker, accounting=self.accounting, catalog=self.catalog,
                          model_halts=self.halts)
        return SubmitDeps(route=route, store=self.store, queue=self.queue, clock=self.clock,
                          idempotency=self.idempotency, idempotency_takeover_seconds=120, **given)

    def submit(self, n: int = 1, lane: str = "auto", model: str | None = None, quality: str = "standard", **kw):
        """Submit a job of n items (keys k0, k1, ...); kw goes to submit_job (make_id, resume)."""
        from core.submitting import Submission, submit_job

        spec = self.spec(n, lane, quality=quality)
        return submit_job(Submission(spec, model or self.model), self.submit_deps(), **kw)

    def worker_deps(self, **given):
        from tests.fakes import worker_deps

        mine = dict(store=self.store, generator=self.generator, sink=self.sink, limiter=self.limiter,
                    clock=self.clock, breaker=self.breaker, pool=self.pool, accounting=self.accounting,
                    events=self.events, catalog=self.catalog, model_halts=self.halts, **self.limits)
        return worker_deps(**{**mine, **given})

    def process(self, job_id: str, key: str = "k0", owner: str = "w1", **given):
        """One delivery of the item's message to the worker; `given` replaces collaborators or limits."""
        from core.worker import process_item

        return process_item(self.worker_deps(**given), job_id, key, owner)

    def item(self, job_id: str, key: str = "k0"):
        return self.store.get_item(job_id, key)


@pytest.fixture
def env():
    """A fresh Env; a test file that needs more collaborators overrides this fixture, asking
    for it by the same name, and sets them."""
    return Env()
