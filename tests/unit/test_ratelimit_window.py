"""The sliding-log rule of the shared limiter: any window holds at most the quota, bursts included."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core.ratelimit as ratelimit
from core.models import SlotBlock
from core.ratelimit import RateLimit, SlotRateLimiter, extend_history, slot_times
from tests.fakes import FakeClock, InMemorySlotStore
from tests.unit.test_ratelimit import _FleetClock, max_in_any_window


def chain(limit: RateLimit, claims: list[tuple[float, int]]) -> list[float]:
    """Every slot time of a chain built by claims of (seconds after the last claim, size)."""
    history, start, now, times = (), 0, 1_800_000_000.0, []
    for gap, size in claims:
        now += gap
        block = slot_times(history, start, size, now, limit)
        history = extend_history(history, start, block, limit.per_window)
        times += block
        start += size
    return times


claims = st.lists(st.tuples(st.floats(0, 30), st.integers(1, 40)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(claims=claims, q=st.integers(1, 30), spread=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       runs=st.sampled_from([2, 3, 64]), seed=st.integers(0, 2**32))
def test_any_window_holds_at_most_the_quota_whatever_is_sent_late_or_early(claims, q, spread, runs, seed):
    limit = RateLimit(requests_per_window=q, window_seconds=12, safety=0.95, spread=spread)
    guard = limit.period - limit.window_seconds
    rng = random.Random(seed)
    original = ratelimit._HISTORY_RUNS
    ratelimit._HISTORY_RUNS = runs  # a tiny cap makes the coarsening run often
    try:
        times = chain(limit, claims)
    finally:
        ratelimit._HISTORY_RUNS = original
    assert times == sorted(times)
    # Any subset of the slots is used (unused ones pass), each send up to D late or S early
    # (another instance's clock) and J later on the wire, with D + S + J = the guard.
    arrivals = [t + rng.uniform(-guard / 4, guard / 2) + rng.uniform(0, guard / 4)
                for t in times if rng.random() < 0.9]
    assert max_in_any_window(arrivals, limit.window_seconds) <= q


@settings(max_examples=60, deadline=None)
@given(claims=claims, q=st.integers(1, 30))
def test_a_coarsened_history_only_delays(claims, q):
    limit = RateLimit(requests_per_window=q, window_seconds=12, safety=0.95, spread=0.05)
    exact = chain(limit, claims)
    original = ratelimit._HISTORY_RUNS
    ratelimit._HISTORY_RUNS = 2
    try:
        coarse = chain(limit, claims)
    finally:
        ratelimit._HISTORY_RUNS = original
    assert all(c >= e - 1e-9 for c, e in zip(coarse, exact, strict=True))


def test_the_history_keeps_only_the_last_quota_of_slots_in_few_runs():
    limit = RateLimit(requests_per_window=100, window_seconds=60, safety=0.99, spread=1.0)
    history, start, now = (), 0, 1_800_000_000.0
    for _ in range(50):
        block = slot_times(history, start, 7, now, limit)
        history = extend_history(history, start, block, limit.per_window)
        start, now = start + 7, block[-1]
    assert history[0][0] == start - 100 and sum(run[1] for run in history) == 100
    assert len(history) <= 2  # evenly spaced blocks merge: one run per period at most


def test_an_idle_window_lets_the_whole_quota_go_out_at_once_and_no_more():
    clock = FakeClock()
    limit = RateLimit(requests_per_window=60, window_seconds=60, safety=0.99, spread=0.05)
    limiter = SlotRateLimiter(limit, InMemorySlotStore(), clock)
    start = clock.now()
    for i in range(60):
        limiter.acquire(f"w{i}", 1e9)
    assert clock.now() - start == pytest.approx(59 * limit.spacing, abs=1e-3)  # 3 s, not 59 intervals
    limiter.acquire("one more", 1e9)
    assert clock.now() - start == pytest.approx(limit.period, abs=2e-3)  # the first slot's time + P


def test_a_lone_request_after_a_pause_goes_out_at_once():
    # A sliding log, not windows fixed in time: one send, then another 20 s later while the
    # window holds one send of ten, goes at once.
    clock = FakeClock()
    limiter = SlotRateLimiter(RateLimit(requests_per_window=10, window_seconds=60), InMemorySlotStore(), clock)
    limiter.acquire("a", 1e9)
    clock.advance(20)
    before = clock.now()
    limiter.acquire("b", 0.0)
    assert clock.now() == before


def test_a_block_of_the_evenly_spaced_chain_counts_as_a_full_window_at_its_end():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=10, window_seconds=60, safety=0.99)
    last_slot = int(clock.now() / limit.interval)  # the older chain's slot i was at i * interval
    store.try_claim_block(SlotBlock(7, last_slot - 3, 4), "old", clock.now() + 3600)
    SlotRateLimiter(limit, store, clock).acquire("new", 1e9)
    assert clock.now() >= last_slot * limit.interval + limit.period


@pytest.mark.parametrize("seed", range(3))
def test_a_fleet_with_skew_stalls_and_push_backs_bursts_within_the_quota(seed):
    # Several instances, clocks up to a quarter of the guard apart, sleeps that overrun by up
    # to the lateness allowed (late sends, which give their slot up, are in test_ratelimit.py's
    # fleet test), push-backs now and then, and idle
    # gaps of more than a window, so that whole-window bursts happen again and again.
    rng = random.Random(seed)
    limit = RateLimit(requests_per_window=20, window_seconds=12, safety=0.95, spread=0.05)
    guard = limit.period - limit.window_seconds
    store, shared = InMemorySlotStore(), FakeClock()
    fleet = [SlotRateLimiter(limit, store, _FleetClock(shared, rng.uniform(0, guard / 4), limit.lateness, rng))
             for _ in range(5)]
    arrivals = []
    for i in range(300):
        if rng.random() < 0.02:
            fleet[rng.randrange(5)].push_back(shared.t + rng.uniform(0, 3))
        if rng.random() < 0.03:
            shared.t += rng.uniform(0, 2 * limit.period)  # a lull
        fleet[rng.randrange(5)].acquire(f"o{i}", 1e9)
        arrivals.append(shared.t + rng.uniform(0, guard / 4))
    assert max_in_any_window(arrivals, limit.window_seconds) <= 20
    # ...and the bursts did fill windows: the rule is not met by sending too little.
    assert max_in_any_window(arrivals, limit.window_seconds) >= 15


def test_warm_up_reads_the_chain_end_so_the_first_claim_needs_no_read():
    store, clock = InMemorySlotStore(), FakeClock()
    limit = RateLimit(requests_per_window=10, window_seconds=60)
    SlotRateLimiter(limit, store, clock).acquire("elsewhere", 1)  # another instance's block
    limiter = SlotRateLimiter(limit, store, clock)
    limiter.warm_up()
    reads = store.reads
    limiter.acquire("first", 1e9)
    assert store.reads - reads == 1  # blocked_until only, not the chain's end
    assert len(store.blocks) == 2
