"""Per-model quota engine: strict sliding windows over admitted requests, plus concurrency.

Pure logic: no I/O, no clock of its own (every call takes ``now``, any monotonic float), no
config reading (every call takes the limits in effect), so it is unit-testable without sleeping
and a config change applies to the very next request.

Semantics, chosen so that "never more than N admitted in any window" is provable from stats:
* a request is admitted only if fewer than ``limit`` requests were admitted in ``(now - window, now]``;
* rejected requests are not logged, so hammering a limit does not extend it;
* the retry delay is the time until enough logged entries age out to admit one more request.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# One place for the ids clients see in QuotaFailure.violations[0].quotaId. RPM/RPD ids are the real
# ones; the real API's ids for images and concurrency were not observed, these follow its pattern.
QUOTA_ID_RPM = "GenerateRequestsPerMinutePerProjectPerModel"
QUOTA_ID_IPM = "GenerateImagesPerMinutePerProjectPerModel"
QUOTA_ID_RPD = "GenerateRequestsPerDayPerProjectPerModel"
QUOTA_ID_CONCURRENT = "GenerateContentConcurrentRequestsPerProjectPerModel"

_METRIC = "generativelanguage.googleapis.com/"
QUOTA_METRICS = {
    QUOTA_ID_RPM: _METRIC + "generate_content_paid_tier_requests",
    QUOTA_ID_IPM: _METRIC + "generate_content_paid_tier_images",
    QUOTA_ID_RPD: _METRIC + "generate_content_paid_tier_requests",
    QUOTA_ID_CONCURRENT: _METRIC + "generate_content_concurrent_requests",
}

LIMIT_KEYS = ("rpm", "ipm", "rpd", "concurrent")


@dataclass(frozen=True)
class QuotaLimits:
    """Limits for one model; ``None`` or 0 means unlimited. "Per minute" is per ``window_s``."""

    rpm: int | None = None
    ipm: int | None = None
    rpd: int | None = None
    concurrent: int | None = None

    @classmethod
    def from_config(cls, quotas: dict[str, dict[str, int | None]], model: str) -> QuotaLimits:
        """A model's own entry replaces ``default`` entirely (it is not merged with it)."""
        entry = quotas.get(model, quotas.get("default", {}))
        return cls(**{k: entry.get(k) or None for k in LIMIT_KEYS})


@dataclass(frozen=True)
class Violation:
    quota_id: str
    limit: int
    retry_after_s: float

    @property
    def quota_metric(self) -> str:
        return QUOTA_METRICS[self.quota_id]


@dataclass
class _ModelUsage:
    requests: list[float] = field(default_factory=list)  # admission times, ascending
    images: list[float] = field(default_factory=list)  # one entry per admitted image
    in_flight: int = 0


def _free_at(log: list[float], now: float, window: float, limit: int, needed: int) -> float | None:
    """Seconds until ``needed`` more units fit under ``limit`` in the window; None if they fit now."""
    start = bisect.bisect_right(log, now - window)
    used = len(log) - start
    if used + needed <= limit:
        return None
    if needed > limit:
        return window  # can never fit; tell the client to back off a whole window
    # The entries that must age out are the oldest ``used + needed - limit`` in the window; the last
    # of them leaves the window at its timestamp + window.
    return log[start + used + needed - limit - 1] + window - now


class QuotaEngine:
    def __init__(self) -> None:
        self._usage: dict[str, _ModelUsage] = {}

    def try_acquire(
        self,
        model: str,
        *,
        images: int,
        now: float,
        limits: QuotaLimits,
        window_s: float,
        day_s: float,
        concurrency_retry_s: float = 1.0,
    ) -> Violation | None:
        """Admit one request (logging it and taking a concurrency slot) or say which quota refused.

        Checks run in order RPD, RPM, IPM, concurrency, and the first violated one is reported:
        a client that honours the most severe retry delay first wastes the fewest requests.
        """
        usage = self._usage.setdefault(model, _ModelUsage())
        self._trim(usage, now, max(window_s, day_s if limits.rpd else 0.0))
        checks = (
            (QUOTA_ID_RPD, limits.rpd, usage.requests, day_s, 1),
            (QUOTA_ID_RPM, limits.rpm, usage.requests, window_s, 1),
            (QUOTA_ID_IPM, limits.ipm, usage.images, window_s, images),
        )
        for quota_id, limit, log, window, needed in checks:
            if not limit or not needed:
                continue
            wait = _free_at(log, now, window, limit, needed)
            if wait is not None:
                return Violation(quota_id, limit, max(wait, 0.0))
        if limits.concurrent and usage.in_flight >= limits.concurrent:
            return Violation(QUOTA_ID_CONCURRENT, limits.concurrent, concurrency_retry_s)
        bisect.insort(usage.requests, now)
        for _ in range(images):
            bisect.insort(usage.images, now)
        usage.in_flight += 1
        return None

    def release(self, model: str) -> None:
        """Give back the concurrency slot taken by an admitted request (success or not)."""
        usage = self._usage.get(model)
        if usage and usage.in_flight > 0:
            usage.in_flight -= 1

    def in_flight(self, model: str) -> int:
        usage = self._usage.get(model)
        return usage.in_flight if usage else 0

    @staticmethod
    def _trim(usage: _ModelUsage, now: float, horizon: float) -> None:
        # Entries older than every window in use can never matter again.
        for log in (usage.requests, usage.images):
            cut = bisect.bisect_right(log, now - horizon)
            if cut:
                del log[:cut]
