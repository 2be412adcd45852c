"""Dead letters: the work messages Pub/Sub gave up on end their items dead_lettered."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.jobs import finalize_job_if_done
from core.models import ItemState, Lane
from core.ports import Clock, EventOutbox, ImageSink, JobStore
from core.transitions import DeadLettered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLettering:
    """What settling a dead letter needs: the job store, the clock, the finisher's sink and
    outbox, and the lease owner it claims the item as."""
    store: JobStore
    clock: Clock
    sink: ImageSink | None
    owner: str
    events: EventOutbox | None = None
    lease_seconds: float = 60.0


def dead_letter_item(job_id: str, key: str, deliveries: int | None, deps: DeadLettering) -> bool:
    """Pub/Sub gave up on an item's message: the item ends dead_lettered with its last error.

    Returns False when the item is still leased by a live delivery (come back later); True
    when the message can be acked (the item is terminal now, or was, or does not exist)."""
    store, clock, owner = deps.store, deps.clock, deps.owner
    item = store.get_item(job_id, key)
    if item is None or item.terminal or item.lane == Lane.BATCH.value:
        return True  # nothing to do: finished, unknown, or the batch lane owns it now
    if store.claim_item(job_id, key, owner, clock.now(), deps.lease_seconds, lane=Lane.INTERACTIVE.value) is None:
        current = store.get_item(job_id, key)
        return current is None or current.terminal
    tries = f" after {deliveries} deliveries" if deliveries else ""
    last = f"; last error: {item.error}" if item.error else ""
    store.finish_item(job_id, key, owner, DeadLettered(clock.now(), f"Pub/Sub gave up on the message{tries}{last}"))
    log.warning("item %s/%s dead-lettered by Pub/Sub%s", job_id, key, tries,
                extra={"job_id": job_id, "item_key": key, "lane": Lane.INTERACTIVE.value,
                       "state": ItemState.DEAD_LETTERED.value})  # the dead-letter metric counts this
    finalize_job_if_done(job_id, store=store, clock=clock, sink=deps.sink, events=deps.events)
    return True


def drain_dead_letters(
    source, *, settling: DeadLettering, decode: Callable[[bytes], tuple[str, str]], max_messages: int = 100,
) -> dict[str, int]:
    """The dead-letter topic's consumer: each work message Pub/Sub gave up on ends its item
    dead_lettered (with the last error), so no item waits `queued` forever. A message whose
    item a live delivery still holds is left for the next tick."""
    summary = {"settled": 0, "unreadable": 0, "deferred": 0}
    acks = []
    for ack_id, data, attributes in source.pull(max_messages):
        try:
            job_id, key = decode(data)
        except ValueError as e:
            log.error("dropping an unreadable dead letter: %s", e)
            summary["unreadable"] += 1
            acks.append(ack_id)
            continue
        deliveries = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
        if dead_letter_item(job_id, key, int(deliveries) if deliveries and deliveries.isdigit() else None, settling):
            summary["settled"] += 1
            acks.append(ack_id)
        else:
            summary["deferred"] += 1
    source.ack(acks)
    return summary
