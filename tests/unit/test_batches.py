"""The batch lane on in-memory fakes: intents, crashes, overlapping pollers, per-line outcomes."""
import json
import logging

import pytest

from catalog import load as load_catalog
from core import jobs, submitting
from core.batches import BatchLane, BatchLaneDeps, BatchLimits, normalise_state
from core.models import IntentState, ItemSpec, ItemState, JobSpec, JobStatus, Lane
from tests.fakes import FakeBatchApi, FakeClock
from tests.unit.conftest import Env as UseCaseEnv

FAR = 1e12  # a deadline that never comes


class Env(UseCaseEnv):
    """The batch lane over the shared fakes (tests/unit/conftest.py), with a fake Batch API."""

    def __init__(self, lease=60.0, max_attempts=3, checkpoint_lines=2, store=None, events=None):
        super().__init__()
        self.store = store or self.store
        self.api = FakeBatchApi()
        self.lane = BatchLane(
            BatchLaneDeps(store=self.store, jobs=self.store, api=self.api, sink=self.sink, clock=self.clock,
                          catalog=load_catalog(), events=events),
            BatchLimits(lease_seconds=lease, max_attempts=max_attempts, checkpoint_lines=checkpoint_lines),
        )

    def submit(self, n=5, per_batch=100, **kw):
        spec = JobSpec(tuple(ItemSpec(key=f"k{i}", prompt=f"prompt {i}", aspect_ratio="16:9" if i == 0 else "1:1")
                             for i in range(n)), "batch")
        deps = self.submit_deps(batch=self.lane, batch_max_requests=per_batch)
        return submitting.submit_job(submitting.Submission(spec, self.model), deps, **kw)

    def tick(self, owner="poller", deadline=FAR):
        return self.lane.reconcile(owner, deadline)

    def items(self, job):
        return {it.key: it for it in self.store.list_items(job.job_id, None, 1000)}

    def pngs(self, job):
        return sorted(n for n in self.sink.objects if n.startswith(job.job_id) and n.endswith(".png"))


def error_line(code, status="X"):
    return lambda key, req: {"error": {"code": code, "message": "m", "status": status}}


def test_plan_splits_by_request_count_with_deterministic_ids():
    env = Env()
    job = env.submit(5, per_batch=2)
    intents = env.store.intents_of_job(job.job_id)
    assert [i.intent_id for i in intents] == [f"{job.job_id}-b00{n}-a1" for n in range(3)]
    assert [i.keys for i in intents] == [["k0", "k1"], ["k2", "k3"], ["k4"]]


def test_submit_creates_one_batch_per_intent_from_a_jsonl_file():
    env = Env()
    job = env.submit(3)
    assert job.lane is Lane.BATCH
    (name,) = env.api.batches
    batch = env.api.batches[name]
    (intent,) = env.store.intents_of_job(job.job_id)
    assert batch["display_name"] == intent.intent_id
    assert intent.state is IntentState.SUBMITTED and intent.gemini_batch == name
    assert intent.key_fingerprint == "fp-test" and intent.lease_owner is None
    first = batch["requests"][0]
    assert first["key"] == "k0"
    assert first["request"]["contents"][0]["parts"][0]["text"] == "prompt 0"
    assert first["request"]["generation_config"] == {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "16:9"}}
    assert env.api.deleted_files == [intent.input_file]  # deleted once the batch exists
    assert env.store.get_job(job.job_id).status is JobStatus.RUNNING


def test_a_successful_batch_is_streamed_into_gcs_with_a_manifest():
    env = Env()
    job = env.submit(5)
    (name,) = env.api.batches
    assert env.tick()["running"] == 1
    env.api.finish(name)
    assert env.tick()["ingested"] == 1
    items = env.items(job)
    assert all(it.state is ItemState.SUCCEEDED and it.lane == "batch" for it in items.values())
    assert items["k0"].width == 4 and items["k0"].height == 3 and items["k0"].output_tokens == 1290
    assert env.pngs(job) == [f"{job.job_id}/k{i}.png" for i in range(5)]
    assert env.sink.objects[f"{job.job_id}/k0.png"][1]["lane"] == "batch"
    done = env.store.get_job(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.manifest_uri.endswith("manifest.jsonl")
    manifest = [json.loads(x) for x in env.sink.objects[f"{job.job_id}/manifest.jsonl"][0].splitlines()]
    assert len(manifest) == 5 and {m["lane"] for m in manifest} == {"batch"}
    assert f"files/batch-{name.split('/')[1]}" in env.api.deleted_files
    assert env.store.active_intents(10) == []
    assert env.tick()["seen"] == 0


def test_job_state_names_are_accepted():
    assert normalise_state("JOB_STATE_SUCCEEDED") == "BATCH_STATE_SUCCEEDED"
    env = Env()
    job = env.submit(2)
    (name,) = env.api.batches
    env.api.finish(name)
    env.api.set_state(name, "JOB_STATE_SUCCEEDED")
    env.tick()
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_crash_between_create_and_record_never_creates_a_second_batch():
    env = Env(lease=60)
    env.api.fail_create_after_creating = True
    job = env.submit(3)  # the API answers 202 anyway: the intent is recorded
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.CREATING and env.api.created == 1
    env.api.fail_create_after_creating = False
    assert env.tick()["seen"] == 1  # the API's lease is released in finally; poller re-claims
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.SUBMITTED and env.api.created == 1
    assert intent.gemini_batch == next(iter(env.api.batches))


def test_a_crashed_holder_blocks_others_until_its_lease_expires():
    env = Env(lease=60)
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    env.store.claim_intent(intent.intent_id, "dead-poller", env.clock.now(), 60)
    env.api.finish(intent.gemini_batch)
    assert env.tick()["skipped"] == 1
    env.clock.advance(61)
    assert env.tick()["ingested"] == 1


def test_per_line_outcomes_retry_fail_or_dead_letter(caplog):
    env = Env(max_attempts=2)
    job = env.submit(4)

    def outcome(key, req):
        return {"k0": None, "k1": {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}},
                "k2": {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
                "k3": {"response": {"promptFeedback": {"blockReason": "SAFETY"}}}}[key]

    (first,) = env.api.batches
    env.api.finish(first, outcome)
    env.tick()
    items = env.items(job)
    assert items["k0"].state is ItemState.SUCCEEDED
    assert items["k2"].state is ItemState.FAILED and "400" in items["k2"].error
    assert items["k3"].state is ItemState.FAILED and "SAFETY" in items["k3"].error
    assert items["k1"].state is ItemState.QUEUED and "overloaded" in items["k1"].error
    retry = env.store.get_intent(f"{job.job_id}-b000-a2")
    assert retry.keys == ["k1"] and retry.attempt == 2

    env.tick()  # creates the retry batch
    second = retry_name = [n for n in env.api.batches if n != first][0]
    assert [r["key"] for r in env.api.batches[retry_name]["requests"]] == ["k1"]
    env.api.finish(second, lambda key, req: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}})
    with caplog.at_level(logging.WARNING, logger="core.batches"):
        env.tick()
    k1 = env.items(job)["k1"]
    assert k1.state is ItemState.DEAD_LETTERED and "after 2 batch attempts" in k1.error and k1.attempts == 2
    # One log line per dead-lettered item, with the state the log-based metric counts.
    dead = [r for r in caplog.records if getattr(r, "state", None) == "dead_lettered"]
    assert [(r.job_id, r.item_key, r.lane) for r in dead] == [(job.job_id, "k1", "batch")]
    assert env.store.get_job(job.job_id).status is JobStatus.PARTIALLY_SUCCEEDED


@pytest.mark.parametrize("state", ["BATCH_STATE_EXPIRED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED"])
def test_a_dead_batch_resubmits_only_unfinished_items(state):
    env = Env()
    job = env.submit(3)
    (name,) = env.api.batches
    env.store.items[job.job_id]["k0"].update(state="succeeded")  # finished elsewhere: never billed again
    env.api.set_state(name, state)
    assert env.tick()["resubmitted"] == 1
    env.tick()
    new = [n for n in env.api.batches if n != name]
    assert len(new) == 1 and [r["key"] for r in env.api.batches[new[0]]["requests"]] == ["k1", "k2"]


def test_a_vanished_batch_is_resubmitted():
    env = Env()
    job = env.submit(1)
    env.api.batches.clear()
    assert env.tick()["resubmitted"] == 1
    assert env.store.get_intent(f"{job.job_id}-b000-a2") is not None


def test_ingestion_pauses_at_the_deadline_and_resumes_without_duplicates():
    class Ticking(FakeClock):
        def now(self):
            self.t += 1.0  # every look at the clock costs a second
            return self.t

    env = Env(checkpoint_lines=100)
    env.clock = env.lane.clock = Ticking()
    job = env.submit(10)
    (name,) = env.api.batches
    env.api.finish(name)
    summary = env.tick(deadline=env.clock.t + 12)
    assert summary["paused"] == 1
    intent = env.store.intents_of_job(job.job_id)[0]
    done_first = intent.lines_done
    assert 0 < done_first < 10 and intent.state is IntentState.INGESTING
    assert len(env.pngs(job)) == done_first
    env.tick()
    assert env.sink.writes == 11  # 10 images and the manifest, each once
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_a_poller_killed_mid_ingest_is_resumed_by_the_next_one():
    env = Env(lease=60, checkpoint_lines=2)
    job = env.submit(6)
    (name,) = env.api.batches
    env.api.finish(name)
    real_put = env.sink.put_image
    calls = {"n": 0}

    def dying_put(name, data, content_type, metadata):
        calls["n"] += 1
        if calls["n"] == 4:
            raise SystemExit("killed")  # like SIGKILL: nothing after this line runs
        return real_put(name, data, content_type, metadata)

    env.sink.put_image = dying_put
    release = env.lane._release
    env.lane._release = lambda intent, owner: None  # SIGKILL runs no finally block
    with pytest.raises(SystemExit):
        env.tick("poller-1")
    env.sink.put_image, env.lane._release = real_put, release
    assert env.store.intents_of_job(job.job_id)[0].lines_done == 2  # the last checkpoint
    assert env.tick("poller-2")["skipped"] == 1  # poller-1's lease is still live
    env.clock.advance(61)
    env.tick("poller-2")
    assert env.pngs(job) == [f"{job.job_id}/k{i}.png" for i in range(6)]
    assert env.sink.writes == 7  # six images and the manifest, none written twice
    assert all(it.state is ItemState.SUCCEEDED for it in env.items(job).values())


def test_cancelling_a_batch_job_cancels_its_gemini_batch():
    env = Env()
    job = env.submit(3)
    (name,) = env.api.batches
    status = jobs.cancel_job(job.job_id, store=env.store, clock=env.clock, sink=env.sink)
    assert status["status"] == "cancelled"
    assert env.tick()["cancelled"] == 1
    assert env.api.cancelled == [name]
    assert {it.state for it in env.items(job).values()} == {ItemState.CANCELLED}
    done = env.store.get_job(job.job_id)
    assert done.status is JobStatus.CANCELLED and done.manifest_uri is not None


def test_a_failed_upload_leaves_a_pending_intent_for_the_poller():
    env = Env()
    real_upload = env.api.upload_jsonl
    env.api.upload_jsonl = lambda data, display_name: (_ for _ in ()).throw(ConnectionError("reset"))
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.PENDING and env.api.batches == {}
    env.api.upload_jsonl = real_upload
    env.tick()
    assert env.store.intents_of_job(job.job_id)[0].state is IntentState.SUBMITTED


def test_a_results_file_gone_for_three_ticks_resubmits_only_the_unfinished():
    env = Env()
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.finish(name)
    output = env.api.batches[name]["output_file"]
    env.store.items[job.job_id]["k0"].update(state="succeeded")  # ingested before the file went
    del env.api.files[output]
    assert env.tick()["results_unavailable"] == 1 and env.tick()["results_unavailable"] == 1  # a passing 403 is not enough
    assert env.tick()["resubmitted"] == 1
    retry = env.store.get_intent(f"{job.job_id}-b000-a2")
    assert retry.keys == ["k1", "k2"]


def test_a_retried_create_reuses_its_input_file_while_young_and_replaces_it_when_old():
    from core.batches import INPUT_FILE_REUSE_SECONDS

    env = Env()
    real_create = env.api.create_batch

    def refuse(model, input_file, display_name):
        raise ConnectionError("connection reset")

    env.api.create_batch = refuse
    job = env.submit(2)
    (intent,) = env.store.intents_of_job(job.job_id)
    assert intent.state is IntentState.CREATING and set(env.api.files) == {intent.input_file}
    env.tick()  # failed again: the same file serves
    assert env.api.uploads == 1 and set(env.api.files) == {intent.input_file}
    env.clock.advance(INPUT_FILE_REUSE_SECONDS)
    env.tick()  # too old to outlive a batch: the old file goes, a new one is uploaded
    (again,) = env.store.intents_of_job(job.job_id)
    assert set(env.api.files) == {again.input_file} and again.input_file != intent.input_file
    env.api.create_batch = real_create
    env.tick()
    assert env.api.files == {}  # the batch exists: its input file is deleted too


def test_a_truncated_or_unreadable_image_line_is_retried_in_a_new_batch_never_stored():
    import base64

    from tests.fakes import png_response

    def spoiled(key, req):
        body = png_response(key)
        part = body["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]
        raw = base64.b64decode(part["data"])
        if key == "k1":
            part["data"] = base64.b64encode(raw[: len(raw) // 2]).decode()  # half a PNG
        elif key == "k2":
            part["data"] = "!!not base64%%"
        return body

    env = Env()
    job = env.submit(3)
    (first,) = env.api.batches
    env.api.finish(first, spoiled)
    env.tick()
    items = env.items(job)
    assert items["k0"].state is ItemState.SUCCEEDED and items["k0"].format == "png"
    for key, reason in (("k1", "truncated PNG"), ("k2", "not base64")):
        assert items[key].state is ItemState.QUEUED and reason in items[key].error, items[key]
    assert env.pngs(job) == [f"{job.job_id}/k0.png"]  # half an image is never stored
    env.tick()  # creates the retry batch
    second = [n for n in env.api.batches if n != first]
    assert len(second) == 1 and [r["key"] for r in env.api.batches[second[0]]["requests"]] == ["k1", "k2"]
    env.api.finish(second[0])
    env.tick()
    assert {it.state for it in env.items(job).values()} == {ItemState.SUCCEEDED}


# --- a results file that repeats a key -----------------------------------------------------------


def repeat(env, name, *lines):
    """Append result lines (key, body) to the finished batch's results file."""
    out = env.api.batches[name]["output_file"]
    env.api.files[out] += b"".join(json.dumps({"key": k, **body}).encode() + b"\n" for k, body in lines)


REFUSED = {"error": {"code": 400, "message": "bad request", "status": "INVALID_ARGUMENT"}}
OVERLOADED = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}


@pytest.mark.parametrize("checkpoint_lines", [1, 100])  # the repeat in a later checkpoint, or the same
@pytest.mark.parametrize("then", [REFUSED, OVERLOADED], ids=["refused", "retryable"])
def test_an_error_line_after_a_success_for_the_same_key_is_ignored(checkpoint_lines, then):
    env = Env(checkpoint_lines=checkpoint_lines)
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.finish(name)
    repeat(env, name, ("k1", then))
    env.tick()
    items = env.items(job)
    assert all(it.state is ItemState.SUCCEEDED and it.error is None for it in items.values()), items
    assert len(env.api.batches) == 1 and env.store.active_intents(10) == []  # not batched again
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("checkpoint_lines", [1, 100])
def test_a_success_after_an_error_line_for_the_same_key_wins(checkpoint_lines):
    env = Env(checkpoint_lines=checkpoint_lines)
    job = env.submit(2)
    (name,) = env.api.batches
    env.api.finish(name, lambda key, req: REFUSED if key == "k0" else None)
    from tests.fakes import png_response

    repeat(env, name, ("k0", png_response("k0")))
    env.tick()
    k0 = env.items(job)["k0"]
    assert k0.state is ItemState.SUCCEEDED and k0.error is None and k0.gcs_uri.endswith("/k0.png")
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_a_repeated_image_line_is_stored_once():
    env = Env()
    job = env.submit(2)
    (name,) = env.api.batches
    env.api.finish(name)
    from tests.fakes import png_response

    repeat(env, name, ("k0", png_response("k0")), ("k0", REFUSED))
    env.tick()
    assert env.sink.writes == 3  # two images and the manifest
    assert all(it.state is ItemState.SUCCEEDED for it in env.items(job).values())


def test_a_line_for_an_item_that_ended_elsewhere_changes_nothing():
    # A fresh ingest reads no item before its first checkpoint: the checkpoint finds k0 ended
    # and leaves it as it is (its image is stored create-only, and nothing points to it).
    env = Env()
    job = env.submit(2)
    (name,) = env.api.batches
    env.store.items[job.job_id]["k0"].update(state="cancelled", error="cancelled elsewhere")
    env.api.finish(name)
    env.tick()
    k0 = env.items(job)["k0"]
    assert (k0.state, k0.error, k0.gcs_uri) == (ItemState.CANCELLED, "cancelled elsewhere", None)
    assert env.store.count_items(job.job_id)[ItemState.SUCCEEDED] == 1


def test_a_resumed_ingest_leaves_an_item_that_ended_elsewhere_as_it_is():
    env = Env(checkpoint_lines=100)
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.finish(name)
    intent = env.store.intents_of_job(job.job_id)[0]
    # Resumed after a checkpoint of line 1 (k0), by skipping it; k2 ended meanwhile.
    env.store.intents[intent.intent_id].update(state=IntentState.INGESTING.value, lines_done=1,
                                               output_file=env.api.batches[name]["output_file"])
    env.store.items[job.job_id]["k0"].update(state="succeeded", batch_intent=intent.intent_id)
    env.store.items[job.job_id]["k2"].update(state="cancelled", error="cancelled elsewhere")
    env.tick()
    items = env.items(job)
    assert (items["k2"].state, items["k2"].error, items["k2"].gcs_uri) == (ItemState.CANCELLED, "cancelled elsewhere", None)
    assert items["k1"].state is ItemState.SUCCEEDED
    counts = env.store.count_items(job.job_id)
    assert (counts[ItemState.SUCCEEDED], counts[ItemState.CANCELLED]) == (2, 1)


# --- the local deadline of a batch that stays running ---------------------------------------------


def test_a_batch_running_past_the_local_deadline_is_cancelled_and_its_items_resubmitted():
    env = Env()
    env.lane.running_deadline_seconds = 3600
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.set_state(name, "BATCH_STATE_RUNNING")
    env.clock.advance(3599)
    assert env.tick()["running"] == 1 and env.api.cancelled == []
    env.clock.advance(2)
    assert env.tick()["resubmitted"] == 1
    assert env.api.cancelled == [name] and env.api.batches[name]["state"] == "BATCH_STATE_CANCELLED"
    env.tick()
    (second,) = [n for n in env.api.batches if n != name]
    assert [r["key"] for r in env.api.batches[second]["requests"]] == ["k0", "k1", "k2"]
    env.clock.advance(1800)  # the retry's own deadline counts from its creation
    env.api.finish(second)
    env.tick()
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED and len(env.api.batches) == 2


def test_a_batch_that_succeeded_as_the_deadline_passed_is_ingested_not_resubmitted():
    env = Env()
    env.lane.running_deadline_seconds = 60
    job = env.submit(2)
    (name,) = env.api.batches
    env.clock.advance(61)
    real_cancel = env.api.cancel_batch

    def succeeded_meanwhile(batch_name):
        env.api.finish(batch_name)
        real_cancel(batch_name)  # refused: the batch has ended

    env.api.cancel_batch = succeeded_meanwhile
    assert env.tick()["ingested"] == 1
    assert len(env.api.batches) == 1 and env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_past_the_deadline_on_the_last_attempt_the_items_are_dead_lettered():
    env = Env(max_attempts=1)
    env.lane.running_deadline_seconds = 60
    job = env.submit(2)
    env.clock.advance(61)
    env.tick()
    items = env.items(job).values()
    assert {it.state for it in items} == {ItemState.DEAD_LETTERED} and len(env.api.batches) == 1
    assert all("past the local deadline" in it.error for it in items)
    assert env.store.get_job(job.job_id).status is JobStatus.FAILED
