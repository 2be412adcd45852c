"""The poller's sweep of running jobs with no work left: within the tick's deadline, fairly."""
from core import jobs, redrive
from core.models import Item, ItemState, Job, JobStatus, Lane
from tests.fakes import FakeClock, InMemoryImageSink, InMemoryJobStore, ended


class SlowStore(InMemoryJobStore):
    """Each job looked at costs a second of the fake clock, as reads cost real time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def get_job(self, job_id):
        self.clock.advance(1.0)
        return super().get_job(job_id)


def stalled_jobs(store, n: int) -> list[str]:
    """n running jobs whose only item has failed and that nobody finalized, ids in order."""
    ids = [f"{i:02d}" + "0" * 30 for i in range(n)]
    for job_id in ids:
        job = Job(job_id=job_id, lane=Lane.INTERACTIVE, status=JobStatus.QUEUED, model="m",
                  item_count=1, created_at=100.0, updated_at=100.0)
        store.create_job(job, [Item(job_id=job_id, key="k0", index=0, prompt="p", aspect_ratio="1:1",
                                    domain=None, quality="standard", updated_at=100.0)])
        store.claim_item(job_id, "k0", "w", 100.0, 60)
        store.finish_item(job_id, "k0", "w", ended(ItemState.FAILED, 100.0))
        store.set_job_running(job_id, 100.0)
    return ids


def sweep(store, clock, **kw):
    return redrive.finalize_stalled_jobs(jobs.Finalizing(store, clock, InMemoryImageSink()), **kw)


def test_the_sweep_stops_when_the_ticks_deadline_passes():
    clock = FakeClock()
    store = SlowStore(clock)
    ids = stalled_jobs(store, 10)
    done = sweep(store, clock, deadline=clock.now() + 3.5, start_after="")
    # A job costs one read, a second: the deadline is past after four jobs.
    assert done == ids[:4]
    assert [store.get_job(j).status for j in ids[4:]] == [JobStatus.RUNNING] * 6


def test_a_sweep_starting_past_the_middle_wraps_around_to_the_first_jobs():
    clock = FakeClock()
    store = InMemoryJobStore()
    ids = stalled_jobs(store, 10)
    assert sweep(store, clock, start_after=ids[7], limit=4) == ids[8:] + ids[:2]
    assert sweep(store, clock, start_after=ids[7]) == ids[2:8]  # the rest, and none twice


def test_ticks_cut_short_by_their_deadline_together_reach_every_job(monkeypatch):
    """The default start is a random id: a fixed start would sweep jobs 0 to 3 on every tick."""
    clock = FakeClock()
    store = SlowStore(clock)
    ids = stalled_jobs(store, 10)
    starts = iter([ids[4], ids[9], ids[1], "", ids[6], ids[3]])
    monkeypatch.setattr(jobs, "new_job_id", lambda: next(starts))
    done = []
    for _ in range(6):
        done += sweep(store, clock, deadline=clock.now() + 3.5)
    assert sorted(done) == ids


class QueryCountingStore(InMemoryJobStore):
    """Counts the queries for an unfinished item (a scan of every item on the emulator)."""

    def __init__(self) -> None:
        super().__init__()
        self.unfinished_queries = 0

    def has_unfinished_items(self, job_id):
        self.unfinished_queries += 1
        return super().has_unfinished_items(job_id)


def test_the_sweep_reads_the_counts_before_querying_for_an_unfinished_item():
    clock = FakeClock()
    store = QueryCountingStore()
    done_ids = stalled_jobs(store, 2)
    busy = Job(job_id="99" + "0" * 30, lane=Lane.INTERACTIVE, status=JobStatus.QUEUED, model="m",
               item_count=1, created_at=100.0, updated_at=100.0)
    store.create_job(busy, [Item(job_id=busy.job_id, key="k0", index=0, prompt="p", aspect_ratio="1:1",
                                 domain=None, quality="standard", updated_at=100.0)])
    store.set_job_running(busy.job_id, 100.0)
    assert sweep(store, clock, start_after="") == done_ids
    assert store.unfinished_queries == 2  # the finished jobs only: the busy one's counts sufficed
    assert store.get_job(busy.job_id).status is JobStatus.RUNNING
