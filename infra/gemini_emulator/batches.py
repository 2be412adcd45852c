"""Batch API: ``models/{m}:batchGenerateContent``, ``batches`` get / list / cancel / delete, and the
glue that runs each batch on a worker thread.

A batch's results are computed as soon as it is created (on ``state.batch_executor``) but only
shown when its timeline (batch_jobs.py) says it is done; a batch whose results take longer than
``running_seconds`` stays RUNNING until they are written. File-input results are written to disk
line by line and become ``files/batch-<id>`` when the batch succeeds; inline results are kept in
memory (the API caps inline input at 20 MB). Batch lines never touch the interactive quotas.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import shutil
from array import array
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.gemini_emulator import batch_jobs, batch_runner, errors, models, webhooks
from infra.gemini_emulator.auth import API_KEY
from infra.gemini_emulator.batch_jobs import BatchRecord, BatchStore
from infra.gemini_emulator.faults import choose_batch_outcome
from infra.gemini_emulator.filestore import random_id
from infra.gemini_emulator.routing import json_response, versioned
from infra.gemini_emulator.state import STATE_KEY, EmulatorState
from infra.gemini_emulator.wire import normalize_keys, paginate

log = logging.getLogger(__name__)

MAX_INLINE_BYTES = 20 * 1024**2  # documented cap on a batchGenerateContent request with inline input
_ID = "{batch_id:[^/:]+}"

FileSource = tuple[Path, array]
InlineSource = list[tuple[dict[str, str] | None, Any]]


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_post(versioned("/models/{model:[^/:]+}:batchGenerateContent"), create_batch, name="batches.create")
    router.add_get(versioned("/batches"), list_batches, name="batches.list")
    router.add_get(versioned("/batches/" + _ID), get_batch, name="batches.get")
    router.add_delete(versioned("/batches/" + _ID), delete_batch, name="batches.delete")
    router.add_post(versioned("/batches/" + _ID + ":cancel"), cancel_batch, name="batches.cancel")


# --- the timeline, applied lazily -------------------------------------------------------------


def advance_all(state: EmulatorState) -> None:
    """Bring every batch up to the current time (caller holds the lock). Cheap: called by every
    batches, files and stats request, which is what makes results appear without timers."""
    now = state.clock()
    for record in list(state.batches.records.values()):
        if batch_jobs.advance(record, now):
            _on_terminal(state, record)


def _end(state: EmulatorState, record: BatchRecord, batch_state: str) -> None:
    batch_jobs.finish(record, batch_state, state.clock())
    _on_terminal(state, record)


def _on_terminal(state: EmulatorState, record: BatchRecord) -> None:
    webhooks.on_batch_end(state, record)
    if record.state != batch_jobs.SUCCEEDED:
        batch_jobs.discard(record)  # nothing is delivered for a failed, cancelled or expired batch
        return
    # Only delivered results are billed: a failed, cancelled or expired batch has none.
    for prompt in record.billed_prompts:
        state.stats.record_billed(prompt)
    record.billed_prompts.clear()
    if record.output_path is not None:
        state.files.add_generated(
            file_id=record.output_file_id,
            owner=record.owner,
            path=record.output_path,
            size=record.output_size,
            sha256_hex=record.output_sha256,
            now=record.ended or state.clock(),
            ttl_s=state.config["files"]["ttl_seconds"],
        )
        record.output_path = None


def _lookup(state: EmulatorState, batch_id: str, owner: str | None) -> BatchRecord:
    advance_all(state)
    record = state.batches.lookup(batch_id, owner)
    if record is None:
        raise errors.not_found("Requested entity was not found.")
    return record


def _not_running(record: BatchRecord) -> errors.ApiError:
    return errors.ApiError(
        400, f"Batch {record.name} is already in a terminal state ({record.state}).", status="FAILED_PRECONDITION"
    )


# --- handlers -----------------------------------------------------------------------------------


async def create_batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    owner = request[API_KEY]
    model = request.match_info["model"]
    raw = await request.read()
    if len(raw) > MAX_INLINE_BYTES:
        raise errors.invalid_argument(f"Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes.")
    try:
        body = normalize_keys(json.loads(raw or b"null"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.invalid_argument(f"Invalid JSON payload received. {exc}") from None
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        raise errors.invalid_argument("* BatchGenerateContentRequest.batch: required field is missing")
    models.check_served(state, model, "batchGenerateContent")
    display_name = batch.get("display_name")
    if display_name is not None and not isinstance(display_name, str):
        raise errors.invalid_argument("* GenerateContentBatch.display_name: expected a string")
    webhook_config = _webhook_config(batch.get("webhook_config"))
    input_config = batch.get("input_config")
    if not isinstance(input_config, dict) or ("file_name" in input_config) == ("requests" in input_config):
        raise errors.invalid_argument(
            "* GenerateContentBatch.input_config: exactly one of file_name or requests must be set"
        )

    source: FileSource | InlineSource
    input_file = None
    input_path: Path | None = None  # the uploaded file's data, when the input is a file
    if "file_name" in input_config:
        input_file, source = await _file_source(state, owner, input_config["file_name"])
        input_path = source[0]
        count = len(source[1])
        tokens = math.ceil(input_path.stat().st_size / 4)
    else:
        source = _inline_source(input_config["requests"])
        count = len(source)
        tokens = math.ceil(len(raw) / 4)

    with state.lock:
        advance_all(state)
        cfg = state.config
        scripted = _scripted_refusal(state)
        if scripted is not None:
            state.batches.rejected_scripted += 1
            if input_path is not None:
                input_path.unlink(missing_ok=True)
            raise scripted
        limit = cfg["batch"]["max_concurrent_batches"]
        if limit and state.batches.active_count() >= limit:
            state.batches.rejected_max_concurrent += 1
            if input_path is not None:
                input_path.unlink(missing_ok=True)
            # Batch quota errors carry no RetryInfo (https://github.com/langchain4j/langchain4j/pull/3942,
            # https://github.com/googleapis/python-genai/issues/1901).
            raise errors.ApiError(
                429,
                f"Resource has been exhausted: at most {limit} batch jobs can be pending or running at once.",
            )
        if _over_enqueued_limit(state, model, count, tokens):
            state.batches.rejected_max_enqueued += 1
            if input_path is not None:
                input_path.unlink(missing_ok=True)
            raise errors.batch_enqueued_exhausted()
        outcome, state.batches.script_pos = choose_batch_outcome(
            display_name=display_name or "", batch=cfg["batch"], script_pos=state.batches.script_pos
        )
        spec = batch_runner.RunSpec(
            model=model,
            faults=copy.deepcopy(cfg["faults"]),
            image_scale=cfg["image_scale"],
            image_target_bytes=cfg["image_target_bytes"],
            seed=state.rng.getrandbits(64),  # a seeded emulator replays batches identically
            shuffle=cfg["batch"]["shuffle_results"],
            repeat_rules=tuple((r["contains"], r["then"]) for r in cfg["batch"]["repeat_key_rules"]),
        )
        store = state.batches
        record = store.new_record(
            owner=owner,
            model=model,
            display_name=display_name,
            created=state.clock(),
            pending_s=cfg["batch"]["pending_seconds"],
            running_s=cfg["batch"]["running_seconds"],
            outcome=outcome,
            request_count=count,
            input_file=input_file,
        )
        record.input_tokens = tokens
        record.webhook_config = webhook_config
        record.input_link = input_path
        body = batch_jobs.operation(record, state.wall)
        record.worker = state.batch_executor.submit(_work, state, store, record, spec, source)
    return json_response(body)


def _webhook_config(value: Any) -> dict[str, Any] | None:
    """GenerateContentBatch.webhook_config as the SDK sends it (types.WebhookConfig): uris
    replace the registered webhooks for this batch; user_metadata comes back in its events."""
    if value is None:
        return None
    uris = value.get("uris") if isinstance(value, dict) else None
    metadata = value.get("user_metadata") if isinstance(value, dict) else None
    if (not isinstance(value, dict) or (uris is not None and not (
            isinstance(uris, list) and all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in uris)))
            or (metadata is not None and not isinstance(metadata, dict))):
        raise errors.invalid_argument("* GenerateContentBatch.webhook_config: uris is a list of http(s) URIs, "
                                      "user_metadata an object")
    return {"uris": uris or [], "user_metadata": metadata}


def _scripted_refusal(state: EmulatorState) -> errors.ApiError | None:
    """The next `batch.create_script` entry's 429, or None ("ok", or the script is used up).
    "429" is the body real batch creates past quota answered: only a Help link, no RetryInfo
    (https://github.com/langchain4j/langchain4j/pull/3942,
    https://github.com/googleapis/python-genai/issues/1901). "429_retry" adds the RetryInfo
    that generateContent's 429s carry (https://github.com/googleapis/python-genai/issues/2044),
    for a client that must honour it should a batch create ever send one. (call under the state
    lock)"""
    script = state.config["batch"]["create_script"]
    if state.batches.create_script_pos >= len(script):
        return None
    outcome = script[state.batches.create_script_pos]
    state.batches.create_script_pos += 1
    if outcome == "429":
        return errors.quota_exceeded_help_only()
    if outcome == "429_retry":
        return errors.transient_exhausted(state.config["faults"]["retry_delay_s"])
    return None


def _over_enqueued_limit(state: EmulatorState, model: str, requests: int, tokens: int) -> bool:
    """Would this batch push the model's enqueued requests or tokens past the configured limit?
    (call under the state lock)"""
    cfg = state.config["batch"]
    queued_requests, queued_tokens = state.batches.enqueued(model)
    max_requests, max_tokens = cfg["max_enqueued_requests"], cfg["max_enqueued_tokens"]
    return bool((max_requests and queued_requests + requests > max_requests)
                or (max_tokens and queued_tokens + tokens > max_tokens))


async def _file_source(state: EmulatorState, owner: str, file_name: Any) -> tuple[str, FileSource]:
    if not isinstance(file_name, str) or not file_name:
        raise errors.invalid_argument("* GenerateContentBatch.input_config.file_name: expected a file name")
    file_id = file_name.removeprefix("files/")
    with state.lock:
        advance_all(state)
        record = state.files.lookup(file_id, owner, state.clock())
        # A private hard link: the user may delete the input file while the batch still reads it.
        link = state.data_dir / f"input-{random_id(16)}"
        try:
            os.link(record.path, link)
            copy_from = None
        except OSError:
            copy_from = record.path
    loop = asyncio.get_running_loop()
    try:
        if copy_from is not None:
            await loop.run_in_executor(None, shutil.copyfile, copy_from, link)
        offsets = await loop.run_in_executor(None, batch_runner.scan_input, link)
    except batch_runner.InputError as exc:
        link.unlink(missing_ok=True)
        raise errors.invalid_argument(str(exc)) from None
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    if not offsets:
        link.unlink(missing_ok=True)
        raise errors.invalid_argument(f"The batch input file files/{file_id} contains no requests.")
    return f"files/{file_id}", (link, offsets)


def _inline_source(requests: Any) -> InlineSource:
    items = requests.get("requests") if isinstance(requests, dict) else None
    if not isinstance(items, list) or not items:
        raise errors.invalid_argument("* GenerateContentBatch.input_config.requests.requests: must not be empty")
    source: InlineSource = []
    for i, item in enumerate(items):
        where = f"* GenerateContentBatch.input_config.requests.requests[{i}]"
        if not isinstance(item, dict):
            raise errors.invalid_argument(f"{where}: expected an InlinedRequest object")
        metadata = item.get("metadata")
        # The SDK parses inlined metadata as dict[str, str] and crashes on anything else.
        if metadata is not None and (
            not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
        ):
            raise errors.invalid_argument(f"{where}.metadata: expected an object of string values")
        source.append((metadata, item.get("request")))
    return source


async def get_batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        record = _lookup(state, request.match_info["batch_id"], request[API_KEY])
        body = batch_jobs.operation(record, state.wall)
    if record.inline_results:
        # Inline image results can be tens of MB: serialise them off the event loop.
        text = await asyncio.get_running_loop().run_in_executor(None, json.dumps, body)
        return json_response(None, text=text)
    return json_response(body)


async def list_batches(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        advance_all(state)
        records = state.batches.owned_by(request[API_KEY])
        try:
            page, token = paginate(
                records, lambda r: r.seq, request.query.get("pageSize"), request.query.get("pageToken")
            )
        except ValueError:
            raise errors.invalid_argument("Invalid pageSize or pageToken.") from None
        body: dict[str, Any] = {}
        if page:
            body["operations"] = [batch_jobs.operation(r, state.wall, include_inline=False) for r in page]
        if token:
            body["nextPageToken"] = token
    return json_response(body)


async def cancel_batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        record = _lookup(state, request.match_info["batch_id"], request[API_KEY])
        if record.done:
            raise _not_running(record)
        _end(state, record, batch_jobs.CANCELLED)
    return json_response({})


async def delete_batch(request: web.Request) -> web.Response:
    """Removes the batch record (a running one is stopped first); its result file, if any, is a
    File of its own and stays until deleted or expired."""
    state = request.app[STATE_KEY]
    with state.lock:
        record = _lookup(state, request.match_info["batch_id"], request[API_KEY])
        state.batches.remove(record)
    return json_response({})


async def force_state(state: EmulatorState, batch_id: str, batch_state: str) -> dict[str, Any]:
    """Admin: end a PENDING/RUNNING batch in ``batch_state`` now. For SUCCEEDED this waits until
    its results are written (so the caller can download them right away)."""
    with state.lock:
        record = _lookup(state, batch_id.removeprefix("batches/"), None)
        if record.done:
            raise _not_running(record)
        if batch_state != batch_jobs.SUCCEEDED:
            _end(state, record, batch_state)
            return batch_jobs.operation(record, state.wall)
        record.outcome = "succeeded"
        worker = record.worker
    if worker is not None:
        await asyncio.shield(asyncio.wrap_future(worker))
    with state.lock:
        if not record.done:
            batch_jobs.collapse_timeline(record, state.clock())
            advance_all(state)
        return batch_jobs.operation(record, state.wall)


# --- the worker ---------------------------------------------------------------------------------


def _work(
    state: EmulatorState,
    store: BatchStore,
    record: BatchRecord,
    spec: batch_runner.RunSpec,
    source: FileSource | InlineSource,
) -> None:
    """Runs on ``state.batch_executor``. ``store`` is the store the batch was created in: after
    a reset the record is orphaned, and its progress must not leak into the new counters."""

    def progress(result: batch_runner.LineResult) -> None:
        with state.lock:
            if result.ok:
                record.succeeded += 1
                store.lines_succeeded += 1
            else:
                record.failed += 1
                store.lines_failed += 1
            store.line_outcomes[result.outcome] += 1
            store.images_generated += result.image
            if result.image:
                record.billed_prompts.append(result.prompt or "")

    partial = state.data_dir / f"results-{record.id}.partial"
    written: tuple[int, str] | None = None
    inline: list[dict[str, Any]] | None = None
    try:
        if isinstance(source, tuple):
            link, offsets = source
            written = batch_runner.write_results_file(spec, link, offsets, partial, record.cancel, progress)
        else:
            inline = batch_runner.inline_results(spec, source, record.cancel, progress)
    except Exception as exc:  # noqa: BLE001 - a bug or a full disk fails the batch, visibly
        log.exception("batch %s failed while writing results", record.name)
        with state.lock:
            if not record.done:
                record.outcome = "failed"
                record.error = {"code": 13, "message": f"Internal error while running the batch: {exc}"}
            record.results_ready_at = state.clock()
        return
    finally:
        if isinstance(source, tuple):
            source[0].unlink(missing_ok=True)
            with state.lock:
                record.input_link = None
    with state.lock:
        record.results_ready_at = state.clock()
        if record.discarded or (written is None and inline is None):
            partial.unlink(missing_ok=True)
            return
        if written is not None:
            record.output_path = partial
            record.output_size, record.output_sha256 = written
        else:
            record.inline_results = inline
