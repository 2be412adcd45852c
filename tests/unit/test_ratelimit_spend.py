"""The spend dimension of the shared limiter: a request is admitted only if its expected cost
fits in what is left of the rolling spend window, so a burst of expensive images cannot trip
the service's spend-based limit."""
import pytest

from core.errors import RateLimited
from core.ratelimit import RateLimit, SlotRateLimiter, spend_after
from tests.fakes import FakeClock, InMemorySlotStore

LIMIT = RateLimit(spend_usd_per_window=1.0, spend_window_seconds=600.0, cost_per_request_usd=0.25)


def test_spend_after_admits_up_to_the_limit_and_says_when_the_oldest_spend_leaves():
    entries, wait = spend_after([], 0.6, 1.0, 600, now=0)
    assert wait is None and entries == [(0, 0.6)]
    entries, wait = spend_after(entries, 0.4, 1.0, 600, now=10)
    assert wait is None
    kept, wait = spend_after(entries, 0.1, 1.0, 600, now=20)
    assert kept == entries and wait == 580  # the 0.6 spent at t=0 leaves at t=600
    kept, wait = spend_after(entries, 0.1, 1.0, 600, now=601)  # the first entry has left
    assert wait is None and kept == [(10, 0.4), (601, 0.1)]


def test_a_burst_is_admitted_only_while_its_cost_fits():
    clock = FakeClock()
    limiter = SlotRateLimiter(LIMIT, InMemorySlotStore(), clock)
    for i in range(4):  # 4 x $0.25 = the whole window's $1
        limiter.acquire(f"w{i}", max_wait=0.0)
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("w5", max_wait=10.0)
    assert refused.value.retry_after == pytest.approx(600.0)


def test_the_callers_price_counts_not_the_default():
    clock = FakeClock()
    limiter = SlotRateLimiter(LIMIT, InMemorySlotStore(), clock)
    limiter.acquire("4k-image", max_wait=0.0, cost=0.9)
    with pytest.raises(RateLimited):
        limiter.acquire("another", max_wait=0.0, cost=0.2)
    limiter.acquire("a cheap one", max_wait=0.0, cost=0.1)


def test_a_waiter_gets_in_when_the_window_frees_and_sends_never_exceed_the_limit():
    clock = FakeClock()
    limiter = SlotRateLimiter(LIMIT, InMemorySlotStore(), clock)
    admitted, start = [], clock.now()
    for i in range(12):
        limiter.acquire(f"w{i}", max_wait=1e9)
        admitted.append(clock.now())
    for t in admitted:  # in any 600 s window at most $1 of $0.25 requests: 4
        assert sum(1 for u in admitted if t <= u < t + 600) <= 4
    assert admitted[-1] - start == pytest.approx(1200.0, abs=1.0)  # and the budget is not wasted


def test_a_request_dearer_than_the_whole_window_is_refused_at_once():
    limiter = SlotRateLimiter(LIMIT, InMemorySlotStore(), FakeClock())
    with pytest.raises(RateLimited):
        limiter.acquire("huge", max_wait=1e9, cost=1.5)


def test_a_refused_spend_gives_back_the_concurrency_lease():
    store = InMemorySlotStore()
    limit = RateLimit(spend_usd_per_window=0.25, cost_per_request_usd=0.25, concurrency=1)
    limiter = SlotRateLimiter(limit, store, FakeClock())
    limiter.acquire("a", max_wait=0.0)
    limiter.release("a")
    with pytest.raises(RateLimited):
        limiter.acquire("b", max_wait=0.0)
    assert all(holder is None for holder, _ in store.leases.values())


def test_off_by_default():
    assert RateLimit().spend_usd_per_window is None
    limiter = SlotRateLimiter(RateLimit(), InMemorySlotStore(), FakeClock())
    for i in range(100):
        limiter.acquire(f"w{i}", max_wait=0.0, cost=100.0)


def test_close_spends_are_merged_so_the_window_stays_short_and_never_under_counts():
    entries = []
    for i in range(1000):  # one spend every 0.6 s for 600 s
        entries, wait = spend_after(entries, 0.001, 10.0, 600, now=i * 0.6)
        assert wait is None
    assert len(entries) <= 101
    assert sum(a for _, a in entries) == pytest.approx(1.0)  # nothing dropped while in the window
    assert all(t2 > t1 for (t1, _), (t2, _) in zip(entries, entries[1:]))
