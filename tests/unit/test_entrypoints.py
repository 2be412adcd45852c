"""The entry points through functions-framework's test client, wired to in-memory fakes."""
import base64
import json
import pathlib

import functions_framework
import pytest

import wiring
from catalog import load as load_catalog
from core.errors import TransientError
from tests.fakes import (
    FakeClock, InMemoryImageSink, InMemoryJobStore, InMemoryWorkQueue, NoLimiter,
    FakeBatchApi, ScriptedImageGenerator, InMemoryBreakerStore, InMemoryCounterStore, InMemoryPoolStore,
    InMemoryBatchNudges, InMemoryIdempotencyStore,
)

SOURCE = str(pathlib.Path(__file__).parents[2] / "functions" / "main.py")
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


class Fakes:
    """The fakes behind the entry points; deps() is wiring.Deps built from them as they are
    now, so a test may swap one (fakes.accounting = ...) and the next request uses it."""

    def __init__(self):
        from core.accounting import Accounting, DailyLimits
        from core.batches import BatchLane, BatchLaneDeps, BatchLimits
        from core.breaker import BreakerPolicy, CircuitBreaker
        from core.events import CompletionEvents, DeliveryPolicy, EventDeps
        from core.model_halts import ModelHalts
        from core.model_watch import ModelWatch
        from tests.fakes import (
            FakeModelsApi, InMemoryEventPublisher, InMemoryEventStore, InMemoryModelHaltStore, ScriptedWebhookSender,
        )

        self.store, self.queue, self.sink = InMemoryJobStore(), InMemoryWorkQueue(), InMemoryImageSink()
        self.generator, self.clock = ScriptedImageGenerator(), FakeClock()
        self.breaker = CircuitBreaker(InMemoryBreakerStore(), self.clock, BreakerPolicy(threshold=3, cooldown_seconds=60))
        self.counters = InMemoryCounterStore()
        self.accounting = Accounting(store=self.counters, clock=self.clock, prices=wiring.prices(wiring.settings()),
                                     limits=DailyLimits())
        self.pool = InMemoryPoolStore(self.store)
        self.idempotency = InMemoryIdempotencyStore()
        self.model_halts = ModelHalts(InMemoryModelHaltStore(), self.clock)
        self.models_api = FakeModelsApi(load_catalog().models)
        self.model_watch = ModelWatch(api=self.models_api, halts=self.model_halts, catalog=load_catalog(),
                                      clock=self.clock)
        self.events = CompletionEvents(EventDeps(store=InMemoryEventStore(), publisher=InMemoryEventPublisher(),
                                                 webhooks=ScriptedWebhookSender(), clock=self.clock), DeliveryPolicy())
        self.batch_api = FakeBatchApi()
        self.nudges = InMemoryBatchNudges()
        # Where bodies are staged for the background expansion (core/expanding.py); None: the
        # synchronous accept most of these tests were written for (every item written before
        # the 202). The tests of the staged accept set one.
        self.staged = None
        self.lane = BatchLane(
            BatchLaneDeps(store=self.store, jobs=self.store, api=self.batch_api, sink=self.sink, clock=self.clock,
                          catalog=load_catalog(), events=self.events, model_halts=self.model_halts),
            BatchLimits(lease_seconds=60, max_attempts=3))

    def deps(self) -> wiring.Deps:
        lane_on = wiring.settings().batch_lane_enabled  # as wiring builds them: None with the lane off
        return wiring.Deps(
            clock=self.clock, store=self.store, batches=self.store, queue=self.queue, sink=self.sink,
            generator=self.generator, limiter=NoLimiter(), breaker=self.breaker, accounting=self.accounting,
            catalog=wiring.catalog(), model_halts=self.model_halts, model_watch=self.model_watch, events=self.events,
            idempotency=self.idempotency, batch_lane=self.lane if lane_on else None,
            pool=self.pool if lane_on else None, dead_letters=None, nudges=self.nudges,
        )


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    monkeypatch.setenv("IMAGES_BUCKET", "unit-bucket")
    monkeypatch.setenv("MAX_ITEMS_PER_JOB", "20")
    monkeypatch.setenv("MAX_PROMPT_CHARS", "50")
    wiring.get_settings.cache_clear()
    f = Fakes()
    monkeypatch.setattr(wiring, "deps", f.deps)
    monkeypatch.setattr(wiring, "staged_sources", lambda: f.staged)
    yield f
    wiring.get_settings.cache_clear()


@pytest.fixture
def api(fakes):
    return functions_framework.create_app("http_api", SOURCE, "http").test_client()


@pytest.fixture
def worker(fakes):
    return functions_framework.create_app("pubsub_worker", SOURCE, "cloudevent").test_client()


def post_job(api, body, **kw):
    return api.post("/v1/jobs", data=json.dumps(body), content_type="application/json", **kw)


def test_submit_answers_202_with_a_status_url(api, fakes):
    r = post_job(api, {"requests": [{"prompt": "a red fox"}, {"prompt": "a blue whale", "key": "whale"}]})
    assert r.status_code == 202
    body = r.get_json()
    assert body["lane"] == "interactive" and body["status"] == "queued" and body["item_count"] == 2
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}" == r.headers["Location"]
    assert [k for _, k in fakes.queue.messages] == ["item-00000", "whale"]

    status = api.get(body["status_url"]).get_json()
    assert status["counts"]["queued"] == 2
    assert [i["key"] for i in status["items"]] == ["item-00000", "whale"]


@pytest.mark.parametrize("body,field", [
    ({"requests": []}, "requests"),
    ({"requests": [{"prompt": ""}]}, "requests[0].prompt"),
    ({"requests": [{"prompt": "x" * 51}]}, "requests[0].prompt"),
    ({"requests": [{"prompt": "bell\x07"}]}, "requests[0].prompt"),
    ({"requests": [{"prompt": "a", "key": "../../etc"}]}, "requests[0].key"),
    ({"requests": [{"prompt": "a", "key": "a/b"}]}, "requests[0].key"),
    ({"requests": [{"prompt": "a", "aspect_ratio": "7:3"}]}, "requests[0].aspect_ratio"),
    ({"requests": [{"prompt": "a", "quality": "ultra"}]}, "requests[0].quality"),
    ({"requests": [{"prompt": "a"}], "lane": "fast"}, "lane"),
    ({"requests": [{"prompt": "a"}], "extra": 1}, "extra"),
    ({"requests": [{"prompt": "a"}] * 21}, "requests"),
    ({"requests": [{"prompt": "a", "key": "k"}, {"prompt": "b", "key": "k"}]}, "(body)"),
    ({"prompts": ["a"]}, "requests"),
])
def test_bad_jobs_get_400_naming_the_field(api, fakes, body, field):
    r = post_job(api, body)
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["reason"] == "invalid_request"
    assert field in [f["field"] for f in err["fields"]], err
    assert fakes.store.jobs == {} and fakes.queue.messages == []


def test_transport_errors_are_json(api):
    assert api.get("/nowhere").status_code == 404
    assert api.get("/nowhere").get_json()["error"]["reason"] == "not_found"
    r = api.put("/v1/jobs")
    assert r.status_code == 405 and "POST" in r.get_json()["error"]["message"]
    assert r.headers["Allow"] == "POST"
    r = api.post("/v1/jobs", data="prompt=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.is_json
    r = api.post("/v1/jobs", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["reason"] == "invalid_json"
    r = api.post("/v1/jobs", data="[" * 50_000, content_type="application/json")
    assert r.status_code == 400
    r = api.post("/v1/jobs", data="[1]", content_type="application/json")
    assert r.status_code == 400


def test_oversized_body_is_413(api, monkeypatch):
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    wiring.get_settings.cache_clear()
    r = post_job(api, {"requests": [{"prompt": "x" * 40}] * 60})
    assert r.status_code == 413 and r.get_json()["error"]["reason"] == "body_too_large"


def test_batch_lane_switched_off_is_a_clear_503(api, monkeypatch):
    monkeypatch.setenv("BATCH_LANE_ENABLED", "false")
    wiring.get_settings.cache_clear()
    r = post_job(api, {"requests": [{"prompt": "a"}] * 10})
    assert r.status_code == 503 and "batch lane" in r.get_json()["error"]["message"]


def test_large_jobs_go_to_the_batch_lane_and_the_poller_ingests_them(api, fakes, monkeypatch):
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    r = post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(12)]})
    assert r.status_code == 202 and r.get_json()["lane"] == "batch"
    job_id = r.get_json()["job_id"]
    (batch_name,) = fakes.batch_api.batches
    status = api.get(f"/v1/jobs/{job_id}").get_json()
    assert status["status"] == "running" and status["batches"][0]["gemini_batch"] == batch_name
    fakes.batch_api.finish(batch_name)
    tick = poller.post("/").get_json()
    assert tick["batches"]["ingested"] == 1
    status = api.get(f"/v1/jobs/{job_id}").get_json()
    assert status["status"] == "succeeded" and status["counts"]["succeeded"] == 12
    assert status["manifest_uri"].endswith(f"{job_id}/manifest.jsonl")


def test_the_poller_runs_on_post_only(api, fakes):
    poller = functions_framework.create_app("scheduled_poller", SOURCE, "http").test_client()
    post_job(api, {"requests": [{"prompt": f"p{i}"} for i in range(12)]})
    (batch_name,) = fakes.batch_api.batches
    fakes.batch_api.finish(batch_name)
    r = poller.get("/")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.get_json()["error"]["reason"] == "method_not_allowed"
    assert poller.post("/").get_json()["batches"]["ingested"] == 1  # the GET ingested nothing


def test_cancel_over_http(api, fakes):
    job_id = post_job(api, {"requests": [{"prompt": "a"}, {"prompt": "b"}]}).get_json()["job_id"]
    r = api.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 409
    assert api.delete("/v1/jobs/nope").status_code == 404


def test_status_of_unknown_job_and_bad_paging(api):
    assert api.get("/v1/jobs/doesnotexist").status_code == 404
    assert api.get("/v1/jobs/x..y").status_code == 404
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    assert api.get(f"/v1/jobs/{job_id}?page_size=501").status_code == 400
    assert api.get(f"/v1/jobs/{job_id}?page_size=-1").status_code == 400
    assert api.get(f"/v1/jobs/{job_id}?page_token=abc").status_code == 400


def test_status_with_page_size_zero_has_counts_and_no_items(api):
    job_id = post_job(api, {"requests": [{"prompt": "a"}, {"prompt": "b"}]}).get_json()["job_id"]
    body = api.get(f"/v1/jobs/{job_id}?page_size=0").get_json()
    assert body["items"] == [] and body["next_page_token"] is None
    assert sum(body["counts"].values()) == 2


def test_healthz(api):
    assert api.get("/healthz").get_json() == {"status": "ok"}


def push(worker, data: bytes):
    """A Pub/Sub push as Eventarc delivers it: a binary-mode CloudEvent (fixture on disk)."""
    envelope = json.loads((FIXTURES / "pubsub_push.json").read_text())
    envelope["message"]["data"] = base64.b64encode(data).decode()
    headers = {
        "ce-id": "1", "ce-specversion": "1.0", "ce-source": "//pubsub.googleapis.com/projects/demo-unit/topics/work",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "Content-Type": "application/json",
    }
    return worker.post("/", data=json.dumps(envelope), headers=headers)


def test_worker_acks_a_finished_item_and_retries_a_transient_failure(api, worker, fakes):
    job_id = post_job(api, {"requests": [{"prompt": "a", "key": "one"}, {"prompt": "b", "key": "two"}]}).get_json()["job_id"]
    r = push(worker, json.dumps({"job_id": job_id, "item_key": "one"}).encode())
    assert r.status_code == 200
    assert fakes.store.get_item(job_id, "one").state.value == "succeeded"

    fakes.generator.script = [TransientError("503 UNAVAILABLE")]
    r = push(worker, json.dumps({"job_id": job_id, "item_key": "two"}).encode())
    assert r.status_code == 503  # raise to retry: Pub/Sub redelivers
    assert fakes.store.get_item(job_id, "two").attempts == 1


def test_worker_drops_unreadable_messages(worker, fakes):
    assert push(worker, b"not json").status_code == 200
    assert push(worker, b'{"job_id": 1}').status_code == 200


def test_api_keys_are_required_when_configured(api, monkeypatch, caplog):
    monkeypatch.setenv("API_KEYS", "k-one, k-two")
    wiring.get_settings.cache_clear()
    body = {"requests": [{"prompt": "a"}]}
    assert post_job(api, body).status_code == 401
    r = post_job(api, body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.get_json()["error"]["reason"] == "unauthenticated"
    assert "wrong" not in r.get_data(as_text=True)
    assert post_job(api, body, headers={"X-API-Key": "k-two"}).status_code == 202
    assert api.get("/v1/jobs/x", headers={"X-API-Key": "k-one"}).status_code == 404
    assert api.get("/v1/jobs/x").status_code == 401
    assert api.delete("/v1/jobs/x").status_code == 401
    assert api.get("/healthz").status_code == 200 and api.get("/v1/openapi.json").status_code == 200
    assert "k-one" not in caplog.text and "k-two" not in caplog.text


# --- dry run, Idempotency-Key, budget, halt, stats, :retry ----------------------------


def test_dry_run_answers_the_route_and_cost_and_writes_nothing(api, fakes):
    r = api.post("/v1/jobs?dry_run=true", data=json.dumps({"requests": [{"prompt": "a"}] * 3}),
                 content_type="application/json")
    assert r.status_code == 200
    body = r.get_json()
    # 3 x the default model's 1K price in the catalog (functions/models.json)
    assert body == {"dry_run": True, "lane": "interactive", "item_count": 3, "estimated_cost_usd": 0.201,
                    "reason": "3 items: under the interactive threshold of 10", "breaker": "closed",
                    "model": "gemini-nano-banana-2.1"}
    assert fakes.store.jobs == {} and fakes.queue.messages == []


def test_the_same_idempotency_key_answers_the_same_job_with_200(api, fakes):
    body = {"requests": [{"prompt": "a red fox"}]}
    first = post_job(api, body, headers={"Idempotency-Key": "order-42"})
    again = post_job(api, body, headers={"Idempotency-Key": "order-42"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and len(fakes.store.jobs) == 1
    other = post_job(api, {"requests": [{"prompt": "a blue whale"}]}, headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 422
    assert other.get_json()["error"]["fields"] == [{"field": "Idempotency-Key", "problem": "already used with another body"}]


def test_a_job_over_the_daily_budget_is_a_429_with_retry_after(api, fakes, monkeypatch):
    from core.accounting import Accounting, DailyLimits

    fakes.accounting = Accounting(store=fakes.counters, clock=fakes.clock, limits=DailyLimits(budget_usd=0.01))
    r = post_job(api, {"requests": [{"prompt": "a"}], "lane": "interactive"})
    assert r.status_code == 429 and r.get_json()["error"]["reason"] == "budget_exceeded"
    assert 0 < int(r.headers["Retry-After"]) <= 25 * 3600


def test_a_halted_lane_refuses_jobs_with_503(api, fakes):
    fakes.breaker.on_permission_denied("w", "403 PERMISSION_DENIED")
    r = post_job(api, {"requests": [{"prompt": "a"}]})
    assert r.status_code == 503 and "halted" in r.get_json()["error"]["message"]
    assert int(r.headers["Retry-After"]) == 900


def test_stats_show_counters_limits_and_the_breaker(api, fakes):
    post_job(api, {"requests": [{"prompt": "a"}]})
    body = api.get("/v1/stats").get_json()
    assert body["counters"]["reserved_usd"] == 0.067  # the default model's 1K price in the catalog
    assert body["breaker"]["state"] == "closed" and body["pending_batch_pool"] == 0
    assert body["prices"] == {"interactive_image_usd": 0.067, "batch_image_usd": 0.0335}
    models = {m["id"]: m for m in body["models"]}
    assert models["gemini-nano-banana-2.1"]["default"] and not models["gemini-nano-banana-2.1"]["halted"]
    assert models["gemini-2.5-flash-image"]["shutdown_date"] == "2026-10-02"


def test_retry_route(api, fakes):
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    r = api.post(f"/v1/jobs/{job_id}:retry")
    assert r.status_code == 409 and "no dead-lettered items" in r.get_json()["error"]["message"]
    assert api.post("/v1/jobs/nope:retry").status_code == 404
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize("token", ["²", "99999999999999999999", "-1"])
def test_page_tokens_that_are_not_item_indexes_are_400(api, fakes, token):
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    assert api.get(f"/v1/jobs/{job_id}", query_string={"page_token": token}).status_code == 400


def test_a_job_may_choose_its_model_and_the_model_is_checked(api, fakes):
    r = post_job(api, {"requests": [{"prompt": "a", "quality": "high"}], "model": "gemini-3-pro-image"})
    assert r.status_code == 202 and r.get_json()["model"] == "gemini-3-pro-image"
    assert r.get_json()["estimated_cost_usd"] == 0.134
    assert api.get(r.get_json()["status_url"]).get_json()["model"] == "gemini-3-pro-image"
    assert post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["model"] == "gemini-nano-banana-2.1"

    unknown = post_job(api, {"requests": [{"prompt": "a"}], "model": "imagen-4.0-generate-001"})
    assert unknown.status_code == 400
    (field,) = unknown.get_json()["error"]["fields"]
    assert field["field"] == "model" and "gemini-nano-banana-2.1" in field["problem"]

    ratio = post_job(api, {"requests": [{"prompt": "a"}, {"prompt": "b", "aspect_ratio": "8:1"}],
                           "model": "gemini-3-pro-image"})
    assert ratio.status_code == 400
    (field,) = ratio.get_json()["error"]["fields"]
    assert field["field"] == "requests[1].aspect_ratio" and "16:9" in field["problem"]
    assert post_job(api, {"requests": [{"prompt": "b", "aspect_ratio": "8:1"}]}).status_code == 202


def test_a_new_job_for_a_halted_model_is_503_naming_it(api, fakes):
    fakes.model_halts.halt("gemini-nano-banana-2.1", "404 models/gemini-nano-banana-2.1 is not found", "generate")
    r = post_job(api, {"requests": [{"prompt": "a"}]})
    assert r.status_code == 503 and r.get_json()["error"]["reason"] == "model_halted"
    assert "gemini-nano-banana-2.1" in r.get_json()["error"]["message"]
    assert post_job(api, {"requests": [{"prompt": "a"}], "model": "gemini-3-pro-image"}).status_code == 202
    halted = {m["id"]: m for m in api.get("/v1/stats").get_json()["models"]}["gemini-nano-banana-2.1"]
    assert halted["halted"] and "not found" in halted["halt_reason"]
