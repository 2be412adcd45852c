"""The batch lane: intents, submission, reconciliation and streamed ingestion of results.

batches.create is not idempotent on Gemini's side, so every batch starts life as an intent
record in our store. The intent id is the batch's display name: after a crash between
"create" and "record", the poller finds the batch by that name instead of creating it again.
Everything that touches an intent holds its lease, so two ticks that meet (Cloud Scheduler does
not overlap its attempts, but a tick past its attempt deadline or a manual run can) never work on the
same batch twice, and ingestion checkpoints its progress so a killed poller resumes.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from core.backoff import backoff_seconds
from core.catalog import Catalog
from core.checkpoints import Checkpointed
from core.errors import (
    DeliveryFailed, GenerationError, InvalidRequest, MalformedResponse, ModelUnavailable, PermissionDenied, QuotaExceeded,
)
from core import images
from core.jsonl import LineSplitter, image_facts, request_line, scan_result_line, stored_metadata
from core.models import (
    BatchInfo,
    BatchIntent,
    Item,
    ItemState,
    Job,
    JobStatus,
    IntentState,
    TERMINAL_ITEM_STATES,
    object_name,
)
from core.jobs import finalize_job_if_done
from core.ports import BatchApi, BatchNudges, BatchStore, Clock, EventOutbox, ImageSink, JobStore
from core.prompts import compose_prompt
from core.transitions import (
    BatchCancelled, BatchDeadLettered, BatchErrorNoted, BatchFailed, BatchRecorded, BatchSucceeded, GeminiStateSeen,
    IngestProgress, IngestRequested, IngestStarted, InputDropped, InputRefused, InputUploaded, IntentChange, IntentFinished,
    ItemChange, QuotaBackOff, ResultsUnreadable,
)

log = logging.getLogger(__name__)

# Successive ticks that must find a SUCCEEDED batch's results file gone before its unfinished
# items are resubmitted.
_RESULTS_ERRORS_BEFORE_RESUBMIT = 3

# A retried create reuses the input file it uploaded while the file is younger than this. Files
# API files are deleted 48 h after upload (https://ai.google.dev/gemini-api/docs/files: "Files
# are stored for 48 hours"), and a batch's target turnaround is 24 h
# (https://ai.google.dev/gemini-api/docs/batch-mode): a file at most 24 h old outlives the
# batch even if the service read its input only when it runs.
INPUT_FILE_REUSE_SECONDS = 24 * 3600.0
# After a 429 without a retryDelay (batch creates past quota carry none: a Help link only, see
# infra/gemini_emulator/README.md), the intent waits this long (the default), doubling per 429
# in a row up to this many times it, with jitter so that intents refused together do not come
# back together.
QUOTA_BACKOFF_SECONDS = 60.0
QUOTA_BACKOFF_MAX_FACTOR = 30
QUOTA_BACKOFF_MAX_SECONDS = QUOTA_BACKOFF_SECONDS * QUOTA_BACKOFF_MAX_FACTOR
# A retryDelay is honoured up to a day: a per-day quota resets within one, and a garbled or
# hostile answer must not park a batch for weeks.
MAX_RETRY_DELAY_SECONDS = 24 * 3600.0

TERMINAL_BATCH_STATES = {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}


def normalise_state(state: str | None) -> str:
    """The API says BATCH_STATE_*; the SDK and older docs say JOB_STATE_*. Accept both."""
    state = (state or "BATCH_STATE_UNSPECIFIED").upper()
    if state.startswith("JOB_STATE_"):
        state = "BATCH_STATE_" + state.removeprefix("JOB_STATE_")
    return state


def plan_intents(
    job: Job, items: Sequence[Item], *, max_requests: int, now: float, attempt: int = 1, series: str = "b"
) -> list[BatchIntent]:
    """Split a job into batches of at most max_requests items, with deterministic ids."""
    intents = []
    for n, start in enumerate(range(0, len(items), max_requests)):
        keys = [it.key for it in items[start : start + max_requests]]
        intents.append(
            BatchIntent(
                intent_id=f"{job.job_id}-{series}{n:03d}-a{attempt}",
                job_id=job.job_id, model=job.model, keys=keys, attempt=attempt,
                created_at=now, updated_at=now,
            )
        )
    return intents


def retry_intent_id(intent: BatchIntent) -> str:
    base = intent.intent_id.rsplit("-a", 1)[0]
    return f"{base}-a{intent.attempt + 1}"


def quota_backoff(waits: int, retry_delay: float | None, base: float = QUOTA_BACKOFF_SECONDS) -> float:
    """Seconds to wait after the `waits`-th 429 in a row: the answer's retryDelay when it has
    one, otherwise exponential from `base` with equal jitter (between half the step and the step)."""
    if retry_delay is not None:
        return min(retry_delay, MAX_RETRY_DELAY_SECONDS)
    return backoff_seconds(waits, base=base, cap=base * QUOTA_BACKOFF_MAX_FACTOR)


class _Pause(Exception):
    """Raised inside the results stream when the time budget is spent."""


@dataclass(frozen=True)
class BatchLaneDeps:
    """The batch lane's collaborators. `catalog` gives each request its imageSize; `events`
    (None: none recorded) gets a finished job's job.completed event."""
    store: BatchStore
    jobs: JobStore
    api: BatchApi
    sink: ImageSink
    clock: Clock
    catalog: Catalog
    events: EventOutbox | None = None
    accounting: Any = None  # core.accounting.Accounting, or None: usage is not counted
    model_halts: Any = None  # core.model_halts.ModelHalts, or None: a 404 is an error like others
    # Where a tick sends a finished batch's ingest (the batch-nudges topic, pushed back to the
    # poller one intent per request); None: the tick ingests inline.
    nudges: BatchNudges | None = None


@dataclass(frozen=True)
class BatchLimits:
    lease_seconds: float
    max_attempts: int
    max_submit_failures: int = 3
    # A checkpoint every checkpoint_lines result lines, or sooner once checkpoint_bytes of the
    # results file have been read since the last: small images make large groups (fewer
    # round trips and intent writes per image), large ones bound what a crash replays.
    checkpoint_lines: int = 1000
    checkpoint_bytes: int = 256 * 1024 * 1024
    quota_backoff_seconds: float = QUOTA_BACKOFF_SECONDS
    upload_concurrency: int = 4
    accept_abandon_seconds: float = 600.0
    running_deadline_seconds: float | None = None  # None: rely on Gemini's expiry
    # A tick publishes no second ingest nudge for an intent within this long of the first: the
    # nudge is queued, retried (503 while busy) or its ingest is under way. Past it, a nudge
    # that was lost is published again.
    ingest_nudge_grace_seconds: float = 300.0


class BatchLane:
    """The batch lane's collaborators and limits, built once per instance by wiring."""

    def __init__(self, deps: BatchLaneDeps, limits: BatchLimits) -> None:
        self.store, self.jobs, self.api, self.sink, self.clock = deps.store, deps.jobs, deps.api, deps.sink, deps.clock
        self.catalog, self.events = deps.catalog, deps.events
        self.accounting, self.model_halts, self.nudges = deps.accounting, deps.model_halts, deps.nudges
        self.lease_seconds = limits.lease_seconds
        self.max_attempts = limits.max_attempts
        self.max_submit_failures = limits.max_submit_failures
        self.checkpoint_lines = limits.checkpoint_lines
        self.checkpoint_bytes = limits.checkpoint_bytes
        self.quota_backoff_seconds = limits.quota_backoff_seconds
        self.upload_concurrency = limits.upload_concurrency
        self.accept_abandon_seconds = limits.accept_abandon_seconds
        self.running_deadline_seconds = limits.running_deadline_seconds
        self.ingest_nudge_grace_seconds = limits.ingest_nudge_grace_seconds

    def finalize_job(self, job_id: str) -> None:
        """Every path that ends an item here finalizes its job, as the worker does."""
        finalize_job_if_done(job_id, store=self.jobs, clock=self.clock, sink=self.sink, events=self.events)

    # --- submission ------------------------------------------------------------------------

    def submit(self, intent_id: str, owner: str, items: Sequence[Item] | None = None) -> BatchIntent | None:
        """Create the Gemini batch of one intent, if nobody else is doing it right now.

        `items` lets the submitter pass what it has just written instead of reading it back."""
        intent = self.store.claim_intent(intent_id, owner, self.clock.now(), self.lease_seconds)
        if intent is None:
            return None
        if intent.state not in (IntentState.PENDING, IntentState.CREATING) or self.waiting(intent):
            # Its batch exists: a resumed submission (Idempotency-Key takeover) or a poller got
            # here first, and creating another would bill every item twice. Or Gemini said
            # "not now" (429) and the time it gave has not come.
            self._release(intent, owner)
            return intent
        try:
            return self._submit(intent, owner, items)
        finally:
            self._release(intent, owner)

    def waiting(self, intent: BatchIntent) -> bool:
        """Whether the intent's batch is still to be created and a 429 told it to wait."""
        return (self._unsubmitted(intent) and intent.next_attempt_at is not None
                and self.clock.now() < intent.next_attempt_at)

    def _submit(self, intent: BatchIntent, owner: str, known: Sequence[Item] | None = None) -> BatchIntent:
        try:
            return self._create(intent, owner, known)
        except QuotaExceeded as e:
            return self._back_off(intent, owner, e)

    def _back_off(self, intent: BatchIntent, owner: str, error: QuotaExceeded) -> BatchIntent:
        """A 429 on upload, lookup or create says "not now", not "bad batch": nothing was
        created, no item attempt is used up and the uploaded input is kept for the next try.
        The intent records when that is, and ticks before then leave it alone."""
        waits = intent.quota_waits + 1
        delay = quota_backoff(waits, error.retry_delay, self.quota_backoff_seconds)
        until = self.clock.now() + delay
        log.warning("intent %s: Gemini refused the batch for quota (%d in a row); next try in %.0f s: %s",
                    intent.intent_id, waits, delay, error.reason,
                    extra={"job_id": intent.job_id, "batch_intent": intent.intent_id, "alert": "batch_quota"})
        self._update(intent, owner, QuotaBackOff(self.clock.now(), until, waits, error.reason))
        intent.next_attempt_at, intent.quota_waits, intent.error = until, waits, error.reason
        return intent

    def _create(self, intent: BatchIntent, owner: str, known: Sequence[Item] | None = None) -> BatchIntent:
        if intent.state is IntentState.CREATING and (adopted := self._adopt_created(intent, owner)) is not None:
            return adopted
        if known is None or intent.state is not IntentState.PENDING:
            items = self._unfinished(intent)
        else:
            items = [it for it in known if not it.terminal]
        if not items:
            self._finish(intent, owner, "nothing left to do")
            return intent
        input_file = self._reusable_input(intent)
        if input_file is None:
            try:
                input_file = self._upload(intent, owner, items)
            except InvalidRequest as e:
                return self._input_refused(intent, owner, e, items)
        try:
            info = self.api.create_batch(intent.model, input_file, display_name=intent.intent_id)
        except PermissionDenied:
            # The Files API answers 403 for a file that is gone: the next try uploads anew.
            self._update(intent, owner, InputDropped(self.clock.now()))
            raise
        except ModelUnavailable as e:
            # The model is gone: halt it (its intents wait, nothing fails) and let the caller log.
            if self.model_halts is not None:
                self.model_halts.halt(intent.model, e.reason, source="batch")
            raise
        except InvalidRequest as e:
            return self._input_refused(intent, owner, e, items)
        intent = self._record_submitted(intent, owner, info.name, info.state)
        self._delete_quietly(input_file)  # the batch has read what it needs
        return intent

    def _reusable_input(self, intent: BatchIntent) -> str | None:
        """The input file a refused (429) or failed create left behind, if it can serve the
        next one: uploaded with this API key (files are visible only to theirs) and young
        enough to outlive the batch. The input of a retried intent is the same items' requests:
        an intent's keys are fixed, and its items change only when it is cancelled."""
        young = (intent.input_uploaded_at is not None
                 and self.clock.now() - intent.input_uploaded_at < INPUT_FILE_REUSE_SECONDS)
        if intent.input_file and young and intent.key_fingerprint == self.api.key_fingerprint():
            return intent.input_file
        return None

    def _upload(self, intent: BatchIntent, owner: str, items: Sequence[Item]) -> str:
        data = b"".join(
            request_line(it.key, compose_prompt(it), it.aspect_ratio, self.catalog.image_size_for(intent.model, it.quality))
            for it in items
        )
        # An input file left behind that cannot be reused goes before a new one is uploaded.
        self._delete_quietly(intent.input_file)
        intent.input_file = None
        input_file = self.api.upload_jsonl(data, display_name=intent.intent_id)
        self._update(intent, owner, InputUploaded(self.clock.now(), input_file, self.api.key_fingerprint()))
        intent.input_file = input_file
        return input_file

    def _input_refused(self, intent: BatchIntent, owner: str, error: InvalidRequest,
                       items: Sequence[Item]) -> BatchIntent:
        """The service refused the batch's input (a 400, or an upload finalized with an error
        body). Quota and 5xx errors are not this: they propagate and the next tick tries again.
        A refusal may be passing (the real API refused `jsonl` intermittently), so it is tried
        again on the next ticks, but counted on the intent and shown in the job's status; at
        `max_submit_failures` the items fail with the server's message instead of looping."""
        failures = intent.submit_failures + 1
        log.error("intent %s: the batch input was refused (%d/%d): %s", intent.intent_id, failures,
                  self.max_submit_failures, error.reason,
                  extra={"job_id": intent.job_id, "batch_intent": intent.intent_id, "alert": "batch_input_refused"})
        if failures < self.max_submit_failures:
            # A refused input is not reused: the next try uploads it again.
            self._delete_quietly(intent.input_file)
            self._update(intent, owner, InputRefused(self.clock.now(), failures, error.reason))
            intent.submit_failures, intent.error = failures, error.reason
            return intent
        self._delete_quietly(intent.input_file)
        now = self.clock.now()
        reason = f"batch input refused {failures} times: {error.reason}"
        failed: dict[str, ItemChange] = {it.key: BatchFailed(now, reason, intent.attempt) for it in items}
        finished = IntentFinished(self.clock.now(), reason, submit_failures=failures, error=error.reason)
        self._count(intent, failed, self.store.checkpoint(intent.intent_id, owner, finished, failed))
        self.finalize_job(intent.job_id)
        return intent

    def _adopt_created(self, intent: BatchIntent, owner: str) -> BatchIntent | None:
        """We may have created the batch and died before recording it: look before creating."""
        if intent.key_fingerprint and intent.key_fingerprint != self.api.key_fingerprint():
            log.error("intent %s was started with another API key; its batch, if any, is not "
                      "visible to this one", intent.intent_id)
        found = self.api.find_batch(intent.intent_id)
        if found is None:
            return None
        log.warning("intent %s: found batch %s created before a crash", intent.intent_id, found.name)
        self._delete_quietly(intent.input_file)
        return self._record_submitted(intent, owner, found.name, found.state)

    def _delete_quietly(self, name: str | None) -> None:
        """Delete a Files API file we no longer need; a failure only costs storage until the
        file expires (48 h), so it is logged, not raised."""
        if not name:
            return
        try:
            self.api.delete_file(name)
        except Exception as e:  # noqa: BLE001
            log.warning("could not delete %s: %s", name, e)

    def _record_submitted(self, intent: BatchIntent, owner: str, name: str, state: str) -> BatchIntent:
        self._update(intent, owner, BatchRecorded(self.clock.now(), name, normalise_state(state)))
        self.jobs.set_job_running(intent.job_id, self.clock.now())
        intent.state, intent.gemini_batch, intent.gemini_state = IntentState.SUBMITTED, name, normalise_state(state)
        return intent

    # --- reconciliation --------------------------------------------------------------------

    def reconcile(self, owner: str, deadline: float, page: int = 100) -> dict[str, int]:
        """One poller tick: move every due intent forward, the longest-due first, page after
        page until the time budget is spent. Each one looked at is due again from when it was
        released, so a tick that runs out of time leaves the rest first in line for the next:
        however many are active, every intent gets its turn."""
        summary = {"seen": 0, "skipped": 0, "submitted": 0, "held": 0, "backing_off": 0, "running": 0,
                   "ingested": 0, "paused": 0, "resubmitted": 0, "cancelled": 0, "results_unavailable": 0,
                   "errors": 0, "ingest_requested": 0, "ingest_pending": 0}
        refused_models: set[str] = set()  # models whose create got a 429 in this tick
        # Due as of the tick's start: an intent released during the tick is due later than
        # this, so no page returns it twice.
        start, after = self.clock.now(), None
        while self.clock.now() < deadline:
            candidates = self.store.due_intents(start, page, after)
            for candidate in candidates:
                if self.clock.now() >= deadline:
                    break
                summary["seen"] += 1
                outcome = self._visit(candidate, owner, deadline, refused_models, ingest_here=self.nudges is None)
                if outcome == "ingest_requested" and not self._publish_ingest(candidate):
                    # Pub/Sub is unreachable: ingest inline, as without nudges, rather than not at all.
                    outcome = self._visit(candidate, owner, deadline, refused_models, ingest_here=True)
                summary[outcome] += 1
            if len(candidates) < page:
                break
            after = (candidates[-1].next_check_at or 0.0, candidates[-1].intent_id)
        return summary

    def reconcile_intent(self, intent_id: str, owner: str, deadline: float) -> str:
        """Move one intent forward now, as a tick would (a nudge from Gemini's webhook): under
        its lease, so a tick that meets it skips it, and vice versa."""
        candidate = self.store.get_intent(intent_id)
        if candidate is None or candidate.state is IntentState.FINISHED:
            return "skipped"
        outcome = self._visit(candidate, owner, deadline, set(), ingest_here=True)
        if outcome == "paused" and self.nudges is not None:
            # Recorded before the lease was released; published after it, so the nudge does not
            # find the intent still leased.
            self._publish_ingest(candidate)
            return "renudged"
        return outcome

    def _visit(self, candidate: BatchIntent, owner: str, deadline: float, refused_models: set[str],
               ingest_here: bool) -> str:
        if not ingest_here and self._ingest_requested_lately(candidate):
            return "ingest_pending"  # its nudge is queued or being handled: not even a lease
        if self.waiting(candidate) or (candidate.model in refused_models and self._unsubmitted(candidate)):
            # Not even a lease: a write per tick per waiting intent would buy nothing. The
            # batch quotas are per model or per project, so after one 429 the model's other
            # new batches wait for the next tick rather than collect a 429 each.
            return "backing_off"
        intent = self.store.claim_intent(candidate.intent_id, owner, self.clock.now(), self.lease_seconds)
        if intent is None:
            return "skipped"  # another poller holds it (or it finished since the query)
        outcome = "errors"
        try:
            outcome = self._reconcile_one(intent, owner, deadline, ingest_here)
            if outcome == "backing_off":
                refused_models.add(intent.model)
        except Exception:  # noqa: BLE001 - one bad batch must not starve the others
            log.exception("reconciling intent %s failed", intent.intent_id)
        finally:
            self._release(intent, owner)
        return outcome

    def _reconcile_one(self, intent: BatchIntent, owner: str, deadline: float, ingest_here: bool = True) -> str:
        job = self.jobs.get_job(intent.job_id)
        if job is None or job.status is JobStatus.ACCEPTING:
            # Its submitter is still writing the job (or died doing so, and the poller's
            # recover_abandoned_accepts decides): act on nothing before the job is queued. An
            # intent whose job never appears at all is a leftover of an older version.
            if job is None and intent.created_at < self.clock.now() - self.accept_abandon_seconds:
                self._finish(intent, owner, "job missing")
                return "cancelled"
            return "skipped"
        if job.status is JobStatus.CANCELLED or job.accept_failed:
            return self._cancel(intent, owner, job.error or "job cancelled")
        if intent.state in (IntentState.PENDING, IntentState.CREATING):
            if self.model_halts is not None and self.model_halts.halted(intent.model) is not None:
                # No upload and no create for a model Gemini no longer serves; but a batch that
                # was created before the halt (or a crash) is adopted: it runs, or ends, anyway.
                if intent.state is IntentState.CREATING and self._adopt_created(intent, owner) is not None:
                    return "submitted"
                return "held"
            if self.waiting(intent):
                return "backing_off"
            return "backing_off" if self.waiting(self._submit(intent, owner)) else "submitted"
        if intent.state is IntentState.SUBMITTED:
            info = self.api.get_batch(intent.batch_name)
            if info is None:
                # Truth comes from batches.get: only its "not found" means the batch is gone.
                self._resubmit(intent, owner, "the Gemini batch no longer exists")
                return "resubmitted"
            overdue = normalise_state(info.state) not in TERMINAL_BATCH_STATES and self._past_deadline(intent)
            if overdue:
                info = self._cancel_overdue(intent, info)
            state = normalise_state(info.state)
            if state == "BATCH_STATE_SUCCEEDED":
                self._update(intent, owner, IngestStarted(self.clock.now(), info.output_file))  # the state with it
                intent.state, intent.output_file = IntentState.INGESTING, info.output_file
            else:
                if state != intent.gemini_state:
                    self._update(intent, owner, GeminiStateSeen(self.clock.now(), state))
                if state in TERMINAL_BATCH_STATES:
                    self._resubmit(intent, owner, f"batch ended {state}" + (" past the local deadline" if overdue else ""))
                    return "resubmitted"
                return "running"
        if not ingest_here:
            # The tick only decides: the ingest runs in its own request (a nudge, pushed back to
            # the poller), so ten finished batches ingest at once and the tick goes on.
            self._update(intent, owner, IngestRequested(self.clock.now()))
            return "ingest_requested"
        outcome = self._ingest(intent, owner, deadline)
        if outcome == "paused" and self.nudges is not None:
            self._update(intent, owner, IngestRequested(self.clock.now()))
        return outcome

    def _ingest_requested_lately(self, intent: BatchIntent) -> bool:
        return (intent.state is IntentState.INGESTING and intent.ingest_requested_at is not None
                and self.clock.now() - intent.ingest_requested_at < self.ingest_nudge_grace_seconds)

    def _publish_ingest(self, intent: BatchIntent) -> bool:
        """Publish the nudge that ingests the intent (after its lease is released, so the push
        does not find it held). A publish that fails after the request was recorded is made
        again by a tick once the grace period is over. Whether it was published."""
        if self.nudges is None:
            return False
        try:
            self.nudges.nudge(intent.intent_id)
        except DeliveryFailed as e:
            log.warning("intent %s: could not publish its ingest nudge: %s", intent.intent_id, e,
                        extra={"job_id": intent.job_id, "batch_intent": intent.intent_id})
            return False
        return True

    def _past_deadline(self, intent: BatchIntent) -> bool:
        if self.running_deadline_seconds is None:
            return False
        since = intent.submitted_at or intent.created_at
        return self.clock.now() - since > self.running_deadline_seconds

    def _cancel_overdue(self, intent: BatchIntent, info: BatchInfo) -> BatchInfo:
        """Cancel a batch past our local deadline; what batches.get says afterwards. The batch may
        have SUCCEEDED meanwhile: then its results are ingested, never bought again. Until it
        is terminal it stays in our books as running, and the next tick cancels it again."""
        log.warning("intent %s: batch %s is past the local deadline of %.0fs; cancelling it",
                    intent.intent_id, intent.gemini_batch, self.running_deadline_seconds)
        try:
            self.api.cancel_batch(intent.batch_name)
        except Exception as e:  # noqa: BLE001 - it may have ended meanwhile: the state says
            log.warning("cancel of %s failed: %s", intent.gemini_batch, e)
        after = self.api.get_batch(intent.batch_name)
        return after if after is not None else BatchInfo(name=info.name, state="BATCH_STATE_CANCELLED")

    def _cancel(self, intent: BatchIntent, owner: str, error: str = "job cancelled") -> str:
        if intent.gemini_batch and intent.state is IntentState.SUBMITTED:
            try:
                self.api.cancel_batch(intent.batch_name)
            except Exception as e:  # noqa: BLE001 - it may have ended meanwhile
                log.warning("cancel of %s failed: %s", intent.gemini_batch, e)
        if intent.state is IntentState.CREATING:
            self._delete_quietly(intent.input_file)
        if intent.state is IntentState.INGESTING:
            self._delete_quietly(intent.output_file)
        now = self.clock.now()
        unfinished = self._unfinished(intent)
        cancelled: dict[str, ItemChange] = {it.key: BatchCancelled(now, error) for it in unfinished}
        self.store.checkpoint(intent.intent_id, owner, IntentFinished(self.clock.now(), "cancelled"), cancelled)
        self.finalize_job(intent.job_id)
        return "cancelled"

    # --- ingestion -------------------------------------------------------------------------

    def _ingest(self, intent: BatchIntent, owner: str, deadline: float) -> str:
        """Stream the results file line by line into GCS, checkpointing as we go.

        Lines are scanned on this thread (key and outcome; the base64 is left alone) while a
        small pool decodes and uploads the images: the pool's queue is bounded, so memory stays
        at a handful of lines whatever the file's size. A checkpoint first waits for every
        upload in flight, so "lines_done = n" always means every line up to n is in GCS; it
        records the byte offset past line n too, where the next run's download resumes."""
        run = _Ingestion(self, intent, owner, deadline)
        splitter = run.splitter = LineSplitter(run.on_line, offset=run.start)
        try:
            self.api.stream_file(intent.results_file, splitter, run.start)
            splitter.close()
            run.flush(wait=True)
        except _Pause:
            log.info("intent %s paused at line %d; the next tick resumes", intent.intent_id, run.lines)
            return "paused"
        except (PermissionDenied, InvalidRequest) as e:
            # The Files API answers 403 for a file that is gone (expired after 48 h, or deleted
            # by a poller killed just before its final checkpoint). Only when that repeats on
            # successive ticks are the unfinished items resubmitted: a passing 403 must not
            # bill them twice.
            return self._results_unavailable(intent, owner, e)
        finally:
            run.close()
        self._delete_quietly(intent.output_file)
        intent.lines_done = run.lines
        self._resubmit(intent, owner, "retryable error in the batch", outcome="succeeded", known_ended=run.ended)
        return "ingested"

    def _results_unavailable(self, intent: BatchIntent, owner: str, error: Exception) -> str:
        failures = intent.results_errors + 1
        log.warning("intent %s: results file %s unreadable (%d in a row): %s",
                    intent.intent_id, intent.output_file, failures, error)
        if failures < _RESULTS_ERRORS_BEFORE_RESUBMIT:
            self._update(intent, owner, ResultsUnreadable(self.clock.now(), failures))
            return "results_unavailable"
        self._resubmit(intent, owner, "the results file is gone", outcome="results file gone")
        return "resubmitted"

    def _line_updates(self, intent: BatchIntent, result) -> ItemChange:
        result = result.decoded()  # on an upload worker: the base64 decode is the costly part
        now = self.clock.now()
        error: GenerationError | None = result.error
        if result.image is not None:
            image = result.image
            try:
                facts = image_facts(image.data)
            except MalformedResponse as e:  # a truncated or corrupt image: retried in a new batch
                error = e
            else:
                name = object_name(intent.job_id, result.key, images.EXTENSIONS[facts["format"]])
                stored = self.sink.put_image(
                    name, image.data, images.CONTENT_TYPES[facts["format"]],
                    {"job_id": intent.job_id, "item_key": result.key, "model": image.model_version or intent.model,
                     "finish_reason": image.finish_reason, "lane": "batch", **stored_metadata(facts)},
                )
                # An object that already existed is what the item keeps: record its facts.
                if not stored.created and stored.facts:
                    facts = stored.facts
                return BatchSucceeded(now, intent.intent_id, intent.attempt, stored.uri, facts,
                                      image.finish_reason, image.output_tokens)
        if error is None:  # a decoded line has an image or an error
            raise ValueError(f"intent {intent.intent_id}: result line {result.key!r} has neither image nor error")
        if error.retryable:
            return BatchErrorNoted(now, error.reason, intent.attempt)
        return BatchFailed(now, error.reason, intent.attempt, intent_id=intent.intent_id)

    # --- resubmission ----------------------------------------------------------------------

    def _resubmit(self, intent: BatchIntent, owner: str, reason: str, outcome: str | None = None,
                  known_ended: frozenset[str] | set[str] = frozenset()) -> None:
        """Give the intent's unfinished items a new batch, or dead-letter them past the limit.
        `known_ended`: keys the caller saw end (an ingest's checkpoints), not read again."""
        now = self.clock.now()
        unfinished = self._unfinished(intent, known_ended)
        ended: dict[str, BatchDeadLettered] = {}
        if unfinished and intent.attempt < self.max_attempts:
            retry = BatchIntent(
                intent_id=retry_intent_id(intent), job_id=intent.job_id, model=intent.model,
                keys=[it.key for it in unfinished], attempt=intent.attempt + 1, created_at=now, updated_at=now,
            )
            if self.store.create_intent(retry):  # create-only: a crash-and-retry creates it once
                log.warning("intent %s: %d items go to %s (%s)", intent.intent_id, len(unfinished), retry.intent_id, reason)
        else:
            for it in unfinished:
                ended[it.key] = BatchDeadLettered(
                    now, f"gave up after {intent.attempt} batch attempts: {it.error or reason}", intent.attempt)
        done = self.store.checkpoint(intent.intent_id, owner, IntentFinished(self.clock.now(), outcome or reason), ended)
        if done:
            self._count(intent, ended, done)
            for key in done.applied:  # one line per item: the dead-letter metric counts them
                log.warning("item %s/%s dead-lettered: %s", intent.job_id, key, ended[key].error,
                            extra={"job_id": intent.job_id, "item_key": key, "lane": "batch",
                                   "state": ItemState.DEAD_LETTERED.value})
        self.finalize_job(intent.job_id)

    # --- helpers ---------------------------------------------------------------------------

    def _count(self, intent: BatchIntent, changes: Mapping[str, ItemChange], done: Checkpointed | None) -> None:
        """Add the outcomes a checkpoint wrote to the day's usage counters (never fails the
        ingest). A change the checkpoint left out (its item had a result) was counted when
        that result was written, or is not ours to count."""
        if self.accounting is None or not done:
            return
        from core import accounting as acct

        deltas: dict[str, float] = {}
        for change in (changes[key] for key in done.applied):
            if change.state is ItemState.SUCCEEDED:
                part = self.accounting.image_produced("batch", intent.model)
            elif change.state is ItemState.FAILED:
                part = self.accounting.item_unsuccessful("batch", acct.FAILED, intent.model)
            elif change.state is ItemState.DEAD_LETTERED:
                part = self.accounting.item_unsuccessful("batch", acct.DEAD_LETTERED, intent.model)
            else:
                continue
            for name, value in part.items():
                deltas[name] = deltas.get(name, 0) + value
        self.accounting.add(deltas, job_id=intent.job_id, lane="batch")

    @staticmethod
    def _unsubmitted(intent: BatchIntent) -> bool:
        return intent.state in (IntentState.PENDING, IntentState.CREATING)

    def _unfinished(self, intent: BatchIntent, ended: frozenset[str] | set[str] = frozenset()) -> list[Item]:
        """The intent's items without a result, reading only those not known to have ended."""
        keys = [k for k in intent.keys if k not in ended]
        return [it for it in self.store.get_items(intent.job_id, keys) if not it.terminal] if keys else []

    def _finish(self, intent: BatchIntent, owner: str, outcome: str) -> None:
        self.store.update_intent(intent.intent_id, owner, IntentFinished(self.clock.now(), outcome))
        self.finalize_job(intent.job_id)

    def _update(self, intent: BatchIntent, owner: str, change: IntentChange) -> None:
        if not self.store.update_intent(intent.intent_id, owner, change):
            raise LostLease(f"lost the lease on intent {intent.intent_id}")

    def _release(self, intent: BatchIntent, owner: str) -> None:
        """Give the lease back; the intent is due again now (behind every intent that has
        waited longer), or, when a 429 told it to wait, once that wait is over."""
        due = self.clock.now()
        if self.waiting(intent) and intent.next_attempt_at is not None:
            due = intent.next_attempt_at
        self.store.release_intent(intent.intent_id, owner, due)


def _admit(result, settled: dict[str, str]) -> bool:
    """Whether a result line may be applied, given the results its key already has (and note
    it there). A results file may repeat a key: the first terminal result wins, except that an
    image beats an earlier refusal, since that image is paid for and stored; nothing overwrites
    a success, or bills it twice by handing the item back for another batch."""
    current = settled.get(result.key)
    if result.has_image:
        if current in (None, "failed"):
            settled[result.key] = "succeeded"
            return True
        return False
    if current is not None:
        return False
    if not result.error.retryable:
        settled[result.key] = "failed"
    return True


class LostLease(Exception):
    """Another poller took over this intent (ours expired): stop touching it."""


class _Ingestion:
    """One ingestion run of an intent's results file (BatchLane._ingest): lines scanned on the
    caller's thread, images decoded and uploaded on a small pool, checkpoints as it goes."""

    def __init__(self, lane: BatchLane, intent: BatchIntent, owner: str, deadline: float) -> None:
        self.lane, self.intent, self.owner, self.deadline = lane, intent, owner, deadline
        self.keys = set(intent.keys)
        # What this run's lines settled, for repeated keys (_admit). No item is read up front,
        # fresh or resumed (a slow ingest is resumed many times): what an item already has, from
        # an earlier slice or another path, is judged by each checkpoint on the item as it reads
        # it (core/checkpoints.py). A line repeated across slices costs a create-only upload.
        self.settled: dict[str, str] = {}
        # Keys with a result as of the last checkpoint: the end of the ingest reads only the rest.
        self.ended: set[str] = set()
        # A checkpoint that recorded its byte offset is resumed there (a ranged download), its
        # lines counted, not read again; one without it (an older run) re-reads the file and
        # skips its lines_done lines.
        self.start = intent.bytes_done if intent.lines_done and intent.bytes_done else 0
        self.lines = intent.lines_done if self.start else 0
        self.bytes_done = self.start
        self.flushed_at = self.start  # bytes_done at the last checkpoint
        self.splitter: LineSplitter | None = None
        self.pending: dict[str, ItemChange] = {}
        self.in_flight: list[tuple[str, Future]] = []
        # Image lines admitted before their image was decoded and checked, with what their key
        # had settled before: a spoiled image is the retryable error it turns out to be.
        self.unchecked: dict[str, tuple[Future, str | None]] = {}
        self.dropped: set[Future] = set()
        self.slots = threading.BoundedSemaphore(2 * lane.upload_concurrency)
        self.pool = ThreadPoolExecutor(lane.upload_concurrency, thread_name_prefix="ingest")
        # Checkpoints commit on their own thread while the next lines are read and uploaded:
        # a commit of a few hundred item updates takes a few tenths of a second, in which the
        # uploads would otherwise stand idle. One at a time, in order.
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.commit: Future | None = None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.committer.shutdown(wait=True)

    def drain(self) -> None:
        for key in list(self.unchecked):
            self.check(key)
        for key, future in self.in_flight:
            if future not in self.dropped:
                self.pending[key] = future.result()
        self.in_flight.clear()
        self.dropped.clear()

    def check(self, key: str) -> None:
        """Wait for the unchecked image line of `key`, and settle the key by what it found. A
        spoiled image counts as the retryable error it is: it settles nothing, and against an
        earlier refusal in this file it is not applied (as _admit treats such an error line)."""
        entry = self.unchecked.pop(key, None)
        if entry is None:
            return
        future, before = entry
        if future.result().state is ItemState.SUCCEEDED:
            return
        if before is None:
            self.settled.pop(key, None)
        else:
            self.settled[key] = before
        if before == "failed":
            self.dropped.add(future)

    def flush(self, wait: bool = False) -> None:
        """Checkpoint every line read so far, once their uploads are done. The commit runs in
        the background unless `wait`; the next flush first waits for it (and raises LostLease
        if it failed), so checkpoints land in order and a pause or the end waits for the last."""
        self.drain()
        progress = IngestProgress(self.lane.clock.now(), self.lines, self.bytes_done)
        self.flushed_at = self.bytes_done
        updates, self.pending = self.pending, {}
        self.settle()
        self.commit = self.committer.submit(self.checkpoint, progress, updates)
        if wait:
            self.settle()

    def settle(self) -> None:
        commit, self.commit = self.commit, None
        if commit is not None:
            commit.result()

    def checkpoint(self, progress: IngestProgress, updates: dict[str, ItemChange]) -> None:
        intent, lane = self.intent, self.lane
        done = lane.store.checkpoint(intent.intent_id, self.owner, progress, updates)
        if not done:
            raise LostLease(f"lost the lease on intent {intent.intent_id} while ingesting")
        # Counted after the checkpoint commits, and only what it wrote: counted once.
        lane._count(intent, updates, done)
        self.ended |= done.kept | {k for k in done.applied if updates[k].state in TERMINAL_ITEM_STATES}

    def due(self) -> bool:
        lane = self.lane
        return (len(self.pending) + len(self.in_flight) >= lane.checkpoint_lines
                or self.bytes_done - self.flushed_at >= lane.checkpoint_bytes)

    def upload(self, result) -> ItemChange:
        try:
            return self.lane._line_updates(self.intent, result)
        finally:
            self.slots.release()

    def on_line(self, line: bytes) -> None:
        self.lines += 1
        if self.splitter is not None:
            self.bytes_done = self.splitter.line_end
        intent = self.intent
        if self.lines <= intent.lines_done:
            return  # ingested before a pause or a crash: skip without parsing
        result = scan_result_line(line)
        if result.key in self.keys:
            self.check(result.key)  # a repeated key: know how its earlier image line ended
            before = self.settled.get(result.key)
            if not _admit(result, self.settled):
                log.warning("intent %s: result line %d repeats key %r, which already %s; ignored",
                            intent.intent_id, self.lines, result.key, self.settled[result.key])
            else:
                self.slots.acquire()
                future = self.pool.submit(self.upload, result)
                self.in_flight.append((result.key, future))
                if result.has_image:
                    self.unchecked[result.key] = (future, before)
        else:
            log.warning("intent %s: result line %d has unknown key %r", intent.intent_id, self.lines, result.key)
        if self.due():
            self.flush()
        if self.lane.clock.now() >= self.deadline:
            self.flush(wait=True)
            raise _Pause
