"""What an ingest reads of its items: nothing before its first checkpoint (each checkpoint reads
the items it writes), and at its end only the items no checkpoint saw end."""
from core.models import ItemState, JobStatus
from tests.fakes import FakeClock
from tests.unit.test_batches import OVERLOADED, Env, repeat


class Ticking(FakeClock):
    def now(self):
        self.t += 1.0  # every look at the clock costs a second
        return self.t


def _spy_reads(env) -> list[str]:
    real, read = env.store.get_items, []

    def get_items(job_id, keys):
        read.extend(keys)
        return real(job_id, keys)

    env.store.get_items = get_items
    return read


def test_an_ingest_whose_lines_all_end_their_items_reads_no_item():
    env = Env(checkpoint_lines=2)
    job = env.submit(5)
    (name,) = env.api.batches
    env.api.finish(name)
    read = _spy_reads(env)
    env.tick()
    assert read == []
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_the_end_of_an_ingest_reads_only_the_items_still_without_a_result():
    env = Env(checkpoint_lines=2)
    job = env.submit(4)
    (name,) = env.api.batches
    env.api.finish(name)
    out = env.api.batches[name]["output_file"]
    lines = env.api.files[out].splitlines(keepends=True)
    env.api.files[out] = b"".join(lines[:3])  # k3 has no line: it goes to the next batch
    repeat(env, name, ("k2", OVERLOADED))  # and a retryable error after k2's image changes nothing
    read = _spy_reads(env)
    env.tick()
    assert read == ["k3"]
    assert env.items(job)["k3"].state is ItemState.QUEUED
    assert [i.keys for i in env.store.intents_of_job(job.job_id)] == [["k0", "k1", "k2", "k3"], ["k3"]]


def test_a_resumed_ingest_reads_no_item_up_front():
    env = Env(checkpoint_lines=100)
    env.clock = env.lane.clock = Ticking()
    job = env.submit(10)
    (name,) = env.api.batches
    env.api.finish(name)
    assert env.tick(deadline=env.clock.t + 12)["paused"] == 1
    read = _spy_reads(env)
    env.tick()
    assert env.store.intents_of_job(job.job_id)[0].lines_done == 10
    # Only the end reads, and only the keys the first slice ended.
    assert 0 < len(read) < 10 and len(read) == len(set(read))
    assert env.store.get_job(job.job_id).status is JobStatus.SUCCEEDED
