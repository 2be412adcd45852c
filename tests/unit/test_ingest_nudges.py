"""A tick decides which finished batches are due for ingest and publishes one nudge each; the
nudge's push (core/gemini_webhooks.reconcile_nudged) ingests under the intent's lease."""
import base64
import json

import functions_framework

from core import gemini_webhooks as gw
from core.batches import BatchLane, BatchLaneDeps, BatchLimits
from catalog import load as load_catalog
from core.errors import DeliveryFailed
from core.models import IntentState, JobStatus
from tests.fakes import FakeClock, InMemoryBatchNudges
from tests.unit.test_batches import Env
from tests.unit.test_entrypoints import SOURCE, api, fakes, post_job  # noqa: F401 (fixtures)

GRACE = 300.0


class NudgedEnv(Env):
    """The batch lane with an ingest nudge topic (the deployment's default)."""

    def __init__(self, nudges=None, checkpoint_lines=2):
        super().__init__(checkpoint_lines=checkpoint_lines)
        self.nudges = nudges or InMemoryBatchNudges()
        self.lane = BatchLane(
            BatchLaneDeps(store=self.store, jobs=self.store, api=self.api, sink=self.sink, clock=self.clock,
                          catalog=load_catalog(), nudges=self.nudges),
            BatchLimits(lease_seconds=60.0, max_attempts=3, checkpoint_lines=checkpoint_lines,
                        ingest_nudge_grace_seconds=GRACE),
        )

    def finished_batches(self, jobs=1, n=3):
        """`jobs` jobs of n items, each one batch, each batch SUCCEEDED at Gemini."""
        submitted = [self.submit(n) for _ in range(jobs)]
        for name in self.api.batches:
            self.api.finish(name)
        return submitted

    def intent(self, job):
        (intent,) = self.store.intents_of_job(job.job_id)
        return intent


class FailingNudges:
    def nudge(self, intent_id):
        raise DeliveryFailed("topic unreachable")


def test_a_tick_publishes_one_nudge_per_finished_batch_and_ingests_nothing():
    env = NudgedEnv()
    jobs = env.finished_batches(jobs=3)
    summary = env.tick()
    assert summary["ingest_requested"] == 3 and summary["ingested"] == 0
    assert sorted(env.nudges.sent) == sorted(env.intent(j).intent_id for j in jobs)
    assert env.pngs(jobs[0]) == [] and env.api.stream_offsets == []  # nothing downloaded
    for job in jobs:
        intent = env.intent(job)
        assert intent.state is IntentState.INGESTING and intent.lease_owner is None
        assert intent.ingest_requested_at is not None


def test_a_second_tick_within_the_grace_period_publishes_no_second_nudge():
    env = NudgedEnv()
    env.finished_batches(jobs=2)
    env.tick()
    env.clock.advance(GRACE - 1)
    summary = env.tick()
    assert summary["ingest_pending"] == 2 and summary["ingest_requested"] == 0
    assert len(env.nudges.sent) == 2


def test_a_lost_nudge_is_published_again_after_the_grace_period():
    env = NudgedEnv()
    (job,) = env.finished_batches()
    env.tick()
    env.nudges.sent.clear()  # the message never arrives
    env.clock.advance(GRACE + 1)
    assert env.tick()["ingest_requested"] == 1
    assert env.nudges.sent == [env.intent(job).intent_id]


def test_the_nudge_ingests_and_a_duplicate_nudge_changes_nothing():
    env = NudgedEnv()
    (job,) = env.finished_batches()
    env.tick()
    (intent_id,) = env.nudges.sent
    assert gw.reconcile_nudged(env.lane, env.nudges, intent_id, "push-1", deadline=1e12) == "ingested"
    writes = env.sink.writes
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED
    # Pub/Sub delivers at least once: the same nudge again is answered without another ingest.
    assert gw.reconcile_nudged(env.lane, env.nudges, intent_id, "push-2", deadline=1e12) == "skipped"
    assert env.sink.writes == writes and len(env.api.stream_offsets) == 1


def test_a_duplicate_nudge_that_meets_the_ingest_is_busy_and_does_not_ingest_twice():
    env = NudgedEnv()
    env.finished_batches()
    env.tick()
    (intent_id,) = env.nudges.sent
    env.store.claim_intent(intent_id, "push-1", now=env.clock.now(), lease_seconds=60)  # the first push, ingesting
    assert gw.reconcile_nudged(env.lane, env.nudges, intent_id, "push-2", deadline=1e12) == "busy"
    assert env.api.stream_offsets == []


class Ticking(FakeClock):
    def now(self):
        self.t += 1.0  # every look at the clock costs a second: a short budget pauses the ingest
        return self.t


def test_an_ingest_longer_than_its_slice_checkpoints_and_continues_by_a_new_nudge():
    env = NudgedEnv(checkpoint_lines=100)
    env.clock = env.lane.clock = Ticking()
    (job,) = env.finished_batches(n=10)
    env.tick()
    (intent_id,) = env.nudges.sent
    outcome = gw.reconcile_nudged(env.lane, env.nudges, intent_id, "push-1", deadline=env.clock.t + 12)
    assert outcome == "renudged"
    paused = env.store.get_intent(intent_id)
    assert 0 < paused.lines_done < 10 and paused.lease_owner is None
    assert env.nudges.sent == [intent_id, intent_id]  # one more, published by the slice itself
    # A tick in between leaves it to that nudge: the request was recorded with the checkpoint.
    assert env.tick()["ingest_pending"] == 1 and len(env.nudges.sent) == 2
    assert gw.reconcile_nudged(env.lane, env.nudges, intent_id, "push-2", deadline=1e12) == "ingested"
    assert env.api.stream_offsets == [0, paused.bytes_done]  # resumed, not restarted
    assert env.sink.writes == 11  # 10 images and the manifest, each once
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_without_a_nudge_topic_the_tick_ingests_inline():
    env = Env()  # BatchLaneDeps.nudges is None
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.finish(name)
    summary = env.tick()
    assert summary["ingested"] == 1 and summary["ingest_requested"] == 0
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_a_nudge_that_cannot_be_published_is_ingested_inline_by_the_tick():
    env = NudgedEnv(nudges=FailingNudges())
    (job,) = env.finished_batches()
    summary = env.tick()
    assert summary["ingested"] == 1 and summary["ingest_requested"] == 0
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


# --- through the entry points ----------------------------------------------------------------

def test_the_scheduled_tick_publishes_and_the_pushed_nudge_ingests(api, fakes):  # noqa: F811
    fakes.lane = BatchLane(
        BatchLaneDeps(store=fakes.store, jobs=fakes.store, api=fakes.batch_api, sink=fakes.sink, clock=fakes.clock,
                      catalog=load_catalog(), events=fakes.events, nudges=fakes.nudges),
        BatchLimits(lease_seconds=60, max_attempts=3))
    job_id = post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(12)]}).get_json()["job_id"]
    (batch_name,) = fakes.batch_api.batches
    fakes.batch_api.finish(batch_name)
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()

    tick = poller.post("/", json={}).get_json()["batches"]

    assert tick["ingest_requested"] == 1 and tick["ingested"] == 0
    assert api.get(f"/v1/jobs/{job_id}").get_json()["status"] == "running"
    (intent_id,) = fakes.nudges.sent
    push = {"message": {"data": base64.b64encode(json.dumps({"intent_id": intent_id}).encode()).decode(),
                        "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}
    assert poller.post("/", json=push).get_json() == {"nudge": "ingested"}
    assert api.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
