"""Background expansion (core/expanding.py) against the emulators: the expansion's lease and
checkpoints on the fake and FirestoreJobStore alike, hashed item document ids (and the bare-key
ids of items written before them), and GcsStagedSources on fake-gcs-server; then a whole
expansion on Firestore and Cloud Storage, killed half-way and resumed."""
from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

from core import expanding
from core.expanding import ExpandDeps, Expansion, Ramp, SourceUnavailable
from core.transitions import ExpansionFailed, ExpansionFinished, ExpansionSaved
from core.models import ItemSpec, JobStatus
from tests.fakes import FakeClock, InMemoryWorkQueue
from tests.integration.test_contracts import job_store, make_job  # noqa: F401 - the store fixture


def accepting_job(expansion: dict | None = None):
    job, items = make_job(3)
    job.status = JobStatus.ACCEPTING
    job.expansion = expansion if expansion is not None else Expansion("gs://b/_accepted/x.jsonl", 7).to_dict()
    return job, items


def test_the_expansion_lease_lets_one_holder_in_until_it_runs_out(job_store):
    job, _ = accepting_job()
    job_store.create_job_doc(job)
    leased = job_store.claim_expansion(job.job_id, "a", 100.0, 60)
    assert leased is not None and leased.expansion["owner"] == "a" and leased.expansion["lease_until"] == 160.0
    assert leased.expansion["generation"] == 7
    assert job_store.claim_expansion(job.job_id, "b", 159.0, 60) is None
    assert job_store.claim_expansion(job.job_id, "a", 159.0, 60) is not None  # its own: renewed
    assert job_store.claim_expansion(job.job_id, "b", 220.0, 60) is not None  # ran out: taken over
    assert not job_store.update_expansion(job.job_id, "a", ExpansionSaved(221.0, {**leased.expansion, "items": 5}))
    assert job_store.get_job(job.job_id).expansion["items"] == 0
    assert job_store.claim_expansion("missing", "a", 100.0, 60) is None


def test_checkpoints_and_the_end_are_written_by_the_holder_only(job_store):
    job, _ = accepting_job()
    job_store.create_job_doc(job)
    held = job_store.claim_expansion(job.job_id, "a", 100.0, 60).expansion
    assert job_store.update_expansion(job.job_id, "a", ExpansionSaved(101.0, {**held, "items": 3, "offset": 99}))
    assert job_store.get_job(job.job_id).expansion["offset"] == 99
    assert not job_store.update_expansion(job.job_id, "b", ExpansionFinished(102.0, held, 3, 0.1))
    assert job_store.update_expansion(job.job_id, "a", ExpansionFinished(102.0, {**held, "owner": None}, 3, 0.12))
    done = job_store.get_job(job.job_id)
    assert (done.status, done.item_count, done.estimated_cost_usd) == (JobStatus.QUEUED, 3, 0.12)
    assert not job_store.update_expansion(job.job_id, "a", ExpansionSaved(103.0, held))  # not accepting any more
    assert not job_store.update_expansion(job.job_id, "a", ExpansionFailed(103.0, "late"))


def test_a_failed_expansion_ends_the_job_with_its_error(job_store):
    job, _ = accepting_job()
    job_store.create_job_doc(job)
    job_store.claim_expansion(job.job_id, "a", 100.0, 60)
    assert job_store.update_expansion(job.job_id, "a", ExpansionFailed(101.0, "the source is gone"))
    failed = job_store.get_job(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.error == "the source is gone" and failed.accept_failed


@pytest.fixture
def firestore_store(firestore_clean):
    from google.cloud import firestore

    from adapters.firestore.jobs import FirestoreJobStore

    return FirestoreJobStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]))


def test_item_documents_have_hashed_ids_and_old_bare_key_ids_still_read(firestore_store):
    from adapters.firestore.common import item_doc_id
    from core.transitions import AcceptAbandoned

    job, items = make_job(3)
    firestore_store.create_job(job, items[:2])
    ids = sorted(s.id for s in firestore_store._items(job.job_id).stream())
    assert ids == sorted(item_doc_id(job.job_id, k) for k in ("k0", "k1")) and "k0" not in ids
    assert item_doc_id(job.job_id, "k0")[:8] != item_doc_id(job.job_id, "k1")[:8]
    # An item written before the hashed ids, under its bare key:
    firestore_store._items(job.job_id).document("k2").create({**items[2].to_dict(), "count_shard": None})
    assert firestore_store.get_item(job.job_id, "k2").prompt == "p2"
    assert [it.key for it in firestore_store.get_items(job.job_id, ["k2", "k0", "nope"])] == ["k2", "k0"]
    assert [it.index for it in firestore_store.list_items(job.job_id, None, 10)] == [0, 1, 2]
    assert firestore_store.requeue_item(job.job_id, "k2", items[2].state, AcceptAbandoned(200.0, "x"))
    assert firestore_store.get_item(job.job_id, "k2").state.value == "failed"


@pytest.fixture
def staging(emulators):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from adapters.gcs_staged import GcsStagedSources

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"staged-{uuid.uuid4().hex[:12]}")
    return GcsStagedSources(client, bucket.name, chunk_size=50), bucket


def specs(n: int) -> list[ItemSpec]:
    return [ItemSpec(key=f"item-{i:05d}", prompt=f"prompt ☃ {i}") for i in range(n)]


def test_a_staged_body_is_create_only_and_read_back_from_any_checkpoint(staging):
    stage, _ = staging
    data = expanding.staged_jsonl(specs(20))
    uri, generation, size = stage.put_staged("_accepted/j1.jsonl", data)
    assert size == len(data)
    assert stage.put_staged("_accepted/j1.jsonl", b"other") == (uri, generation, size)  # the first is kept
    exp = Expansion(uri, generation, size=size)
    lines = list(stage.lines(exp))
    assert [line.item for line in lines] == specs(20) and lines[-1].end == size
    middle = lines[8]
    rest = list(stage.lines(dataclasses.replace(exp, offset=middle.end, lines=middle.number)))
    assert [line.number for line in rest] == list(range(10, 21)) and [line.item for line in rest] == specs(20)[9:]


def test_a_caller_source_replaced_after_the_accept_is_unavailable(staging):
    stage, bucket = staging
    blob = bucket.blob("in/p.jsonl")
    blob.upload_from_string(b'{"prompt": "a"}\n{"prompt": ""}\n{"prompt": "c"}\n')
    blob.reload()
    exp = Expansion(f"gs://{bucket.name}/in/p.jsonl", int(blob.generation), "jsonl", size=int(blob.size))
    lines = list(stage.lines(exp))
    assert [(line.number, bool(line.item), bool(line.error)) for line in lines] == [
        (1, True, False), (2, False, True), (3, True, False)]
    assert [line.item.key for line in lines if line.item] == ["item-00000", "item-00002"]
    blob.upload_from_string(b'{"prompt": "replaced"}\n')
    with pytest.raises(SourceUnavailable, match="generation"):
        list(stage.lines(exp))


class Killed(BaseException):
    pass


def test_an_expansion_on_firestore_killed_half_way_resumes_to_exactly_the_source(firestore_store, staging):
    from core.submitting import RouteDeps, SubmitDeps, Submission, submit_job
    from core.models import JobSpec

    stage, _ = staging
    clock = FakeClock()
    submit = SubmitDeps(route=RouteDeps(interactive_threshold=1000, batch_available=False), store=firestore_store,
                        queue=InMemoryWorkQueue(), clock=clock, staging=stage)
    job = submit_job(Submission(spec=JobSpec(items=tuple(specs(30))), model="m"), submit)
    deps = ExpandDeps(store=firestore_store, sources=stage, queue=InMemoryWorkQueue(), clock=clock, chunk_items=7,
                      lease_seconds=60, ramp=Ramp(1e9))
    saves = []
    real_update = firestore_store.update_expansion

    def dies_at_the_third(job_id, owner, change):
        saves.append(change.expansion["items"])
        if len(saves) == 3:
            raise Killed()
        return real_update(job_id, owner, change)

    firestore_store.update_expansion = dies_at_the_third
    with pytest.raises(Killed):
        expanding.expand_job(job.job_id, "first", deps, clock.now() + 100)
    del firestore_store.update_expansion
    clock.advance(61)
    assert expanding.expand_job(job.job_id, "second", deps, clock.now() + 100) == "done"
    items = firestore_store.list_items(job.job_id, None, 100)
    assert [(it.index, it.key) for it in items] == [(i, f"item-{i:05d}") for i in range(30)]
    assert sum(firestore_store.count_items(job.job_id).values()) == 30  # counted once each
    done = firestore_store.get_job(job.job_id)
    assert done.status is JobStatus.QUEUED and done.published and done.item_count == 30
    assert sorted(k for _, k in deps.queue.messages) == [f"item-{i:05d}" for i in range(30)]


def test_item_indexes_name_the_items_that_exist(job_store):
    job, items = make_job(4)
    job_store.create_job(job, items[:3])
    assert job_store.item_indexes(job.job_id, ["k2", "k3", "k0", "k2"]) == {"k2": 2, "k0": 0}
    assert job_store.item_indexes(job.job_id, []) == {}
