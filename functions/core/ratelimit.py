"""A rate limiter shared by every worker instance, built from create-only "send slots".

Time is cut into slots `interval` seconds apart, where interval = window / (limit * safety).
To send a request a worker must own a slot: it claims the first free slot at or after
now (and after any 429 push-back) with a create-only write, then sleeps until the slot's
time. Because every slot is written exactly once, no storage document is hot, and N
instances together never send faster than one request per interval, which keeps any
window of `window_seconds` under the quota. A separate pool of leases caps concurrency.

The algorithm lives here; a SlotStore (Firestore in the cloud, memory in unit tests)
only provides the atomic primitives.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Protocol

from core.errors import RateLimited
from core.ports import Clock

# How many successive slots a worker probes before re-reading the latest claimed slot.
_MAX_PROBES = 8
# Slots are kept this long after their time; a TTL policy in Firestore deletes them later.
_SLOT_RETENTION_SECONDS = 3600.0
# A send this late (as a fraction of the interval) gives up its slot and claims a new one.
_LATE_FRACTION = 0.25
# A spend window keeps at most about this many entries (spends close in time are merged).
_SPEND_BUCKETS = 100
# While every concurrency lease is taken a delivery tries again after this, doubling up to the
# cap, with jitter: each try reads every lease document, so a fixed 50 ms poll cost 20 reads
# per lease per second of waiting, per waiting delivery. Also the shortest sleep of a spend wait.
_LEASE_POLL_SECONDS = 0.05
_LEASE_POLL_MAX_SECONDS = 1.0


@dataclass(frozen=True)
class RateLimit:
    """The quota we stay under. None or 0 means unlimited for that dimension."""

    requests_per_window: int | None = None
    images_per_window: int | None = None
    window_seconds: float = 60.0
    concurrency: int | None = None
    # Fraction of the quota we aim at: network jitter between "slot time" and "arrival at
    # the API" must not push two requests into one window slot.
    safety: float = 0.95
    images_per_request: int = 1
    # Spend per rolling window, in dollars (None = off). Paid tiers also enforce spend-based
    # limits, over a rolling 10-minute window and per month
    # (https://ai.google.dev/gemini-api/docs/rate-limits, "Spend-based rate limiting";
    # https://blog.google/innovation-and-ai/technology/developers-tools/more-control-over-gemini-api-costs).
    # A request is admitted only if its expected cost fits in what is left of the window, so a
    # burst of expensive images cannot trip the service's limit.
    spend_usd_per_window: float | None = None
    spend_window_seconds: float = 600.0
    cost_per_request_usd: float = 0.0  # used when the caller passes no price

    @property
    def interval(self) -> float:
        """Seconds between two consecutive sends, across every instance."""
        per_window: list[float] = []
        if self.requests_per_window:
            per_window.append(self.requests_per_window)
        if self.images_per_window:
            per_window.append(self.images_per_window / self.images_per_request)
        if not per_window:
            return 0.0
        return self.window_seconds / (min(per_window) * self.safety)


class SlotStore(Protocol):
    def blocked_until(self) -> float: ...

    def push_blocked_until(self, until: float) -> None:
        """Move blocked_until forward (never back)."""

    def last_slot(self) -> int | None: ...

    def try_claim_slot(self, slot: int, owner: str, expire_at: float) -> bool:
        """Create the slot record if absent. True when this call created it."""

    def try_take_lease(self, owner: str, capacity: int, now: float, ttl: float) -> str | None:
        """Take one of `capacity` concurrency leases that is free or expired; its id, or None."""

    def release_lease(self, lease_id: str, owner: str) -> None: ...

    def try_spend(self, amount: float, limit: float, window: float, now: float) -> float | None:
        """Record `amount` spent at `now` if the spend recorded in (now - window, now] plus
        `amount` stays within `limit`: None. Otherwise record nothing and return the seconds
        until enough of that spend has left the window."""


class SlotRateLimiter:
    """Blocking acquire/release over a SlotStore. One per worker instance."""

    def __init__(self, limit: RateLimit, store: SlotStore, clock: Clock, lease_ttl: float = 120.0):
        self.limit = limit
        self.store = store
        self.clock = clock
        self.lease_ttl = lease_ttl
        self._leases: dict[str, str] = {}

    def acquire(self, owner: str, max_wait: float, cost: float | None = None) -> None:
        """Return when `owner` may send one request; raise RateLimited if that is beyond max_wait.

        `cost` is the request's expected price in dollars (the configured one if None). The
        concurrency lease comes first, then the spend, and the send slot last, so that nothing
        but the sleep stands between a slot's time and the send: a wait for a lease after the
        slot would let sends bunch up and break the spacing."""
        deadline = self.clock.now() + max_wait
        if capacity := self.limit.concurrency:
            self._take_lease(owner, capacity, deadline)
        if spend_limit := self.limit.spend_usd_per_window:
            try:
                self._reserve_spend(self.limit.cost_per_request_usd if cost is None else cost, spend_limit, deadline)
            except RateLimited:
                self.release(owner)
                raise
        if self.limit.interval > 0:
            try:
                self._wait_for_slot(owner, deadline)
            except RateLimited:
                self.release(owner)
                raise

    def release(self, owner: str) -> None:
        lease_id = self._leases.pop(owner, None)
        if lease_id is not None:
            self.store.release_lease(lease_id, owner)

    def push_back(self, until: float) -> None:
        self.store.push_blocked_until(until)

    def _wait_for_slot(self, owner: str, deadline: float) -> None:
        interval = self.limit.interval
        while True:
            now = self.clock.now()
            start = max(now, self.store.blocked_until())
            slot = math.ceil(start / interval)
            last = self.store.last_slot()
            if last is not None:
                slot = max(slot, last + 1)
            for _ in range(_MAX_PROBES):
                send_at = slot * interval
                if send_at > deadline:
                    raise RateLimited(send_at - now)
                if self.store.try_claim_slot(slot, owner, send_at + _SLOT_RETENTION_SECONDS):
                    break
                slot += 1
            else:
                continue  # heavy contention: re-read the latest slot and probe again
            self.clock.sleep(max(0.0, send_at - self.clock.now()))
            now = self.clock.now()
            # A 429 seen by another instance while we slept pushes everybody back; and a
            # send much later than its slot (a stalled instance) could land next to the
            # following slot's send, so it takes a fresh slot instead.
            if self.store.blocked_until() <= now and now - send_at <= interval * _LATE_FRACTION:
                return

    def _reserve_spend(self, cost: float, limit: float, deadline: float) -> None:
        """Record the request's cost in the shared spend window, waiting while it does not fit.
        The cost stays recorded even if the request then fails: over-counting only makes the
        limiter more careful, and a 429 or 5xx might still have been billed."""
        window = self.limit.spend_window_seconds
        if cost > limit:
            raise RateLimited(window)  # can never fit; the caller backs off a whole window
        while True:
            now = self.clock.now()
            wait = self.store.try_spend(cost, limit, window, now)
            if wait is None:
                return
            if now + wait > deadline:
                raise RateLimited(wait)
            self.clock.sleep(max(wait, _LEASE_POLL_SECONDS))

    def _take_lease(self, owner: str, capacity: int, deadline: float) -> None:
        for tries in itertools.count():
            now = self.clock.now()
            lease_id = self.store.try_take_lease(owner, capacity, now, self.lease_ttl)
            if lease_id is not None:
                self._leases[owner] = lease_id
                return
            if now >= deadline:
                raise RateLimited(_LEASE_POLL_SECONDS)
            # The last sleep ends at the deadline, for one more try there.
            self.clock.sleep(min(lease_poll_delay(tries), deadline - now))


def lease_poll_delay(tries: int) -> float:
    """The wait before the next try for a lease after `tries` failed ones: exponential from
    _LEASE_POLL_SECONDS to _LEASE_POLL_MAX_SECONDS, drawn from the upper half of the step
    ("equal jitter"): waiters that started together spread out, and none polls faster than
    half the step."""
    ceiling = min(_LEASE_POLL_MAX_SECONDS, _LEASE_POLL_SECONDS * 2 ** min(tries, 16))
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_delay(value: str | None) -> float | None:
    """google.protobuf.Duration JSON ("47.174s", "1s") to seconds."""
    if not value:
        return None
    text = value.strip()
    if text.endswith("s"):
        text = text[:-1]
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def spend_after(entries: list[tuple[float, float]], amount: float, limit: float, window: float,
                now: float) -> tuple[list[tuple[float, float]], float | None]:
    """The spend window's arithmetic, shared by every SlotStore: `entries` are (time, dollars),
    oldest first. Returns the entries to keep (those still in the window, plus the new one if
    admitted) and None, or the unchanged window and the wait until `amount` would fit."""
    live = [(t, a) for t, a in entries if t > now - window]
    spent = sum(a for _, a in live)
    if spent + amount <= limit + 1e-9:
        if live and live[-1][0] > now - window / _SPEND_BUCKETS:
            # Merged into the latest entry, stamped now: it stays in the window at least as long
            # as each spend in it would (never under-counts), and the list stays short.
            return live[:-1] + [(now, live[-1][1] + amount)], None
        return live + [(now, amount)], None
    # The oldest entries leave first: wait until enough of them have gone.
    excess = spent + amount - limit
    for t, a in live:
        excess -= a
        if excess <= 1e-9:
            return live, max(0.0, t + window - now)
    return live, window
