"""The shared limiter's algorithm, on the in-memory slot store and a fake clock."""
import threading

import pytest

from core.errors import RateLimited
from core.ratelimit import RateLimit, SlotRateLimiter, parse_retry_delay
from tests.fakes import FakeClock, InMemorySlotStore


def send_times(limiter: SlotRateLimiter, clock: FakeClock, n: int, max_wait: float = 1e9) -> list[float]:
    times = []
    for i in range(n):
        limiter.acquire(f"w{i}", max_wait)
        times.append(clock.now())
        limiter.release(f"w{i}")
    return times


def test_interval_uses_the_tighter_dimension_and_the_safety_margin():
    limit = RateLimit(requests_per_window=20, images_per_window=10, window_seconds=60, safety=1.0)
    assert limit.interval == pytest.approx(6.0)
    assert RateLimit(requests_per_window=10, window_seconds=60, safety=0.5).interval == pytest.approx(12.0)
    assert RateLimit().interval == 0.0


def test_sends_are_spaced_so_no_window_exceeds_the_quota():
    clock = FakeClock()
    limit = RateLimit(requests_per_window=10, window_seconds=60, safety=0.95)
    times = send_times(SlotRateLimiter(limit, InMemorySlotStore(), clock), clock, 50)

    for t in times:
        in_window = [u for u in times if t <= u < t + 60]
        assert len(in_window) <= 10
    # ...and it does not waste the quota: 50 sends take about 50 intervals.
    assert times[-1] - times[0] == pytest.approx(49 * limit.interval, rel=0.01)


def test_two_instances_sharing_a_store_never_take_the_same_slot():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=6, window_seconds=6, safety=1.0)
    a = SlotRateLimiter(limit, store, clock)
    b = SlotRateLimiter(limit, store, clock)
    for i in range(10):
        (a if i % 2 else b).acquire(f"o{i}", 1e9)
    slots = store.slots()
    assert slots == list(range(slots[0], slots[0] + 10))


def test_acquire_refuses_when_the_next_slot_is_beyond_max_wait():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(requests_per_window=1, window_seconds=10, safety=1.0), store, clock)
    limiter.acquire("first", 0.0)
    with pytest.raises(RateLimited) as e:
        limiter.acquire("second", 5.0)
    assert e.value.retry_after == pytest.approx(10.0, abs=0.01)
    assert len(store.blocks) == 1  # a refused acquire claims nothing


def test_push_back_delays_everyone_until_the_window_frees():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(requests_per_window=60, window_seconds=60), store, clock)
    limiter.push_back(clock.now() + 30)
    limiter.acquire("w", 60)
    assert clock.now() >= 1_800_000_030.0


def test_push_back_seen_after_sleeping_makes_the_worker_wait_again():
    class PushDuringSleep(FakeClock):
        pushed = False

        def sleep(self, seconds):
            super().sleep(seconds)
            if not self.pushed:
                self.pushed = True
                store.push_blocked_until(self.now() + 20)

    # Another instance pushes while this one sleeps 4 s to its slot: longer than the cache of
    # blocked_until lives, so the push is seen before the send.
    store, clock = InMemorySlotStore(), PushDuringSleep(start=1_800_000_001.0)
    limiter = SlotRateLimiter(RateLimit(requests_per_window=1, window_seconds=5, safety=1.0), store, clock)
    start = clock.now()
    limiter.acquire("w", 100)
    assert clock.now() >= start + 20


def test_concurrency_leases_cap_requests_in_flight():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(concurrency=2), store, clock)
    limiter.acquire("a", 1)
    limiter.acquire("b", 1)
    with pytest.raises(RateLimited):
        limiter.acquire("c", 0.2)
    limiter.release("a")
    limiter.acquire("c", 0.2)


def test_expired_leases_are_reclaimed():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(concurrency=1), store, clock, lease_ttl=10)
    limiter.acquire("crashed", 1)
    clock.advance(11)
    limiter.acquire("next", 1)


def test_threads_contending_for_slots_each_get_a_distinct_one():
    store = InMemorySlotStore()

    class RealishClock(FakeClock):
        def sleep(self, seconds):
            pass  # threads must not move a shared fake clock

    clock = RealishClock()
    limit = RateLimit(requests_per_window=1000, window_seconds=1, safety=1.0)
    errors = []

    def worker(n):
        try:
            SlotRateLimiter(limit, store, clock).acquire(f"t{n}", 1e9)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(store.owners.values())) == 20
    assert len(store.slots()) == len(set(store.slots()))


@pytest.mark.parametrize("text,expected", [("47s", 47.0), ("4.2s", 4.2), ("0s", 0.0), ("", None), (None, None), ("abc", None)])
def test_parse_retry_delay(text, expected):
    assert parse_retry_delay(text) == expected


def test_a_send_stalled_past_its_slot_takes_a_fresh_slot():
    class StallOnce(FakeClock):
        stalled = False

        def sleep(self, seconds):
            super().sleep(seconds)
            if not self.stalled:
                self.stalled = True
                self.advance(0.9)  # the instance froze right after its slot came

    store, clock = InMemorySlotStore(), StallOnce()
    limit = RateLimit(requests_per_window=10, window_seconds=10, safety=1.0)  # 1 s apart
    limiter = SlotRateLimiter(limit, store, clock)
    limiter.acquire("w", 100)
    assert len(store.blocks) == 2  # the stale slot is abandoned, never used late
    assert clock.now() == pytest.approx(store.slots()[-1] * limit.interval)


def test_the_lease_is_taken_before_the_slot_so_nothing_delays_the_send():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=10, window_seconds=10, concurrency=1, safety=1.0)
    first = SlotRateLimiter(limit, store, clock)
    first.acquire("a", 10)
    clock.advance(3)  # "a" is still in flight
    second = SlotRateLimiter(limit, store, clock)
    with pytest.raises(RateLimited):
        second.acquire("b", 1)
    assert len(store.blocks) == 1  # no slot claimed while waiting for the lease
    first.release("a")
    second.acquire("b", 3)  # its back-off may make it ask the store a little later
    assert clock.now() == pytest.approx(store.slots()[-1] * limit.interval)


def test_a_refused_slot_gives_the_lease_back():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=1, window_seconds=100, concurrency=1, safety=1.0)
    limiter = SlotRateLimiter(limit, store, clock)
    limiter.acquire("a", 1)
    limiter.release("a")
    with pytest.raises(RateLimited):
        limiter.acquire("b", 1)  # next slot is 100 s away
    assert store.try_take_lease("c", 1, clock.now(), 10) is not None


class _FleetClock:
    """One instance's view of a shared fake time: its clock runs `skew` seconds ahead, and a
    sleep may overrun by up to `stall` seconds (a loaded or frozen instance)."""

    def __init__(self, shared: FakeClock, skew: float, stall: float, rng) -> None:
        self.shared, self.skew, self.stall, self.rng = shared, skew, stall, rng

    def now(self) -> float:
        return self.shared.t + self.skew

    def sleep(self, seconds: float) -> None:
        target = self.shared.t + max(0.0, seconds) + self.rng.uniform(0, self.stall)
        self.shared.t = max(self.shared.t, target)

    def wait(self, wake, woken, seconds: float) -> None:
        self.sleep(seconds)


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("per_window", [10, 60, 300, 1000])
def test_a_fleet_claiming_blocks_never_exceeds_the_quota_in_any_window(per_window, seed):
    import random

    rng = random.Random(seed)
    limit = RateLimit(requests_per_window=per_window, window_seconds=60, safety=0.99)
    store, shared = InMemorySlotStore(), FakeClock()
    # The margin tolerates 0.6 s in all: half for late sends, a quarter each for clock skew and
    # network jitter. Sleeps overrun by up to 1.2 s, so some sends are late beyond that.
    tolerance = 60 * (1 / 0.99 - 1)
    skews = [rng.uniform(0, tolerance / 4) for _ in range(4)]
    fleet = [SlotRateLimiter(limit, store, _FleetClock(shared, s, 2 * tolerance, rng)) for s in skews]
    arrivals = []
    for i in range(3 * per_window):
        if rng.random() < 0.02:
            fleet[rng.randrange(4)].push_back(shared.t + rng.uniform(0, 5))
        fleet[rng.randrange(4)].acquire(f"o{i}", 1e9)
        arrivals.append(shared.t + rng.uniform(0, tolerance / 4))  # network jitter
    assert max_in_any_window(arrivals, 60) <= per_window
    assert limit.block_size > 1 or per_window <= 60  # the larger rates do use blocks


def test_one_instance_at_the_quota_uses_nearly_all_of_it():
    clock = FakeClock()
    limit = RateLimit(requests_per_window=1000, window_seconds=60, safety=0.99)
    times = send_times(SlotRateLimiter(limit, InMemorySlotStore(), clock), clock, 3000)
    assert max_in_any_window(times, 60) <= 1000
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.985 * 1000 / 60


@pytest.mark.parametrize("per_window", [60, 600, 6000])
def test_the_limiters_store_cost_per_request_does_not_grow_with_the_rate(per_window):
    clock, store = FakeClock(), InMemorySlotStore()
    limit = RateLimit(requests_per_window=per_window, window_seconds=60, safety=0.99)
    n = per_window  # one window's worth
    send_times(SlotRateLimiter(limit, store, clock), clock, n)
    # Blocks grow to a second's worth of sends within the first second; blocked_until is
    # read about once a second.
    assert store.reads <= 60 / 1.0 + 2
    assert (len(store.blocks) + store.reads) / n <= {60: 2.1, 600: 0.25, 6000: 0.05}[per_window]


def test_a_push_back_from_another_instance_reaches_this_one_within_a_second():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=600, window_seconds=60, safety=0.99)
    here, there = SlotRateLimiter(limit, store, clock), SlotRateLimiter(limit, store, clock)
    here.acquire("a", 10)
    there.push_back(clock.now() + 30)
    clock.advance(1.0)
    here.acquire("b", 100)
    assert clock.now() >= 1_800_000_030.0


def test_an_instance_hands_out_the_slots_of_its_block_in_order_from_memory():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=600, window_seconds=60, safety=1.0)  # 0.1 s apart
    assert limit.block_size == 10
    times = send_times(SlotRateLimiter(limit, store, clock), clock, 25)
    # Blocks grow while the instance turns out to be the only one taking slots.
    assert [b.size for b in store.blocks.values()][-2:] == [10, 10]
    assert len(store.blocks) < 12
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [0.1] * 24


def test_waiting_for_a_lease_backs_off_instead_of_polling():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(concurrency=1), store, clock)
    limiter.acquire("a", 1)
    with pytest.raises(RateLimited):
        limiter.acquire("b", 10)
    assert len(clock.slept) <= 20  # every 50 ms would be 200 tries
    assert max(clock.slept) <= 1.0


def test_instances_taking_turns_with_one_delivery_each_waste_no_slots():
    # Ten instances, one delivery each, taking turns: each must claim blocks of one slot,
    # or the slots it cannot use would pass and the fleet would fall short of the quota.
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=600, window_seconds=60, safety=1.0)
    fleet = [SlotRateLimiter(limit, store, clock) for _ in range(10)]
    times = []
    for i in range(200):
        fleet[i % 10].acquire(f"o{i}", 1e9)
        times.append(clock.now())
    assert (times[-1] - times[0]) == pytest.approx(199 * limit.interval)


def test_a_release_hands_the_lease_to_a_waiting_delivery_of_the_same_instance():
    from core.clock import SystemClock

    class CountingStore(InMemorySlotStore):
        releases = 0

        def release_lease(self, lease_id, owner):
            self.releases += 1
            super().release_lease(lease_id, owner)

    store = CountingStore()
    limiter = SlotRateLimiter(RateLimit(concurrency=1), store, SystemClock())
    limiter.acquire("a", 1)
    waiter = threading.Thread(target=limiter.acquire, args=("b", 60))
    waiter.start()
    while limiter._lease_waiters == 0:  # b is waiting for the lease
        threading.Event().wait(0.001)
    limiter.release("a")
    waiter.join()
    assert "b" in limiter._leases and store.releases == 0  # handed over, no store operation
    limiter.release("b")
    assert store.releases == 1  # nobody waits: back to the store


def test_a_lease_near_its_expiry_is_not_handed_over_but_taken_afresh():
    store, clock = InMemorySlotStore(), FakeClock()
    limiter = SlotRateLimiter(RateLimit(concurrency=1), store, clock, lease_ttl=100, longest_hold=80)
    limiter.acquire("a", 1)
    lease_id, expires_at = limiter._leases["a"]
    clock.advance(30)  # 70 s left: less than a delivery may hold it
    limiter._lease_waiters = 1  # a delivery of this instance waits
    limiter.release("a")
    limiter._lease_waiters = 0
    assert limiter._idle_lease(clock.now()) is None  # given back to the store instead
    limiter.acquire("b", 1)
    assert limiter._leases["b"][1] == pytest.approx(clock.now() + 100)
