"""A refused batch input (an upload finalized with an error body, a 400 at create) is retried a
bounded number of times, shown in the job's status, then fails the items with the server's
message; a quota 429 at upload or create is only "try later"."""
from core.batches import QUOTA_BACKOFF_MAX_SECONDS
from core.errors import InvalidRequest, QuotaExceeded, UploadRejected
from core.models import IntentState, ItemState, JobStatus
from tests.unit.test_batches import Env

REFUSED = "upload refused at finalize: 400 INVALID_ARGUMENT: Unsupported MIME type: jsonl"


def test_a_refusal_is_counted_and_shown_then_the_next_tick_succeeds():
    env = Env()
    env.api.upload_errors = [UploadRejected(REFUSED)]
    job = env.submit(3)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.PENDING
    assert (intent.submit_failures, intent.error) == (1, REFUSED)
    assert intent.public()["error"] == REFUSED  # what GET /v1/jobs/{id} shows under batches

    env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED and env.api.created == 1


def test_past_the_limit_the_items_fail_with_the_message_and_nothing_loops():
    env = Env()
    env.api.upload_errors = [UploadRejected(REFUSED) for _ in range(10)]
    job = env.submit(3)
    env.tick()
    env.tick()  # the third refusal: max_submit_failures is 3
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.FINISHED and intent.submit_failures == 3
    assert "Unsupported MIME type: jsonl" in intent.outcome
    items = env.items(job)
    assert {it.state for it in items.values()} == {ItemState.FAILED}
    assert all("Unsupported MIME type: jsonl" in it.error for it in items.values())
    assert env.store.get_job(job.job_id).status is JobStatus.FAILED
    left = len(env.api.upload_errors)
    env.tick()
    env.tick()
    assert len(env.api.upload_errors) == left  # a finished intent is not tried again
    assert env.api.created == 0


def test_a_400_at_create_counts_the_same_way():
    env = Env()
    env.api.create_errors = [InvalidRequest("400 INVALID_ARGUMENT: bad input file")]
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.submit_failures == 1 and "bad input file" in intent.error
    env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED


def test_a_quota_429_at_create_is_try_later_and_never_fails_the_items():
    env = Env()
    too_many = QuotaExceeded("429 RESOURCE_EXHAUSTED: You exceeded your current quota", retry_delay=None,
                             quota_id=None)
    env.api.create_errors = [too_many for _ in range(6)]  # the submit's and five ticks' creates
    job = env.submit(2)
    for _ in range(5):
        env.clock.advance(QUOTA_BACKOFF_MAX_SECONDS)  # past each 429's wait
        env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.submit_failures == 0 and intent.state is not IntentState.FINISHED
    assert intent.quota_waits == 6 and not env.api.create_errors
    assert not any(it.terminal for it in env.items(job).values())
    env.clock.advance(QUOTA_BACKOFF_MAX_SECONDS)
    env.tick()
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED and env.api.created == 1
