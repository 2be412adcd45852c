"""Accepting a job: poller ticks that land mid-accept, submitters that die mid-accept, and the
Idempotency-Key resend that resumes them (core/accepting.py, submitting.submit_job)."""
import pytest

from core import accepting, jobs, redrive, submitting
from core.accounting import RELEASED_USD, RESERVED_USD, Accounting
from core.errors import Conflict, InProgress
from core.models import IntentState, ItemState, JobStatus, Lane
from tests.fakes import InMemoryCounterStore, InMemoryJobStore
from tests.unit.test_batches import Env as BatchEnv

ABANDON = 600.0


class Died(BaseException):
    """The submitting instance stopped here (not an Exception: nothing may catch it)."""


class HookedStore(InMemoryJobStore):
    """Runs `before_flip` just before the accepting -> queued flip, and can die after writing
    the first `die_after_items` items (the rest of the accept never happens)."""

    def __init__(self):
        super().__init__()
        self.before_flip = None
        self.die_after_items = None

    def create_items(self, job_id, items, job_created_at=None):
        if self.die_after_items is not None:
            super().create_items(job_id, items[: self.die_after_items], job_created_at)
            raise Died()
        super().create_items(job_id, items, job_created_at)

    def finish_accepting(self, job_id, now):
        if self.before_flip is not None:
            self.before_flip(job_id)
        return super().finish_accepting(job_id, now)


class RecordingOutbox:
    def __init__(self):
        self.recorded = []

    def has_completion(self, job):
        return any(j.job_id == job.job_id for j, _ in self.recorded)

    def record_completion(self, job, counts):
        self.recorded.append((job, counts))

    def events_of_job(self, job_id):
        return []


class Env(BatchEnv):
    interactive_threshold = 3

    def __init__(self, **kw):
        self.outbox = RecordingOutbox()
        super().__init__(store=HookedStore(), events=self.outbox, **kw)
        self.counters = InMemoryCounterStore()
        self.accounting = Accounting(store=self.counters, clock=self.clock, cache_seconds=0)

    def submit(self, n=5, per_batch=100, lane="batch", **kw):
        sub = submitting.Submission(self.spec(n, lane), self.model)
        return submitting.submit_job(sub, self.submit_deps(batch=self.lane, batch_max_requests=per_batch), **kw)

    def submit_once(self, n=5, per_batch=100, lane="batch"):
        sub = submitting.Submission(self.spec(n, lane), self.model, key_id="key", body_sha256="h")
        return submitting.submit_once(sub, self.submit_deps(batch=self.lane, batch_max_requests=per_batch))

    def recover(self, per_batch=100):
        return accepting.recover_abandoned_accepts(accepting.AcceptRecovery(
            store=self.store, batches=self.store, queue=self.queue, clock=self.clock, sink=self.sink,
            events=self.outbox, accounting=self.accounting, max_requests=per_batch), abandon_seconds=ABANDON)

    def the_job(self):
        (job_id,) = self.store.jobs
        return self.store.get_job(job_id)

    def counter(self, name):
        return sum(day.get(name, 0) for day in self.counters.days.values())


def test_the_job_is_written_first_and_queued_last():
    env = Env()
    seen = []
    env.store.before_flip = lambda job_id: seen.append(
        (env.store.get_job(job_id).status, len(env.store.items[job_id]), len(env.store.intents_of_job(job_id))))
    job = env.submit(5, per_batch=2)
    assert seen == [(JobStatus.ACCEPTING, 5, 3)]
    assert env.store.get_job(job.job_id).status is JobStatus.RUNNING  # its batches were created after the flip


def test_a_tick_while_the_api_accepts_leaves_the_job_alone():
    env = Env()
    summaries = []

    def tick_now(job_id):
        summaries.append(env.tick())
        assert jobs.finalize_job_if_done(job_id, store=env.store, clock=env.clock, sink=env.sink,
                                             events=env.outbox) is None
        summaries.append(env.recover())  # too young to be abandoned

    env.store.before_flip = tick_now
    job = env.submit(5, per_batch=2)
    assert summaries[0]["skipped"] == 3 and summaries[0]["cancelled"] == 0
    assert summaries[1] == {"completed": [], "failed": []}
    assert env.outbox.recorded == [] and not env.sink.objects
    for name in list(env.api.batches):
        env.api.finish(name)
    env.tick()
    done = env.store.get_job(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and len(env.pngs(job)) == 5 and len(env.api.batches) == 3


def test_finalizing_a_missing_or_accepting_job_does_nothing():
    env = Env()
    assert jobs.finalize_job_if_done("nope", store=env.store, clock=env.clock, sink=env.sink,
                                         events=env.outbox) is None
    env.store.die_after_items = 0
    with pytest.raises(Died):
        env.submit(3)
    job = env.the_job()
    assert jobs.finalize_job_if_done(job.job_id, store=env.store, clock=env.clock, sink=env.sink,
                                         events=env.outbox) is None
    assert env.the_job().status is JobStatus.ACCEPTING and not env.sink.objects and not env.outbox.recorded


def test_an_intent_of_an_accepting_job_is_left_for_a_later_tick():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(3)
    env.clock.advance(ABANDON - 1)
    assert env.tick()["skipped"] == 1
    (intent,) = env.store.active_intents(10)
    assert intent.state is IntentState.PENDING and not env.api.batches


def test_unpublished_accepting_interactive_jobs_are_not_republished():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(2, lane="interactive")
    env.clock.advance(120)
    assert redrive.reconcile_unpublished(store=env.store, queue=env.queue, clock=env.clock) == []
    assert env.queue.messages == []


def test_cancelling_an_accepting_job_is_refused():
    env = Env()
    env.store.die_after_items = 1
    with pytest.raises(Died):
        env.submit(3)
    with pytest.raises(Conflict, match="still being accepted"):
        jobs.cancel_job(env.the_job().job_id, store=env.store, clock=env.clock)


# --- the poller finishes or fails an abandoned accept -------------------------------------------


def test_an_abandoned_batch_job_with_all_items_is_completed_by_the_poller():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(5, per_batch=2)
    env.store.before_flip = None
    env.clock.advance(ABANDON + 1)
    job = env.the_job()
    assert env.recover() == {"completed": [job.job_id], "failed": []}
    assert env.store.get_job(job.job_id).status is JobStatus.QUEUED
    assert len(env.store.intents_of_job(job.job_id)) == 3  # the recorded ones, none added
    env.tick()
    for name in list(env.api.batches):
        env.api.finish(name)
    env.tick()
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED and len(env.api.batches) == 3


def test_an_abandoned_interactive_job_with_all_items_is_published_by_the_poller():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(2, lane="interactive")
    env.store.before_flip = None
    env.clock.advance(ABANDON + 1)
    job = env.the_job()
    assert env.recover()["completed"] == [job.job_id]
    assert sorted(env.queue.messages) == [(job.job_id, "k0"), (job.job_id, "k1")]
    assert env.store.get_job(job.job_id).published


def test_an_abandoned_job_missing_items_fails_with_a_clear_error_manifest_and_event():
    env = Env()
    env.store.die_after_items = 2
    with pytest.raises(Died):
        env.submit(5)
    job = env.the_job()
    env.clock.advance(ABANDON + 1)
    assert env.recover() == {"completed": [], "failed": [job.job_id]}
    failed = env.store.get_job(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.manifest_uri.endswith("manifest.jsonl")
    assert failed.error == ("the API stopped while accepting this job: 2 of 5 items were recorded; "
                            "submit it again")
    assert {it.state for it in env.store.list_items(job.job_id, None, 10)} == {ItemState.FAILED}
    assert [j.job_id for j, _ in env.outbox.recorded] == [job.job_id]
    assert env.counter(RELEASED_USD) == env.counter(RESERVED_USD) > 0
    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(env.store))
    assert status["status"] == "failed" and status["error"] == failed.error
    assert env.recover() == {"completed": [], "failed": []}  # once


def test_intents_a_dying_submitter_wrote_for_a_failed_accept_never_run():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(3)
    job = env.the_job()
    del env.store.items[job.job_id]["k2"]  # as if that item's write had been lost
    env.clock.advance(ABANDON + 1)
    assert env.recover()["failed"] == [job.job_id]
    assert env.tick()["cancelled"] == 1
    assert not env.api.batches and env.store.active_intents(10) == []


def test_a_recovery_with_another_batch_size_puts_no_item_in_two_batches():
    env = Env()
    env.store.before_flip = lambda job_id: (_ for _ in ()).throw(Died())
    with pytest.raises(Died):
        env.submit(5, per_batch=2)
    job = env.the_job()
    first = env.store.intents_of_job(job.job_id)[0].intent_id
    for intent_id in [i.intent_id for i in env.store.intents_of_job(job.job_id)][1:]:
        del env.store.intents[intent_id]  # only the first intent was recorded
    env.store.before_flip = None
    env.clock.advance(ABANDON + 1)
    env.recover(per_batch=3)
    intents = env.store.intents_of_job(job.job_id)
    keys = [k for i in intents for k in i.keys]
    assert sorted(keys) == [f"k{i}" for i in range(5)] and len(keys) == 5
    assert first in {i.intent_id for i in intents}


# --- an Idempotency-Key resend resumes a dead submitter's accept -----------------------------


def test_a_resend_after_the_api_died_mid_accept_resumes_it():
    env = Env()
    env.store.die_after_items = 3
    with pytest.raises(Died):
        env.submit_once(5, per_batch=2)
    env.store.die_after_items = None
    job_id = env.the_job().job_id
    with pytest.raises(InProgress):  # the first attempt may still be alive
        env.submit_once(5, per_batch=2)
    env.clock.advance(121)
    job, replayed = env.submit_once(5, per_batch=2)
    assert job.job_id == job_id and not replayed and job.status is JobStatus.QUEUED
    assert len(env.store.items[job_id]) == 5 and len(env.store.intents_of_job(job_id)) == 3
    assert len(env.api.batches) == 3
    assert env.counter(RESERVED_USD) == pytest.approx(5 * 0.0195)  # reserved once
    again, replayed = env.submit_once(5, per_batch=2)
    assert replayed and again.job_id == job_id and len(env.api.batches) == 3


def test_a_resend_finds_the_intents_the_first_attempt_recorded_and_creates_no_second_batch():
    env = Env()
    original_submit = env.lane.submit

    def submit_then_die(intent_id, owner, items=None):
        original_submit(intent_id, owner, items)
        raise Died()

    env.lane.submit = submit_then_die
    with pytest.raises(Died):
        env.submit_once(4, per_batch=2)
    env.lane.submit = original_submit
    job = env.the_job()
    assert job.status is JobStatus.RUNNING and len(env.api.batches) == 1
    env.clock.advance(121)
    again, replayed = env.submit_once(4, per_batch=2)
    assert replayed and again.job_id == job.job_id  # the flip had happened: a plain replay
    env.tick()
    assert len(env.api.batches) == 2  # the poller created the second; none twice


def test_submitting_an_intent_whose_batch_exists_creates_nothing():
    env = Env()
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert env.lane.submit(intent.intent_id, "api-2").state is IntentState.SUBMITTED
    assert len(env.api.batches) == 1 and env.store.get_intent(intent.intent_id).lease_owner is None


def test_a_resend_of_a_job_the_poller_failed_replays_the_failure():
    env = Env()
    env.store.die_after_items = 1
    with pytest.raises(Died):
        env.submit_once(3)
    env.store.die_after_items = None
    env.clock.advance(ABANDON + 1)
    env.recover()
    job, replayed = env.submit_once(3)
    assert replayed and job.status is JobStatus.FAILED and "1 of 3 items" in job.error
    assert not env.api.batches


def test_the_lane_of_a_resumed_job_is_the_one_it_was_accepted_in():
    env = Env()
    env.store.die_after_items = 1
    with pytest.raises(Died):
        env.submit_once(2, lane="auto")  # 2 items, threshold 3: interactive
    env.store.die_after_items = None
    env.clock.advance(121)
    job, _ = env.submit_once(2, lane="auto")
    assert job.lane is Lane.INTERACTIVE and len(env.queue.messages) == 2


def test_accepting_is_a_job_status_the_api_documents():
    from schemas import JobAccepted, JobStatusResponse

    assert "accepting" in JobStatusResponse.model_fields["status"].annotation.__args__
    assert "accepting" in JobAccepted.model_fields["status"].annotation.__args__


def test_the_cli_shows_an_accepting_job_and_a_failed_accept(capsys):
    from imagefleet import cli

    cli._print_status({"job_id": "j1", "status": "accepting", "item_count": 3, "counts": {"queued": 1}})
    cli._print_status({"job_id": "j2", "status": "failed", "item_count": 3, "counts": {"failed": 1},
                       "error": "the API stopped while accepting this job: 1 of 3 items were recorded; submit it again"})
    out = capsys.readouterr().out
    assert "Job j1: accepting (its items are still being recorded)" in out
    assert "error      the API stopped while accepting this job: 1 of 3 items" in out
