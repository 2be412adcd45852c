"""What a batch checkpoint may change of an item, judged on the item as the store reads it in
the checkpoint itself (the read its conditional write needs anyway), and what it reports back.

Judging there, rather than on a read of every item before the ingest starts, keeps one read per
item per checkpoint and closes the window between that earlier read and the commit: an item a
worker, a cancel or an earlier slice of the same results file finished meanwhile is seen as it
is when the write is made, and the write is conditional on that version.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.models import TERMINAL_ITEM_STATES, ItemState

_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_ITEM_STATES)


@dataclass(frozen=True)
class Checkpointed:
    """A committed checkpoint (always truthy; a lost lease is None): the keys whose change was
    written, and those kept as stored because they had a result already."""
    applied: frozenset[str]
    kept: frozenset[str] = frozenset()


def applies(stored: Mapping[str, Any], change: Any) -> bool:
    """Whether a checkpoint writes `change` over the item as stored. Nothing overwrites a success
    (it is paid for and stored, and would be billed twice if handed back); an image beats the
    refusal its own batch recorded earlier in the same results file; any other ended item keeps
    its end (cancelled, dead-lettered, refused, or a replayed line after a crash)."""
    state = stored.get("state")
    if state not in _TERMINAL_VALUES:
        return True
    if state == ItemState.FAILED.value and change.state is ItemState.SUCCEEDED:
        intent_id = getattr(change, "intent_id", None)
        return intent_id is not None and stored.get("batch_intent") == intent_id
    return False
