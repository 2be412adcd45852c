"""A 429 on batch creation: the intent waits (the answer's retryDelay, or exponential backoff with
jitter), keeps its uploaded input, uses up no attempt, and ticks before then leave it alone."""
import pytest

from core.batches import MAX_RETRY_DELAY_SECONDS, QUOTA_BACKOFF_MAX_SECONDS, QUOTA_BACKOFF_SECONDS, quota_backoff
from core.errors import PermissionDenied, QuotaExceeded
from core.models import IntentState, ItemState, JobStatus
from tests.unit.test_batches import Env


def quota_429(retry_delay=None):
    return QuotaExceeded("429 RESOURCE_EXHAUSTED: You exceeded your current quota", retry_delay=retry_delay,
                         quota_id=None)


class Calls:
    """Counts the calls the lane makes to Gemini and its lease writes."""

    def __init__(self, env: Env) -> None:
        self.creates = self.lists = self.claims = 0
        create, find, claim = env.api.create_batch, env.api.find_batch, env.store.claim_intent

        def counted_create(*args, **kw):
            self.creates += 1
            return create(*args, **kw)

        def counted_find(*args, **kw):
            self.lists += 1
            return find(*args, **kw)

        def counted_claim(*args, **kw):
            self.claims += 1
            return claim(*args, **kw)

        env.api.create_batch, env.api.find_batch, env.store.claim_intent = counted_create, counted_find, counted_claim


def test_ticks_during_the_wait_call_nothing_then_the_job_succeeds_billed_once():
    env = Env()
    calls = Calls(env)
    env.api.create_errors = [quota_429(retry_delay=30.0)]
    job = env.submit(3)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.CREATING and intent.next_attempt_at == env.clock.now() + 30
    assert intent.public()["error"].startswith("429")
    claims = calls.claims
    for _ in range(10):  # ticks every 2 s: all before the 30 s are up
        assert env.tick()["seen"] == 0  # not due before its wait is over: not even read
        env.clock.advance(2.0)
    assert (calls.creates, calls.lists, env.api.uploads) == (1, 0, 1)
    assert calls.claims == claims  # not even a lease taken
    env.clock.advance(10.0)
    assert env.tick()["submitted"] == 1
    assert (calls.creates, env.api.uploads, env.api.created) == (2, 1, 1)  # the first upload served
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED and intent.submit_failures == 0
    env.api.finish(intent.gemini_batch)
    assert env.tick()["ingested"] == 1
    items = env.items(job)
    assert {it.state for it in items.values()} == {ItemState.SUCCEEDED}
    assert {it.attempts for it in items.values()} == {1}  # the 429 used up no attempt
    assert len(env.api.batches) == 1 and len(env.pngs(job)) == 3
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_without_a_retry_delay_the_wait_doubles_with_jitter_up_to_the_cap():
    env = Env()
    env.api.create_errors = [quota_429() for _ in range(8)]
    job = env.submit(2)
    waits = []
    for n in range(8):
        (intent,) = env.store.intents_of_job(job.job_id)
        assert intent.quota_waits == n + 1
        waits.append(intent.next_attempt_at - env.clock.now())
        env.clock.advance(waits[-1])
        env.tick()
    steps = [min(QUOTA_BACKOFF_MAX_SECONDS, QUOTA_BACKOFF_SECONDS * 2 ** n) for n in range(8)]
    assert all(step / 2 <= wait <= step for wait, step in zip(waits, steps))
    assert env.api.uploads == 1  # eight creates, one input file
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED


def test_the_backoff_takes_the_retry_delay_as_given():
    assert quota_backoff(1, 47.2) == 47.2
    assert quota_backoff(9, 0.0) == 0.0
    assert quota_backoff(1, 40 * 86400.0) == MAX_RETRY_DELAY_SECONDS  # a day at most
    for waits in (1, 2, 3, 30, 1000):
        step = min(QUOTA_BACKOFF_MAX_SECONDS, QUOTA_BACKOFF_SECONDS * 2 ** (waits - 1))
        assert step / 2 <= quota_backoff(waits, None) <= step


def test_one_429_leaves_the_models_other_new_batches_for_later_ticks():
    env = Env()
    calls = Calls(env)
    env.api.create_errors = [quota_429(retry_delay=100.0), quota_429(retry_delay=100.0)]
    job = env.submit(6, per_batch=2)  # three intents
    assert (calls.creates, env.api.uploads) == (1, 1)  # the submitter stopped at the first 429
    summary = env.tick()  # the first is not due; the second gets the other 429; the third is held
    assert (summary["seen"], summary["backing_off"], calls.creates, env.api.uploads) == (2, 2, 2, 2)
    summary = env.tick()  # the third's turn
    assert (summary["submitted"], calls.creates, env.api.created) == (1, 3, 1)
    env.clock.advance(100.0)
    assert env.tick()["submitted"] == 2
    assert env.api.created == 3 and env.api.uploads == 3
    states = {i.state for i in env.store.intents_of_job(job.job_id)}
    assert states == {IntentState.SUBMITTED}


def test_a_kept_input_file_that_is_gone_is_uploaded_again():
    env = Env()
    env.api.create_errors = [quota_429(retry_delay=5.0), PermissionDenied("403 PERMISSION_DENIED: file gone")]
    job = env.submit(2)
    env.clock.advance(5.0)
    assert env.tick()["errors"] == 1  # the 403 on the kept file
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.input_file is None
    env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED and env.api.uploads == 2 and env.api.created == 1


def test_a_429_at_upload_backs_off_the_same_way():
    env = Env()
    env.api.upload_errors = [quota_429(retry_delay=20.0)]
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.PENDING and intent.next_attempt_at == pytest.approx(env.clock.now() + 20)
    assert env.tick()["seen"] == 0 and env.api.uploads == 0  # not due before the wait is over
    env.clock.advance(20.0)
    assert env.tick()["submitted"] == 1
