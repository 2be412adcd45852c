"""Jobs accepted with one document and expanded in the background (core/expanding.py), on the
local stack: the 202 while the job is still accepting, a gs:// source with refused lines, and
an expansion that died half-way, which the poller's tick resumes."""
from __future__ import annotations

import os
import time

import requests

from tests.e2e.helpers import HTTP_TIMEOUT, MODEL, job_status, post_job, wait_for_job

GOOD = [f'{{"key": "line-{i}", "prompt": "a watercolour of the number {i}"}}' for i in range(6)]


def test_a_body_job_is_answered_while_accepting_and_then_completes(stack, db):
    r = post_job(stack, [{"prompt": f"a small boat, number {i}"} for i in range(4)])
    assert r.status_code == 202
    accepted = r.json()
    assert (accepted["status"], accepted["item_count"]) == ("accepting", 4)
    status = wait_for_job(stack, accepted["job_id"])
    assert status["status"] == "succeeded" and status["counts"]["succeeded"] == 4
    assert status["expansion"] == {"lines_read": 4, "items_created": 4, "bad_line_count": 0, "bad_lines": [],
                                   "failed_attempts": 0, "last_error": None}
    assert [it["key"] for it in status["items"]] == [f"item-{i:05d}" for i in range(4)]


def put_source(stack, name: str, lines: list[str]) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    client.bucket(stack.sources_bucket).blob(name).upload_from_string("\n".join(lines) + "\n")
    return f"gs://{stack.sources_bucket}/{name}"


def test_a_source_file_with_bad_lines_completes_with_the_good_ones(stack):
    lines = [GOOD[0], GOOD[1], '{"prompt": ""}', GOOD[2], "not json", "", GOOD[3], GOOD[1].replace("number 1", "again")]
    uri = put_source(stack, f"bad-lines-{time.time_ns()}.jsonl", lines)
    r = requests.post(f"{stack.url('api')}/v1/jobs", json={"source": uri, "lane": "interactive"},
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 202, r.text
    status = wait_for_job(stack, r.json()["job_id"])
    assert status["status"] == "succeeded" and status["item_count"] == 4
    assert sorted(it["key"] for it in status["items"]) == ["line-0", "line-1", "line-2", "line-3"]
    refused = status["expansion"]["bad_lines"]
    assert [b["line"] for b in refused] == [3, 5, 8] and status["expansion"]["bad_line_count"] == 3
    assert "prompt" in refused[0]["reason"] and "duplicate key 'line-1'" in refused[2]["reason"]


def test_a_source_outside_the_allowed_buckets_is_refused_at_accept(stack):
    r = requests.post(f"{stack.url('api')}/v1/jobs", json={"source": f"gs://{stack.images_bucket}/x.jsonl"},
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["fields"][0]["field"] == "source"


class Killed(BaseException):
    """A SIGKILL of the expander: nothing after it runs, its lease stays taken."""


def test_an_expansion_that_died_half_way_is_resumed_by_the_poller(stack, db):
    """The first slice runs here, against the stack's emulators, and dies after its first
    checkpoint with its lease taken and no continuation published; the poller's tick finds the
    lease run out and nudges the job, and the poller function finishes it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore, storage

    from adapters.firestore.jobs import FirestoreJobStore
    from adapters.gcs_staged import GcsStagedSources
    from core import expanding, submitting
    from core.models import ItemSpec, JobSpec
    from tests.fakes import FakeClock, InMemoryWorkQueue

    store = FirestoreJobStore(firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]))
    gcs = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    staging = GcsStagedSources(gcs, stack.images_bucket)
    clock = FakeClock(time.time() - 3600)  # its lease ran out an hour ago, as far as the stack can tell
    submit = submitting.SubmitDeps(route=submitting.RouteDeps(interactive_threshold=100, batch_available=False),
                                   store=store, queue=InMemoryWorkQueue(), clock=clock, staging=staging)
    specs = tuple(ItemSpec(key=f"k{i}", prompt=f"a lighthouse, take {i}") for i in range(7))
    job = submitting.submit_job(submitting.Submission(spec=JobSpec(items=specs), model=MODEL), submit)
    saves = []

    class DiesAfterOneCheckpoint(FirestoreJobStore):
        def update_expansion(self, job_id, owner, change):
            saves.append(change.expansion["items"])
            if len(saves) == 2:
                raise Killed()
            return super().update_expansion(job_id, owner, change)

    dying = DiesAfterOneCheckpoint(store.db)
    deps = expanding.ExpandDeps(store=dying, sources=staging, queue=InMemoryWorkQueue(), clock=clock,
                                chunk_items=3, lease_seconds=60, ramp=expanding.Ramp(1e9))
    try:
        expanding.expand_job(job.job_id, "dead-expander", deps, clock.now() + 60)
    except Killed:
        pass
    half = job_status(stack, job.job_id)
    assert half["status"] == "accepting" and half["expansion"]["items_created"] == 3

    r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and job.job_id in r.json()["expansions_resumed"], r.text
    status = wait_for_job(stack, job.job_id)
    assert status["status"] == "succeeded" and status["item_count"] == 7
    assert sorted(it["key"] for it in status["items"]) == [f"k{i}" for i in range(7)]

