"""A rate limiter shared by every worker instance, built from create-only blocks of send slots.

Slots. Time is cut into slots `interval` seconds apart, interval = window / (limit * safety):
slot i may be used for one send at time i * interval, and by nobody else.

Blocks. Instances take slots in blocks: runs of consecutive slots recorded in a chain of
create-only documents numbered 0, 1, 2, ... Block n+1 starts where block n ends (or later, at
the first slot after now), so blocks never overlap; the create-only write of number n+1 makes
exactly one instance its owner, and that instance hands the block's slots to its own
deliveries from memory. A block holds as many slots as the instance expects to use while the
block lasts (see `_demand`), never more than the whole fleet's rate for `_BLOCK_SECONDS`: an
instance alone at the quota writes about once a second whatever the rate, and an instance
with little demand takes small blocks, so the slots it leaves unused are few. Slots that
pass unused cost throughput, never safety. Knowing where the chain ends costs nothing
while this instance is the only one extending it, and one query after losing a race.

Why N instances together never exceed `limit` requests in any window W:
* blocks never overlap and each has one owner, so each slot is used for at most one send
  (instances must share one `RateLimit`, hence one interval: a different quota is a different
  limiter id, as wiring does per model);
* a send for slot i happens in [i*interval - S, i*interval + D], where D is the lateness we
  accept (a later send gives its slot up and takes another) and S is how far one instance's
  clock can run ahead of another's. With J the jitter in arrival at the API, the arrivals
  inside any window of length W come from slots whose times lie in an interval of length
  W + D + S + J, which holds at most (W + D + S + J) / interval slots
  = limit * safety * (1 + (D + S + J) / W). That stays <= limit while
  D + S + J <= W * (1/safety - 1), the margin's tolerance. D takes half of it and clock skew
  and network jitter share the other half: with safety 0.99 and W = 60 s, 0.3 s for D and
  0.3 s for S + J, at a cost of 1% of the quota. Cloud Functions instances keep their clocks
  in sync with Google's NTP (skew in milliseconds), so that half is mostly for the network.
* a 429 push-back moves `blocked_until` forward for everyone. Each instance caches it and
  reads it again when the cached value is `_BLOCKED_REFRESH_SECONDS` old, so a push-back
  takes effect everywhere within that delay (in the pushing instance at once). Meanwhile the
  others keep the spacing above, so they add no burst: a push-back only reacts to a limit
  the service saw and we did not (other clients of the same project).
* blocks expire (TTL) an hour after their end. An instance trusts its own idea of the chain's
  end only while that end is younger than half of that, and otherwise asks the store for
  the highest existing block, so a chain cut short by TTL can only restart in the past.

Concurrency leases cap requests in flight. An instance holds its leases in the store under its
own name; a release hands the lease straight to a delivery of the same instance that waits for
one (no store operation; a lease whose expiry nears goes back to the store instead), and only
otherwise gives it back. A delivery that finds none backs off exponentially (from
`_LEASE_POLL_SECONDS` to `_LEASE_POLL_MAX_SECONDS`, with jitter, woken early by a hand-over),
so it costs a few reads per second rather than one per lease every 50 ms.

The algorithm lives here; a SlotStore (Firestore in the cloud, memory in unit tests)
only provides the atomic primitives.
"""
from __future__ import annotations

import math
import threading
import uuid
from collections import deque
from dataclasses import dataclass

from core.backoff import backoff_seconds
from core.errors import RateLimited
from core.models import SlotBlock
from core.ports import Clock, SlotStore

# A block spans at most about this long: one write per second per busy instance, whatever
# the rate; a push-back or a lull wastes at most this much of an instance's own sends.
_BLOCK_SECONDS = 1.0
# Blocks are kept this long after their time; a TTL policy in Firestore deletes them later.
_SLOT_RETENTION_SECONDS = 3600.0
# How stale the cached blocked_until may get: the delay before a push-back reaches everyone.
_BLOCKED_REFRESH_SECONDS = 1.0
# A spend window keeps at most about this many entries (spends close in time are merged).
_SPEND_BUCKETS = 100
# While every concurrency lease is taken a delivery tries again after this, doubling up to the
# cap, with jitter: each try may read the lease documents, so a fixed 50 ms poll cost 20 reads
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
    # Fraction of the quota we aim at: what is left over absorbs late sends, clock skew and
    # network jitter (see the module docstring); 0.99 costs 1% of the quota.
    safety: float = 0.99
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

    @property
    def block_size(self) -> int:
        """The most slots in one block: about _BLOCK_SECONDS of sends at the whole fleet's rate."""
        interval = self.interval
        return max(1, round(_BLOCK_SECONDS / interval)) if interval > 0 else 1

    @property
    def lateness(self) -> float:
        """How late a send may go before it gives its slot up: half of what the margin tolerates."""
        return self.window_seconds * (1.0 / self.safety - 1.0) / 2.0


class SlotRateLimiter:
    """Blocking acquire/release over a SlotStore. One per worker instance, shared by its threads."""

    def __init__(self, limit: RateLimit, store: SlotStore, clock: Clock, lease_ttl: float = 120.0,
                 longest_hold: float | None = None):
        self.limit = limit
        self.store = store
        self.clock = clock
        self.lease_ttl = lease_ttl
        # The longest a delivery keeps its lease: a lease is handed over only while it has that
        # long left, so that it never expires under a live delivery.
        self.longest_hold = lease_ttl * 0.75 if longest_hold is None else longest_hold
        self._leases: dict[str, tuple[str, float]] = {}  # owner -> (lease id, its expiry)
        # Leases this instance holds but no delivery uses: a release hands its lease straight to
        # a delivery of this instance that waits for one, with no store operation at all.
        self._handover = threading.Condition()
        self._idle_leases: list[tuple[str, float]] = []
        self._lease_waiters = 0
        self._next_store_ask = 0.0  # the instance's back-off for asking the store for a lease
        self._store_tries = 0  # failed asks since the last lease the store gave
        self._holder = f"limiter-{uuid.uuid4().hex[:12]}"  # owns this instance's leases in the store
        self._lock = threading.Lock()  # guards the block and the cached blocked_until below
        self._block: SlotBlock | None = None  # the block this instance holds
        self._next_slot = 0  # its first slot not yet handed out
        self._tail: SlotBlock | None = None  # the last block of the chain, as far as we know
        self._handed_out: deque[float] = deque()  # when this instance handed out its recent slots
        self._waiting = 0  # deliveries in _take_slot now
        self._waiting_lock = threading.Lock()
        self._blocked_until = 0.0
        self._blocked_read_at = -math.inf

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
        taken = self._leases.pop(owner, None)
        if taken is None:
            return
        with self._handover:
            if self._lease_waiters > len(self._idle_leases):
                self._idle_leases.append(taken)
                self._handover.notify()
                return
            self._next_store_ask = 0.0  # a lease is free in the store now: worth asking at once
        self.store.release_lease(taken[0], self._holder)

    def push_back(self, until: float) -> None:
        self.store.push_blocked_until(until)
        with self._lock:  # this instance obeys at once; the others within _BLOCKED_REFRESH_SECONDS
            self._blocked_until = max(self._blocked_until, until)

    def _wait_for_slot(self, owner: str, deadline: float) -> None:
        interval = self.limit.interval
        while True:
            send_at = self._take_slot(owner, deadline) * interval
            self.clock.sleep(max(0.0, send_at - self.clock.now()))
            now = self.clock.now()
            with self._lock:
                blocked = self._blocked(now)
            # A push-back seen while we slept delays everybody; and a send later than the
            # margin allows (a stalled instance) could land next to the following slot's send,
            # so it takes a fresh slot instead.
            if blocked <= now and now - send_at <= self.limit.lateness:
                return

    def _take_slot(self, owner: str, deadline: float) -> int:
        """The next slot of this instance's block, claiming a new block when it is used up."""
        interval = self.limit.interval
        with self._waiting_lock:
            self._waiting += 1
        try:
            with self._lock:
                now = self.clock.now()
                first = math.ceil(max(now, self._blocked(now)) / interval)
                slot = max(first, self._next_slot)
                if self._block is None or slot >= self._block.end:
                    self._block = self._claim_block(owner, first, deadline, self._demand(now))
                    slot = max(first, self._block.start)
                if slot * interval > deadline:
                    raise RateLimited(slot * interval - now)  # the slot stays free for another delivery
                self._next_slot = slot + 1
                self._handed_out.append(now)
                return slot
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _demand(self, now: float) -> int:
        """Slots to claim: the deliveries waiting now, and those expected to arrive while the
        block lasts. If this instance took a share p of the fleet's slots in the last
        _BLOCK_SECONDS, w waiting deliveries plus p per slot of the block gives w / (1 - p).
        An instance alone at the quota (p near 1) takes the largest block; one of many takes
        about as many slots as it has deliveries waiting, so few of its slots go unused."""
        while self._handed_out and self._handed_out[0] <= now - _BLOCK_SECONDS:
            self._handed_out.popleft()
        share = min(0.99, len(self._handed_out) * self.limit.interval / _BLOCK_SECONDS)
        return max(1, min(self.limit.block_size, round(self._waiting / (1.0 - share))))

    def _claim_block(self, owner: str, first: int, deadline: float, size: int) -> SlotBlock:
        """Append a block of `size` slots, starting at `first` or later, to the shared chain."""
        interval = self.limit.interval
        tail = self._tail
        if tail is None or tail.end * interval < self.clock.now() - _SLOT_RETENTION_SECONDS / 2:
            tail = self.store.last_block()  # unknown or old enough that TTL may have cut it
        while True:
            start = first if tail is None else max(first, tail.end)
            if start * interval > deadline:
                raise RateLimited(start * interval - self.clock.now())  # a refusal claims nothing
            block = SlotBlock(seq=0 if tail is None else tail.seq + 1, start=start, size=size)
            if self.store.try_claim_block(block, owner, block.end * interval + _SLOT_RETENTION_SECONDS):
                self._tail = block
                return block
            tail = self.store.last_block()  # another instance extended the chain: read its end

    def _blocked(self, now: float) -> float:
        """blocked_until, read from the store at most every _BLOCKED_REFRESH_SECONDS. Lock held.

        The store's value replaces the copy, never max()-ed into it: the document can go (a
        wipe, an operator clearing a push-back), and a copy that only moves forward would then
        hold a day-long push-back of a daily-quota 429 in this instance until the next day. Our
        own push_back is in the store already (push_blocked_until comes first)."""
        if now - self._blocked_read_at >= _BLOCKED_REFRESH_SECONDS:
            self._blocked_until = self.store.blocked_until()
            self._blocked_read_at = now
        return self._blocked_until

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
        # A lease handed over by a release in this instance comes first; else the store. While
        # every lease is taken, the instance's waiting deliveries ask the store on one shared
        # back-off (lease_poll_delay, see _store_lease) and sleep until its next ask, woken
        # early by a hand-over.
        with self._handover:
            self._lease_waiters += 1
        try:
            while True:
                now = self.clock.now()
                taken = self._idle_lease(now) or self._store_lease(now, capacity)
                if taken is not None:
                    self._leases[owner] = taken
                    return
                if now >= deadline:
                    raise RateLimited(_LEASE_POLL_SECONDS)
                # The last pause ends at the deadline, for one more try there.
                self._pause(min(self._until_store_ask(now), deadline - now))
        finally:
            with self._handover:
                self._lease_waiters -= 1

    def _until_store_ask(self, now: float) -> float:
        with self._handover:
            return max(self._next_store_ask - now, _LEASE_POLL_SECONDS / 2)

    def _idle_lease(self, now: float) -> tuple[str, float] | None:
        with self._handover:
            if not self._idle_leases:
                return None
            lease_id, expires_at = self._idle_leases.pop()
        if expires_at - now >= self.longest_hold:
            return lease_id, expires_at
        # Too little time left for a whole delivery: give it back and take one afresh.
        self.store.release_lease(lease_id, self._holder)
        return None

    def _store_lease(self, now: float, capacity: int) -> tuple[str, float] | None:
        # The instance's waiting deliveries share one back-off for asking the store: they cost
        # one query per back-off together, not one each; a hand-over needs no query at all.
        with self._handover:
            if now < self._next_store_ask:
                return None
            self._next_store_ask = now + lease_poll_delay(self._store_tries)
            self._store_tries += 1
        lease_id = self.store.try_take_lease(self._holder, capacity, now, self.lease_ttl)
        if lease_id is None:
            return None
        with self._handover:
            self._next_store_ask, self._store_tries = 0.0, 0
        return lease_id, now + self.lease_ttl

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when a release in this instance hands a lease over."""
        self.clock.wait(self._handover, lambda: bool(self._idle_leases), seconds)


def lease_poll_delay(tries: int) -> float:
    """The wait before the next try for a lease after `tries` failed ones: exponential from
    _LEASE_POLL_SECONDS to _LEASE_POLL_MAX_SECONDS, drawn from the upper half of the step
    ("equal jitter"): waiters that started together spread out, and none polls faster than
    half the step."""
    return backoff_seconds(tries + 1, base=_LEASE_POLL_SECONDS, cap=_LEASE_POLL_MAX_SECONDS)


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
