"""process_item against what goes wrong around one image: malformed or truncated answers,
surprises from the SDK, JPEG output, a worker that dies between its upload and its commit, a
store that is down, and a lease lost before the commit. Nothing is billed twice, nothing is
left running, and the item records the object that is stored."""
import hashlib
import io

import pytest
from PIL import Image

from core import redrive
from core.errors import MalformedResponse
from core.models import ItemState, JobStatus, StoredImage
from core.transitions import LeaseRenewed
from tests.fakes import (
    InMemoryWorkQueue, tiny_png,
)

LEASE = 120


@pytest.fixture
def env(env):
    env.model = "gemini-3-pro-image-preview"
    env.limits = {"lease_seconds": LEASE}
    return env


def jpeg(size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize("answer,reason", [
    (MalformedResponse("the model's answer could not be read: ValidationError: invalid base64"), "invalid base64"),
    (tiny_png("cut")[:40], "the model returned a truncated PNG"),
    (b"<html>not an image</html>", "not a PNG, JPEG or WebP"),
])
def test_a_malformed_answer_is_a_counted_attempt_with_its_error_shown(env, answer, reason):
    job = env.submit()
    env.generator.script = [answer]
    outcome = env.process(job.job_id)
    item = env.item(job.job_id)
    assert not outcome.ack and item.state is ItemState.QUEUED and item.lease_owner is None
    assert item.attempts == 1 and reason in item.error
    assert not any(name.endswith(".png") for name in env.sink.objects)  # never stored as a success
    assert env.process(job.job_id).ack and env.item(job.job_id).state is ItemState.SUCCEEDED


def test_malformed_answers_dead_letter_the_item_at_the_attempt_limit(env):
    job = env.submit()
    env.generator.script = [tiny_png("x")[:30]] * 3
    outcomes = [env.process(job.job_id) for _ in range(3)]
    assert [o.ack for o in outcomes] == [False, False, True]
    item = env.item(job.job_id)
    assert item.state is ItemState.DEAD_LETTERED and "truncated PNG" in item.error
    assert len(env.generator.calls) == 3  # bounded: MAX_ATTEMPTS calls, not one per lease period


def test_an_unexpected_exception_never_leaves_the_item_running(env):
    job = env.submit()
    env.generator.script = [KeyError("candidates")]
    outcome = env.process(job.job_id)
    item = env.item(job.job_id)
    assert not outcome.ack and item.state is ItemState.QUEUED and item.lease_owner is None
    assert item.attempts == 1 and "unexpected error: KeyError" in item.error


def test_a_jpeg_is_stored_as_a_jpeg_with_its_own_facts(env):
    job = env.submit()
    data = jpeg()
    env.generator.script = [data]
    assert env.process(job.job_id).ack
    name = f"{job.job_id}/k0.jpg"
    stored, metadata = env.sink.objects[name]
    assert stored == data and metadata["content_type"] == "image/jpeg"
    assert metadata["sha256"] == hashlib.sha256(data).hexdigest() and metadata["format"] == "jpeg"
    item = env.item(job.job_id)
    assert item.gcs_uri.endswith(name) and (item.format, item.width, item.height) == ("jpeg", 40, 30)
    manifest = env.sink.objects[f"{job.job_id}/manifest.jsonl"][0].decode()
    assert '"format":"jpeg"' in manifest and '"width":40' in manifest


def test_a_worker_killed_between_upload_and_commit_is_not_billed_twice(env):
    job = env.submit()
    real_put = env.sink.put_image

    def put_then_die(*args):
        real_put(*args)
        raise SystemExit("SIGKILL")  # nothing after the upload runs, not even except blocks

    env.sink.put_image = put_then_die
    with pytest.raises(SystemExit):
        env.process(job.job_id, owner="dies")
    env.sink.put_image = real_put
    stored = env.sink.objects[f"{job.job_id}/k0.png"][0]
    env.clock.advance(LEASE + 1)
    assert env.process(job.job_id).ack
    item = env.item(job.job_id)
    assert len(env.generator.calls) == 1  # the second attempt recorded the stored object
    assert item.state is ItemState.SUCCEEDED and item.sha256 == hashlib.sha256(stored).hexdigest()
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_an_object_that_appears_during_the_attempt_is_recorded_not_our_bytes(env):
    """Two holders (clocks disagree): the other one stored first; our create-only upload finds
    its object, and the item records that object's hash, not the one of the image we discarded."""
    job = env.submit()
    theirs = tiny_png("theirs")
    real_find = env.sink.find_image

    def find_then_race(stem, extensions):
        found = real_find(stem, extensions)
        env.sink.put_image(f"{stem}.png", theirs, "image/png", {"sha256": hashlib.sha256(theirs).hexdigest(),
                                                                 "format": "png", "width": "4", "height": "3"})
        return found

    env.sink.find_image = find_then_race
    assert env.process(job.job_id).ack
    assert env.item(job.job_id).sha256 == hashlib.sha256(theirs).hexdigest()


def test_storage_down_before_the_call_hands_back_without_an_attempt(env):
    job = env.submit()
    env.sink.unavailable_finds = 1
    outcome = env.process(job.job_id)
    item = env.item(job.job_id)
    assert not outcome.ack and item.state is ItemState.QUEUED and item.attempts == 0
    assert env.generator.calls == []


def test_the_lease_is_renewed_while_the_upload_waits_for_storage(env):
    job = env.submit()
    env.sink.unavailable_puts = 3
    leases = []
    real_finish = env.store.finish_item

    def spy(job_id, key, owner, change):
        if isinstance(change, LeaseRenewed):
            leases.append((env.clock.now(), change.until))
        return real_finish(job_id, key, owner, change)

    env.store.finish_item = spy
    assert env.process(job.job_id).ack
    assert len(leases) == 4 and all(expires == now + LEASE for now, expires in leases)
    assert len(env.generator.calls) == 1 and env.item(job.job_id).state is ItemState.SUCCEEDED


def test_storage_down_past_the_budget_is_a_failed_attempt(env):
    job = env.submit()
    env.sink.unavailable_puts = 1000
    outcome = env.process(job.job_id, upload_budget=5.0)
    item = env.item(job.job_id)
    assert not outcome.ack and item.state is ItemState.QUEUED and item.attempts == 1
    assert "storing the image failed" in item.error


def test_a_commit_that_finds_the_lease_lost_does_not_lead_to_a_second_generation(env):
    job = env.submit()
    real_put = env.sink.put_image

    def put_while_another_claims(*args):
        stored = real_put(*args)
        env.clock.advance(LEASE + 1)
        env.store.claim_item(job.job_id, "k0", "w2", env.clock.now(), LEASE)  # w1's lease was taken
        return stored

    env.sink.put_image = put_while_another_claims
    outcome = env.process(job.job_id)
    env.sink.put_image = real_put
    assert not outcome.ack and "lease lost" in outcome.reason
    assert env.item(job.job_id).lease_owner == "w2"
    env.clock.advance(LEASE + 1)  # w2 died too
    assert env.process(job.job_id, owner="w3").ack
    assert len(env.generator.calls) == 1 and env.item(job.job_id).state is ItemState.SUCCEEDED


def test_a_duplicate_delivery_costs_one_listing_and_no_call(env):
    job = env.submit()
    assert env.process(job.job_id).ack
    finds = env.sink.finds
    assert env.process(job.job_id).ack
    assert env.sink.finds == finds and len(env.generator.calls) == 1  # terminal: no listing at all
    assert isinstance(env.sink.find_image(f"{job.job_id}/k0", ("png",)), StoredImage)


# --- the poller's sweep of stuck items ------------------------------------------------------


def sweep(env, queue, **kw):
    return redrive.redrive_stuck_items(store=env.store, queue=queue, clock=env.clock,
                                        lease_grace_seconds=kw.get("grace", 30), queued_after_seconds=600)


def test_items_left_running_by_a_killed_worker_are_republished_after_lease_and_grace(env):
    job = env.submit(3)
    for key in ("k0", "k1"):  # a worker claimed two, then was killed; Pub/Sub will not redeliver
        env.store.claim_item(job.job_id, key, "killed", env.clock.now(), LEASE)
    queue = InMemoryWorkQueue()
    env.clock.advance(LEASE + 29)
    assert sweep(env, queue) == {"running": 0, "queued": 0}  # within the grace: maybe a slow clock
    env.clock.advance(2)
    assert sweep(env, queue) == {"running": 2, "queued": 0}
    assert sorted(queue.messages) == [(job.job_id, "k0"), (job.job_id, "k1")]
    for key in ("k0", "k1"):
        assert env.process(job.job_id, key).ack
    assert sweep(env, InMemoryWorkQueue()) == {"running": 0, "queued": 0}


def test_queued_items_of_published_jobs_untouched_for_long_are_republished_once_per_period(env):
    job = env.submit(2)
    queue = InMemoryWorkQueue()
    env.clock.advance(601)
    assert sweep(env, queue) == {"running": 0, "queued": 2}
    assert sweep(env, queue) == {"running": 0, "queued": 0}  # touched: not again at the next tick
    assert len(queue.messages) == 2


def test_the_sweep_leaves_unpublished_jobs_to_reconcile_unpublished(env):
    job = env.submit(1)
    env.store.mark_unpublished(job.job_id, env.clock.now())
    env.clock.advance(601)
    assert sweep(env, InMemoryWorkQueue()) == {"running": 0, "queued": 0}


def test_a_delivery_that_read_the_item_before_another_diverted_it_does_not_send_it(env):
    """Two deliveries of one message: the first diverts the item to the batch lane between the
    second's read and its claim. The claim checks the lane in the same atomic step, so the
    second acks without a send: the batch lane's image is the only one bought."""
    job = env.submit()
    claim = env.store.claim_item

    def diverted_meanwhile(job_id, key, owner, now, lease_seconds, lane=None):
        with env.store.lock:
            env.store.items[job_id][key].update(lane="batch", state="queued", pooled_at=now,
                                                lease_owner=None, lease_expires_at=None)
        return claim(job_id, key, owner, now, lease_seconds, lane)

    env.store.claim_item = diverted_meanwhile
    outcome = env.process(job.job_id)
    assert outcome.ack and "batch lane" in outcome.reason
    assert env.generator.calls == []
    item = env.item(job.job_id)
    assert (item.lane, item.state, item.lease_owner) == ("batch", ItemState.QUEUED, None)
