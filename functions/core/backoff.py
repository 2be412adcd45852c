"""Exponential back-off with jitter, shared by every retry loop in core (webhook deliveries,
batch creates after a 429, deliveries waiting for a concurrency lease)."""
from __future__ import annotations

import random
from collections.abc import Callable


def backoff_seconds(failures: int, *, base: float, cap: float, rand: Callable[[], float] | None = None) -> float:
    """The wait after `failures` failed attempts: base, 2 base, 4 base... up to cap, with
    "equal jitter" (a random point in the step's upper half), so callers that failed together
    are not all retried at the same instant and no wait is shorter than half its step. `rand`
    defaults to the module's `random.random`, looked up at each call (tests seed it)."""
    step = min(cap, base * 2 ** min(max(failures - 1, 0), 40))
    return step / 2 + (rand or random.random)() * step / 2
