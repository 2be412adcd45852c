"""Every item that ends dead_lettered leaves a log line with state=dead_lettered, which the
items_dead_lettered log-based metric (infra/terraform/monitoring.tf) counts: an item the worker
gives up on, and one Pub/Sub gave up on. (The batch lane's are in test_batches.py.)"""
import json
import logging

import wiring
from core import dead_letters
from core.errors import TransientError
from core.models import ItemState
from tests.unit.test_entrypoints import api, fakes, post_job, push, worker  # noqa: F401 (fixtures)
from tests.unit.test_quota_lanes import DeadLetters, decode, env  # noqa: F401 (fixtures)


def dead_letter_lines(caplog) -> list[tuple[str, str, str]]:
    return [(r.job_id, r.item_key, r.lane) for r in caplog.records if getattr(r, "state", None) == "dead_lettered"]


def test_the_worker_logs_an_item_it_gives_up_on(api, worker, fakes, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("MAX_ATTEMPTS", "2")
    wiring.get_settings.cache_clear()
    job_id = post_job(api, {"requests": [{"prompt": "a", "key": "one"}]}).get_json()["job_id"]
    fakes.generator.script = [TransientError("503 UNAVAILABLE")] * 2
    message = json.dumps({"job_id": job_id, "item_key": "one"}).encode()
    with caplog.at_level(logging.INFO):
        assert push(worker, message).status_code == 503
        assert dead_letter_lines(caplog) == []
        assert push(worker, message).status_code == 200
    assert fakes.store.get_item(job_id, "one").state is ItemState.DEAD_LETTERED
    assert dead_letter_lines(caplog) == [(job_id, "one", "interactive")]


def test_draining_the_dead_letter_topic_logs_each_item(env, caplog):  # noqa: F811
    job = env.submit(2)
    msg = lambda k: json.dumps({"job_id": job.job_id, "item_key": k}).encode()  # noqa: E731
    source = DeadLetters([("a0", msg("k0"), {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}),
                          ("a1", msg("k1"), {})])
    with caplog.at_level(logging.WARNING):
        dead_letters.drain_dead_letters(source, settling=dead_letters.DeadLettering(
            store=env.store, clock=env.clock, sink=env.sink, owner="poller"), decode=decode)
    assert sorted(dead_letter_lines(caplog)) == [(job.job_id, "k0", "interactive"), (job.job_id, "k1", "interactive")]
