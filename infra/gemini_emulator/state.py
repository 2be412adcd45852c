"""All mutable emulator state behind one lock: config, quota usage, stats, RNG, request log.

Handlers run on a single event loop, but :class:`BackgroundEmulator` lets test code in another
thread read the same object, and rendering runs on executor threads; a plain lock held for
microseconds (never across an ``await``) keeps every read consistent. Future modules (files,
batches) hang their stores off this object too, so ``reset`` clears everything in one place.
"""

from __future__ import annotations

import concurrent.futures
import copy
import random
import threading
import time
from collections import deque
from typing import Any, Callable

from aiohttp import web

from infra.gemini_emulator.config import apply_patch, initial_config
from infra.gemini_emulator.quota import QuotaEngine
from infra.gemini_emulator.stats import Stats

Clock = Callable[[], float]


class EmulatorState:
    def __init__(self, config: dict[str, Any] | None = None, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.startup_config = initial_config(config)
        # Rendering is CPU work; keep it off the event loop so modelled latency and concurrency
        # are not distorted by a blocked loop.
        self.executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="gemini-emu-render")
        self._reset_runtime(self.startup_config)

    def _reset_runtime(self, config: dict[str, Any]) -> None:
        self.config = copy.deepcopy(config)
        self.rng = random.Random(config["seed"])
        self.quota = QuotaEngine()
        self.stats = Stats(epoch=self.clock())
        self.script_pos = 0
        self.request_log: deque[dict[str, Any]] = deque(maxlen=config["request_log_size"])

    def update_config(self, patch: Any) -> dict[str, Any]:
        """Merge ``patch`` (raises ConfigError, leaving state untouched) and return the result."""
        with self.lock:
            new = apply_patch(self.config, patch)
            faults_patch = patch.get("faults") if isinstance(patch, dict) else None
            if isinstance(faults_patch, dict) and "script" in faults_patch:
                self.script_pos = 0  # a new script starts from its first entry
            if "seed" in patch:
                self.rng = random.Random(new["seed"])
            if new["request_log_size"] != self.config["request_log_size"]:
                self.request_log = deque(self.request_log, maxlen=new["request_log_size"])
            self.config = new
            return copy.deepcopy(new)

    def reset(self, *, keep_config: bool = False) -> dict[str, Any]:
        """Forget all usage, stats and logs; restore the startup config unless ``keep_config``."""
        with self.lock:
            self._reset_runtime(self.config if keep_config else self.startup_config)
            return copy.deepcopy(self.config)

    def config_snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    def stats_snapshot(self) -> dict[str, Any]:
        with self.lock:
            snapshot = self.stats.snapshot()
            snapshot["script_remaining"] = max(0, len(self.config["faults"]["script"]) - self.script_pos)
            return snapshot

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# How handlers find the state: ``request.app[STATE_KEY]``.
STATE_KEY = web.AppKey("gemini_emulator_state", EmulatorState)
