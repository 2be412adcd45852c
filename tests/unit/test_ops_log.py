"""FIRESTORE_OPS_LOG_SECONDS: an instance's Firestore totals, logged when they change."""
import logging
import os

import ops_log
import wiring
from adapters.firestore.ops import FirestoreOps, OpCounts


def logged_totals(caplog):
    return [r.firestore_ops for r in caplog.records if r.name == "imagefleet.firestore_ops"]


def test_the_totals_are_logged_with_the_pid_when_they_change(caplog):
    caplog.set_level(logging.INFO)
    ops = FirestoreOps()
    ops.add("items", reads=3, writes=2)

    seen = ops_log.log_if_changed(ops, OpCounts())
    ops.add("jobs", deletes=1)
    ops_log.log_if_changed(ops, seen)

    assert logged_totals(caplog) == [
        {"pid": os.getpid(), "reads": 3, "writes": 2, "deletes": 0,
         "by_collection": {"items.reads": 3, "items.writes": 2}},
        {"pid": os.getpid(), "reads": 3, "writes": 2, "deletes": 1,
         "by_collection": {"items.reads": 3, "items.writes": 2, "jobs.deletes": 1}},
    ]


def test_nothing_is_logged_while_the_totals_stay_the_same(caplog):
    caplog.set_level(logging.INFO)
    ops = FirestoreOps()
    ops.add("items", writes=1)

    seen = ops_log.log_if_changed(ops, OpCounts())
    ops_log.log_if_changed(ops, seen)

    assert len(logged_totals(caplog)) == 1


def test_the_log_thread_starts_only_when_the_setting_is_set(monkeypatch):
    started = []
    monkeypatch.setattr(ops_log, "start", lambda ops, interval: started.append(interval))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    monkeypatch.setenv("IMAGES_BUCKET", "unit-bucket")
    for setting in (None, "2.5"):
        if setting:
            monkeypatch.setenv("FIRESTORE_OPS_LOG_SECONDS", setting)
        wiring.get_settings.cache_clear()
        wiring.firestore_ops.cache_clear()
        wiring.firestore_ops()
    wiring.get_settings.cache_clear()
    wiring.firestore_ops.cache_clear()

    assert started == [2.5]
