"""The model catalog, per-job models, per-model halts and the poller's models.get watch."""
import datetime as dt
import json
import logging
import pathlib

import pytest

import catalog as catalog_file
import schemas
from core import jobs, model_halts, submitting
from core.accounting import Accounting, Prices
from core.errors import InvalidRequest, ModelHalted, ModelUnavailable, TransientError
from core.model_halts import ModelHalts
from core.model_watch import ModelWatch, models_section
from core.models import ItemSpec, ItemState, JobSpec, Lane
from core.worker import process_item
from tests.fakes import (
    FakeClock, FakeModelsApi, InMemoryCounterStore, InMemoryImageSink, InMemoryJobStore, InMemoryModelHaltStore,
    InMemoryWorkQueue, NoLimiter, worker_deps,
)

CATALOG = catalog_file.load()
DEFAULT = CATALOG.default_model
ROOT = pathlib.Path(__file__).parents[2]


# --- the catalog ------------------------------------------------------------------------------


def test_the_catalog_lists_the_models_with_the_new_default_and_the_retired_one_dated():
    assert DEFAULT == "gemini-nano-banana-2.1" and CATALOG.spec(DEFAULT).lifecycle == "ga"
    assert CATALOG.spec("gemini-3.1-flash-image").lifecycle == "deprecated"
    assert CATALOG.spec("gemini-2.5-flash-image").shutdown_date == "2026-10-02"
    assert set(CATALOG.models) >= {"gemini-3-pro-image"}
    for spec in CATALOG.models.values():
        assert spec.source_url.startswith("https://ai.google.dev/"), spec.id


def test_every_catalog_ratio_is_accepted_by_the_request_schema():
    ratios = {r for spec in CATALOG.models.values() for r in spec.aspect_ratios}
    assert ratios == set(schemas.ASPECT_RATIOS)


def test_image_size_comes_from_the_model_and_quality_not_the_id():
    assert CATALOG.image_size_for("gemini-2.5-flash-image", "high") is None  # it takes no imageSize
    assert CATALOG.image_size_for("gemini-3-pro-image", "high") == "2K"
    assert CATALOG.image_size_for(DEFAULT, "standard") == "1K"
    assert CATALOG.image_size_for("gemini-3-something-unlisted", "high") is None


def _with(models_json: dict, **changes) -> str:
    data = json.loads(json.dumps(models_json))
    data["models"][0].update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("changes,problem", [
    ({"quality_sizes": {"standard": "4K"}, "sizes": ["1K"]}, "not in sizes"),
    ({"prices_usd": {}}, "no price"),
    ({"lifecycle": "retired"}, "lifecycle"),
])
def test_a_broken_catalog_refuses_to_load(changes, problem):
    data = json.loads((ROOT / "functions" / "models.json").read_text())
    with pytest.raises(ValueError, match=problem):
        catalog_file.parse(_with(data, **changes))


def test_the_default_must_be_a_listed_ga_model():
    data = json.loads((ROOT / "functions" / "models.json").read_text())
    data["default_model"] = "gemini-2.5-flash-image"
    with pytest.raises(ValueError, match="default_model"):
        catalog_file.parse(json.dumps(data))


def test_days_left_counts_to_the_announced_shutdown():
    spec = CATALOG.spec("gemini-2.5-flash-image")
    sept_2 = dt.datetime(2026, 9, 2, tzinfo=dt.timezone.utc).timestamp()
    assert spec.days_left(sept_2) == 30
    assert spec.days_left(dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc).timestamp()) < 0
    assert CATALOG.spec(DEFAULT).days_left(sept_2) is None


# --- prices -------------------------------------------------------------------------------------


def test_prices_come_from_the_model_and_size_and_an_override_wins():
    prices = Prices(catalog=CATALOG)
    assert prices.per_image(Lane.INTERACTIVE, "gemini-3-pro-image", "4K") == 0.24
    assert prices.per_image(Lane.BATCH, "gemini-3-pro-image", "1K") == 0.067
    assert prices.estimate_sizes(Lane.INTERACTIVE, DEFAULT, ["1K", "2K"]) == round(0.067 + 0.101, 6)
    flat = Prices(0.05, 0.02, catalog=CATALOG, flat_override=True)
    assert flat.per_image(Lane.INTERACTIVE, "gemini-3-pro-image", "4K") == 0.05
    assert Prices(0.05, 0.02, catalog=CATALOG).per_image(Lane.BATCH, "not-listed") == 0.02


# --- per-job models and halts in the use cases -------------------------------------------------


@pytest.fixture
def env(env):
    """With the catalog, per-model halts and usage accounting at the catalog's prices."""
    env.model, env.catalog = DEFAULT, CATALOG
    env.halts = ModelHalts(InMemoryModelHaltStore(), env.clock)
    env.accounting = Accounting(store=InMemoryCounterStore(), clock=env.clock, prices=Prices(catalog=CATALOG))
    return env


def test_a_job_runs_on_its_own_model_at_the_catalog_size_and_price(env):
    job = env.submit(2, model="gemini-3-pro-image", quality="high")
    assert job.model == "gemini-3-pro-image" and job.estimated_cost_usd == round(2 * 0.134, 6)
    env.process(job.job_id, "k0")
    assert env.generator.requests == [{"aspect_ratio": "1:1", "image_size": "2K", "model": "gemini-3-pro-image"}]


def test_the_limiter_is_asked_for_the_images_own_price(env):
    """The spend dimension of the shared limiter admits a request only if its price fits: the
    price of the job's model at the item's size, not a flat one."""
    costs = []

    class Recording(NoLimiter):
        def acquire(self, owner, max_wait, cost=None):
            costs.append(cost)

    job = env.submit(1, model="gemini-3-pro-image", quality="high")
    process_item(env.worker_deps(limiter=Recording()), job.job_id, "k0", "w1")
    assert costs == [CATALOG.spec("gemini-3-pro-image").price("2K", batch=False)]


def test_a_missing_model_halts_it_and_its_items_wait_without_spending_attempts(env, caplog):
    job = env.submit(2)
    env.generator.script = [ModelUnavailable(f"404 NOT_FOUND: models/{DEFAULT} is not found for API version v1beta")]
    with caplog.at_level(logging.ERROR):
        first = env.process(job.job_id, "k0")
    # Parked: acked (a halt can outlast the subscription's delivery attempts), item queued, unspent.
    assert first.ack and first.state == "queued" and "parked" in first.reason
    assert [r for r in caplog.records if getattr(r, "alert", None) == "model_halted"]
    second = env.process(job.job_id, "k1")  # parked before the model is called again
    assert second.ack and env.generator.calls == ["prompt 0"]
    for key in ("k0", "k1"):
        item = env.store.get_item(job.job_id, key)
        assert item.state is ItemState.QUEUED and item.attempts == 0 and item.lease_owner is None
        assert "waiting: model" in item.error
    with pytest.raises(ModelHalted, match=DEFAULT):
        env.submit(1)
    assert env.submit(1, model="gemini-3-pro-image").model == "gemini-3-pro-image"  # other models go on

    env.halts.clear(DEFAULT, "back")
    assert env.process(job.job_id, "k0").state == "succeeded"
    assert env.process(job.job_id, "k1").state == "succeeded"


def test_without_halts_a_missing_model_is_an_attempt_like_any_transient_error(env):
    job = env.submit(1)
    env.halts = None
    env.generator.script = [ModelUnavailable("404 models/x is not found")] * 3
    deps = worker_deps(store=env.store, generator=env.generator, sink=env.sink, clock=env.clock, catalog=CATALOG)
    outcomes = [process_item(deps, job.job_id, "k0", "w1") for _ in range(3)]
    assert outcomes[-1].state == "dead_lettered"


def test_a_plain_400_still_fails_the_item(env):
    job = env.submit(1)
    env.generator.script = [InvalidRequest("400 INVALID_ARGUMENT: bad prompt")]
    assert env.process(job.job_id, "k0").state == "failed"
    assert env.halts.all() == {}


# --- the poller's watch -------------------------------------------------------------------------


def test_the_first_tick_checks_every_model_in_use_then_only_halted_ones_until_a_day_passes(caplog):
    clock = FakeClock(dt.datetime(2026, 9, 10, tzinfo=dt.timezone.utc).timestamp())
    halts = ModelHalts(InMemoryModelHaltStore(), clock)
    api = FakeModelsApi([DEFAULT, "gemini-2.5-flash-image"])
    watch = ModelWatch(api=api, halts=halts, catalog=CATALOG, clock=clock)
    with caplog.at_level(logging.WARNING):
        assert watch.tick(lambda: {DEFAULT, "gemini-2.5-flash-image", "gemini-3-pro-image"}) == {
            DEFAULT: "present", "gemini-2.5-flash-image": "present", "gemini-3-pro-image": "missing"}
    near = [r for r in caplog.records if getattr(r, "alert", None) == "model_shutdown_near"]
    assert [r.model for r in near] == ["gemini-2.5-flash-image"]
    assert set(halts.all(fresh=True)) == {"gemini-3-pro-image"}

    api.calls.clear()
    clock.advance(60)
    assert watch.tick(lambda: {DEFAULT}) == {"gemini-3-pro-image": "missing"}  # only the halted one
    api.served.add("gemini-3-pro-image")
    assert watch.tick(lambda: {DEFAULT}) == {"gemini-3-pro-image": "restored"}
    assert halts.all(fresh=True) == {}
    assert watch.tick(lambda: {DEFAULT}) == {}
    clock.advance(86_400)
    assert watch.tick(lambda: {DEFAULT}) == {DEFAULT: "present"}


def test_a_failing_models_get_neither_halts_nor_clears():
    clock = FakeClock()
    halts = ModelHalts(InMemoryModelHaltStore(), clock)
    halts.halt("gemini-3-pro-image", "404", source="generate")
    api = FakeModelsApi()
    api.error = TransientError("503 UNAVAILABLE")
    watch = ModelWatch(api=api, halts=halts, catalog=CATALOG, clock=clock)
    result = watch.tick(lambda: {DEFAULT})
    assert result[DEFAULT].startswith("error") and result["gemini-3-pro-image"].startswith("error")
    assert set(halts.all(fresh=True)) == {"gemini-3-pro-image"}


def test_the_stats_models_section_names_lifecycle_shutdown_and_halts():
    clock = FakeClock(dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc).timestamp())
    halts = ModelHalts(InMemoryModelHaltStore(), clock)
    halts.halt("gemini-2.5-flash-image", "models.get answered 404", source="models.get")
    rows = {m["id"]: m for m in models_section(CATALOG, halts, clock.now(), DEFAULT)}
    old = rows["gemini-2.5-flash-image"]
    assert old["halted"] and old["halt_reason"] == "models.get answered 404" and old["days_left"] < 0
    assert rows[DEFAULT]["default"] and rows[DEFAULT]["days_left"] is None and not rows[DEFAULT]["halted"]


def test_a_restored_model_gets_its_parked_items_published_again_once(env):
    job = env.submit(3)
    env.generator.script = [ModelUnavailable("404 models/x is not found")]
    env.process(job.job_id, "k0")
    env.process(job.job_id, "k1")
    other = env.submit(1, model="gemini-3-pro-image")
    env.process(other.job_id, "k0")  # done: nothing to resume
    env.queue.messages.clear()
    assert model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue) == {}
    env.halts.clear(DEFAULT, "back")
    assert model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue) == {DEFAULT: 3}
    assert sorted(k for j, k in env.queue.messages if j == job.job_id) == ["k0", "k1", "k2"]
    assert model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue) == {}


def test_a_poller_that_dies_mid_resume_leaves_it_for_the_next_tick(env):
    job = env.submit(2)
    env.generator.script = [ModelUnavailable("404 models/x is not found")]
    env.process(job.job_id, "k0")
    env.halts.clear(DEFAULT, "back")
    env.queue.fail_after = 0
    with pytest.raises(ConnectionError):
        model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue)
    env.queue.fail_after = None
    assert model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue) == {DEFAULT: 2}


def test_an_item_held_while_the_halt_is_lifted_is_published_too(env):
    job = env.submit(1)
    env.halts.halt(DEFAULT, "404", source="generate")
    env.store.claim_item(job.job_id, "k0", "slow-worker", env.clock.now(), 120)  # about to park it
    env.store.set_job_running(job.job_id, env.clock.now())  # as process_item does after its claim
    env.halts.clear(DEFAULT, "back")
    env.queue.messages.clear()
    model_halts.resume_restored_models(model_halts=env.halts, store=env.store, queue=env.queue)
    assert env.queue.messages == [(job.job_id, "k0")]


def test_a_broken_store_costs_the_watch_its_tick_not_the_poller():
    class Broken(InMemoryModelHaltStore):
        def read_all(self):
            raise ConnectionError("firestore unavailable")

    clock = FakeClock()
    watch = ModelWatch(api=FakeModelsApi([DEFAULT]), halts=ModelHalts(Broken(), clock), catalog=CATALOG, clock=clock)
    assert watch.tick(lambda: {DEFAULT}) == {}
    watch.halts = ModelHalts(InMemoryModelHaltStore(), clock)
    assert watch.tick(lambda: {DEFAULT}) == {DEFAULT: "present"}  # the full check was not marked done


def test_a_batch_intent_of_a_halted_model_is_held_until_the_model_is_back():
    from core.batches import BatchLane, BatchLaneDeps, BatchLimits
    from tests.fakes import FakeBatchApi

    store, clock, sink = InMemoryJobStore(), FakeClock(), InMemoryImageSink()
    halts = ModelHalts(InMemoryModelHaltStore(), clock)
    api = FakeBatchApi()
    lane = BatchLane(BatchLaneDeps(store=store, jobs=store, api=api, sink=sink, clock=clock, catalog=CATALOG,
                                   model_halts=halts), BatchLimits(lease_seconds=60, max_attempts=3))
    spec = JobSpec(tuple(ItemSpec(key=f"k{i}", prompt=f"p{i}") for i in range(2)), "batch")
    halts.halt(DEFAULT, "404 models/x is not found", source="batch")
    route = submitting.RouteDeps(interactive_threshold=10, batch_available=True, catalog=CATALOG)
    deps = submitting.SubmitDeps(route=route, store=store, queue=InMemoryWorkQueue(), clock=clock, batch=lane,
                                 batch_submit_budget=0)  # the intents are left to the poller
    job = submitting.submit_job(submitting.Submission(spec, DEFAULT), deps)
    (intent,) = store.intents_of_job(job.job_id)
    assert lane.reconcile("poller", deadline=clock.now() + 60)["held"] == 1
    assert store.get_intent(intent.intent_id).state.value in ("pending", "creating")
    halts.clear(DEFAULT, "back")
    assert lane.reconcile("poller", deadline=clock.now() + 60)["submitted"] == 1


def test_an_item_parked_after_its_job_was_cancelled_is_handed_back_to_be_cancelled(env):
    job = env.submit(1)
    env.generator.script = [ModelUnavailable("404 models/x is not found")]
    original = env.generator.generate

    def cancel_during_the_call(*args, **kwargs):
        jobs.cancel_job(job.job_id, store=env.store, clock=env.clock)  # the item is running: skipped
        return original(*args, **kwargs)

    env.generator.generate = cancel_during_the_call
    outcome = env.process(job.job_id, "k0")
    assert not outcome.ack  # redelivered, not parked: nothing would ever finish it
    assert env.process(job.job_id, "k0").state == "cancelled"
