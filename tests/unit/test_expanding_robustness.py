"""Background expansion when things go wrong without end: attempts that fail without progress
are counted and end the job failed after max_attempts (progress resets the count), and the
staged body is deleted once the job has left accepting (never a caller's source)."""
from __future__ import annotations

import dataclasses

import pytest

from core import expanding
from core.errors import StorageUnavailable
from core.expanding import Expansion
from core.models import ItemState, JobStatus
from tests.unit.test_expanding import KillingStore, MemorySources, _accepting_job, run_to_end, setup, specs


class FlakyStore(KillingStore):
    """create_items raises on the calls numbered in `failing` (1-based)."""

    def __init__(self, failing: set[int]) -> None:
        super().__init__()
        self.failing = failing
        self.creates = 0

    def create_items(self, job_id, items, job_created_at=None):
        self.creates += 1
        if self.creates in self.failing:
            raise ConnectionError("firestore unavailable")
        super().create_items(job_id, items, job_created_at)


def flaky(n: int, failing: set[int], max_attempts: int = 3):
    job, deps, _ = setup(n, chunk_items=10)
    store = FlakyStore(failing)
    store.clock = deps.clock
    store.jobs, store.items = deps.store.jobs, deps.store.items
    return job, dataclasses.replace(deps, store=store, max_attempts=max_attempts)


def attempt(job_id: str, deps, owner: str) -> str:
    """One delivery after the back-off of the attempt before it ran out."""
    deps.clock.advance(deps.lease_seconds + 1)
    try:
        return expanding.expand_job(job_id, owner, deps, deps.clock.now() + 1e6)
    except ConnectionError:
        return "raised"


def expansion(deps, job_id: str) -> Expansion:
    return Expansion.from_dict(deps.store.get_job(job_id).expansion)


def test_attempts_without_progress_end_the_job_failed_with_the_error():
    job, deps = flaky(25, failing=set(range(1, 100)), max_attempts=3)

    assert [attempt(job.job_id, deps, f"o{n}") for n in range(2)] == ["raised", "raised"]
    exp = expansion(deps, job.job_id)
    assert exp.failed_attempts == 2 and "firestore unavailable" in exp.last_error
    assert deps.store.get_job(job.job_id).status is JobStatus.ACCEPTING

    assert attempt(job.job_id, deps, "o3") == "failed"
    failed = deps.store.get_job(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.accept_failed
    assert "3 times in a row" in failed.error and "ConnectionError: firestore unavailable" in failed.error
    assert attempt(job.job_id, deps, "o4") == "gone"  # nothing retries it any more


def test_a_failed_attempt_keeps_the_lease_for_a_back_off_that_doubles():
    job, deps = flaky(25, failing=set(range(1, 100)), max_attempts=10)
    waits = []
    for n in range(3):
        assert attempt(job.job_id, deps, f"o{n}") == "raised"
        # A redelivery now finds it busy (its 200 drops the message); the tick resumes it later.
        assert expanding.expand_job(job.job_id, "redelivery", deps, deps.clock.now() + 1e6) == "busy"
        waits.append(expansion(deps, job.job_id).lease_until - deps.clock.now())
    assert waits == [5.0, 10.0, 20.0]


def test_progress_resets_the_count():
    # 25 items in chunks of 10: the 1st, 2nd, 4th, 5th writes fail, the 3rd and 6th succeed.
    job, deps = flaky(25, failing={1, 2, 4, 5}, max_attempts=3)
    outcomes = [attempt(job.job_id, deps, f"o{n}") for n in range(8)]
    assert "failed" not in outcomes and outcomes[-1] == "gone" and "done" in outcomes
    assert deps.store.get_job(job.job_id).status is JobStatus.QUEUED
    assert sorted(d["index"] for d in deps.store.items[job.job_id].values()) == list(range(25))


def test_an_attempt_that_wrote_a_chunk_gives_the_lease_back_at_once():
    job, deps = flaky(25, failing={2}, max_attempts=3)
    assert attempt(job.job_id, deps, "o1") == "raised"
    exp = expansion(deps, job.job_id)
    assert (exp.items, exp.failed_attempts, exp.owner) == (10, 0, None)
    assert expanding.expand_job(job.job_id, "o2", deps, deps.clock.now() + 1e6) == "done"


def test_the_staged_body_is_deleted_once_the_job_is_queued_or_failed():
    job, deps, _ = setup(5)
    deps = dataclasses.replace(deps, staged=deps.sources)
    uri = deps.store.get_job(job.job_id).expansion["source_uri"]
    assert uri in deps.sources.objects
    assert run_to_end(job.job_id, deps) == ["done"]
    assert uri not in deps.sources.objects

    failing, fdeps = flaky(5, failing=set(range(1, 100)), max_attempts=1)
    fdeps = dataclasses.replace(fdeps, staged=fdeps.sources)
    assert attempt(failing.job_id, fdeps, "o") == "failed"
    assert fdeps.sources.objects == {}
    assert {d["state"] for d in fdeps.store.items[failing.job_id].values()} <= {ItemState.FAILED.value}


def test_a_body_left_by_an_expander_killed_before_the_delete_is_deleted_by_the_next_delivery():
    job, deps, _ = setup(5)
    assert run_to_end(job.job_id, deps) == ["done"]  # no deleter wired: as if killed just before it
    uri = deps.store.get_job(job.job_id).expansion["source_uri"]
    assert uri in deps.sources.objects
    deps = dataclasses.replace(deps, staged=deps.sources)
    assert expanding.expand_job(job.job_id, "redelivery", deps, deps.clock.now() + 1e6) == "gone"
    assert uri not in deps.sources.objects


def test_a_failed_delete_is_harmless():
    class Undeletable(MemorySources):
        def delete_staged(self, uri, generation):
            raise StorageUnavailable("503")

    job, deps, _ = setup(5)
    undeletable = Undeletable()
    undeletable.objects = deps.sources.objects
    deps = dataclasses.replace(deps, sources=undeletable, staged=undeletable)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert deps.store.get_job(job.job_id).status is JobStatus.QUEUED


@pytest.mark.parametrize("name, fmt", [("_accepted/s1.jsonl", "jsonl"), ("callers/_accepted/s1.jsonl", "staged"),
                                       ("in/prompts.jsonl", "staged")])
def test_a_callers_source_is_never_deleted(name, fmt):
    from tests.fakes import FakeClock, InMemoryJobStore, InMemoryWorkQueue

    clock, store, sources = FakeClock(), InMemoryJobStore(), MemorySources()
    uri, generation, size = sources.put_staged(name, expanding.staged_jsonl(specs(3)))

    class AsStaged(MemorySources):
        def lines(self, exp):
            return super().lines(dataclasses.replace(exp, format=expanding.STAGED_FORMAT))

    reading = AsStaged()
    reading.objects = sources.objects
    job = _accepting_job(store, clock, Expansion(uri, generation, fmt, size=size))
    deps = expanding.ExpandDeps(store=store, sources=reading, staged=reading, queue=InMemoryWorkQueue(),
                                clock=clock, ramp=expanding.Ramp(1e9))
    assert run_to_end(job.job_id, deps) == ["done"]
    assert uri in sources.objects
