"""A job's item counts by state, kept beside its items so a status read costs a few document
reads whatever the job's size (instead of count() queries over every item).

Each item belongs to one of a few counter shards (by its key); every change of an item's state
moves one unit from the old state's field to the new one in that shard, in the same atomic
write as the change itself (adapters/firestore/jobs.py). A redelivered or repeated change
reads the item as it now is, so it moves nothing twice."""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from core.models import ItemState

SUCCEEDED_IN = "succeeded_"  # + lane: what the actual cost is priced by


def shard_of(key: str, shards: int) -> int:
    """The counter shard of an item: fixed by its key, so all its changes land in one shard."""
    return zlib.crc32(key.encode()) % shards


def _fields(item: Mapping[str, Any] | None) -> list[str]:
    if not item:
        return []
    fields = [item["state"]]
    if item["state"] == ItemState.SUCCEEDED.value and item.get("lane"):
        fields.append(SUCCEEDED_IN + item["lane"])
    return fields


def count_deltas(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, int]:
    """What a change of one item (None: absent) does to the counters: {field: +1/-1}, empty
    when neither its state nor, succeeded, its lane changed."""
    deltas: dict[str, int] = {}
    for field in _fields(before):
        deltas[field] = deltas.get(field, 0) - 1
    for field in _fields(after):
        deltas[field] = deltas.get(field, 0) + 1
    return {field: n for field, n in deltas.items() if n}


def add_deltas(total: dict[str, int], deltas: Mapping[str, int]) -> None:
    for field, n in deltas.items():
        total[field] = total.get(field, 0) + n


def totals(shards: Iterable[Mapping[str, Any]]) -> tuple[dict[ItemState, int], dict[str, int]]:
    """(items by state, succeeded items by lane) summed over a job's counter shards."""
    by_state = {state: 0 for state in ItemState}
    by_lane: dict[str, int] = {}
    for shard in shards:
        for state in ItemState:
            by_state[state] += int(shard.get(state.value) or 0)
        for field, n in shard.items():
            if field.startswith(SUCCEEDED_IN) and n:
                lane = field[len(SUCCEEDED_IN):]
                by_lane[lane] = by_lane.get(lane, 0) + int(n)
    return by_state, {lane: n for lane, n in by_lane.items() if n}
