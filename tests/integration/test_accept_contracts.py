"""Contract tests of accepting a job (core/accepting.py): the fake and FirestoreJobStore agree on
create-if-absent writes, the accepting -> queued flip, and failing an abandoned accept."""
from __future__ import annotations

import dataclasses

from core.batches import plan_intents
from core.models import JobStatus
from tests.integration.test_contracts import job_store, make_job  # noqa: F401 - the store fixture


def accepting_job(n: int):
    job, items = make_job(n)
    job.status = JobStatus.ACCEPTING
    return job, items


def test_the_job_document_is_create_only(job_store):
    job, _ = accepting_job(1)
    assert job_store.create_job_doc(job)
    assert not job_store.create_job_doc(dataclasses.replace(job, model="other"))
    assert job_store.get_job(job.job_id).model == "m" and job_store.get_job(job.job_id).status is JobStatus.ACCEPTING


def test_items_an_earlier_attempt_wrote_are_kept_past_one_firestore_batch(job_store):
    job, items = accepting_job(1200)
    job_store.create_job_doc(job)
    earlier = [dataclasses.replace(items[i], prompt="written first") for i in (0, 700)]
    job_store.create_items(job.job_id, earlier)
    job_store.create_items(job.job_id, items)  # two of its three batches meet an existing item
    assert sum(job_store.count_items(job.job_id).values()) == 1200
    assert job_store.get_item(job.job_id, "k0").prompt == "written first"
    assert job_store.get_item(job.job_id, "k700").prompt == "written first"
    assert job_store.get_item(job.job_id, "k701").prompt == "p701"
    job_store.create_items(job.job_id, items)  # all there: nothing changes, nothing raises
    assert sum(job_store.count_items(job.job_id).values()) == 1200


def test_intents_an_earlier_attempt_wrote_are_kept(job_store):
    job, items = accepting_job(5)
    intents = plan_intents(job, items, max_requests=2, now=100.0)
    job_store.create_intents(intents[:1])
    job_store.create_intents(intents)
    assert [i.intent_id for i in job_store.intents_of_job(job.job_id)] == [i.intent_id for i in intents]


def test_only_an_accepting_job_is_flipped_or_touched(job_store):
    job, _ = accepting_job(1)
    job_store.create_job_doc(job)
    assert [j.job_id for j in job_store.accepting_jobs(10)] == [job.job_id]
    assert job_store.touch_accepting(job.job_id, 150.0)
    assert job_store.get_job(job.job_id).updated_at == 150.0
    assert job_store.finish_accepting(job.job_id, 160.0)
    assert not job_store.finish_accepting(job.job_id, 170.0)
    assert not job_store.touch_accepting(job.job_id, 170.0)
    assert job_store.get_job(job.job_id).status is JobStatus.QUEUED and job_store.accepting_jobs(10) == []
    assert not job_store.finish_accepting("missing", 170.0)


def test_an_abandoned_accept_fails_only_if_nobody_touched_it_and_then_gets_its_manifest(job_store):
    job, _ = accepting_job(1)  # updated_at 100
    job_store.create_job_doc(job)
    assert not job_store.fail_accepting(job.job_id, "stopped", 700.0, idle_since=99.0)  # touched since
    assert job_store.fail_accepting(job.job_id, "stopped", 700.0, idle_since=100.0)
    failed = job_store.get_job(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.error == "stopped" and failed.accept_failed
    assert not job_store.fail_accepting(job.job_id, "again", 800.0, idle_since=800.0)
    assert not job_store.finish_accepting(job.job_id, 800.0)
    job_store.complete_job(job.job_id, JobStatus.CANCELLED, 710.0, manifest_uri="gs://b/j/manifest.jsonl")
    done = job_store.get_job(job.job_id)
    assert done.status is JobStatus.FAILED and done.manifest_uri == "gs://b/j/manifest.jsonl"


def test_an_idle_accepting_job_is_found_behind_a_crowd_of_live_ones(job_store):
    """More live accepts than a page (ids sorting before the idle one) do not hide it."""
    for n in range(130):
        job, _ = make_job(1, job_id=f"a{n:03d}")
        job.status, job.updated_at = JobStatus.ACCEPTING, 500.0
        job_store.create_job_doc(job)
    idle, _ = make_job(1, job_id="z-idle")
    idle.status = JobStatus.ACCEPTING  # updated_at 100.0
    job_store.create_job_doc(idle)
    assert [j.job_id for j in job_store.accepting_jobs(5, idle_since=200.0)] == ["z-idle"]
    assert len(job_store.accepting_jobs(500)) == 131


def test_an_unpublished_job_is_found_behind_a_crowd_of_accepting_ones(job_store):
    for n in range(130):
        job, _ = make_job(1, job_id=f"a{n:03d}")
        job.status = JobStatus.ACCEPTING  # unpublished too, but its submitter publishes it
        job_store.create_job_doc(job)
    stranded, items = make_job(1, job_id="z-stranded")
    job_store.create_job(stranded, items)
    assert [j.job_id for j in job_store.unpublished_jobs(older_than=101.0, limit=5)] == ["z-stranded"]
