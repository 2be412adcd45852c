"""A rate limiter shared by every worker instance: a sliding log of send slots, kept in a chain
of create-only blocks.

The rule. The quota is Q requests in any window of W seconds. Slots are numbered along the
chain, each has a send time, and slot n + Q may not be sent before slot n's time plus
P = W / safety (P - W is the guard, below). So any P seconds hold at most Q slot times: after
an idle window the whole quota may go out at once, and a busy fleet settles at Q per P. Sends
within one window are at least `spacing` apart (RATE_SPREAD of the window's even spacing P / Q):
1 spaces every send evenly (the smooth pacer: slot i at i * P / Q), small values let a window's
quota go out in a burst, which the fixed costs of a short run (accept, first send, the last
image's latency) need to reach the quota end to end.

Why a burst is allowed by default. Google documents the Gemini API's limits as counts per
window: "if your RPM limit is 20, making 21 requests within a minute will result in an error"
(https://ai.google.dev/gemini-api/docs/rate-limits, "How rate limits work"); other Google APIs
document rate quotas refilled at the start of each synchronized minute
(https://cloud.google.com/compute/api-quota, "Google enforces rate quotas at a per-minute
interval"). Q in any window of W is within both a sliding and a fixed window. Google does not
document a burst limit below the per-minute one; Vertex AI's shared pay-as-you-go capacity asks
to smooth traffic instead (https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429),
which RATE_SPREAD=1 does. A 429 from a service that counts differently pushes everyone back
(below), so a wrong guess costs time, never a lost item.

Blocks. Instances take slots in blocks: runs of consecutive slots recorded in a chain of
create-only documents numbered 0, 1, 2, ... Block n+1 starts where block n ends, so blocks never
overlap; the create-only write of number n+1 makes exactly one instance its owner, and that
instance hands the block's slots to its own deliveries from memory. Each block carries the times
of the chain's last Q slots (`SlotBlock.history`, runs of evenly spaced times, at most
_HISTORY_RUNS of them), so the next block's times follow from the last block alone. A block
holds as many slots as the instance expects to use (see `_demand`), never more than the whole
fleet's rate for `_BLOCK_SECONDS`: an instance alone at the quota writes about once a second
whatever the rate. Slots that pass unused count as sent: they cost throughput, never safety.
Knowing where the chain ends costs nothing while this instance is the only one extending it,
and one read after losing a race.

Why N instances together never exceed Q requests in any window W. Let t_n be slot n's time.
(1) Each slot is used for at most one send (blocks never overlap, each has one owner; instances
must share one `RateLimit`: a different quota is a different limiter id, as wiring does per
model). (2) t_n never decreases along the chain, and (3) t_{n+Q} >= t_n + P: a block's times are
computed so, from the history of the block before it (a coarsened history only overstates old
times). (4) A send for slot n reaches the API in [t_n - S, t_n + D + J]: D is the lateness we
accept (a later send gives its slot up and takes another), S how far one instance's clock can
run ahead of another's, J the network's jitter. Suppose a window of length W held Q + 1 arrivals:
their slots are distinct, so the highest, m, and the lowest, n, are at least Q apart, and by (2)
and (3) t_m >= t_n + P; their arrivals are then at least P - S - D - J = W + guard - (S + D + J)
apart, which is W or more while S + D + J <= guard = W * (1/safety - 1). D takes half of the
guard and clock skew and jitter share the other half: with safety 0.99 and W = 60 s, 0.3 s
each, at a cost of 1% of the quota. Cloud Functions instances keep their clocks in sync with
Google's NTP (skew in milliseconds), so that half is mostly for the network.
* A 429 push-back moves `blocked_until` forward for everyone. Each instance caches it and
  reads it again when the cached value is `_BLOCKED_REFRESH_SECONDS` old, so a push-back
  takes effect everywhere within that delay (in the pushing instance at once). Slots before it
  pass unused; the rule above still holds for the rest.
* Blocks expire (TTL) an hour after their last slot. An instance trusts its own idea of the
  chain's end only while that end is younger than half of that, and otherwise asks the store
  for the highest existing block, so a chain cut short by TTL restarts at least half an hour
  after its last send, far more than P. A block of the older chain (no history) is taken as
  Q sends at its last slot's time, so the first chain of this kind waits P after it.

Concurrency leases cap requests in flight, and so also how much of a burst goes out at once.
An instance holds its leases in the store under its
own name; a release hands the lease straight to a delivery of the same instance that waits for
one (no store operation; a lease whose expiry nears goes back to the store instead), and only
otherwise gives it back. A delivery that finds none backs off exponentially (from
`_LEASE_POLL_SECONDS` to `_LEASE_POLL_MAX_SECONDS`, with jitter, woken early by a hand-over),
so it costs a few reads per second rather than one per lease every 50 ms.

The algorithm lives here; a SlotStore (Firestore in the cloud, memory in unit tests)
only provides the atomic primitives.
"""
from __future__ import annotations

import bisect
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
# A block's history keeps at most this many runs; beyond, the two closest runs are merged into
# one that overstates their times (safe), so a block document stays small.
_HISTORY_RUNS = 64
# A slot joins a run when the run predicts its time within this (float rounding of epoch
# seconds); the rule adds it back, so a run that understates a time by this much still delays.
_RUN_TOLERANCE = 0.001
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
    # The shortest spacing of sends, as a fraction of the even spacing window / (limit * safety):
    # 1 is a smooth pacer, small values let an idle window's quota go out in a burst.
    spread: float = 0.05
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
    def per_window(self) -> int:
        """Q: the most sends in any window, by the tighter dimension (0 = unlimited)."""
        per_window: list[float] = []
        if self.requests_per_window:
            per_window.append(self.requests_per_window)
        if self.images_per_window:
            per_window.append(self.images_per_window / self.images_per_request)
        return max(1, math.floor(min(per_window))) if per_window else 0

    @property
    def period(self) -> float:
        """P: slot n + Q comes at least this long after slot n; the window plus the guard."""
        return self.window_seconds / self.safety

    @property
    def interval(self) -> float:
        """Seconds between two consecutive sends at the long-run rate, across every instance."""
        return self.period / self.per_window if self.per_window else 0.0

    @property
    def spacing(self) -> float:
        """The shortest time between two consecutive slots."""
        return self.interval * self.spread

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
        self._times: list[float] = []  # the send times of the block this instance holds
        self._next_slot = 0  # the index in _times of its first slot not yet handed out
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

    def warm_up(self) -> None:
        """What the instance's first send would otherwise wait for, read or made at its start:
        the chain's end (its first claim then needs no read unless another instance extended
        the chain meanwhile) and the lease documents."""
        tail = self.store.last_block()
        with self._lock:
            self._tail = self._tail or tail
        if self.limit.concurrency:
            self.store.prepare_leases(self.limit.concurrency)

    def push_back(self, until: float) -> None:
        self.store.push_blocked_until(until)
        with self._lock:  # this instance obeys at once; the others within _BLOCKED_REFRESH_SECONDS
            self._blocked_until = max(self._blocked_until, until)

    def _wait_for_slot(self, owner: str, deadline: float) -> None:
        while True:
            send_at = self._take_slot(owner, deadline)
            self.clock.sleep(max(0.0, send_at - self.clock.now()))
            now = self.clock.now()
            with self._lock:
                blocked = self._blocked(now)
            # A push-back seen while we slept delays everybody; and a send later than the
            # margin allows (a stalled instance) could land next to the following slot's send,
            # so it takes a fresh slot instead.
            if blocked <= now and now - send_at <= self.limit.lateness:
                return

    def _take_slot(self, owner: str, deadline: float) -> float:
        """The time of the next slot of this instance's block, claiming a new block when it is
        used up. Slots that passed, or fall before a push-back, are skipped (they count as sent)."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            with self._lock:
                now = self.clock.now()
                # Half the lateness is left for the way from here to the send.
                earliest = max(now - self.limit.lateness / 2, self._blocked(now))
                while self._next_slot < len(self._times) and self._times[self._next_slot] < earliest:
                    self._next_slot += 1
                if self._next_slot >= len(self._times):
                    self._times = self._claim_block(owner, max(now, self._blocked(now)), deadline, self._demand(now))
                    self._next_slot = 0
                send_at = self._times[self._next_slot]
                if send_at > deadline:
                    raise RateLimited(send_at - now)  # the slot stays free for another delivery
                self._next_slot += 1
                self._handed_out.append(now)
                return send_at
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

    def _claim_block(self, owner: str, earliest: float, deadline: float, size: int) -> list[float]:
        """Append a block of `size` slots, none before `earliest`, to the shared chain; their times."""
        tail = self._tail
        if tail is None or _last_time(self._history_of(tail)) < self.clock.now() - _SLOT_RETENTION_SECONDS / 2:
            tail = self.store.last_block()  # unknown or old enough that TTL may have cut it
        while True:
            history = self._history_of(tail)
            start = 0 if tail is None else tail.end
            times = slot_times(history, start, size, earliest, self.limit)
            if times[0] > deadline:
                raise RateLimited(times[0] - self.clock.now())  # a refusal claims nothing
            block = SlotBlock(seq=0 if tail is None else tail.seq + 1, start=start, size=size,
                              history=extend_history(history, start, times, self.limit.per_window))
            if self.store.try_claim_block(block, owner, times[-1] + _SLOT_RETENTION_SECONDS):
                self._tail = block
                return times
            tail = self.store.last_block()  # another instance extended the chain: read its end

    def _history_of(self, tail: SlotBlock | None) -> tuple[tuple[int, int, float, float], ...]:
        """The tail's history; a block of the older, evenly spaced chain (slot i at i * interval)
        is taken as Q sends at its last slot's time, which overstates every one of them."""
        if tail is None or tail.history:
            return () if tail is None else tail.history
        return ((tail.end - self.limit.per_window, self.limit.per_window, (tail.end - 1) * self.limit.interval, 0.0),)

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


Run = tuple[int, int, float, float]  # (first slot, count, time of the first, step)


def slot_times(history: tuple[Run, ...], start: int, size: int, earliest: float, limit: RateLimit) -> list[float]:
    """The send times of slots start .. start + size - 1 after `history` (the times of the slots
    before `start`): never before `earliest` nor before the previous slot, `limit.spacing` apart,
    and each at least `limit.period` after the slot `limit.per_window` before it."""
    q, period, spacing = limit.per_window, limit.period, limit.spacing
    previous = _last_time(history)
    times: list[float] = []
    for n in range(start, start + size):
        time = max(earliest, previous + spacing)
        if (older := _time_of(history, times, start, n - q)) is not None:
            time = max(time, older + period + (_RUN_TOLERANCE if n - q < start else 0.0))
        times.append(time)
        previous = time
    return times


def _time_of(history: tuple[Run, ...], times: list[float], start: int, n: int) -> float | None:
    """Slot n's time: from this block's own `times`, else from the history (None: unknown, so
    older than any slot the rule needs)."""
    if n >= start:
        return times[n - start]
    i = bisect.bisect_right(history, (n, math.inf)) - 1
    if i < 0:
        return None
    first, count, t0, step = history[i]
    return t0 + (n - first) * step if n < first + count else None


def _last_time(history: tuple[Run, ...]) -> float:
    if not history:
        return -math.inf
    first, count, t0, step = history[-1]
    return t0 + (count - 1) * step


def extend_history(history: tuple[Run, ...], start: int, times: list[float], q: int) -> tuple[Run, ...]:
    """The history after slots start .. with `times`: the runs of the last q slots."""
    runs = [list(r) for r in history]
    for n, time in enumerate(times, start):
        last = runs[-1] if runs else None
        if last and last[0] + last[1] == n and (
                last[1] == 1 or abs(last[2] + last[1] * last[3] - time) <= _RUN_TOLERANCE):
            if last[1] == 1:
                last[3] = time - last[2]
            last[1] += 1
        else:
            runs.append([n, 1, time, 0.0])
    cut = start + len(times) - q  # slots before this no longer matter
    kept: list[list] = []
    for first, count, t0, step in runs:
        if first + count <= cut:
            continue
        if first < cut:
            t0, count, first = t0 + (cut - first) * step, count - (cut - first), cut
        kept.append([first, count, t0, step])
    while len(kept) > _HISTORY_RUNS:
        _merge_closest(kept)
    return tuple((int(f), int(c), float(t), float(d)) for f, c, t, d in kept)


def _merge_closest(runs: list[list]) -> None:
    """Merge the two neighbouring runs that span the least time into one run whose every slot
    has the later run's last time: it overstates the times it covers, which only delays."""
    def span(i: int) -> float:
        return _last_time((tuple(runs[i + 1]),)) - runs[i][2]

    i = min(range(len(runs) - 1), key=span)
    a, b = runs[i], runs[i + 1]
    runs[i:i + 2] = [[a[0], b[0] + b[1] - a[0], _last_time((tuple(b),)), 0.0]]


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
