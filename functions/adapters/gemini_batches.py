"""The Gemini Files and Batch APIs through the google-genai SDK, for the batch lane."""
from __future__ import annotations

import hashlib
import io

from google.genai import Client, errors, types

from adapters.gemini_generator import translate_api_error
from core.models import BatchInfo


def _state(batch: types.BatchJob) -> str:
    state = batch.state
    return getattr(state, "value", None) or str(state or "")


def _info(batch: types.BatchJob) -> BatchInfo:
    return BatchInfo(
        name=batch.name,
        state=_state(batch),
        display_name=batch.display_name,
        output_file=batch.dest.file_name if batch.dest else None,
    )


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
            uploaded = self.client.files.upload(
                file=io.BytesIO(data),
                config=types.UploadFileConfig(mime_type="jsonl", display_name=display_name),
            )
        except errors.APIError as e:
            raise translate_api_error(e) from e
        return uploaded.name

    def create_batch(self, model: str, input_file: str, display_name: str) -> BatchInfo:
        try:
            batch = self.client.batches.create(model=model, src=input_file, config={"display_name": display_name})
        except errors.APIError as e:
            raise translate_api_error(e) from e
        return _info(batch)

    def find_batch(self, display_name: str) -> BatchInfo | None:
        # Only used to recover from a crash between create and record, so a full scan of the
        # key's batches (paged by the SDK) is acceptable.
        for batch in self.client.batches.list(config={"page_size": 100}):
            if batch.display_name == display_name:
                return _info(batch)
        return None

    def get_batch(self, name: str) -> BatchInfo | None:
        try:
            return _info(self.client.batches.get(name=name))
        except errors.ClientError as e:
            if e.code == 404:
                return None
            raise translate_api_error(e) from e
        except errors.APIError as e:
            raise translate_api_error(e) from e

    def cancel_batch(self, name: str) -> None:
        try:
            self.client.batches.cancel(name=name)
        except errors.APIError as e:
            raise translate_api_error(e) from e

    def stream_file(self, name: str, sink) -> None:
        # With a writable destination the SDK streams the body in 1 MiB chunks instead of
        # buffering it: memory stays bounded however large the results file is.
        try:
            self.client.files.download(file=name, destination=sink)
        except errors.APIError as e:
            raise translate_api_error(e) from e

    def delete_file(self, name: str) -> None:
        try:
            self.client.files.delete(name=name)
        except errors.APIError as e:
            raise translate_api_error(e) from e
