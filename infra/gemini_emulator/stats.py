"""Counters behind ``GET /_emulator/stats``: what was admitted, refused and returned, and when.

``admitted_max_in_any_window`` is the number benchmarks rely on to prove a client never exceeded a
quota: the maximum, over the run, of admitted requests inside any sliding window of
``window_seconds``. It is exact: that maximum is always reached by a window ending at an admission,
so counting the admissions in ``(t - window, t]`` at each admission ``t`` finds it. The same
half-open window is used by the quota engine, so with an RPM limit N it can never exceed N.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _SlidingMax:
    times: deque[float] = field(default_factory=deque)
    max_seen: int = 0

    def add(self, now: float, window_s: float) -> None:
        self.times.append(now)
        while self.times and self.times[0] <= now - window_s:
            self.times.popleft()
        self.max_seen = max(self.max_seen, len(self.times))


@dataclass
class _ModelStats:
    requests: int = 0
    admitted: int = 0
    quota_rejected: int = 0
    images: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    current_concurrency: int = 0
    peak_concurrency: int = 0
    window: _SlidingMax = field(default_factory=_SlidingMax)


class Stats:
    def __init__(self, epoch: float) -> None:
        self.epoch = epoch  # clock reading at start/reset; window starts are offsets from it
        self.started_at = time.time()
        self.requests_total = 0
        self.by_outcome: Counter[str] = Counter()
        self.by_quota_id: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.auth_failures = 0
        self.by_endpoint: Counter[str] = Counter()  # every API request by route name, any outcome
        self.images_generated = 0
        # Images returned per prompt, both lanes: an image is what Gemini bills, so a prompt
        # with two is an item paid for twice. Keyed by a digest (prompts can be 4,000
        # characters and runs millions of lines); the text is kept only for the repeats.
        self._billed: Counter[str] = Counter()
        self._billed_twice: dict[str, str] = {}
        self.current_concurrency = 0
        self.peak_concurrency = 0
        self._models: dict[str, _ModelStats] = {}
        self._window = _SlidingMax()
        self._fixed: dict[float, Counter[str]] = {}
        # Modelled latency of admitted requests; aggregates only, runs can be long.
        self._latency_count = 0
        self._latency_sum_ms = 0.0
        self._latency_min_ms: float | None = None
        self._latency_max_ms: float | None = None

    def _model(self, model: str) -> _ModelStats:
        return self._models.setdefault(model, _ModelStats())

    def _bucket(self, now: float, window_s: float) -> Counter[str]:
        start = ((now - self.epoch) // window_s) * window_s
        return self._fixed.setdefault(round(start, 6), Counter())

    def record_endpoint(self, endpoint: str) -> None:
        self.by_endpoint[endpoint] += 1

    def record_request(self, model: str) -> None:
        self.requests_total += 1
        self._model(model).requests += 1

    def record_outcome(self, model: str, outcome: str) -> None:
        """Every generateContent request that got past auth ends in exactly one outcome."""
        self.by_outcome[outcome] += 1
        self._model(model).outcomes[outcome] += 1

    def record_rejection(self, model: str, quota_id: str, now: float, window_s: float) -> None:
        self.by_quota_id[quota_id] += 1
        self._model(model).quota_rejected += 1
        self._bucket(now, window_s)["rejected"] += 1

    def record_admission(self, model: str, now: float, window_s: float, latency_s: float) -> None:
        stats = self._model(model)
        stats.admitted += 1
        stats.window.add(now, window_s)
        self._window.add(now, window_s)
        self._bucket(now, window_s)["admitted"] += 1
        ms = latency_s * 1000.0
        self._latency_count += 1
        self._latency_sum_ms += ms
        self._latency_min_ms = ms if self._latency_min_ms is None else min(self._latency_min_ms, ms)
        self._latency_max_ms = ms if self._latency_max_ms is None else max(self._latency_max_ms, ms)
        stats.current_concurrency += 1
        stats.peak_concurrency = max(stats.peak_concurrency, stats.current_concurrency)
        self.current_concurrency += 1
        self.peak_concurrency = max(self.peak_concurrency, self.current_concurrency)

    def record_release(self, model: str) -> None:
        self._model(model).current_concurrency -= 1
        self.current_concurrency -= 1

    def record_fault(self, outcome: str) -> None:
        self.faults_injected[outcome] += 1

    def record_images(self, model: str, count: int, now: float, window_s: float) -> None:
        self.images_generated += count
        self._model(model).images += count
        self._bucket(now, window_s)["images"] += count

    def record_billed(self, prompt: str) -> None:
        """One image returned for ``prompt`` (interactive or a batch line)."""
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:24]
        self._billed[digest] += 1
        if self._billed[digest] == 2 and len(self._billed_twice) < 100:
            self._billed_twice[digest] = prompt[:120]

    def snapshot(self) -> dict[str, Any]:
        count = self._latency_count
        return {
            "started_at": self.started_at,
            "requests_total": self.requests_total,
            "by_outcome": dict(self.by_outcome),
            "by_quota_id": dict(self.by_quota_id),
            "faults_injected": dict(self.faults_injected),
            "auth_failures": self.auth_failures,
            "requests_by_endpoint": dict(sorted(self.by_endpoint.items())),
            "by_model": {
                model: {
                    "requests": s.requests,
                    "admitted": s.admitted,
                    "quota_rejected": s.quota_rejected,
                    "images": s.images,
                    "by_outcome": dict(s.outcomes),
                    "admitted_max_in_any_window": s.window.max_seen,
                    "current_concurrency": s.current_concurrency,
                    "peak_concurrency": s.peak_concurrency,
                }
                for model, s in sorted(self._models.items())
            },
            "peak_concurrency": self.peak_concurrency,
            "current_concurrency": self.current_concurrency,
            "admitted_max_in_any_window": self._window.max_seen,
            "windows": [
                {
                    "start": start,
                    "admitted": c["admitted"],
                    "rejected": c["rejected"],
                    "images": c["images"],
                }
                for start, c in sorted(self._fixed.items())
            ],
            "images_generated": self.images_generated,
            "billed_prompts": len(self._billed),
            "billed_twice": sum(1 for n in self._billed.values() if n > 1),
            "billed_twice_prompts": {
                text: self._billed[digest] for digest, text in self._billed_twice.items()
            },
            "latency_ms": {
                "count": count,
                "mean": self._latency_sum_ms / count if count else None,
                "min": self._latency_min_ms,
                "max": self._latency_max_ms,
            },
        }
