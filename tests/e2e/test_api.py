"""The HTTP API and the poller as real functions-framework processes: errors are JSON with the
reason and the field, refused jobs leave nothing behind, and the poller publishes the items of
a job whose submitter died before publishing them."""
from __future__ import annotations

import time
import uuid

import requests

from core.models import Item, Job, JobStatus, Lane
from tests.e2e.helpers import HTTP_TIMEOUT, MODEL, assert_settled, post_job, wait_for_job


def _error(r: requests.Response) -> dict:
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    return r.json()["error"]


def test_a_bad_body_is_a_400_naming_the_field(stack, db):
    r = post_job(stack, [{"prompt": "a red fox"}, {"prompt": "a blue whale", "aspect_ratio": "7:3"}])

    assert r.status_code == 400
    error = _error(r)
    assert error["reason"] == "invalid_request"
    assert [f["field"] for f in error["fields"]] == ["requests[1].aspect_ratio"]
    assert list(db.collection("jobs").stream()) == []


def test_a_body_that_is_not_json_is_a_400(stack):
    r = requests.post(f"{stack.url('api')}/v1/jobs", data="{not json", timeout=HTTP_TIMEOUT,
                      headers={"Content-Type": "application/json"})

    assert r.status_code == 400
    assert _error(r)["reason"] == "invalid_json"


def test_unknown_route_and_unknown_job_are_json_404s(stack):
    route = requests.get(f"{stack.url('api')}/v2/nothing-here", timeout=HTTP_TIMEOUT)
    job = requests.get(f"{stack.url('api')}/v1/jobs/0123456789abcdef", timeout=HTTP_TIMEOUT)

    assert route.status_code == 404 and _error(route)["reason"] == "not_found"
    assert job.status_code == 404 and _error(job)["reason"] == "not_found"


def test_a_job_at_the_threshold_goes_to_the_batch_lane(stack, db):
    r = post_job(stack, [{"prompt": f"picture {i}"} for i in range(10)])  # INTERACTIVE_THRESHOLD=10

    assert r.status_code == 202
    assert r.json()["lane"] == "batch"
    assert [d.id for d in db.collection("jobs").stream()] == [r.json()["job_id"]]


def test_the_poller_answers_json_when_there_is_nothing_to_do(stack):
    r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)

    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["republished_jobs"] == []


def test_the_poller_publishes_a_job_its_submitter_never_published(stack, db, bucket):
    # What submit_job leaves behind when its instance dies between create_job and publishing.
    created = time.time() - 120  # older than REPUBLISH_GRACE_SECONDS (60)
    job = Job(job_id=uuid.uuid4().hex, lane=Lane.INTERACTIVE, status=JobStatus.QUEUED,
              model=MODEL, item_count=2, created_at=created, updated_at=created)
    jobs = db.collection("jobs")
    for i in range(2):
        item = Item(job_id=job.job_id, key=f"orphan-{i}", index=i, prompt=f"an orphan {i}",
                    aspect_ratio="1:1", domain=None, quality="standard", updated_at=created)
        jobs.document(job.job_id).collection("items").document(item.key).create(item.to_dict())
    jobs.document(job.job_id).create(job.to_dict())

    r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)

    assert r.status_code == 200
    assert r.json()["republished_jobs"] == [job.job_id]
    status = wait_for_job(stack, job.job_id)
    assert status["status"] == "succeeded"
    assert_settled(status, bucket)
    assert jobs.document(job.job_id).get().get("published") is True
    # Published now: the next tick leaves it alone.
    again = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
    assert again.json()["republished_jobs"] == []


def test_an_oversized_chunked_body_is_the_same_413_as_one_with_a_length(stack, db):
    # MAX_BODY_BYTES is 10 MiB; requests sends a generator as Transfer-Encoding: chunked.
    body = b'{"requests": [{"prompt": "' + b"x" * (12 * 1024 * 1024) + b'"}]}'

    def chunks():
        for start in range(0, len(body), 1024 * 1024):
            yield body[start:start + 1024 * 1024]

    url, headers = f"{stack.url('api')}/v1/jobs", {"Content-Type": "application/json"}
    chunked = requests.post(url, data=chunks(), headers=headers, timeout=HTTP_TIMEOUT)
    sized = requests.post(url, data=body, headers=headers, timeout=HTTP_TIMEOUT)

    assert "Content-Length" not in chunked.request.headers
    assert chunked.status_code == sized.status_code == 413
    assert _error(chunked) == _error(sized)
    assert _error(chunked)["reason"] == "body_too_large"
    # The connection is still good for the next request.
    assert requests.get(f"{stack.url('api')}/healthz", timeout=HTTP_TIMEOUT).status_code == 200
    assert list(db.collection("jobs").stream()) == []


def test_a_job_id_with_a_line_break_is_a_json_404_on_every_route(stack):
    api = stack.url("api")
    for method, path in (("GET", "/v1/jobs/abc%0A"), ("DELETE", "/v1/jobs/abc%0A"),
                         ("POST", "/v1/jobs/abc%0A:retry"), ("GET", "/v1/jobs/" + "a" * 100_000)):
        r = requests.request(method, api + path, timeout=HTTP_TIMEOUT)
        assert r.status_code == 404, (method, path[:40], r.status_code, r.text[:200])
        assert _error(r)["reason"] == "not_found" and len(r.content) < 300
