"""The Gemini Files and Batch APIs through the google-genai SDK, for the batch lane."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import urllib.parse

from google.genai import Client, errors, types

from adapters.gemini_generator import translate_api_error
from core.errors import TransientError, UploadRejected
from core.models import BatchInfo


def _state(batch: types.BatchJob) -> str:
    state = batch.state
    return getattr(state, "value", None) or str(state or "")


def _info(batch: types.BatchJob) -> BatchInfo:
    return BatchInfo(
        name=batch.name or "",  # the API always names a batch; the SDK types it Optional
        state=_state(batch),
        display_name=batch.display_name,
        output_file=batch.dest.file_name if batch.dest else None,
    )


def _finalize_error(e: KeyError) -> str:
    """The server's message from the finalize answer the SDK could not read. The SDK keeps that
    answer only in a local variable (`return_file`, an HttpResponse, in files.upload), so it is
    looked up in the traceback's frames; without it the KeyError itself is the message."""
    tb = e.__traceback__
    while tb is not None:
        answer = tb.tb_frame.f_locals.get("return_file")
        body = getattr(answer, "json", None)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            status = f"{error.get('code', '')} {error.get('status', '')}".strip()
            return f"{status}: {error.get('message', '')}" if status else str(error.get("message", ""))
        tb = tb.tb_next
    return f"no file in the answer (KeyError {e})"


@contextlib.contextmanager
def _translated():
    """SDK errors out as core errors (ClientError 429 -> QuotaExceeded, 5xx -> TransientError...)."""
    try:
        yield
    except errors.APIError as e:
        raise translate_api_error(e) from e


# A batch as the SDK holds batches.get's answer (BatchJob's fields, after its own conversion),
# parsed once at an instance's warm-up.
_WARM_UP_BATCH = {"name": "batches/warm-up", "displayName": "warm-up", "state": "JOB_STATE_SUCCEEDED",
                  "createTime": "2026-01-01T00:00:00Z", "dest": {"fileName": "files/warm-up"}}


def warm_up_sdk() -> BatchInfo:
    """Parse one batch answer through the SDK before the first real one. google-genai builds
    its pydantic models on first use (google/genai/_common.py, _remove_extra_fields calls
    model_rebuild): 50 to 160 ms of an instance's first batches.get, in the middle of an
    ingest. A private SDK method (the version is pinned); tests/unit/test_warm_up.py checks
    that it still parses, and a warm-up that fails only leaves the cost where it was."""
    return _info(types.BatchJob._from_response(response=dict(_WARM_UP_BATCH), kwargs={}))


# Cuts in a row, each without a byte of progress, after which a download gives up until the
# next tick (which resumes from its checkpoint).
_DOWNLOAD_RETRIES = 3
_READ_BYTES = 4 * 1024 * 1024  # at most, per read: one system call returns what the socket holds
# A read (or connect) that waits this long is a dead connection: resumed like a cut, rather than
# holding the poller past its budget. The whole call's timeout is the server's (X-Server-Timeout).
_READ_TIMEOUT = 60.0
# What a connection cut, reset or timed out mid-download raises.
_CUTS = (OSError, http.client.HTTPException)


class GeminiBatchApi:
    def __init__(self, client: Client, api_key: str | None, download_timeout_seconds: float = 3600.0) -> None:
        self.client = client
        self.download_timeout_seconds = download_timeout_seconds
        # Recorded with each batch so that a later poller can tell whether it sees the same
        # key's batches (they are visible only to the key that created them). Never the key.
        self._fingerprint = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]

    def key_fingerprint(self) -> str:
        return self._fingerprint

    def upload_jsonl(self, data: bytes, display_name: str) -> str:
        try:
            with _translated():
                uploaded = self.client.files.upload(
                    file=io.BytesIO(data),
                    config=types.UploadFileConfig(mime_type="jsonl", display_name=display_name),
                )
        except KeyError as e:
            # The real API can answer the finalize chunk with HTTP 200 and {"error": {...}}
            # (e.g. "Unsupported MIME type: jsonl"); the SDK then fails on json['file'] with
            # a bare KeyError (https://github.com/googleapis/python-genai/issues/1547, 1590).
            raise UploadRejected(f"upload refused at finalize: {_finalize_error(e)}") from e
        if not uploaded.name:
            raise UploadRejected("upload finalized without a file name")
        return uploaded.name

    def create_batch(self, model: str, input_file: str, display_name: str) -> BatchInfo:
        with _translated():
            batch = self.client.batches.create(model=model, src=input_file, config={"display_name": display_name})
        return _info(batch)

    def find_batch(self, display_name: str) -> BatchInfo | None:
        # Only used to recover from a crash between create and record, so a full scan of the
        # key's batches (paged by the SDK) is acceptable.
        with _translated():
            for batch in self.client.batches.list(config={"page_size": 100}):
                if batch.display_name == display_name:
                    return _info(batch)
        return None

    def get_batch(self, name: str) -> BatchInfo | None:
        with _translated():
            try:
                return _info(self.client.batches.get(name=name))
            except errors.ClientError as e:
                if e.code == 404:
                    return None  # only get's "not found" means the batch is gone
                raise

    def cancel_batch(self, name: str) -> None:
        with _translated():
            self.client.batches.cancel(name=name)

    def stream_file(self, name: str, sink, offset: int = 0) -> None:
        """Stream a generated file into sink.write(chunk) from byte `offset`. A connection cut
        mid-body is resumed from the byte reached, a few times in a row without progress before
        it gives up (TransientError): the next tick then resumes from its own checkpoint."""
        sink = _Counted(sink, offset)
        stalls = 0
        while True:
            reached = sink.position
            try:
                return self._stream_from(name, sink)
            except _CUTS as e:
                if sink.failed:
                    raise  # the sink's own error (an upload, a lost lease), not the connection's
                stalls = 0 if sink.position > reached else stalls + 1
                if stalls >= _DOWNLOAD_RETRIES:
                    raise TransientError(f"download of {name} cut at byte {sink.position}: {e!r}") from e

    def _stream_from(self, name: str, sink: _Counted) -> None:
        """One GET of the file from sink.position on.

        files.download(destination=...) takes per-call headers (DownloadFileConfig.http_options),
        so it could send a Range header; but it accepts only a 200 (errors.APIError.
        raise_for_response: any other status raises, after reading the whole body into memory),
        and a ranged answer is 206. So the URL and headers (API version, x-goog-api-key,
        X-Server-Timeout) come from the SDK's own request builder, and the GET is sent here:
        google-genai 3.4.0 `_api_client.BaseApiClient.download_file` and `_build_request`,
        `files.Files.download` (https://github.com/googleapis/python-genai/blob/main/google/genai/_api_client.py).
        It goes out through http.client rather than the SDK's httpx client, which reads 64 KiB
        at a time: with the upload workers decoding base64 (which holds the GIL), every read
        waits for the GIL, and reads of up to 4 MiB made the download's CPU cost per MB a
        fraction of that (docs/benchmarks.md). No Accept-Encoding is sent, so byte offsets are
        those of the file itself. The call's timeout goes out as X-Server-Timeout
        (`populate_server_timeout_header`): the client-wide one, sized for generateContent,
        would let the server end a large download early, so this call has its own."""
        file_id = name.removeprefix("files/")
        headers = {"Range": f"bytes={sink.position}-"} if sink.position else {}
        options = types.HttpOptions(headers=headers, timeout=int(self.download_timeout_seconds * 1000))
        request = self.client._api_client._build_request("get", f"files/{file_id}:download?alt=media", {}, options)
        url = urllib.parse.urlsplit(request.url)
        connection_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(url.netloc, timeout=min(request.timeout or _READ_TIMEOUT, _READ_TIMEOUT))
        try:
            connection.request("GET", f"{url.path}?{url.query}", headers=request.headers)
            response = connection.getresponse()
            skip = self._body_offset(response, sink.position)
            if skip is None:
                return
            while chunk := response.read1(_READ_BYTES):
                if skip:
                    chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                if chunk:
                    sink.write(chunk)
            if response.length:  # http.client's read1 ends quietly when the server hangs up early
                raise ConnectionError(f"the connection closed {response.length} bytes before the end")
        finally:
            connection.close()

    @staticmethod
    def _body_offset(response: http.client.HTTPResponse, position: int) -> int | None:
        """Bytes of the body to drop before `position`: 0 for a 206 that starts there, all of
        them before it for a 200 (a server may ignore Range, RFC 9110 section 14.2); a 416 at a
        non-zero position means nothing is left (None: the checkpoint was the file's end)."""
        status = response.status
        if status == 416 and position:
            return None
        if status == 206:
            content_range = response.getheader("Content-Range", "")
            if content_range.removeprefix("bytes ").split("-")[0] != str(position):
                raise TransientError(f"asked for bytes from {position}, got Content-Range {content_range!r}")
            return 0
        if status != 200:
            body = response.read()
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {"error": {"code": status, "message": body[:500].decode(errors="replace")}}
            with _translated():  # the SDK's error for the same answer (raise_for_response)
                errors.APIError.raise_error(status, answer, None)
        return position

    def delete_file(self, name: str) -> None:
        with _translated():
            self.client.files.delete(name=name)


class _Counted:
    """A sink that counts the bytes written to it: where a resumed download starts."""

    def __init__(self, sink, position: int) -> None:
        self.sink, self.position = sink, position
        self.failed = False

    def write(self, chunk: bytes) -> int:
        try:
            self.sink.write(chunk)
        except BaseException:
            self.failed = True  # never retried as a cut: the sink's state is its own
            raise
        self.position += len(chunk)
        return len(chunk)
