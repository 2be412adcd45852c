"""The Gemini Files and Batch APIs through the google-genai SDK, for the batch lane."""
from __future__ import annotations

import contextlib
import hashlib
import io

from google.genai import Client, errors, types

from adapters.gemini_generator import translate_api_error
from core.errors import UploadRejected
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


class GeminiBatchApi:
    def __init__(self, client: Client, api_key: str | None) -> None:
        self.client = client
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

    def stream_file(self, name: str, sink) -> None:
        # With a writable destination the SDK streams the body in 1 MiB chunks instead of
        # buffering it: memory stays bounded however large the results file is.
        with _translated():
            self.client.files.download(file=name, destination=sink)

    def delete_file(self, name: str) -> None:
        with _translated():
            self.client.files.delete(name=name)
