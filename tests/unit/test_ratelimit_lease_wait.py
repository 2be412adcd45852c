"""How a delivery waits for a concurrency lease: what it costs in lease reads, and when it gives up."""
import random

import pytest

from core import backoff, ratelimit
from core.errors import RateLimited
from core.ratelimit import RateLimit, SlotRateLimiter
from tests.fakes import FakeClock, InMemorySlotStore

CAPACITY = 4
# How long the waiter waits for a lease to come free, in seconds: from a short generation to a
# slow one (image models answer in a few seconds to tens of seconds).
WAITS = (0.3, 1.0, 2.5, 5.0, 10.0, 20.0)


class CountingSlotStore(InMemorySlotStore):
    """Counts lease documents read, as the Firestore store reads them: one per lease looked at."""

    def __init__(self) -> None:
        super().__init__()
        self.lease_reads = 0

    def try_take_lease(self, owner, capacity, now, ttl):
        lease = super().try_take_lease(owner, capacity, now, ttl)
        self.lease_reads += capacity if lease is None else int(lease) + 1
        return lease


class ReleasingClock(FakeClock):
    """A fake clock that frees a lease when the time of its scheduled release passes."""

    def __init__(self, store: InMemorySlotStore) -> None:
        super().__init__()
        self.store = store
        self.releases: list[tuple[float, str]] = []

    def sleep(self, seconds):
        super().sleep(seconds)
        for when, lease in [r for r in self.releases if r[0] <= self.t]:
            self.store.leases[lease] = (None, 0.0)
            self.releases.remove((when, lease))


def reads_per_lease() -> tuple[float, list[float]]:
    """Lease reads per acquired lease over WAITS, and how late each waiter got its lease."""
    store = CountingSlotStore()
    clock = ReleasingClock(store)
    limiter = SlotRateLimiter(RateLimit(concurrency=CAPACITY), store, clock, lease_ttl=600)
    late = []
    for n, wait in enumerate(WAITS):
        for i in range(CAPACITY):
            store.leases[str(i)] = (f"busy{n}-{i}", clock.now() + 600)
        freed_at = clock.now() + wait
        clock.releases.append((freed_at, str(n % CAPACITY)))
        limiter.acquire(f"waiter{n}", max_wait=60)
        late.append(clock.now() - freed_at)
        limiter.release(f"waiter{n}")
    return store.lease_reads / len(WAITS), late


def test_a_waiting_delivery_backs_off_instead_of_polling_every_lease_every_50_ms(monkeypatch):
    """Measured on this scenario (4 leases, waits of 0.3 to 20 s, 6.5 s on average): polling
    every 50 ms read 524 lease documents per acquired lease (80 reads per second of waiting);
    the backoff (50 ms doubling to 1 s, equal jitter) reads 52, and a waiter gets its lease at
    most one poll (1 s) after it came free."""
    monkeypatch.setattr(backoff, "random", random.Random(5))  # the same jitter on every run
    after, late = reads_per_lease()
    monkeypatch.setattr(ratelimit, "lease_poll_delay", lambda tries: ratelimit._LEASE_POLL_SECONDS)
    before, _ = reads_per_lease()
    print(f"lease reads per acquired lease: fixed 50 ms poll {before:.0f}, backoff {after:.0f}")
    assert after <= 60
    assert before >= 5 * after
    assert max(late) <= ratelimit._LEASE_POLL_MAX_SECONDS + 1e-9


def test_the_wait_never_runs_past_max_wait():
    store = CountingSlotStore()
    clock = FakeClock()
    limiter = SlotRateLimiter(RateLimit(concurrency=1), store, clock)
    limiter.acquire("holder", 1)
    start = clock.now()
    with pytest.raises(RateLimited):
        limiter.acquire("waiter", 7.3)
    assert clock.now() == pytest.approx(start + 7.3)
    assert max(clock.slept) <= ratelimit._LEASE_POLL_MAX_SECONDS


def test_the_delays_grow_to_the_cap_and_stay_in_the_upper_half_of_each_step():
    for tries in range(12):
        step = min(ratelimit._LEASE_POLL_MAX_SECONDS, ratelimit._LEASE_POLL_SECONDS * 2 ** tries)
        delays = [ratelimit.lease_poll_delay(tries) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
    assert ratelimit.lease_poll_delay(1000) <= ratelimit._LEASE_POLL_MAX_SECONDS
