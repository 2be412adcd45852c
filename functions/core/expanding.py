"""Expanding an accepted job in the background: its source read line by line into items.

POST /v1/jobs answers once the request is stored (a body's items as a JSONL object, or the
caller's gs:// object pinned to its generation) and ONE job document is written in status
`accepting`, with an `expansion` record: where the source is, how far it was read, and a lease.
A message to the poller (and, failing that, the poller's next tick) then runs expand_job:

- it takes the expansion's lease (owner + lease_until) by compare-and-set, so two deliveries
  never expand one job at once, and a holder that died is replaced once its lease ran out;
- it reads the source from the checkpoint (byte offset, line number, items written), creates
  the items create-only in fixed chunks, and after each chunk saves the checkpoint, still
  under its lease: a SIGKILL between the writes and the checkpoint repeats that chunk, which
  writes the same items (same keys, same indexes) and the same batch intents (ids from the
  chunk's number), so nothing is doubled;
- it paces the item writes to Firestore's ramp (Ramp), and stops at its time budget, leaving
  the rest to a continuation message;
- at the end of the source it moves the job accepting -> queued (interactive: then publishes
  the items, as a body job always did).

A source that vanished or cannot be read, or a bad line with on_bad_line "fail", ends the job
`failed` with the reason (its items never run; its reservation is released). So do max_attempts
attempts in a row that fail unexpectedly without writing a chunk (each counted in the record, the
next one after a back-off): nothing retries an expansion for ever. Once the job has left
accepting, its staged body is deleted (never a caller's source).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from core import accounting as acct
from core.accounting import Accounting
from core.batches import plan_intents
from core.errors import DomainError
from core.jobs import expansion_progress, finalize_job_if_done, iter_intents
from core.models import Item, ItemSpec, ItemState, Job, JobStatus, Lane
from core.ports import BatchNudges, BatchStore, Clock, EventOutbox, ImageSink, JobStore, WorkQueue
from core.transitions import AcceptAbandoned, ExpansionFailed, ExpansionFinished, ExpansionSaved

log = logging.getLogger(__name__)

# The object names of staged bodies: item objects are "{job_id}/{key}.{ext}" with a hex job id,
# so no item can ever be written under this prefix.
STAGED_PREFIX = "_accepted/"
STAGED_FORMAT = "staged"  # our own canonical JSONL: one ItemSpec a line, keys filled in
# The most keys an interactive expansion holds to publish at its end (about 1 MB); past it, the
# items are read back from the store instead.
MAX_KEYS_HELD = 10_000


class SourceUnavailable(DomainError):
    """The source object is gone, or changed generation, or cannot be read: the job cannot go on."""


@dataclass(frozen=True)
class Line:
    """One line of a source (the shape of sources.SourceLine): `end` is the byte offset just
    past it, `item` None when it is refused (`error` says why) or blank (no error)."""
    number: int
    end: int
    item: ItemSpec | None
    error: str | None = None
    index: int = 0  # the line's position among non-blank lines (names a line without a key)

    @property
    def next_index(self) -> int:
        """The index of the line after this one (a blank line takes none)."""
        return self.index if self.item is None and self.error is None else self.index + 1


@dataclass(frozen=True)
class Ramp:
    """Firestore's advice for a new key range: start at no more than 500 operations a second and
    grow by at most half every 5 minutes ("500/50/5",
    https://cloud.google.com/firestore/docs/best-practices#ramping_up_traffic)."""
    start_per_second: float = 500.0
    growth: float = 1.5
    period_seconds: float = 300.0

    def rate(self, elapsed: float) -> float:
        steps = min(int(max(0.0, elapsed) // self.period_seconds), 60)
        return self.start_per_second * self.growth ** steps


@dataclass(frozen=True)
class Expansion:
    """The `expansion` record of an accepting job's document."""
    source_uri: str  # gs://bucket/name
    generation: int  # the object's generation read at accept: an overwrite cannot mix two files
    format: str = STAGED_FORMAT  # "staged" | "jsonl" | "csv"
    on_bad_line: str = "skip"  # "skip" | "fail"
    requested_lane: str = "auto"
    size: int = 0  # the object's size at that generation
    offset: int = 0  # bytes read (and written as items) so far: resume here
    lines: int = 0  # the last line number read
    line_index: int = 0  # the next line's index among non-blank lines (sources.read_lines' first_index)
    items: int = 0  # items created: the next item's index
    chunks: int = 0  # chunks checkpointed: the next chunk's number names its intents
    bad_lines: int = 0
    bad_samples: tuple[dict, ...] = ()  # the first ones: {"line": n, "reason": "..."}
    started_at: float = 0.0  # when the first chunk was written: the ramp counts from here
    next_write_at: float = 0.0  # the ramp's pace: no chunk before this
    owner: str | None = None
    lease_until: float = 0.0
    failed_attempts: int = 0  # attempts in a row that raised before writing a chunk (see expand_job)
    last_error: str | None = None  # the last one's error

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bad_samples"] = [dict(s) for s in self.bad_samples]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Expansion:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["bad_samples"] = tuple(dict(s) for s in known.get("bad_samples") or ())
        return cls(**known)

    def progress(self) -> dict:
        """What the status API shows of it."""
        return expansion_progress(self.to_dict())


class SourceLines(Protocol):
    def lines(self, expansion: Expansion) -> Iterator[Line]:
        """The source's lines from expansion.offset, numbered from expansion.lines + 1 (the
        generation it names, never another). SourceUnavailable when it cannot be read."""


class StagedBodies(Protocol):
    def delete_staged(self, source_uri: str, generation: int) -> None:
        """Delete a staged body (that generation only); one already gone is no error.
        StorageUnavailable when Cloud Storage did not answer."""


class ExpandNudges(Protocol):
    def expand(self, job_id: str) -> None:
        """Ask for expand_job(job_id) soon. DeliveryFailed when the message was not taken."""


@dataclass(frozen=True)
class ExpandDeps:
    store: JobStore
    sources: SourceLines
    queue: WorkQueue
    clock: Clock
    batches: BatchStore | None = None
    accounting: Accounting | None = None
    sink: ImageSink | None = None
    events: EventOutbox | None = None
    intent_nudges: BatchNudges | None = None  # batch lane: the job's intents are created at once, not at a tick
    staged: StagedBodies | None = None  # deletes a body once its job has left accepting
    ramp: Ramp = field(default_factory=Ramp)
    chunk_items: int = 500
    lease_seconds: float = 120.0
    batch_max_requests: int = 1000
    max_items: int = 1_000_000
    max_bad_samples: int = 20
    max_attempts: int = 20  # attempts in a row without progress before the job fails (EXPAND_MAX_ATTEMPTS)


class _Written:
    """The keys of the items one attempt wrote, if it holds them (`hold`) and while there are at
    most MAX_KEYS_HELD; keys None: not held."""

    def __init__(self, hold: bool) -> None:
        self.keys: list[str] | None = [] if hold else None

    def add(self, keys: list[str]) -> None:
        if self.keys is not None:
            self.keys.extend(keys)
            if len(self.keys) > MAX_KEYS_HELD:
                self.keys = None

    def all_of(self, exp: Expansion) -> list[str] | None:
        """Every item of the job, or None when not held, or some were written by another attempt."""
        return self.keys if self.keys is not None and len(self.keys) == exp.items else None


class _Refused(Exception):
    """The job cannot be expanded: it ends failed with this message."""


# --- the canonical JSONL of a staged body ---------------------------------------------------


def staged_jsonl(items: Sequence[ItemSpec]) -> bytes:
    """A validated body's items, one JSON object a line, in order (keys filled in). The fields
    are spelled out: dataclasses.asdict costs more than the JSON itself on 100,000 items."""
    encode = json.JSONEncoder(separators=(",", ":")).encode
    return "".join(
        encode({"key": s.key, "prompt": s.prompt, "aspect_ratio": s.aspect_ratio, "domain": s.domain,
                "quality": s.quality}) + "\n" for s in items).encode()


def staged_lines(chunks: Iterable[bytes], *, start: int = 0, first_number: int = 1) -> Iterator[Line]:
    """The lines of a staged body read from byte `start` (chunks begin there). A line that does
    not parse was not written by staged_jsonl: it is reported, not guessed at."""
    offset, number, rest = start, first_number, b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for raw in whole:
            offset += len(raw) + 1
            yield _staged_line(raw, number, offset)
            number += 1
    if rest:
        yield _staged_line(rest, number, offset + len(rest))


def _staged_line(raw: bytes, number: int, end: int) -> Line:
    if not raw.strip():
        return Line(number, end, None)  # blank: neither an item nor refused
    try:
        return Line(number, end, ItemSpec(**json.loads(raw)))
    except (ValueError, TypeError) as e:
        return Line(number, end, None, f"unreadable staged line: {e}"[:200])


# --- expanding -----------------------------------------------------------------------------


def expand_job(job_id: str, owner: str, deps: ExpandDeps, deadline: float) -> str:
    """Expand what is left of the job until `deadline`: "done" (queued), "continue" (the budget
    ran out: the caller hands the rest to a continuation message), "failed", "busy" (another
    holds the lease), "lost" (the lease was taken over meanwhile) or "gone" (not accepting)."""
    store, clock = deps.store, deps.clock
    job = store.claim_expansion(job_id, owner, clock.now(), deps.lease_seconds)
    if job is None:
        return _not_claimed(job_id, deps)
    saved = [Expansion.from_dict(job.expansion or {})]  # the last checkpoint written
    # An interactive job expanded from its first line to its last by this one attempt publishes
    # the keys it wrote, rather than read its items back (a query a page, on the emulator a scan
    # of the job's items each: 5 s of the 9 s a 1,500-item job took to expand).
    written = _Written(hold=job.lane is Lane.INTERACTIVE and saved[0].items == 0)
    try:
        finished = _expand_chunks(job, saved, owner, deps, deadline, written)
    except SourceUnavailable as e:
        return _fail(job, owner, deps, f"the job's source cannot be read: {e}")
    except _Refused as e:
        return _fail(job, owner, deps, str(e))
    except _LeaseLost:
        return "lost"
    except Exception as e:
        return _failed_attempt(job, owner, saved[0], deps, e)
    if not finished:
        return "continue" if _release(job_id, owner, saved[0], deps) else "lost"
    return _finish(job, saved[0], owner, deps, written)


def _not_claimed(job_id: str, deps: ExpandDeps) -> str:
    """ "busy" when another holds the lease, else "gone". A job gone from accepting whose staged
    body is still there lost its expander between the end and the delete: delete it now."""
    current = deps.store.get_job(job_id)
    if current is not None and current.status is JobStatus.ACCEPTING:
        return "busy"
    if current is not None and current.expansion:
        _drop_staged(job_id, Expansion.from_dict(current.expansion), deps)
    return "gone"


def _failed_attempt(job: Job, owner: str, exp: Expansion, deps: ExpandDeps, error: Exception) -> str:
    """An unexpected error (Firestore or Cloud Storage unavailable, a bug): raised again for the
    caller to answer 5xx. An attempt that wrote a chunk first gives the lease back, so that the
    redelivery carries on at once. One that wrote nothing is counted in the record, and keeps
    the lease for a back-off that doubles up to the lease's length (a redelivery meanwhile finds
    it busy; the poller's tick resumes it after): a transient outage is retried for a while, and
    after max_attempts in a row the job ends failed with the error, where a message that can
    never succeed would otherwise be retried by Pub/Sub and the ticks for ever."""
    message = f"{type(error).__name__}: {error}"[:500]
    log.warning("job %s: expansion attempt failed: %s", job.job_id, message, extra={"job_id": job.job_id})
    if exp.chunks > Expansion.from_dict(job.expansion or {}).chunks:
        _release(job.job_id, owner, replace(exp, last_error=message), deps)
        raise error
    attempts = exp.failed_attempts + 1
    if attempts >= deps.max_attempts:
        return _fail(job, owner, deps, f"the expansion failed {attempts} times in a row without progress; "
                                       f"the last error: {message}")
    now = deps.clock.now()
    backoff = min(deps.lease_seconds, 5.0 * 2 ** (attempts - 1))
    counted = replace(exp, failed_attempts=attempts, last_error=message, lease_until=now + backoff)
    deps.store.update_expansion(job.job_id, owner, ExpansionSaved(now, counted.to_dict()))
    raise error


def _release(job_id: str, owner: str, exp: Expansion, deps: ExpandDeps) -> bool:
    released = replace(exp, owner=None, lease_until=0.0)
    return deps.store.update_expansion(job_id, owner, ExpansionSaved(deps.clock.now(), released.to_dict()))


class _LeaseLost(Exception):
    """Another expander took the lease (ours ran out): it goes on from our last checkpoint."""


def _expand_chunks(job: Job, saved: list[Expansion], owner: str, deps: ExpandDeps, deadline: float,
                   written: _Written) -> bool:
    """Write chunks until the source ends (True) or the budget does (False); saved[0] is kept
    at the last checkpoint written, and `written` gets the keys of the items written."""
    clock = deps.clock
    lines = deps.sources.lines(saved[0])
    # A batch job's chunk is at least a whole batch, so that its batches are as full as when the
    # API planned them from the whole job (a chunk's intents are planned from its items alone).
    size = max(deps.chunk_items, deps.batch_max_requests) if job.lane is Lane.BATCH else deps.chunk_items
    while True:
        exp = saved[0]
        if max(clock.now(), exp.next_write_at) >= deadline:
            return False
        clock.sleep(max(0.0, exp.next_write_at - clock.now()))  # the ramp's pace
        chunk, bad, last, ended = _take(lines, size)
        if last is None:
            return True
        exp = _write_chunk(job, exp, chunk, bad, last, deps, written)
        if not deps.store.update_expansion(job.job_id, owner, ExpansionSaved(clock.now(), exp.to_dict())):
            raise _LeaseLost()
        saved[0] = exp
        if ended:
            return True


def _take(lines: Iterator[Line], size: int) -> tuple[list[Line], list[Line], Line | None, bool]:
    """The next chunk: its lines with an item and its refused lines (`size` of them at most
    together, so a file of bad lines is held a chunk at a time too), the last line read (a
    chunk ends after `8 * size` lines, blank ones included, so its time stays bounded), and
    whether the source ended."""
    good: list[Line] = []
    bad: list[Line] = []
    last = None
    for read, line in enumerate(lines, 1):
        last = line
        if line.item is not None:
            good.append(line)
        elif line.error is not None:
            bad.append(line)
        if len(good) + len(bad) >= size or read >= 8 * size:
            return good, bad, last, False
    return good, bad, last, True


def _write_chunk(job: Job, exp: Expansion, chunk: list[Line], bad: list[Line], last: Line,
                 deps: ExpandDeps, written: _Written) -> Expansion:
    """Create the chunk's items (and, batch lane, its intents); the checkpoint after it."""
    store, now = deps.store, deps.clock.now()
    items, duplicates = _new_items(job, exp, chunk, store, now)
    refused = sorted([(line.number, line.error or "") for line in bad] + duplicates)
    if refused and exp.on_bad_line == "fail":
        number, reason = refused[0]
        raise _Refused(f"line {number} of the source is refused ({reason}) and on_bad_line is \"fail\"")
    if exp.items + len(items) > deps.max_items:
        raise _Refused(f"the source holds more than {deps.max_items} items, the most one job takes")
    store.create_items(job.job_id, items, job_created_at=job.created_at)
    written.add([it.key for it in items])
    if deps.batches is not None and job.lane is Lane.BATCH and items:
        deps.batches.create_intents(plan_intents(job, items, max_requests=deps.batch_max_requests, now=now,
                                                 series=_series(exp.chunks)))
    started = exp.started_at or now
    samples = [{"line": n, "reason": r} for n, r in refused][: max(0, deps.max_bad_samples - len(exp.bad_samples))]
    return replace(
        exp, offset=last.end, lines=last.number, line_index=last.next_index, items=exp.items + len(items), chunks=exp.chunks + 1,
        bad_lines=exp.bad_lines + len(refused), bad_samples=exp.bad_samples + tuple(samples), started_at=started,
        failed_attempts=0,  # progress: only attempts in a row that write nothing count
        next_write_at=now + len(items) / deps.ramp.rate(now - started),
    )


def _series(chunk: int) -> str:
    """The intent ids' series of a chunk: the first chunk's intents are named as a job's intents
    always were ("{job}-b000-a1", ...), the later ones by their chunk ("{job}-e0000001.000-a1"),
    so no two chunks can name one intent and the ids sort in the chunks' order."""
    return "b" if chunk == 0 else f"e{chunk:07d}."


def _new_items(job: Job, exp: Expansion, chunk: list[Line], store: JobStore,
               now: float) -> tuple[list[Item], list[tuple[int, str]]]:
    """The chunk's items, indexed after the items before them, and the lines refused as
    duplicates. A key already stored under another index came from an earlier line; one under
    the same index is this chunk's own, written by an attempt that died before its checkpoint.
    So no key set is kept in memory: the store is the memory. A staged body's keys were checked
    unique at accept, so its items are not read first (a read per item, a third of the cost of
    expanding it): a chunk written again is written to the same documents, create-only."""
    specs = [(line.number, line.item) for line in chunk if line.item is not None]
    stored = {} if exp.format == STAGED_FORMAT else store.item_indexes(job.job_id, [spec.key for _, spec in specs])
    items: list[Item] = []
    duplicates: list[tuple[int, str]] = []
    seen: set[str] = set()
    for number, spec in specs:
        index = exp.items + len(items)
        if spec.key in seen or stored.get(spec.key, index) != index:
            duplicates.append((number, f"duplicate key {spec.key!r}: an earlier line has it"))
            continue
        seen.add(spec.key)
        items.append(Item(job_id=job.job_id, key=spec.key, index=index, prompt=spec.prompt,
                          aspect_ratio=spec.aspect_ratio, domain=spec.domain, quality=spec.quality,
                          lane=job.lane.value, updated_at=now))
    return items, duplicates


# --- the end ---------------------------------------------------------------------------------


def _finish(job: Job, exp: Expansion, owner: str, deps: ExpandDeps, written: _Written) -> str:
    """accepting -> queued, the count known; a source job's cost reserved now; interactive:
    publish (published stays False until done, so reconcile_unpublished finishes a crash)."""
    store, clock, accounting = deps.store, deps.clock, deps.accounting
    if exp.items == 0:
        return _fail(job, owner, deps, "the source holds no item to generate"
                     + (f" ({exp.bad_lines} line(s) refused)" if exp.bad_lines else ""))
    from_source = exp.format != STAGED_FORMAT  # a body's count and estimate were known at accept
    estimate = job.estimated_cost_usd
    if from_source and accounting is not None:
        estimate = accounting.prices.estimate(job.lane, exp.items, job.model)
    done = replace(exp, owner=None, lease_until=0.0)
    if not store.update_expansion(job.job_id, owner, ExpansionFinished(clock.now(), done.to_dict(), exp.items, estimate)):
        return "lost"
    _drop_staged(job.job_id, exp, deps)
    if accounting is not None and from_source:
        # A source job's count is known only now: it is reserved now (a crash just before
        # reserves nothing, the safe side for the caller; the daily budget still caps spend).
        accounting.reserve(job.lane, exp.items, cost=estimate, job_id=job.job_id)
    if job.lane is Lane.INTERACTIVE:
        _publish_all(job.job_id, deps, written.all_of(exp))
    else:
        _nudge_intents(job.job_id, deps)
    log.info("job %s expanded: %d items, %d line(s) refused", job.job_id, exp.items, exp.bad_lines,
             extra={"job_id": job.job_id})
    return "done"


def _publish_all(job_id: str, deps: ExpandDeps, keys: list[str] | None = None, page: int = 500) -> None:
    """Publish the job's items that are not finished: `keys`, all of them, when given (nothing
    ran while the job was accepting), else read page by page from the store."""
    if keys is not None:
        deps.queue.publish_items(job_id, keys)
    else:
        after = None
        while True:
            items = deps.store.list_items(job_id, after, page)
            deps.queue.publish_items(job_id, [it.key for it in items if not it.terminal])
            if len(items) < page:
                break
            after = items[-1].index
    deps.store.mark_published(job_id, deps.clock.now())


def _nudge_intents(job_id: str, deps: ExpandDeps) -> None:
    """Ask the poller to create the job's batches now (each nudge reconciles one intent); any
    not nudged are created by the next tick anyway."""
    if deps.intent_nudges is None or deps.batches is None:
        return
    for intent in iter_intents(deps.batches, job_id):  # a page at a time, without their keys
        try:
            deps.intent_nudges.nudge(intent.intent_id)
        except DomainError as e:
            log.warning("job %s: batches left to the next poller tick (%s)", job_id, e)
            return


def _fail(job: Job, owner: str, deps: ExpandDeps, error: str) -> str:
    """The job ends failed: its written items are failed too (nothing ran them: the job never
    left accepting), the reservation made at accept is released, its completion recorded."""
    store, clock, accounting = deps.store, deps.clock, deps.accounting
    if not store.update_expansion(job.job_id, owner, ExpansionFailed(clock.now(), error)):
        return "lost"
    _drop_staged(job.job_id, Expansion.from_dict(job.expansion or {}), deps)
    after = None
    while True:
        items = store.list_items(job.job_id, after, 500)
        for it in items:
            store.requeue_item(job.job_id, it.key, ItemState.QUEUED, AcceptAbandoned(clock.now(), error))
        if len(items) < 500:
            break
        after = items[-1].index
    if accounting is not None and job.estimated_cost_usd:
        accounting.add({acct.RELEASED_USD: job.estimated_cost_usd}, job_id=job.job_id, lane=job.lane.value)
    log.error("job %s: %s", job.job_id, error, extra={"job_id": job.job_id})
    finalize_job_if_done(job.job_id, store=store, clock=clock, sink=deps.sink, events=deps.events)
    return "failed"


def _drop_staged(job_id: str, exp: Expansion, deps: ExpandDeps) -> None:
    """Delete the job's staged body once the job has left accepting for good: it is read by
    nothing else. Best effort: one left behind (a failed delete, a kill just before it) is
    deleted by the bucket's lifecycle rule on the prefix (infra/terraform/storage.tf). A caller's
    `source` is never deleted: only our own format, under our own prefix."""
    if deps.staged is None or exp.format != STAGED_FORMAT or not _is_staged(exp.source_uri):
        return
    try:
        deps.staged.delete_staged(exp.source_uri, exp.generation)
    except DomainError as e:
        log.warning("job %s: its staged body is left to the lifecycle rule (%s)", job_id, e, extra={"job_id": job_id})


def _is_staged(uri: str) -> bool:
    """gs://bucket/_accepted/... : a body we staged (submitting.py names them so)."""
    _, _, rest = uri.removeprefix("gs://").partition("/")
    return uri.startswith("gs://") and rest.startswith(STAGED_PREFIX)


# --- the poller's part -----------------------------------------------------------------------


def resume_expansions(*, store: JobStore, nudges: ExpandNudges, clock: Clock, limit: int = 50) -> list[str]:
    """Nudge every accepting job whose expansion nobody holds (its lease ran out: the expander
    died, or its continuation message was lost). A duplicate nudge is harmless: the lease lets
    one expander in, and the other finds it busy."""
    now = clock.now()
    nudged = []
    for job in store.accepting_jobs(limit * 4):
        exp = job.expansion
        if exp is None or (exp.get("lease_until") or 0) > now:
            continue
        try:
            nudges.expand(job.job_id)
        except DomainError as e:
            log.warning("could not nudge the expansion of job %s: %s", job.job_id, e)
            continue
        nudged.append(job.job_id)
        if len(nudged) >= limit:
            break
    return nudged


@dataclass(frozen=True)
class InlineExpansions:
    """ExpandNudges for a poller with no nudge topic: the tick that would nudge a job's expansion
    runs it itself until `deadline` (the tick's), and a later tick carries on from its checkpoint.
    Without this, a deployment without the topic would accept jobs that nothing ever expands."""
    deps: ExpandDeps
    owner: str
    deadline: float

    def expand(self, job_id: str) -> None:
        if self.deps.clock.now() < self.deadline:
            outcome = expand_job(job_id, self.owner, self.deps, self.deadline)
            log.info("expanding job %s in the tick: %s", job_id, outcome, extra={"job_id": job_id, "state": outcome})


# --- the expansion's lease, as the stores apply it to a job document --------------------------


def claim_updates(data: dict | None, owner: str, now: float, lease_seconds: float) -> dict | None:
    """The job document's updates that lease its expansion to `owner`, or None when it is not an
    accepting job with an expansion, or another holds a live lease on it."""
    if data is None or data.get("status") != JobStatus.ACCEPTING.value or not data.get("expansion"):
        return None
    exp = data["expansion"]
    if exp.get("owner") not in (None, owner) and (exp.get("lease_until") or 0) > now:
        return None
    return {"expansion": {**exp, "owner": owner, "lease_until": now + lease_seconds}, "updated_at": now}


def holder_updates(data: dict | None, owner: str, updates: dict) -> dict | None:
    """`updates` if the document is an accepting job whose expansion `owner` holds, else None."""
    if data is None or data.get("status") != JobStatus.ACCEPTING.value:
        return None
    return updates if (data.get("expansion") or {}).get("owner") == owner else None
