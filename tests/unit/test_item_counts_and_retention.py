"""core/item_counts.py and core/retention.py: the values the Firestore adapters write."""
from __future__ import annotations

import datetime as dt

import pytest

from config import Settings
from core.item_counts import count_deltas, shard_of, totals
from core.models import ItemState
from core.quota_day import PACIFIC
from core.retention import day_expire_at, expire_at


def test_a_record_expires_its_retention_after_its_start():
    assert expire_at(1_000.0, 30) == 1_000.0 + 30 * 86_400


@pytest.mark.parametrize("day,hours", [("2026-03-08", 23), ("2026-11-01", 25), ("2026-06-15", 24)])
def test_a_days_counters_expire_after_the_end_of_their_pacific_day(day, hours):
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(0), tzinfo=PACIFIC).timestamp()
    assert day_expire_at(day, 1) == start + hours * 3600 + 86_400


def test_retention_is_read_from_the_environment_and_at_least_a_day(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("IMAGES_BUCKET", "b")
    assert Settings().records_retention_days == 30
    monkeypatch.setenv("RECORDS_RETENTION_DAYS", "7")
    assert Settings().records_retention_days == 7
    monkeypatch.setenv("RECORDS_RETENTION_DAYS", "0")
    with pytest.raises(ValueError):
        Settings()


def item(state: str, lane: str | None = "interactive") -> dict:
    return {"state": state, "lane": lane}


def test_a_state_change_moves_one_unit_and_a_repeat_moves_none():
    assert count_deltas(None, item("queued")) == {"queued": 1}
    assert count_deltas(item("queued"), item("running")) == {"queued": -1, "running": 1}
    assert count_deltas(item("running"), item("succeeded")) == {"running": -1, "succeeded": 1,
                                                                "succeeded_interactive": 1}
    assert count_deltas(item("succeeded"), item("succeeded")) == {}
    assert count_deltas(item("succeeded", "interactive"), item("succeeded", "batch")) == {
        "succeeded_interactive": -1, "succeeded_batch": 1}


def test_totals_sum_the_shards():
    by_state, by_lane = totals([{"queued": 2, "succeeded": 1, "succeeded_batch": 1, "expire_at": object()},
                                {"queued": -1, "running": 1, "succeeded": 2, "succeeded_interactive": 2}])
    assert by_state[ItemState.QUEUED] == 1 and by_state[ItemState.SUCCEEDED] == 3
    assert by_state[ItemState.CANCELLED] == 0
    assert by_lane == {"batch": 1, "interactive": 2}


def test_an_items_shard_is_fixed_by_its_key_and_spread():
    assert shard_of("k1", 4) == shard_of("k1", 4)
    assert {shard_of(f"item-{i:05d}", 4) for i in range(40)} == {0, 1, 2, 3}
