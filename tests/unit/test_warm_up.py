"""The worker's clients are built when the instance starts, on a background thread."""
import wiring


def test_no_warm_up_unless_asked(monkeypatch):
    monkeypatch.delenv("WARM_UP_CLIENTS", raising=False)
    before = set(__import__("sys").modules)
    wiring.start_warm_up()
    assert "adapters.gemini_generator" not in set(__import__("sys").modules) - before


def test_warm_up_builds_the_targets_clients(monkeypatch):
    built = []
    for name in wiring._WARM_UP["pubsub_worker"]:
        monkeypatch.setattr(wiring, name, lambda name=name: built.append(name))
    monkeypatch.setenv("WARM_UP_CLIENTS", "true")
    monkeypatch.setenv("IMAGES_BUCKET", "b")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    wiring.get_settings.cache_clear()
    try:
        wiring._start_warm_up_thread("pubsub_worker").join()
    finally:
        wiring.get_settings.cache_clear()
    assert built == list(wiring._WARM_UP["pubsub_worker"])
    # The generator, the rate limiter and every other client of the instance; then a first
    # Firestore read, which opens the channel.
    assert built == ["deps", "connect"]


def test_a_failed_warm_up_leaves_the_clients_to_the_first_request(monkeypatch, caplog):
    def broken():
        raise RuntimeError("no network yet")

    monkeypatch.setattr(wiring, "job_store", broken)
    monkeypatch.setenv("WARM_UP_CLIENTS", "true")
    monkeypatch.setenv("IMAGES_BUCKET", "b")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    wiring.get_settings.cache_clear()
    try:
        wiring._warm_up("pubsub_worker")  # logs, never raises
    finally:
        wiring.get_settings.cache_clear()
    assert "warming up the pubsub_worker clients failed" in caplog.text


def test_requests_wait_for_a_warm_up_under_way(monkeypatch):
    import threading

    release = threading.Event()
    monkeypatch.setattr(wiring, "_warm_up", lambda target: release.wait())
    monkeypatch.setenv("WARM_UP_CLIENTS", "true")
    thread = wiring._start_warm_up_thread("pubsub_worker")
    waiter = threading.Thread(target=wiring.wait_for_warm_up)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and thread.is_alive()  # still waiting: the warm-up is not done
    release.set()
    waiter.join()
    monkeypatch.setattr(wiring, "_warm_up_thread", None)


def test_the_poller_and_the_api_build_the_sdks_batch_models_before_their_first_batch():
    from google.genai import types

    from adapters.gemini_batches import warm_up_sdk

    assert "warm_batch_api" in wiring._WARM_UP["scheduled_poller"] and "warm_batch_api" in wiring._WARM_UP["http_api"]
    info = warm_up_sdk()  # no client, no request
    assert (info.name, info.state, info.output_file) == ("batches/warm-up", "JOB_STATE_SUCCEEDED", "files/warm-up")
    assert types.BatchJob.__pydantic_complete__ and types.BatchJobDestination.__pydantic_complete__
