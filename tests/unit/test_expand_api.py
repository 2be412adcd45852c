"""POST /v1/jobs with the staged accept, the expansion pushed to scheduled_poller, and the
`source` field, through the entry points (functions-framework test clients) on the fakes."""
from __future__ import annotations

import base64
import json

import functions_framework
import pytest

import wiring
from adapters.gcs_sources import SourceError, SourceObject
from core.errors import DeliveryFailed
from tests.unit.test_entrypoints import SOURCE, api, fakes, post_job  # noqa: F401 - fixtures
from tests.unit.test_expanding import MemorySources


@pytest.fixture
def staged(fakes):
    fakes.staged = MemorySources()
    return fakes


@pytest.fixture
def poller(fakes):
    return functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()


def push(poller, message: dict):
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return poller.post("/", json={"message": {"data": data, "messageId": "1"}})


def test_a_body_is_answered_accepting_then_expanded_by_its_nudge(api, poller, staged):
    r = post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(5)]})
    assert r.status_code == 202
    body = r.get_json()
    assert (body["status"], body["item_count"]) == ("accepting", 5)
    assert staged.store.items[body["job_id"]] == {} and staged.queue.messages == []
    assert staged.nudges.expansions == [body["job_id"]]
    status = api.get(body["status_url"]).get_json()
    assert status["status"] == "accepting" and status["expansion"]["items_created"] == 0

    answer = push(poller, {"expand_job_id": body["job_id"]})
    assert answer.status_code == 200 and answer.get_json() == {"expand": "done"}
    status = api.get(body["status_url"]).get_json()
    assert status["status"] == "queued" and status["expansion"] == {
        "lines_read": 5, "items_created": 5, "bad_line_count": 0, "bad_lines": [],
        "failed_attempts": 0, "last_error": None}
    assert [k for _, k in staged.queue.messages] == [f"item-{i:05d}" for i in range(5)]
    assert staged.staged.objects == {}  # the staged body is deleted once the job is queued


def test_a_continuation_that_cannot_be_published_is_answered_503(api, poller, staged, monkeypatch):
    monkeypatch.setenv("EXPAND_CHUNK_ITEMS", "2")
    monkeypatch.setenv("EXPAND_RAMP_START_PER_SECOND", "2")  # a chunk a second
    monkeypatch.setenv("EXPAND_BUDGET_SECONDS", "1.5")
    wiring.get_settings.cache_clear()
    job_id = post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(9)]}).get_json()["job_id"]

    def down(job_id):
        raise DeliveryFailed("the topic is down")

    monkeypatch.setattr(staged.nudges, "expand", down)
    assert push(poller, {"expand_job_id": job_id}).status_code == 503  # Pub/Sub pushes it again
    expansion = staged.store.get_job(job_id).expansion
    assert (expansion["items"], expansion["owner"]) == (4, None)  # checkpointed, the lease given back


def test_an_unreadable_expansion_nudge_is_dropped(poller, staged):
    answer = push(poller, {"expand_job_id": "../x"})
    assert answer.status_code == 200 and answer.get_json() == {"nudge": "unreadable"}


@pytest.mark.parametrize("body, field", [
    ({"requests": [{"prompt": "a"}], "source": "gs://b/f.jsonl"}, "source"),
    ({"lane": "batch"}, "requests"),
    ({"source": "http://b/f.jsonl"}, "source"),
    ({"source": "gs://b/f.jsonl", "on_bad_line": "ignore"}, "on_bad_line"),
])
def test_requests_and_source_are_one_or_the_other(api, staged, body, field):
    r = post_job(api, body)
    assert r.status_code == 400
    assert field in [f["field"] for f in r.get_json()["error"]["fields"]]
    assert staged.store.jobs == {}


class FakeGcsSources:
    def __init__(self, objects: dict[str, SourceObject]) -> None:
        self.objects = objects

    def stat(self, uri: str) -> SourceObject:
        if uri not in self.objects:
            raise SourceError(f"{uri}: no such object")
        return self.objects[uri]


def test_a_source_is_pinned_at_accept_and_an_unknown_one_is_a_400(api, staged, monkeypatch):
    obj = SourceObject(bucket="src", name="in/prompts.jsonl", generation=42, size=100)
    monkeypatch.setattr(wiring, "gcs_sources", lambda: FakeGcsSources({obj.uri: obj}))
    r = post_job(api, {"source": "gs://src/missing.jsonl"})
    assert r.status_code == 400 and r.get_json()["error"]["fields"][0]["field"] == "source"
    assert "no such object" in r.get_json()["error"]["message"]

    r = post_job(api, {"source": obj.uri, "on_bad_line": "fail"})
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"] == "accepting" and body["item_count"] == 0
    expansion = staged.store.get_job(body["job_id"]).expansion
    assert (expansion["source_uri"], expansion["generation"], expansion["format"], expansion["on_bad_line"]) == (
        obj.uri, 42, "jsonl", "fail")
