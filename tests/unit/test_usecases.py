"""submit_job, process_item and friends on in-memory fakes."""
import hashlib
import json

import pytest

from core import jobs, redrive
from core.errors import (
    Conflict,
    ContentRefused, InvalidRequest, LaneUnavailable, NotFound, PermissionDenied, QuotaExceeded,
    RateLimited, TransientError,
)
from core.models import ItemState, JobStatus, Lane
from tests.fakes import (
    NoLimiter,
    tiny_png,
)


def test_submit_records_the_job_and_publishes_one_message_per_item(env):
    job = env.submit(3)
    assert job.lane is Lane.INTERACTIVE and job.status is JobStatus.QUEUED
    assert env.queue.messages == [(job.job_id, "k0"), (job.job_id, "k1"), (job.job_id, "k2")]
    stored = env.store.get_job(job.job_id)
    assert stored.published and stored.item_count == 3
    assert env.store.count_items(job.job_id)[ItemState.QUEUED] == 3


def test_auto_routes_large_jobs_to_batch_unless_it_is_switched_off(env):
    with pytest.raises(LaneUnavailable, match="batch lane is not deployed"):
        env.submit(10)
    with pytest.raises(LaneUnavailable):
        env.submit(2, lane="batch")
    assert env.store.jobs == {}  # nothing half-written
    assert env.submit(12, lane="interactive").lane is Lane.INTERACTIVE


def test_a_publish_failure_leaves_the_job_unpublished_and_the_poller_finishes_it(env):
    env.queue.fail_after = 1
    with pytest.raises(ConnectionError):
        env.submit(3)
    (job_id,) = env.store.jobs
    assert not env.store.get_job(job_id).published
    env.queue.fail_after = None
    assert redrive.reconcile_unpublished(store=env.store, queue=env.queue, clock=env.clock) == []
    env.clock.advance(61)
    assert redrive.reconcile_unpublished(store=env.store, queue=env.queue, clock=env.clock) == [job_id]
    assert [k for j, k in env.queue.messages if j == job_id].count("k2") == 1
    assert env.store.get_job(job_id).published


def test_process_item_writes_the_image_and_finishes_the_job(env):
    job = env.submit(2)
    assert env.process(job.job_id, "k0").ack
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.SUCCEEDED and item.attempts == 1
    assert item.gcs_uri == f"gs://test-bucket/{job.job_id}/k0.png"
    assert env.store.get_job(job.job_id).status is JobStatus.RUNNING
    env.process(job.job_id, "k1")
    job_now = env.store.get_job(job.job_id)
    assert job_now.status is JobStatus.SUCCEEDED and job_now.finished_at is not None
    data, meta = env.sink.objects[f"{job.job_id}/k0.png"]
    assert data.startswith(b"\x89PNG") and meta["item_key"] == "k0" and meta["finish_reason"] == "STOP"


def test_a_finished_job_gets_a_manifest_line_per_item(env):
    job = env.submit(2)
    env.generator.script = ["ok", ContentRefused("prompt blocked: SAFETY")]
    env.process(job.job_id, "k0")
    env.process(job.job_id, "k1")
    done = env.store.get_job(job.job_id)
    assert done.status is JobStatus.PARTIALLY_SUCCEEDED
    assert done.manifest_uri == f"gs://test-bucket/{job.job_id}/manifest.jsonl"
    lines = [json.loads(x) for x in env.sink.objects[f"{job.job_id}/manifest.jsonl"][0].splitlines()]
    assert [(x["key"], x["state"], x["lane"]) for x in lines] == [("k0", "succeeded", "interactive"), ("k1", "failed", "interactive")]
    png = env.sink.objects[f"{job.job_id}/k0.png"][0]
    assert lines[0]["sha256"] == hashlib.sha256(png).hexdigest() and lines[0]["bytes"] == len(png)
    assert lines[0]["attempts"] == 1 and lines[0]["output_tokens"] == 1290
    assert lines[1]["error"] == "prompt blocked: SAFETY" and lines[1]["gcs_uri"] is None


def test_a_finisher_that_died_before_finalizing_is_covered_by_the_next_delivery(env):
    job = env.submit(1)
    env.process(job.job_id, "k0")
    env.store.jobs[job.job_id].update(status="running", manifest_uri=None)  # as if finalize never ran
    env.process(job.job_id, "k0", owner="redelivery")
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_cancel_drops_queued_items_and_keeps_finished_ones(env):
    job = env.submit(3)
    env.process(job.job_id, "k0")
    status = jobs.cancel_job(job.job_id, store=env.store, clock=env.clock, sink=env.sink)
    assert status["status"] == "cancelled"
    assert status["counts"]["succeeded"] == 1 and status["counts"]["cancelled"] == 2
    assert env.process(job.job_id, "k1").ack  # the message still in flight is dropped
    assert len(env.generator.calls) == 1
    with pytest.raises(Conflict):
        jobs.cancel_job(job.job_id, store=env.store, clock=env.clock)
    with pytest.raises(NotFound):
        jobs.cancel_job("missing", store=env.store, clock=env.clock)


def test_duplicate_delivery_of_a_finished_item_is_skipped(env):
    job = env.submit(1)
    env.process(job.job_id, "k0")
    outcome = env.process(job.job_id, "k0", owner="w2")
    assert outcome.ack and outcome.reason == "already finished"
    assert len(env.generator.calls) == 1
    assert [n for n in env.sink.objects if n.endswith(".png")] == [f"{job.job_id}/k0.png"]


def test_concurrent_duplicate_is_retried_later_not_processed(env):
    job = env.submit(1)
    env.store.claim_item(job.job_id, "k0", "other", env.clock.now(), 120)
    outcome = env.process(job.job_id, "k0")
    assert not outcome.ack and "leased" in outcome.reason
    assert env.generator.calls == []


def test_expired_lease_of_a_crashed_worker_is_taken_over_and_the_existing_object_kept(env):
    job = env.submit(1)
    env.store.claim_item(job.job_id, "k0", "crashed", env.clock.now(), 120)
    first = tiny_png("first")
    env.sink.put_image(f"{job.job_id}/k0.png", first, "image/png",  # it wrote the image, then died
                       {"sha256": hashlib.sha256(first).hexdigest(), "format": "png", "width": "4", "height": "3"})
    env.clock.advance(121)
    assert env.process(job.job_id, "k0").ack
    assert env.sink.objects[f"{job.job_id}/k0.png"][0] == first
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.SUCCEEDED and item.sha256 == hashlib.sha256(first).hexdigest()
    assert env.generator.calls == []  # recorded, not generated again


@pytest.mark.parametrize("error", [ContentRefused("prompt blocked: SAFETY"),
                                   ContentRefused("no image returned: finishReason IMAGE_SAFETY"),
                                   InvalidRequest("400 INVALID_ARGUMENT")])
def test_non_retryable_outcomes_fail_the_item_and_ack(env, error):
    job = env.submit(1)
    env.generator.script = [error]
    outcome = env.process(job.job_id, "k0")
    assert outcome.ack and outcome.state == "failed"
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.FAILED and item.error == error.reason
    assert env.store.get_job(job.job_id).status is JobStatus.FAILED
    assert list(env.sink.objects) == [f"{job.job_id}/manifest.jsonl"]


@pytest.mark.parametrize("error", [TransientError("503 UNAVAILABLE"), PermissionDenied("403")])
def test_transient_errors_retry_until_max_attempts_then_dead_letter(env, error):
    job = env.submit(1)
    env.generator.script = [error] * 3
    first = env.process(job.job_id, "k0")
    assert not first.ack
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.QUEUED and item.attempts == 1 and item.lease_owner is None
    env.process(job.job_id, "k0")
    last = env.process(job.job_id, "k0")
    assert last.ack and last.state == "dead_lettered"
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.DEAD_LETTERED and "after 3 attempts" in item.error
    assert env.store.get_job(job.job_id).status is JobStatus.FAILED


def test_a_transient_error_then_success_counts_both_attempts(env):
    job = env.submit(1)
    env.generator.script = [TransientError("500")]
    env.process(job.job_id, "k0")
    env.process(job.job_id, "k0")
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.SUCCEEDED and item.attempts == 2 and item.error is None


def test_short_quota_delay_is_waited_out_in_process_and_pushes_everyone_back(env):
    job = env.submit(1)
    env.generator.script = [QuotaExceeded("429", retry_delay=2.0, quota_id="GenerateRequestsPerMinutePerProjectPerModel")]
    outcome = env.process(job.job_id, "k0")
    assert outcome.ack and outcome.state == "succeeded"
    assert env.limiter.pushed_back == [pytest.approx(env.clock.now())]
    item = env.store.get_item(job.job_id, "k0")
    assert item.attempts == 1 and item.quota_retries == 1  # a 429 is not the item's fault


def test_long_quota_delay_hands_the_message_back_to_pubsub(env):
    job = env.submit(1)
    env.generator.script = [QuotaExceeded("429", retry_delay=300.0, quota_id="GenerateRequestsPerDayPerProjectPerModel")]
    outcome = env.process(job.job_id, "k0")
    assert not outcome.ack and "PerDay" in outcome.reason
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.QUEUED and item.attempts == 0 and item.quota_retries == 1


def test_no_limiter_capacity_requeues_without_calling_the_model(env):
    class Full(NoLimiter):
        def acquire(self, owner, max_wait, cost=None):
            raise RateLimited(42)

    env.limiter = Full()
    job = env.submit(1)
    outcome = env.process(job.job_id, "k0")
    assert not outcome.ack and env.generator.calls == []
    assert env.store.get_item(job.job_id, "k0").state is ItemState.QUEUED


def test_unknown_items_and_jobs_are_acked_not_retried_forever(env):
    assert env.process("nojob", "k0").ack


def test_status_reports_counts_and_paginates(env):
    job = env.submit(5)
    env.process(job.job_id, "k0")
    page = jobs.get_job_status(job.job_id, jobs.StatusDeps(env.store), page_size=2)
    assert page["counts"]["succeeded"] == 1 and page["counts"]["queued"] == 4
    assert [i["key"] for i in page["items"]] == ["k0", "k1"]
    page2 = jobs.get_job_status(job.job_id, jobs.StatusDeps(env.store), page_size=2, page_token=page["next_page_token"])
    assert [i["key"] for i in page2["items"]] == ["k2", "k3"]
    with pytest.raises(NotFound):
        jobs.get_job_status("missing", jobs.StatusDeps(env.store))


@pytest.mark.parametrize("counts,expected", [
    ({ItemState.SUCCEEDED: 3}, JobStatus.SUCCEEDED),
    ({ItemState.SUCCEEDED: 2, ItemState.FAILED: 1}, JobStatus.PARTIALLY_SUCCEEDED),
    ({ItemState.DEAD_LETTERED: 1, ItemState.FAILED: 1}, JobStatus.FAILED),
    ({ItemState.CANCELLED: 2}, JobStatus.CANCELLED),
    ({ItemState.SUCCEEDED: 2, ItemState.RUNNING: 1}, None),
])
def test_job_status_from_counts(counts, expected):
    assert jobs.job_status_from_counts(counts) is expected

