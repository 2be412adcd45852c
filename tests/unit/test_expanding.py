"""core/expanding.py with the in-memory fakes and a fake clock: a job accepted with one
document, expanded in checkpointed chunks, resumed after a kill at any point, paced by the
ramp, and failed cleanly when its source cannot be used."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from core import expanding, submitting
from core.errors import DeliveryFailed
from core.expanding import ExpandDeps, Expansion, Ramp, SourceUnavailable, staged_lines
from core.models import ItemSpec, ItemState, JobSpec, JobStatus
from tests.fakes import FakeClock, InMemoryIdempotencyStore, InMemoryJobStore, InMemoryWorkQueue


class MemorySources:
    """Staged bodies (StagedSources) and their reading (SourceLines), by gs:// uri, in memory.
    `chunk` splits the reads anywhere, as ranged reads do."""

    def __init__(self, chunk: int = 7) -> None:
        self.objects: dict[str, tuple[int, bytes]] = {}
        self.chunk = chunk

    def put_staged(self, name: str, data: bytes) -> tuple[str, int, int]:
        uri = f"gs://test-bucket/{name}"
        self.objects.setdefault(uri, (len(self.objects) + 1, data))
        return uri, self.objects[uri][0], len(self.objects[uri][1])

    def delete_staged(self, uri: str, generation: int) -> None:
        if self.objects.get(uri, (None,))[0] == generation:
            del self.objects[uri]

    def lines(self, exp: Expansion):
        generation, data = self.objects.get(exp.source_uri, (None, b""))
        if generation != exp.generation:
            raise SourceUnavailable(f"{exp.source_uri} generation {exp.generation} is gone")
        rest = data[exp.offset:]
        chunks = [rest[i:i + self.chunk] for i in range(0, len(rest), self.chunk)]
        return staged_lines(chunks, start=exp.offset, first_number=exp.lines + 1)


class Nudges:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False

    def expand(self, job_id: str) -> None:
        if self.fail:
            raise DeliveryFailed("the topic is down")
        self.sent.append(job_id)


class Killed(BaseException):
    """A SIGKILL: nothing after it runs."""


class KillingStore(InMemoryJobStore):
    """Dies at the n-th call of one method, before or after it takes effect."""

    def __init__(self) -> None:
        super().__init__()
        self.kill_at: tuple[str, int, bool] | None = None  # (method, nth call, after it)
        self.calls: Counter = Counter()
        self.writes: list[tuple[float, int]] = []  # (clock time, items) of each create_items
        self.clock: FakeClock | None = None

    def _maybe_kill(self, method: str, after: bool) -> None:
        if self.kill_at and self.kill_at[0] == method and self.kill_at[2] is after \
                and self.calls[method] == self.kill_at[1]:
            self.kill_at = None
            raise Killed(method)

    def create_items(self, job_id, items, job_created_at=None):
        self.calls["create_items"] += 1
        self._maybe_kill("create_items", False)
        if self.clock is not None:
            self.writes.append((self.clock.now(), len(items)))
        super().create_items(job_id, items, job_created_at)
        self._maybe_kill("create_items", True)

    def update_expansion(self, job_id, owner, change):
        self.calls["update_expansion"] += 1
        self._maybe_kill("update_expansion", False)
        done = super().update_expansion(job_id, owner, change)
        self._maybe_kill("update_expansion", True)
        return done


class FakeIntents:
    def __init__(self) -> None:
        self.intents: dict = {}
        self.creates = 0
        self.nudged: list[str] = []

    def create_intents(self, intents) -> None:
        for intent in intents:
            self.creates += 1
            self.intents.setdefault(intent.intent_id, intent)

    def intents_of_job(self, job_id: str):
        return sorted((i for i in self.intents.values() if i.job_id == job_id), key=lambda i: i.intent_id)

    def intent_page(self, job_id: str, after, limit: int, *, with_keys: bool = False):
        return [i for i in self.intents_of_job(job_id) if after is None or i.intent_id > after][:limit]

    def nudge(self, intent_id: str) -> None:
        self.nudged.append(intent_id)


def specs(n: int, start: int = 0) -> tuple[ItemSpec, ...]:
    return tuple(ItemSpec(key=f"item-{i:05d}", prompt=f"prompt {i}") for i in range(start, start + n))


def setup(n: int, *, lane: str = "interactive", chunk_items: int = 10, ramp: Ramp | None = None):
    clock, store, queue, sources, nudges = FakeClock(), KillingStore(), InMemoryWorkQueue(), MemorySources(), Nudges()
    store.clock = clock
    intents = FakeIntents()
    route = submitting.RouteDeps(interactive_threshold=10**9, batch_available=True)
    submit = submitting.SubmitDeps(route=route, store=store, queue=queue, clock=clock,
                                   idempotency=InMemoryIdempotencyStore(), staging=sources, nudges=nudges)
    job = submitting.submit_job(submitting.Submission(spec=JobSpec(items=specs(n), requested_lane=lane),
                                                      model="m"), submit)
    deps = ExpandDeps(store=store, sources=sources, queue=queue, clock=clock,
                      batches=intents if lane == "batch" else None, intent_nudges=intents, chunk_items=chunk_items,
                      ramp=ramp or Ramp(1e9),
                      lease_seconds=60, batch_max_requests=4)
    return job, deps, submit


def run_to_end(job_id: str, deps: ExpandDeps, budget: float = 1e6) -> list[str]:
    outcomes = []
    for n in range(1000):
        outcome = expanding.expand_job(job_id, f"owner-{n}", deps, deps.clock.now() + budget)
        outcomes.append(outcome)
        if outcome != "continue":
            return outcomes
    raise AssertionError("expansion never ended")


def stored_items(store: InMemoryJobStore, job_id: str) -> list[tuple[int, str]]:
    return sorted((d["index"], d["key"]) for d in store.items.get(job_id, {}).values())


def test_a_job_is_accepted_with_one_document_and_no_item():
    job, deps, submit = setup(25)
    assert job.status is JobStatus.ACCEPTING and job.item_count == 25
    assert deps.store.items[job.job_id] == {}
    assert submit.nudges.sent == [job.job_id]
    exp = Expansion.from_dict(deps.store.get_job(job.job_id).expansion)
    assert exp.source_uri == f"gs://test-bucket/_accepted/{job.job_id}.jsonl"
    staged = deps.sources.objects[exp.source_uri][1]
    assert [line.item for line in staged_lines([staged])] == list(specs(25))


def test_a_lost_nudge_still_accepts_the_job_and_the_poller_resumes_it():
    clock, store, sources, nudges = FakeClock(), InMemoryJobStore(), MemorySources(), Nudges()
    nudges.fail = True
    submit = submitting.SubmitDeps(route=submitting.RouteDeps(interactive_threshold=10, batch_available=True),
                                   store=store, queue=InMemoryWorkQueue(), clock=clock, staging=sources, nudges=nudges)
    job = submitting.submit_job(submitting.Submission(spec=JobSpec(items=specs(3)), model="m"), submit)
    assert store.get_job(job.job_id).status is JobStatus.ACCEPTING
    nudges.fail = False
    assert expanding.resume_expansions(store=store, nudges=nudges, clock=clock) == [job.job_id]


def test_expansion_writes_every_item_in_order_then_queues_and_publishes():
    job, deps, _ = setup(25)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert stored_items(deps.store, job.job_id) == [(i, f"item-{i:05d}") for i in range(25)]
    after = deps.store.get_job(job.job_id)
    assert after.status is JobStatus.QUEUED and after.item_count == 25 and after.published
    assert sorted(k for _, k in deps.queue.messages) == [f"item-{i:05d}" for i in range(25)]
    assert Expansion.from_dict(after.expansion).progress() == {
        "lines_read": 25, "items_created": 25, "bad_line_count": 0, "bad_lines": [],
        "failed_attempts": 0, "last_error": None}


def test_a_second_expander_finds_the_lease_taken_until_it_runs_out():
    job, deps, _ = setup(25)
    assert deps.store.claim_expansion(job.job_id, "first", deps.clock.now(), 60) is not None
    assert expanding.expand_job(job.job_id, "second", deps, deps.clock.now() + 10) == "busy"
    deps.clock.advance(61)
    assert expanding.expand_job(job.job_id, "second", deps, deps.clock.now() + 10) == "done"


def test_the_budget_hands_over_to_a_continuation_with_the_lease_released():
    job, deps, _ = setup(25, ramp=Ramp(10.0))  # 10 items a chunk at 10/s: a second a chunk
    assert expanding.expand_job(job.job_id, "a", deps, deps.clock.now() + 1.5) == "continue"
    exp = Expansion.from_dict(deps.store.get_job(job.job_id).expansion)
    assert (exp.items, exp.owner, exp.lease_until) == (20, None, 0.0)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert len(stored_items(deps.store, job.job_id)) == 25


@pytest.mark.parametrize("lane", ["interactive", "batch"])
@pytest.mark.parametrize("method", ["create_items", "update_expansion"])
@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_kill_at_any_checkpoint_boundary_resumes_to_exactly_the_source(lane, method, after, nth):
    job, deps, _ = setup(25, lane=lane)
    deps.store.kill_at = (method, nth, after)
    with pytest.raises(Killed):
        expanding.expand_job(job.job_id, "killed", deps, deps.clock.now() + 1e6)
    assert expanding.expand_job(job.job_id, "next", deps, deps.clock.now() + 1e6) == "busy"  # its lease holds
    deps.clock.advance(deps.lease_seconds + 1)
    assert expanding.resume_expansions(store=deps.store, nudges=Nudges(), clock=deps.clock) == [job.job_id]
    assert run_to_end(job.job_id, deps) == ["done"]
    assert stored_items(deps.store, job.job_id) == [(i, f"item-{i:05d}") for i in range(25)]
    after_job = deps.store.get_job(job.job_id)
    assert after_job.status is JobStatus.QUEUED and after_job.item_count == 25
    if lane == "batch":
        keys = [k for intent in deps.batches.intents.values() for k in intent.keys]
        assert sorted(keys) == [f"item-{i:05d}" for i in range(25)]  # each item in exactly one intent
        # chunks of 10, 10 and 5 items: batches of 4, 4, 2; 4, 4, 2; 4, 1
        assert sorted(len(i.keys) for i in deps.batches.intents.values()) == [1, 2, 2, 4, 4, 4, 4, 4]
        assert all(len(i.keys) <= 4 for i in deps.batches.intents.values())
        assert deps.batches.nudged == sorted(deps.batches.intents)  # created at once, not at a tick
    else:
        assert Counter(k for _, k in deps.queue.messages) == Counter(f"item-{i:05d}" for i in range(25))


def test_the_ramp_paces_the_writes_and_grows_on_schedule():
    ramp = Ramp(start_per_second=10.0, growth=1.5, period_seconds=4.0)
    job, deps, _ = setup(100, ramp=ramp)
    assert run_to_end(job.job_id, deps) == ["done"]
    writes = deps.store.writes
    start = writes[0][0]
    for (t0, n), (t1, _) in zip(writes, writes[1:], strict=False):
        # each chunk waited for the previous one at the rate of its time: never a burst
        assert t1 - t0 >= n / ramp.rate(t0 - start) - 1e-9
    assert sum(n for _, n in writes) == 100
    # chunks of 10: one a second at 10/s for the first 4 s, then one every 2/3 s at 15/s
    assert [round(t - start, 3) for t, _ in writes] == [0, 1, 2, 3, 4, 4.667, 5.333, 6, 6.667, 7.333]


def test_duplicate_keys_are_refused_as_bad_lines_even_across_chunks_and_a_resume():
    clock, store = FakeClock(), KillingStore()
    sources = MemorySources()
    lines = [*specs(12), ItemSpec(key="item-00003", prompt="again"), *specs(3, start=12)]
    uri, generation, _ = sources.put_staged("_accepted/j1.jsonl", expanding.staged_jsonl(lines))
    # A caller's JSONL source (a staged body's keys were checked unique at accept).
    job = _accepting_job(store, clock, Expansion(uri, generation, format="jsonl"))
    deps = ExpandDeps(store=store, sources=sources, queue=InMemoryWorkQueue(), clock=clock, chunk_items=10,
                      lease_seconds=60, ramp=Ramp(1e9))
    store.kill_at = ("update_expansion", 2, False)  # the chunk with the duplicate dies before its checkpoint
    with pytest.raises(Killed):
        expanding.expand_job(job.job_id, "a", deps, clock.now() + 100)
    clock.advance(61)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert [k for _, k in stored_items(store, job.job_id)] == [f"item-{i:05d}" for i in range(15)]
    exp = Expansion.from_dict(store.get_job(job.job_id).expansion)
    assert exp.bad_lines == 1 and exp.bad_samples[0]["line"] == 13
    assert "duplicate key 'item-00003'" in exp.bad_samples[0]["reason"]


def test_a_bad_line_with_on_bad_line_fail_fails_the_job_and_its_items():
    clock, store, sources = FakeClock(), InMemoryJobStore(), MemorySources()
    data = expanding.staged_jsonl(specs(3)) + b"not json\n" + expanding.staged_jsonl(specs(2, start=3))
    uri, generation, _ = sources.put_staged("_accepted/j1.jsonl", data)
    job = _accepting_job(store, clock, Expansion(uri, generation, on_bad_line="fail"))
    deps = ExpandDeps(store=store, sources=sources, queue=InMemoryWorkQueue(), clock=clock, chunk_items=2,
                      ramp=Ramp(1e9))
    assert run_to_end(job.job_id, deps) == ["failed"]
    after = store.get_job(job.job_id)
    assert after.status is JobStatus.FAILED and "line 4" in after.error and '"fail"' in after.error
    assert {d["state"] for d in store.items[job.job_id].values()} == {ItemState.FAILED.value}
    assert deps.queue.messages == []


def test_bad_lines_are_skipped_and_counted_with_the_first_few_kept():
    clock, store, sources = FakeClock(), InMemoryJobStore(), MemorySources()
    data = b"".join(expanding.staged_jsonl(specs(1, start=i)) + b"{bad\n" for i in range(30))
    uri, generation, _ = sources.put_staged("_accepted/j1.jsonl", data)
    job = _accepting_job(store, clock, Expansion(uri, generation))
    deps = ExpandDeps(store=store, sources=sources, queue=InMemoryWorkQueue(), clock=clock, chunk_items=4,
                      ramp=Ramp(1e9), max_bad_samples=5)
    assert run_to_end(job.job_id, deps) == ["done"]
    exp = Expansion.from_dict(store.get_job(job.job_id).expansion)
    assert (exp.items, exp.bad_lines) == (30, 30)
    assert [s["line"] for s in exp.bad_samples] == [2, 4, 6, 8, 10]
    assert store.get_job(job.job_id).item_count == 30


def test_a_vanished_source_fails_the_job_with_its_reason():
    job2, deps2, _ = setup(25)
    deps2.sources.objects.clear()
    assert run_to_end(job2.job_id, deps2) == ["failed"]
    after = deps2.store.get_job(job2.job_id)
    assert after.status is JobStatus.FAILED and "cannot be read" in after.error and "generation" in after.error


def test_the_poller_nudges_only_expansions_nobody_holds():
    job, deps, _ = setup(5)
    deps.store.claim_expansion(job.job_id, "alive", deps.clock.now(), 60)
    nudges = Nudges()
    assert expanding.resume_expansions(store=deps.store, nudges=nudges, clock=deps.clock) == []
    deps.clock.advance(61)
    assert expanding.resume_expansions(store=deps.store, nudges=nudges, clock=deps.clock) == [job.job_id]


def test_an_idempotent_replay_returns_the_accepting_job():
    job, deps, submit = setup(5)
    sub = submitting.Submission(spec=JobSpec(items=specs(5)), model="m", key_id="k1", body_sha256="h")
    first, replayed = submitting.submit(sub, submit)
    assert not replayed and first.status is JobStatus.ACCEPTING
    again, replayed = submitting.submit(sub, submit)
    assert replayed and again.job_id == first.job_id


def _accepting_job(store, clock, expansion: Expansion):
    from core.models import Job, Lane

    job = Job(job_id="j1", lane=Lane.INTERACTIVE, status=JobStatus.ACCEPTING, model="m", item_count=0,
              created_at=clock.now(), updated_at=clock.now(), expansion=expansion.to_dict())
    store.create_job_doc(job)
    return job


def test_a_body_is_reserved_once_at_accept_and_a_source_once_its_count_is_known():
    from core.accounting import RELEASED_USD, RESERVED_USD, Accounting, DailyLimits
    from core.models import Job, Lane
    from tests.fakes import InMemoryCounterStore

    clock = FakeClock()
    accounting = Accounting(store=InMemoryCounterStore(), clock=clock, limits=DailyLimits())
    job, deps, _ = setup(8)
    deps = dataclasses.replace(deps, accounting=accounting)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert accounting.totals(fresh=True).get(RESERVED_USD, 0) == 0  # the body's was made at accept

    sources = MemorySources()
    data = expanding.staged_jsonl(specs(5))
    uri, generation, size = sources.put_staged("in/p.jsonl", data)
    source_job = Job(job_id="s1", lane=Lane.BATCH, status=JobStatus.ACCEPTING, model="m", item_count=0,
                     created_at=clock.now(), updated_at=clock.now(),
                     expansion=Expansion(uri, generation, "staged-as-jsonl", size=size).to_dict())
    deps.store.create_job_doc(source_job)

    class AsCallerFile(MemorySources):
        def lines(self, exp):
            return super().lines(dataclasses.replace(exp, format=expanding.STAGED_FORMAT))

    reading = AsCallerFile()
    reading.objects = sources.objects
    deps = dataclasses.replace(deps, sources=reading)
    assert run_to_end("s1", deps) == ["done"]
    after = deps.store.get_job("s1")
    assert after.item_count == 5 and after.estimated_cost_usd == accounting.prices.estimate(Lane.BATCH, 5, "m") > 0
    assert accounting.totals(fresh=True)[RESERVED_USD] == pytest.approx(after.estimated_cost_usd)
    assert accounting.totals(fresh=True).get(RELEASED_USD, 0) == 0


def test_a_file_of_bad_and_blank_lines_is_read_a_bounded_chunk_at_a_time():
    clock, store, sources = FakeClock(), KillingStore(), MemorySources()
    data = b"{bad\n" * 50 + b"\n" * 100 + expanding.staged_jsonl(specs(2))
    uri, generation, _ = sources.put_staged("_accepted/j1.jsonl", data)
    job = _accepting_job(store, clock, Expansion(uri, generation))
    deps = ExpandDeps(store=store, sources=sources, queue=InMemoryWorkQueue(), clock=clock, chunk_items=4,
                      ramp=Ramp(1e9), max_bad_samples=3)
    assert run_to_end(job.job_id, deps) == ["done"]
    exp = Expansion.from_dict(store.get_job(job.job_id).expansion)
    assert (exp.items, exp.bad_lines, exp.lines) == (2, 50, 152)
    # 12 chunks of 4 refused lines; then 2 refused and 30 blank (32 lines read); 32 blank twice;
    # the last 6 blank and the 2 items
    assert exp.chunks == 16
    assert [s["line"] for s in exp.bad_samples] == [1, 2, 3]


def test_without_a_nudge_topic_the_tick_expands_the_job_itself_and_the_next_tick_goes_on():
    job, deps, _ = setup(25, chunk_items=10)
    # At 10 items a second (the fake clock waits out the ramp), a tick with 1.5 s left writes
    # part of the job and stops at its deadline.
    slow = dataclasses.replace(deps, ramp=Ramp(10.0))
    first = expanding.InlineExpansions(slow, "tick-1", slow.clock.now() + 1.5)
    assert expanding.resume_expansions(store=slow.store, nudges=first, clock=slow.clock) == [job.job_id]
    part = len(stored_items(slow.store, job.job_id))
    assert 0 < part < 25 and slow.store.get_job(job.job_id).status is JobStatus.ACCEPTING
    # The tick released its lease on the way out: the next one carries on at once.
    later = expanding.InlineExpansions(deps, "tick-2", deps.clock.now() + 1e6)
    assert expanding.resume_expansions(store=deps.store, nudges=later, clock=deps.clock) == [job.job_id]
    assert stored_items(deps.store, job.job_id) == [(i, f"item-{i:05d}") for i in range(25)]
    assert deps.store.get_job(job.job_id).status is JobStatus.QUEUED


def _interactive_job_with(store, n: int, fmt: str = expanding.STAGED_FORMAT):
    """An accepting interactive job of n items read from a source in `fmt`, and its deps."""
    clock, sources = FakeClock(), MemorySources()
    store.clock = clock
    uri, generation, _ = sources.put_staged("_accepted/j1.jsonl", expanding.staged_jsonl(specs(n)))
    job = _accepting_job(store, clock, Expansion(uri, generation, format=fmt))
    deps = ExpandDeps(store=store, sources=sources, queue=InMemoryWorkQueue(), clock=clock, chunk_items=10,
                      lease_seconds=60, ramp=Ramp(1e9))
    return job, deps


class ReadCountingStore(KillingStore):
    """Counts the reads of items an expansion may make: index lookups (their sizes) and listings."""

    def item_indexes(self, job_id, keys):
        self.__dict__.setdefault("index_reads", []).append(len(keys))
        return super().item_indexes(job_id, keys)

    def list_items(self, job_id, start_after_index, limit):
        self.__dict__["lists"] = self.__dict__.get("lists", 0) + 1
        return super().list_items(job_id, start_after_index, limit)


# jsonl: a read per chunk, the chunk cut short by the kill read twice.
@pytest.mark.parametrize("fmt, reads", [(expanding.STAGED_FORMAT, []), ("jsonl", [10, 10, 10, 5])])
def test_a_staged_body_is_expanded_without_reading_its_items_first(fmt, reads):
    store = ReadCountingStore()
    job, deps = _interactive_job_with(store, 25, fmt)
    store.kill_at = ("update_expansion", 2, False)  # a chunk written again after a kill
    with pytest.raises(Killed):
        expanding.expand_job(job.job_id, "a", deps, deps.clock.now() + 100)
    deps.clock.advance(61)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert stored_items(store, job.job_id) == [(i, f"item-{i:05d}") for i in range(25)]
    assert store.get_job(job.job_id).item_count == 25
    assert store.__dict__.get("index_reads", []) == reads


@pytest.mark.parametrize("held, lists", [(1000, 0), (20, 1)])
def test_an_interactive_job_expanded_in_one_attempt_publishes_the_keys_it_wrote(monkeypatch, held, lists):
    # Reading the items back is a query a page (a scan of the job's items each on the emulator);
    # past MAX_KEYS_HELD keys the expansion does read them back.
    monkeypatch.setattr(expanding, "MAX_KEYS_HELD", held)
    store = ReadCountingStore()
    job, deps = _interactive_job_with(store, 25)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert store.__dict__.get("lists", 0) == lists
    assert sorted(k for _, k in deps.queue.messages) == [f"item-{i:05d}" for i in range(25)]
    assert store.get_job(job.job_id).published


def test_an_interactive_job_resumed_after_a_kill_reads_its_items_back_to_publish_them():
    store = ReadCountingStore()
    job, deps = _interactive_job_with(store, 25)
    store.kill_at = ("update_expansion", 2, True)  # the second checkpoint written, then killed
    with pytest.raises(Killed):
        expanding.expand_job(job.job_id, "a", deps, deps.clock.now() + 100)
    deps.clock.advance(61)
    assert run_to_end(job.job_id, deps) == ["done"]
    assert store.__dict__.get("lists", 0) > 0  # the resumed attempt wrote only the last chunk
    assert sorted(k for _, k in deps.queue.messages) == [f"item-{i:05d}" for i in range(25)]
