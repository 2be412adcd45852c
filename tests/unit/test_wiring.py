"""The composition root builds each collaborator once per instance, without a network."""
import collections

import pytest

import wiring
from core.pool import NoPool

FACTORIES = ("clock", "job_store", "work_queue", "image_sink", "image_generator", "rate_limiter", "breaker",
             "accounting", "catalog", "model_halts", "model_watch", "job_events", "idempotency_store", "batch_lane",
             "pool_store", "dead_letters", "batch_nudges")
CACHED = (wiring.get_settings, wiring.deps, wiring.job_events)  # before any test replaces one


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    monkeypatch.setenv("IMAGES_BUCKET", "unit-bucket")
    monkeypatch.setenv("MAX_ATTEMPTS", "7")
    for cached in CACHED:
        cached.cache_clear()
    yield
    for cached in CACHED:  # built from this test's stand-ins: no other test may see them
        cached.cache_clear()


@pytest.fixture
def built(monkeypatch, settings):
    """Each factory deps() calls, replaced by one that counts its calls."""
    calls = collections.Counter()

    def counting(name, value):
        def factory():
            calls[name] += 1
            return value
        return factory

    for name in FACTORIES:
        monkeypatch.setattr(wiring, name, counting(name, object()))
    monkeypatch.setattr(wiring, "staged_sources", lambda: None)  # not one of deps(): the API's and the poller's
    return calls


def test_the_deps_are_built_once_per_instance(built):
    first = wiring.deps()
    assert wiring.deps() is first
    assert built == {name: 1 for name in FACTORIES}
    assert first.batches is first.store


def test_the_per_role_deps_come_from_the_one_deps_and_build_nothing(built):
    worker = wiring.worker_deps()
    poller = wiring.poller_deps()
    assert worker.store is poller.store is wiring.deps().store and worker.events is poller.events
    assert wiring.submit_deps().batch is poller.batch_lane is wiring.deps().batch_lane
    assert built == {name: 1 for name in FACTORIES}
    assert worker.batch_lane and not isinstance(worker.pool, NoPool)
    assert worker.limits.max_attempts == 7  # from the settings


def test_without_the_batch_lane_the_worker_gets_a_pool_that_takes_nothing(built, monkeypatch):
    monkeypatch.setattr(wiring, "pool_store", lambda: None)  # as with BATCH_LANE_ENABLED=false
    deps = wiring.worker_deps()
    assert not deps.batch_lane and isinstance(deps.pool, NoPool)


def test_the_completion_events_are_built_once_per_instance(settings, monkeypatch):
    class Client:
        def collection(self, name):
            return name

    class Publisher:
        def topic_path(self, project, topic):
            return f"projects/{project}/topics/{topic}"

    monkeypatch.setattr(wiring, "firestore_client", Client)
    monkeypatch.setattr(wiring, "pubsub_publisher", Publisher)
    assert wiring.job_events() is wiring.job_events()
