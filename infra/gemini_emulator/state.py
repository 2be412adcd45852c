"""All mutable emulator state behind one lock: config, quota usage, stats, RNG, request log,
files and batches.

Handlers run on a single event loop, but :class:`BackgroundEmulator` lets test code in another
thread read the same object, and rendering and batch workers run on executor threads; a plain
lock held for microseconds (never across an ``await``) keeps every read consistent. ``reset``
clears everything in one place, including the bytes of files and batch results on disk.
"""

from __future__ import annotations

import concurrent.futures
import copy
import random
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from infra.gemini_emulator.batch_jobs import BatchStore
from infra.gemini_emulator.config import apply_patch, initial_config
from infra.gemini_emulator.filestore import FileStore
from infra.gemini_emulator.quota import QuotaEngine
from infra.gemini_emulator.stats import Stats
from infra.gemini_emulator.webhook_store import Registry

Clock = Callable[[], float]


# Batch workers render whole batches; two keep a big batch from starving the rest without
# letting batches crowd out interactive rendering, which has its own pool.
BATCH_WORKERS = 2


class EmulatorState:
    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        clock: Clock = time.monotonic,
        data_dir: str | Path | None = None,
    ) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.startup_config = initial_config(config)
        # Timestamps in API bodies follow the injected clock, so they agree with state changes.
        self._clock_epoch, self._wall_epoch = clock(), time.time()
        if data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="gemini-emulator-"))
            # Removed at close(), or at interpreter exit if the app was never cleaned up.
            self._remove_dir: Callable[[], Any] | None = weakref.finalize(self, shutil.rmtree, self.data_dir, ignore_errors=True)
        else:
            self.data_dir = Path(data_dir)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._remove_dir = None
        # Rendering is CPU work; keep it off the event loop so modelled latency and concurrency
        # are not distorted by a blocked loop.
        self.executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="gemini-emu-render")
        self.batch_executor = concurrent.futures.ThreadPoolExecutor(BATCH_WORKERS, thread_name_prefix="gemini-emu-batch")
        self.files = FileStore(self.data_dir)
        self.batches = BatchStore()
        self.webhooks = Registry()  # registrations outlive reset(): they are the project's setup
        self._reset_runtime(self.startup_config)

    def wall(self, clock_time: float) -> float:
        """Epoch seconds for a reading of the emulator clock."""
        return self._wall_epoch + (clock_time - self._clock_epoch)

    def _reset_runtime(self, config: dict[str, Any]) -> None:
        self.config = copy.deepcopy(config)
        self.rng = random.Random(config["seed"])
        self.quota = QuotaEngine()
        self.stats = Stats(epoch=self.clock())
        self.script_pos = 0
        self.request_log: deque[dict[str, Any]] = deque(maxlen=config["request_log_size"])
        # Workers of old batches see their cancel flag and delete what they were writing.
        self.batches.clear()
        self.files.clear()
        self.files = FileStore(self.data_dir)
        self.batches = BatchStore()

    def update_config(self, patch: Any) -> dict[str, Any]:
        """Merge ``patch`` (raises ConfigError, leaving state untouched) and return the result."""
        with self.lock:
            new = apply_patch(self.config, patch)
            faults_patch = patch.get("faults") if isinstance(patch, dict) else None
            if isinstance(faults_patch, dict) and "script" in faults_patch:
                self.script_pos = 0  # a new script starts from its first entry
            batch_patch = patch.get("batch") if isinstance(patch, dict) else None
            if isinstance(batch_patch, dict) and "outcome_script" in batch_patch:
                self.batches.script_pos = 0
            if isinstance(batch_patch, dict) and "create_script" in batch_patch:
                self.batches.create_script_pos = 0
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
            self.webhooks.clear_deliveries()
            return copy.deepcopy(self.config)

    def config_snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    def stats_snapshot(self) -> dict[str, Any]:
        with self.lock:
            snapshot = self.stats.snapshot()
            snapshot["script_remaining"] = max(0, len(self.config["faults"]["script"]) - self.script_pos)
            self.files.expire(self.clock())
            snapshot["files"] = self.files.snapshot()
            snapshot["batches"] = self.batches.snapshot(len(self.config["batch"]["outcome_script"]),
                                                        len(self.config["batch"]["create_script"]))
            return snapshot

    def close(self) -> None:
        """Stop workers and delete every file this emulator wrote (and its temp dir)."""
        with self.lock:
            self.batches.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        # Workers stop within one line once cancelled; wait so nothing writes into a removed dir.
        self.batch_executor.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            self.files.clear()
        if self._remove_dir is not None:
            self._remove_dir()


# How handlers find the state: ``request.app[STATE_KEY]``.
STATE_KEY = web.AppKey("gemini_emulator_state", EmulatorState)
