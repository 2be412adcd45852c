"""Following a job until it ends: a progress bar on a terminal (done / failed / pending, elapsed,
ETA), one plain line per change anywhere else (CI logs, pipes, tests)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from imagefleet.client import ApiClient, ApiError, Unreachable

TERMINAL = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})
# A job that has ended gets its manifest from the last finisher, or, for a cancelled batch job,
# from a later poller tick (a minute in the cloud): how long to wait for it before going on.
MANIFEST_GRACE_SECONDS = 90.0
# Polls in a row that may fail (each already retried by the client) before --wait gives up.
MAX_POLL_FAILURES = 5


class StillRunning(Exception):
    """--wait-timeout ran out; the job goes on."""

    exit_code = 6


@dataclass(frozen=True)
class Progress:
    status: str
    total: int
    done: int
    failed: int
    cancelled: int
    pending: int
    batches: str

    @classmethod
    def of(cls, status: dict) -> Progress:
        counts = status.get("counts") or {}
        batches = ", ".join(sorted({
            (b.get("gemini_state") or b.get("state") or "?").removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_").lower()
            for b in status.get("batches") or []}))
        return cls(
            status=status["status"], total=int(status.get("item_count") or 0),
            done=counts.get("succeeded", 0), failed=counts.get("failed", 0) + counts.get("dead_lettered", 0),
            cancelled=counts.get("cancelled", 0), pending=counts.get("queued", 0) + counts.get("running", 0),
            batches=batches,
        )

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    def counts_text(self) -> str:
        text = f"done {self.done}/{self.total} · failed {self.failed} · pending {self.pending}"
        if self.cancelled:
            text += f" · cancelled {self.cancelled}"
        if self.batches:
            text += f" · batches {self.batches}"
        return text


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Eta:
    """Time left from the rate items have finished at since we started following."""

    def __init__(self, first: Progress, now: float) -> None:
        self.start, self.start_finished = now, first.finished

    def estimate(self, progress: Progress, now: float) -> float | None:
        finished = progress.finished - self.start_finished
        if finished <= 0 or progress.pending == 0:
            return 0.0 if progress.pending == 0 else None
        return progress.pending * (now - self.start) / finished


def follow(client: ApiClient, job_id: str, *, interval: float = 1.0, timeout: float | None = None,
           stream: TextIO | None = None, tty: bool | None = None,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll GET /v1/jobs/{id} until the job has ended and has its manifest; its last status
    (first page of items). Raises StillRunning after ``timeout`` seconds."""
    stream = stream or sys.stderr
    tty = stream.isatty() if tty is None else tty
    display = _Bar(stream) if tty else _Lines(stream)
    started = clock()
    ended_at = None
    eta = None
    failures = 0
    try:
        while True:
            try:
                status = client.job(job_id, page_size=1)
                failures = 0
            except (Unreachable, ApiError) as exc:
                # A long wait outlives a blip of the API (a redeploy, a 503 from the front
                # end); an answer about the job itself (404) ends it.
                if isinstance(exc, ApiError) and exc.status < 500 or failures >= MAX_POLL_FAILURES:
                    raise
                failures += 1
                display.note(f"{exc}; asking again")
                sleep(interval)
                continue
            now = clock()
            progress = Progress.of(status)
            eta = eta or Eta(progress, now)
            display.update(progress, now - started, eta.estimate(progress, now))
            if progress.status in TERMINAL:
                ended_at = ended_at or now
                if status.get("manifest_uri") or now - ended_at > MANIFEST_GRACE_SECONDS:
                    return status
            if timeout is not None and now - started > timeout:
                raise StillRunning(f"job {job_id} is still {progress.status} after {format_seconds(timeout)}; "
                                   f"it goes on: imagefleet status {job_id}")
            sleep(interval)
    finally:
        display.close()


class _Lines:
    """One line per change of status or counts; the elapsed time and ETA ride along."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last: Progress | None = None

    def update(self, progress: Progress, elapsed: float, eta: float | None) -> None:
        if progress == self.last:
            return
        self.last = progress
        print(f"{progress.status}: {progress.counts_text()} · elapsed {format_seconds(elapsed)}"
              f" · ETA {format_seconds(eta)}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RichProgress, SpinnerColumn, TextColumn

        self.progress = RichProgress(
            SpinnerColumn(), TextColumn("{task.fields[status]:<19}"), BarColumn(),
            TextColumn("{task.fields[counts]}"), TextColumn("· {task.fields[elapsed]} · ETA {task.fields[eta]}"),
            console=Console(file=stream), transient=False,
        )
        self.task: Any = None  # rich's TaskID, once the first update adds it
        self.progress.start()

    def update(self, progress: Progress, elapsed: float, eta: float | None) -> None:
        from rich.markup import escape

        fields: dict[str, Any] = {"status": progress.status, "counts": escape(progress.counts_text()),
                  "elapsed": format_seconds(elapsed), "eta": format_seconds(eta)}
        if self.task is None:
            self.task = self.progress.add_task("job", total=progress.total or None, completed=progress.finished,
                                               **fields)
        else:
            self.progress.update(self.task, total=progress.total or None, completed=progress.finished, **fields)

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()
