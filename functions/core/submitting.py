"""Submitting a job, as the HTTP API asks for it: the dry run's plan, or the job itself, behind
an optional Idempotency-Key. No transport here: the HTTP layer parses, this decides."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from core import routing, usecases
from core.accounting import Accounting
from core.batches import BatchLane
from core.breaker import CircuitBreaker
from core.catalog import Catalog
from core.model_halts import ModelHalts
from core.models import Job, JobSpec
from core.ports import Clock, IdempotencyStore, JobStore, WorkQueue

IDEMPOTENCY_KEY_MAX_CHARS = 255


@dataclass(frozen=True)
class RouteDeps:
    """What choosing a lane reads (all a dry run needs): nothing here is written."""
    breaker: CircuitBreaker
    accounting: Accounting
    catalog: Catalog
    model_halts: ModelHalts
    interactive_threshold: int
    batch_available: bool


@dataclass(frozen=True)
class SubmitDeps:
    route: RouteDeps
    store: JobStore
    queue: WorkQueue
    clock: Clock
    idempotency: IdempotencyStore
    batch: BatchLane | None
    batch_max_requests: int
    batch_submit_budget: float
    idempotency_ttl_seconds: float
    idempotency_takeover_seconds: float


@dataclass(frozen=True)
class Submission:
    """One validated request: the job, its model, who submits it (`owner`, for leases) and,
    with an Idempotency-Key, the scoped key's id and the body's hash."""
    spec: JobSpec
    model: str
    owner: str
    key_id: str | None = None
    body_sha256: str = ""


def idempotency_key_problem(key: str) -> str | None:
    """Why an Idempotency-Key value is refused, or None when it is usable."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS:
        return "length out of range"
    # RFC 9110 section 5.5: a field value holds no control characters, a tab aside.
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f for c in key):
        return "control character"
    return None


def idempotency_key_id(tenant: str, api_key: str, key: str) -> str:
    """Keys are scoped to the tenant and the caller's API key (so two clients never share one,
    and a key moved to another tenant never replays its old tenant's job) and hashed: neither
    the client's key nor the API key is stored or becomes a document id."""
    return hashlib.sha256(f"{tenant}\x00{api_key}\x00{key}".encode()).hexdigest()


def body_sha256(body: object) -> str:
    """The body's hash, key order aside: the same key with another body is refused."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def plan(sub: Submission, deps: RouteDeps) -> routing.Route:
    """The dry run: the lane the job would take now, why, and its cost. Nothing is written."""
    return usecases.plan_route(
        sub.spec, interactive_threshold=deps.interactive_threshold, batch_available=deps.batch_available,
        breaker=deps.breaker, accounting=deps.accounting, model=sub.model, catalog=deps.catalog,
        model_halts=deps.model_halts,
    )


def submit(sub: Submission, deps: SubmitDeps) -> tuple[Job, bool]:
    """The job, and whether it is a replay of an earlier request with the same key."""
    if sub.key_id is None:
        return _submit_job(sub, deps, usecases.new_job_id, False), False

    def submit_as(make_id: Callable[[], str], resume: bool) -> Job:
        return _submit_job(sub, deps, make_id, resume)

    return usecases.submit_once(
        sub.spec, key_id=sub.key_id, body_sha256=sub.body_sha256, idempotency=deps.idempotency,
        store=deps.store, clock=deps.clock, submit=submit_as, ttl_seconds=deps.idempotency_ttl_seconds,
        takeover_seconds=deps.idempotency_takeover_seconds,
    )


def _submit_job(sub: Submission, deps: SubmitDeps, make_id: Callable[[], str], resume: bool) -> Job:
    route = deps.route
    return usecases.submit_job(
        sub.spec, store=deps.store, queue=deps.queue, clock=deps.clock, model=sub.model,
        interactive_threshold=route.interactive_threshold, batch=deps.batch, batch_max_requests=deps.batch_max_requests,
        batch_submit_budget=deps.batch_submit_budget, owner=sub.owner, make_id=make_id, breaker=route.breaker,
        accounting=route.accounting, resume=resume, catalog=route.catalog, model_halts=route.model_halts,
    )
