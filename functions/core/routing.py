"""Which lane a job takes: by the client's wish, its size, and what is deployed."""
from __future__ import annotations

from core.errors import LaneUnavailable
from core.models import Lane


def choose_lane(
    item_count: int, requested: str, *, threshold: int, batch_available: bool
) -> Lane:
    """`auto` sends jobs below `threshold` items to the interactive lane, the rest to batch."""
    if requested == Lane.INTERACTIVE.value:
        lane = Lane.INTERACTIVE
    elif requested == Lane.BATCH.value:
        lane = Lane.BATCH
    else:
        lane = Lane.INTERACTIVE if item_count < threshold else Lane.BATCH
    if lane is Lane.BATCH and not batch_available:
        raise LaneUnavailable(
            f"the batch lane is not deployed yet: submit fewer than {threshold} items "
            "or use lane=interactive"
        )
    return lane
