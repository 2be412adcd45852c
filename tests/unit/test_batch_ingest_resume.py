"""Ingestion resumed from its checkpoint's byte offset, and image lines decoded on the upload pool."""
import pytest

from core.models import IntentState, ItemState, JobStatus
from tests.fakes import FakeClock, png_response
from tests.unit.test_batches import REFUSED, Env, repeat


class Ticking(FakeClock):
    def now(self):
        self.t += 1.0  # every look at the clock costs a second
        return self.t


def test_a_paused_ingest_resumes_from_the_byte_after_its_last_checkpointed_line():
    env = Env(checkpoint_lines=100)
    env.clock = env.lane.clock = Ticking()
    job = env.submit(10)
    (name,) = env.api.batches
    env.api.finish(name)
    assert env.tick(deadline=env.clock.t + 12)["paused"] == 1
    intent = env.store.intents_of_job(job.job_id)[0]
    data = env.api.files[intent.output_file]
    assert 0 < intent.lines_done < 10
    assert intent.bytes_done == len(b"".join(data.splitlines(keepends=True)[: intent.lines_done]))
    env.tick()
    assert env.api.stream_offsets == [0, intent.bytes_done]  # the second read starts where the first stopped
    assert env.sink.writes == 11  # 10 images and the manifest, each once
    final = env.store.intents_of_job(job.job_id)[0]
    assert (final.lines_done, final.bytes_done) == (10, len(data))
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_a_checkpoint_without_a_byte_offset_is_resumed_by_skipping_its_lines():
    # An intent checkpointed by a version that kept no byte offset: the file is read from byte 0
    # and its first lines_done lines are skipped unread.
    env = Env(checkpoint_lines=100)
    job = env.submit(4)
    (name,) = env.api.batches
    env.api.finish(name)
    intent = env.store.intents_of_job(job.job_id)[0]
    env.store.intents[intent.intent_id].update(state=IntentState.INGESTING.value, lines_done=2,
                                               output_file=env.api.batches[name]["output_file"])
    env.tick()
    assert env.api.stream_offsets == [0]
    assert sorted(env.sink.objects) == [f"{job.job_id}/k2.png", f"{job.job_id}/k3.png"]


def spoiled(key):
    body = png_response(key)
    body["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"] = "!!not base64%%"
    return body


@pytest.mark.parametrize("checkpoint_lines", [1, 100])
def test_a_spoiled_image_line_then_a_good_one_for_the_same_key_ends_in_the_good_one(checkpoint_lines):
    env = Env(checkpoint_lines=checkpoint_lines)
    job = env.submit(2)
    (name,) = env.api.batches
    env.api.finish(name, lambda key, req: spoiled(key) if key == "k0" else None)
    repeat(env, name, ("k0", png_response("k0")))
    env.tick()
    k0 = env.items(job)["k0"]
    assert k0.state is ItemState.SUCCEEDED and k0.error is None, k0
    assert len(env.api.batches) == 1  # not bought again
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("checkpoint_lines", [1, 100])
def test_a_spoiled_image_line_after_a_refusal_leaves_the_refusal(checkpoint_lines):
    env = Env(checkpoint_lines=checkpoint_lines)
    job = env.submit(2)
    (name,) = env.api.batches
    env.api.finish(name, lambda key, req: REFUSED if key == "k0" else None)
    repeat(env, name, ("k0", spoiled("k0")))
    env.tick()
    k0 = env.items(job)["k0"]
    assert k0.state is ItemState.FAILED and "bad request" in k0.error, k0


def test_image_lines_are_decoded_on_the_upload_pool_not_the_reader(monkeypatch):
    import threading

    from core import jsonl

    decoders = []
    real = jsonl.EncodedImage.decode

    def recording(self):
        decoders.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(jsonl.EncodedImage, "decode", recording)
    env = Env()
    job = env.submit(3)
    (name,) = env.api.batches
    env.api.finish(name)
    env.tick()
    assert len(decoders) == 3 and all(n.startswith("ingest") for n in decoders), decoders
    assert all(it.state is ItemState.SUCCEEDED for it in env.items(job).values())


def test_a_checkpoint_refused_for_a_lost_lease_stops_the_ingest():
    env = Env(checkpoint_lines=2)
    job = env.submit(8)
    (name,) = env.api.batches
    env.api.finish(name)
    real = env.store.checkpoint
    calls = []

    def refuse_the_second(intent_id, owner, progress, updates):
        calls.append(progress)
        return real(intent_id, owner, progress, updates) if len(calls) < 2 else False

    env.store.checkpoint = refuse_the_second
    assert env.tick()["errors"] == 1  # LostLease, from the background commit, ends the run
    intent = env.store.intents_of_job(job.job_id)[0]
    assert intent.state is IntentState.INGESTING and intent.lines_done == 2
    assert len(calls) <= 3  # no checkpoint after the refused one but the one already submitted
