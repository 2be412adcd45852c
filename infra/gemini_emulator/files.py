"""Files API: resumable upload, get, list, delete and download.

Upload speaks the protocol exactly as google-genai does (googleapis/python-genai
``google/genai/_extra_utils.py`` ``prepare_resumable_upload`` builds ``start``;
``google/genai/_api_client.py`` ``BaseApiClient._upload_fd`` sends the chunks): ``start`` is
an authenticated ``POST /upload/{v}/files`` answered with a session URL built from the Host
header; the chunks go to that URL *without* an API key (the ``upload_id`` is the credential),
so the route is public and authenticates ``start`` itself. Every chunk answer carries
``X-Goog-Upload-Status``, errors included: without it the SDK re-sends the chunk for ~7 s.
Downloads stream from disk; only generated files (batch results) can be downloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from infra.gemini_emulator import errors
from infra.gemini_emulator.auth import API_KEY, authenticate
from infra.gemini_emulator.batches import advance_all
from infra.gemini_emulator.filestore import (
    CHUNK_GRANULARITY,
    GENERATED,
    FileRecord,
    MAX_FILE_BYTES,
    UploadSession,
    file_resource,
    valid_mime_type,
)
from infra.gemini_emulator.routing import VERSION_PATTERN, base_url, json_response, public, versioned
from infra.gemini_emulator.state import STATE_KEY, EmulatorState
from infra.gemini_emulator.wire import normalize_keys, paginate

log = logging.getLogger(__name__)

UPLOAD_STATUS = "X-Goog-Upload-Status"
_ID = "{file_id:[^/:]+}"
_PIECE = 1024 * 1024


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/upload/" + VERSION_PATTERN + "/files", handle_upload, name="files.upload")
    router.add_get(versioned("/files"), list_files, name="files.list")
    router.add_get(versioned("/files/" + _ID), get_file, name="files.get")
    router.add_delete(versioned("/files/" + _ID), delete_file, name="files.delete")
    # The SDK downloads from /{v}/files/{id}:download; File.downloadUri has a /download prefix.
    router.add_get(versioned("/files/" + _ID + ":download"), download_file, name="files.download")
    router.add_get("/download" + versioned("/files/" + _ID + ":download"), download_file, name="files.download_uri")


def _resource(request: web.Request, state: EmulatorState, record: FileRecord) -> dict[str, Any]:
    return file_resource(record, base_url=base_url(request), version=request.match_info["version"], wall=state.wall)


# --- upload -------------------------------------------------------------------------------------


@public
async def handle_upload(request: web.Request) -> web.Response:
    if "upload_id" in request.query:
        return await _upload_chunk(request)
    return await _upload_start(request, authenticate(request))


def _int_header(request: web.Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise errors.invalid_argument(f"{name} must be an integer, got {value!r}") from None
    if number < 0:
        raise errors.invalid_argument(f"{name} must not be negative")
    return number


async def _upload_start(request: web.Request, owner: str) -> web.Response:
    state = request.app[STATE_KEY]
    protocol = request.headers.get("X-Goog-Upload-Protocol", "").lower()
    command = request.headers.get("X-Goog-Upload-Command", "").lower()
    if protocol != "resumable" or command != "start":
        raise errors.invalid_argument(
            "Only resumable uploads are supported: send X-Goog-Upload-Protocol: resumable "
            "and X-Goog-Upload-Command: start."
        )
    try:
        body = normalize_keys(json.loads(await request.read() or b"{}"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.invalid_argument(f"Invalid JSON payload received. {exc}") from None
    meta = body.get("file") if isinstance(body, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    declared = _int_header(request, "X-Goog-Upload-Header-Content-Length")
    if declared is None and meta.get("size_bytes") is not None:
        try:
            declared = int(meta["size_bytes"])
        except (TypeError, ValueError):
            raise errors.invalid_argument("* File.size_bytes: expected an integer") from None
    mime_type = meta.get("mime_type") or request.headers.get("X-Goog-Upload-Header-Content-Type") or "application/octet-stream"
    if not isinstance(mime_type, str) or not valid_mime_type(mime_type):
        raise errors.invalid_argument(f"Unsupported MIME type: {mime_type}")
    name = meta.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise errors.invalid_argument("* File.name: expected a string")
    display_name = meta.get("display_name")
    if display_name is not None and not isinstance(display_name, str):
        raise errors.invalid_argument("* File.display_name: expected a string")
    with state.lock:
        limit = state.config["files"]["max_total_bytes"]
        if limit and state.files.live_bytes() + (declared or 0) > limit:
            raise errors.file_storage_exhausted(limit)
        session = state.files.open_session(
            owner=owner,
            file_id=name.removeprefix("files/") if name else None,
            mime_type=mime_type,
            declared_size=declared,
            display_name=display_name or None,
        )
    url = (
        f"{base_url(request)}/upload/{request.match_info['version']}/files"
        f"?upload_id={session.id}&upload_protocol=resumable"
    )
    return web.Response(
        headers={
            UPLOAD_STATUS: "active",
            "X-Goog-Upload-URL": url,
            "X-Goog-Upload-Control-URL": url,
            "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY),
        }
    )


async def _upload_chunk(request: web.Request) -> web.Response:
    try:
        return await _receive_chunk(request)
    except errors.ApiError as exc:
        response = exc.to_response()
    except Exception:  # noqa: BLE001 - still needs the status header, or the SDK retries for 7 s
        log.exception("upload chunk failed")
        response = errors.internal().to_response()
    response.headers[UPLOAD_STATUS] = "final"
    return response


async def _receive_chunk(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        session = state.files.sessions.get(request.query["upload_id"])
        if session is None:
            raise errors.not_found("Upload session not found or already finalized.")
        if session.busy:
            raise errors.ApiError(409, "Another chunk of this upload is still being received.", status="ABORTED")
        session.busy = True
    try:
        commands = {c.strip().lower() for c in request.headers.get("X-Goog-Upload-Command", "").split(",") if c.strip()}
        if commands == {"query"}:
            return web.Response(headers={UPLOAD_STATUS: "active", "X-Goog-Upload-Size-Received": str(session.received)})
        if commands == {"cancel"}:
            with state.lock:
                state.files.drop_session(session)
            return web.Response(headers={UPLOAD_STATUS: "cancelled"})
        if not commands or not commands <= {"upload", "finalize"}:
            raise errors.invalid_argument(f"Unsupported X-Goog-Upload-Command {request.headers.get('X-Goog-Upload-Command')!r}")
        final = "finalize" in commands
        if "upload" in commands:
            offset = _int_header(request, "X-Goog-Upload-Offset")
            if offset is None or offset != session.received:
                raise errors.invalid_argument(f"Invalid X-Goog-Upload-Offset {offset}; {session.received} bytes received so far.")
            await _append(request, session, final=final)
        if not final:
            return web.Response(headers={UPLOAD_STATUS: "active", "X-Goog-Upload-Size-Received": str(session.received)})
        with state.lock:
            rejected = _take_finalize_fault(state)
            if rejected is not None:
                state.files.drop_session(session)
        if rejected is not None:
            # HTTP 200 with an error body at finalize, as the real API answers an unsupported
            # MIME type (https://github.com/googleapis/python-genai/issues/1547, 1590): the SDK
            # then fails with KeyError 'file'.
            return json_response(rejected.body(), headers={UPLOAD_STATUS: "final"})
        with state.lock:
            record = state.files.finish_session(session, now=state.clock(), ttl_s=state.config["files"]["ttl_seconds"])
            body = {"file": _resource(request, state, record)}
        return json_response(body, headers={UPLOAD_STATUS: "final"})
    finally:
        session.busy = False


def _take_finalize_fault(state: EmulatorState) -> errors.ApiError | None:
    """Consume one `files.reject_finalize`, if any is left (call under the state lock)."""
    files = state.config["files"]
    if files["reject_finalize"] <= 0:
        return None
    files["reject_finalize"] -= 1
    return errors.invalid_argument(files["reject_finalize_message"])


async def _append(request: web.Request, session: UploadSession, *, final: bool) -> None:
    """Stream the chunk to the session file (never whole in memory); commit only if it is valid,
    so a rejected chunk can be re-sent."""
    loop = asyncio.get_running_loop()
    limit = session.declared_size if session.declared_size is not None else MAX_FILE_BYTES
    hasher = session.hasher.copy()
    written = 0
    with session.path.open("r+b") as fh:
        fh.seek(session.received)
        try:
            async for piece in request.content.iter_chunked(_PIECE):
                written += len(piece)
                if session.received + written > limit:
                    raise errors.invalid_argument(f"Upload exceeds the declared size of {limit} bytes.")
                await loop.run_in_executor(None, _write, fh, hasher, piece)
            if not final and written % CHUNK_GRANULARITY:
                raise errors.invalid_argument(
                    f"A non-final chunk must be a multiple of {CHUNK_GRANULARITY} bytes, got {written}."
                )
        except BaseException:
            fh.truncate(session.received)
            raise
    session.received += written
    session.hasher = hasher


def _write(fh: BinaryIO, hasher: Any, piece: bytes) -> None:
    fh.write(piece)
    hasher.update(piece)


# --- get / list / delete / download ------------------------------------------------------------


async def get_file(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        advance_all(state)
        record = state.files.lookup(request.match_info["file_id"], request[API_KEY], state.clock())
        return json_response(_resource(request, state, record))


async def list_files(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        advance_all(state)
        records = state.files.owned_by(request[API_KEY], state.clock())
        try:
            page, token = paginate(records, lambda r: r.seq, request.query.get("pageSize"), request.query.get("pageToken"))
        except ValueError:
            raise errors.invalid_argument("Invalid pageSize or pageToken.") from None
        body: dict[str, Any] = {}
        if page:
            body["files"] = [_resource(request, state, r) for r in page]
        if token:
            body["nextPageToken"] = token
    return json_response(body)


async def delete_file(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        advance_all(state)
        state.files.delete(request.match_info["file_id"], request[API_KEY], state.clock())
    return json_response({})


async def download_file(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    with state.lock:
        advance_all(state)
        record = state.files.lookup(request.match_info["file_id"], request[API_KEY], state.clock())
        if record.source != GENERATED:
            # What the SDK says client-side for a File without downloadUri; the server's exact
            # answer for a named uploaded file was not captured.
            raise errors.invalid_argument("Only generated files can be downloaded; uploaded files can't be downloaded.")
        state.files.downloads += 1
        cut = _take_cut(state)
        state.files.download_log.append({"time": time.time(), "file": f"files/{record.id}",
                                         "range": request.headers.get("Range"), "cut_after_bytes": cut})
        path = record.path
        content_type = record.mime_type if "/" in record.mime_type else "application/octet-stream"
    if cut is not None:
        return await _cut_download(request, path, content_type, cut)
    # Streams from disk (sendfile where possible): a multi-GB result never sits in memory.
    # FileResponse honours Range: 206 with Content-Range, 416 past the end (README "Files API").
    return web.FileResponse(path, chunk_size=_PIECE, headers={"Content-Type": content_type})


def _take_cut(state: EmulatorState) -> int | None:
    files = state.config["files"]
    if files["cut_downloads"] <= 0:
        return None
    files["cut_downloads"] -= 1
    return files["cut_download_after_bytes"]


_RANGE_FROM = re.compile(r"bytes=(\d+)-$")


async def _cut_download(request: web.Request, path: Path, content_type: str, cut: int) -> web.StreamResponse:
    """The answer a download would get (from the Range's first byte, if it has one of the form
    bytes=N-), with the connection closed after `cut` bytes of the body: a network cut."""
    size = path.stat().st_size
    match = _RANGE_FROM.match(request.headers.get("Range", ""))
    start = int(match.group(1)) if match else 0
    response = web.StreamResponse(status=206 if match else 200, headers={"Content-Type": content_type})
    if match:
        response.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    response.content_length = size - start
    await response.prepare(request)
    with open(path, "rb") as fh:
        fh.seek(start)
        left = min(cut, size - start)
        while left > 0:
            piece = fh.read(min(_PIECE, left))
            await response.write(piece)
            left -= len(piece)
    if request.transport is not None:
        request.transport.close()
    return response
