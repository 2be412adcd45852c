"""A job's status lists its batches a page at a time, without their keys, with their count and a
token for the next page; the API takes that token back and refuses one it did not issue."""
from __future__ import annotations

import pytest

from core import jobs
from core.models import BatchIntent
from tests.unit.test_entrypoints import SOURCE, api, fakes, post_job  # noqa: F401 - fixtures


def add_intents(store, job_id: str, n: int, keys_each: int = 3) -> list[str]:
    intents = [BatchIntent(intent_id=f"{job_id}-e{i:07d}.000-a1", job_id=job_id, model="m",
                           keys=[f"k{i}-{k}" for k in range(keys_each)], attempt=1, created_at=1.0, updated_at=1.0)
               for i in range(n)]
    store.create_intents(intents)
    return [i.intent_id for i in intents]


def test_the_batches_are_paged_with_their_count_and_item_counts(api, fakes, monkeypatch):  # noqa: F811
    monkeypatch.setattr(jobs, "BATCH_PAGE_SIZE", 2)
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    ids = add_intents(fakes.store, job_id, 5)

    pages, token = [], None
    while True:
        status = api.get(f"/v1/jobs/{job_id}", query_string={"batches_page_token": token} if token else {}).get_json()
        pages.append([b["intent_id"] for b in status["batches"]])
        assert status["batch_count"] == 5 and all(b["items"] == 3 for b in status["batches"])
        token = status["batches_next_page_token"]
        if token is None:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]


def test_a_job_without_batches_says_so():
    from tests.fakes import InMemoryJobStore
    from tests.integration.test_contracts import make_job

    store = InMemoryJobStore()
    job, items = make_job(2)
    store.create_job(job, items)
    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(store, batches=store))
    assert (status["batches"], status["batch_count"], status["batches_next_page_token"]) == ([], 0, None)


@pytest.mark.parametrize("token", ["", "a b", "x\n", "-leading", "é", "x" * 201])
def test_batch_page_tokens_the_api_did_not_issue_are_400(api, fakes, token):  # noqa: F811
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    r = api.get(f"/v1/jobs/{job_id}", query_string={"batches_page_token": token})
    assert r.status_code == 400 and r.get_json()["error"]["fields"][0]["field"] == "batches_page_token"
