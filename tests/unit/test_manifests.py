"""The manifest written as a stream: parts of one page each, composed (in a tree past 32) into
the create-only manifest; the same bytes as the whole-list manifest; crash-safe at every step;
memory bounded by a page, not by the job."""
import hashlib
import json
import tracemalloc

import pytest

from core import manifests
from core.jobs import FINALIZE_LEASE_SECONDS, finalize_job_if_done, manifest_name
from core.models import Item, ItemState, Job, JobStatus, Lane
from tests.fakes import FakeClock, InMemoryImageSink, InMemoryJobStore

PAGE = 4


def finished_job(store, n, job_id="j1"):
    """A running job whose n items have all succeeded (the last finisher is about to finalize)."""
    store.create_job(
        Job(job_id=job_id, lane=Lane.INTERACTIVE, status=JobStatus.RUNNING, model="m", item_count=n,
            created_at=1.0, updated_at=1.0),
        [Item(job_id=job_id, key=f"k{i}", index=i, prompt=f"prompt {i} \u00e9", aspect_ratio="1:1", domain=None,
              quality="standard", state=ItemState.SUCCEEDED, attempts=1, gcs_uri=f"gs://b/{job_id}/k{i}.png",
              finish_reason="STOP", output_tokens=1290, sha256="ab" * 32, bytes=10, format="png", width=4,
              height=3, lane="interactive")
         for i in range(n)])
    return job_id


class PagedStore(InMemoryJobStore):
    """The in-memory store with the Firestore adapter's paging cost: a page read builds that
    page's items and nothing else (the fake's own list_items sorts every item on each call)."""

    def list_items(self, job_id, start_after_index, limit):
        by_index = self.__dict__.setdefault("_by_index", {})
        if job_id not in by_index:
            by_index[job_id] = sorted(self.items[job_id].values(), key=lambda d: d["index"])
        docs = by_index[job_id]
        start = 0 if start_after_index is None else start_after_index + 1  # indexes are 0..n-1
        return [Item.from_dict(dict(d, state=d["state"])) for d in docs[start:start + limit]]


def whole_list_manifest(store, job_id):
    """What finalize wrote before: every item in one list, one object."""
    return manifests.build_manifest(store.list_items(job_id, None, 10**9))


def test_a_manifest_of_one_page_is_one_object_as_before():
    store, sink = InMemoryJobStore(), InMemoryImageSink()
    job_id = finished_job(store, PAGE - 1)
    uri = manifests.write_manifest("j1/manifest.jsonl", job_id, store=store, sink=sink, page=PAGE)
    assert uri == f"gs://{sink.bucket}/j1/manifest.jsonl"
    assert list(sink.objects) == ["j1/manifest.jsonl"]
    assert sink.objects["j1/manifest.jsonl"][0] == whole_list_manifest(store, job_id)


@pytest.mark.parametrize("n", [PAGE, PAGE + 1, 2 * PAGE, 33 * PAGE + 1, 32 * 32 * PAGE + 3])
def test_parts_composed_make_the_same_bytes_as_the_whole_list_manifest(n):
    store, sink = InMemoryJobStore(), InMemoryImageSink()
    job_id = finished_job(store, n)
    manifests.write_manifest("j1/manifest.jsonl", job_id, store=store, sink=sink, page=PAGE)
    data = sink.objects["j1/manifest.jsonl"][0]
    assert data == whole_list_manifest(store, job_id)
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["key"] for line in lines] == [f"k{i}" for i in range(n)]  # each item once, in order
    parts = [name for name in sink.objects if name.startswith(manifests.PARTS_PREFIX)]
    assert len([p for p in parts if "/0-" in p]) == -(-n // PAGE)  # one part per page


class Crash(Exception):
    pass


class CrashingSink(InMemoryImageSink):
    """Dies (raises) at the `at`-th write (a part, a composite or the manifest), as a SIGKILL
    between two writes would leave the bucket."""

    def __init__(self, at):
        super().__init__()
        self.at, self.count = at, 0

    def put_image(self, name, data, content_type, metadata):
        self.count += 1
        if self.count == self.at:
            raise Crash(name)
        return super().put_image(name, data, content_type, metadata)


N_CRASH = 33 * manifests.PAGE_ITEMS + 1  # 34 parts, then 2 composites, then the manifest


# Writes 1-34 are the parts, 35-36 the composites of 32 and of 2 parts, 37 the manifest.
@pytest.mark.parametrize("at", [1, 2, 33, 34, 35, 36, 37])
def test_a_finalize_killed_at_any_write_and_run_again_ends_with_one_complete_manifest(at):
    store, clock = PagedStore(), FakeClock()
    sink = CrashingSink(at)
    job_id = finished_job(store, N_CRASH)
    try:
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink)
    except Crash:
        assert store.get_job(job_id).manifest_uri is None  # the status is written after the manifest
    else:
        pytest.fail("the sink never crashed: count the writes again")
    sink.at = None  # the next finisher (or the poller's sweep) runs it again
    assert finalize_job_if_done(job_id, store=store, clock=clock, sink=sink) is JobStatus.SUCCEEDED
    name = manifest_name(job_id)
    assert store.get_job(job_id).manifest_uri == f"gs://{sink.bucket}/{name}"
    assert sink.objects[name][0] == whole_list_manifest(store, job_id)


def test_a_run_after_the_manifest_was_composed_but_not_recorded_writes_nothing():
    store, clock, sink = PagedStore(), FakeClock(), InMemoryImageSink()
    job_id = finished_job(store, N_CRASH)
    manifests.write_manifest(manifest_name(job_id), job_id, store=store, sink=sink, page=manifests.PAGE_ITEMS)
    writes = sink.writes
    finalize_job_if_done(job_id, store=store, clock=clock, sink=sink)  # killed before complete_job: again
    assert sink.writes == writes
    assert store.get_job(job_id).manifest_uri == f"gs://{sink.bucket}/{manifest_name(job_id)}"


class DigestSink(InMemoryImageSink):
    """Keeps each object's size and hash, not its bytes, so that what the test measures is what
    finalize holds, not what the fake bucket stores. compose hashes its sources' digests."""

    def put_image(self, name, data, content_type, metadata):
        self.writes += 1
        self.objects.setdefault(name, (hashlib.sha256(data).hexdigest(), len(data)))
        return self._stored(name)

    def compose(self, name, sources):
        self.writes += 1
        digest = hashlib.sha256("".join(self.objects[s][0] for s in sources).encode()).hexdigest()
        self.objects.setdefault(name, (digest, sum(self.objects[s][1] for s in sources)))
        return self._stored(name)

    def _stored(self, name):
        from core.models import StoredImage
        return StoredImage(uri=f"gs://{self.bucket}/{name}", created=True)


def peak_of_finalize(n):
    store, clock, sink = PagedStore(), FakeClock(), DigestSink()
    job_id = finished_job(store, n)
    store.list_items(job_id, None, 1)  # its index built before measuring: the fake's, not finalize's
    tracemalloc.start()
    try:
        finalize_job_if_done(job_id, store=store, clock=clock, sink=sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.objects[manifest_name(job_id)][1] > n * 100  # the whole manifest was written
    return peak


def test_finalize_memory_does_not_grow_with_the_number_of_items():
    small, large = peak_of_finalize(2_000), peak_of_finalize(20_000)
    print(f"finalize peak: 2,000 items {small / 2**20:.2f} MiB, 20,000 items {large / 2**20:.2f} MiB")
    # The whole manifest of 20,000 items is ~6 MiB, and the list of items behind it more: a
    # tenfold job may not cost more than the small one plus a page's slack.
    assert large < small * 1.5


class CountingStore(PagedStore):
    def list_items(self, job_id, start_after_index, limit):
        self.__dict__.setdefault("reads", []).append(limit)
        return super().list_items(job_id, start_after_index, limit)


@pytest.mark.parametrize("n", [PAGE * manifests.PAGES_PER_READ, 5 * PAGE * manifests.PAGES_PER_READ + 1])
def test_the_store_is_queried_once_per_pages_per_read_pages(n):
    # On the emulator every query over a job's items scans all of them: a query per page made
    # the manifest of 100,000 items take minutes.
    store, sink = CountingStore(), InMemoryImageSink()
    job_id = finished_job(store, n)
    manifests.write_manifest("j1/manifest.jsonl", job_id, store=store, sink=sink, page=PAGE)
    assert len(store.reads) == n // (PAGE * manifests.PAGES_PER_READ) + 1
    assert sink.objects["j1/manifest.jsonl"][0] == whole_list_manifest(store, job_id)
    parts = [name for name in sink.objects if name.startswith(manifests.PARTS_PREFIX) and "/0-" in name]
    assert len(parts) == -(-n // PAGE)  # still one part per page


def test_a_second_finalizer_leaves_the_manifest_to_the_lease_holder_until_its_lease_runs_out():
    # Every finisher that sees the job done, and every poller tick, would otherwise read all of
    # its items again: five at once for a 100,000-item job on the local stack.
    store, clock, sink = CountingStore(), FakeClock(), InMemoryImageSink()
    job_id = finished_job(store, 3 * manifests.PAGE_ITEMS)
    assert store.claim_finalizing(job_id, "first", clock.now(), FINALIZE_LEASE_SECONDS)  # writing it now
    assert finalize_job_if_done(job_id, store=store, clock=clock, sink=sink) is None
    assert not store.__dict__.get("reads") and not sink.objects
    clock.advance(FINALIZE_LEASE_SECONDS + 1)  # the first died mid-write: the sweep takes over
    assert finalize_job_if_done(job_id, store=store, clock=clock, sink=sink) is JobStatus.SUCCEEDED
    assert sink.objects[manifest_name(job_id)][0] == whole_list_manifest(store, job_id)


def test_a_manifest_written_by_a_lease_holder_that_died_before_recording_it_is_recorded():
    store, clock, sink = PagedStore(), FakeClock(), InMemoryImageSink()
    job_id = finished_job(store, 2)
    name = manifest_name(job_id)
    sink.put_manifest(name, whole_list_manifest(store, job_id))
    assert store.claim_finalizing(job_id, "died", clock.now(), FINALIZE_LEASE_SECONDS)
    assert finalize_job_if_done(job_id, store=store, clock=clock, sink=sink) is JobStatus.SUCCEEDED
    assert store.get_job(job_id).manifest_uri == f"gs://{sink.bucket}/{name}"
