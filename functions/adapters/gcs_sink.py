"""Cloud Storage: images written once, under a deterministic name, with their facts in the
object's custom metadata (so an attempt that finds an earlier attempt's object reads its hash,
size, format and dimensions in one listing, without downloading it)."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import requests
from google.api_core import exceptions as gexc
import google.cloud.storage as storage
from google.cloud.storage.retry import DEFAULT_RETRY

from core import images
from core.errors import StorageUnavailable
from core.models import StoredImage

# What an unreachable or failing Cloud Storage raises once the client's own retries are spent.
_UNAVAILABLE = (gexc.RetryError, gexc.ServerError, gexc.TooManyRequests, requests.ConnectionError,
                requests.Timeout)


class GcsImageSink:
    def __init__(self, client: storage.Client, bucket: str, upload_seconds: float | None = None) -> None:
        """`upload_seconds` bounds one upload including the client's retries (the worker keeps
        it inside the item's lease); None keeps the client's default (120 s of retries)."""
        self.client = client
        self.bucket = client.bucket(bucket)
        self.upload_seconds = upload_seconds

    def put_image(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredImage:
        return self._create(name, data, content_type, metadata)

    def put_manifest(self, name: str, data: bytes) -> StoredImage:
        return self._create(name, data, "application/jsonl", {})

    def compose(self, name: str, sources: Sequence[str]) -> StoredImage:
        """Compose `sources` into `name`, create-only. Real Cloud Storage refuses a compose with
        ifGenerationMatch=0 over an existing object (https://cloud.google.com/storage/docs/request-preconditions;
        the destination precondition: https://cloud.google.com/sdk/gcloud/reference/storage/objects/compose);
        fake-gcs-server ignores that precondition on compose and overwrites (tests/integration/test_manifest_compose.py),
        so an existing object is looked for first. The lines composed are the same either way:
        the look only keeps the emulator from writing a second generation."""
        if self._existing_blob(name) is not None:
            return StoredImage(uri=self._uri(name), created=False)
        blob = self.bucket.blob(name)
        blob.content_type = "application/jsonl"
        try:
            blob.compose([self.bucket.blob(source) for source in sources], if_generation_match=0,
                         retry=self._retry(), timeout=self._timeout())
        except (gexc.PreconditionFailed, gexc.Forbidden):
            # 403: a create over an existing name needs storage.objects.delete (see _create).
            if self._existing_blob(name) is None:
                raise
            return StoredImage(uri=self._uri(name), created=False)
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"composing {self._uri(name)}: {type(e).__name__}: {e}") from e
        return StoredImage(uri=self._uri(name), created=True)

    def existing_uri(self, name: str) -> str | None:
        return self._uri(name) if self._existing_blob(name) is not None else None

    def _existing_blob(self, name: str) -> storage.Blob | None:
        try:
            return self.bucket.get_blob(name, timeout=self._timeout(), retry=self._retry())
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"reading {self._uri(name)}: {type(e).__name__}: {e}") from e

    def find_image(self, stem: str, extensions: Sequence[str]) -> StoredImage | None:
        # One listing of "<stem>." returns the candidates with their metadata. Object listing is
        # strongly consistent: an object whose upload returned is listed at once
        # (https://cloud.google.com/storage/docs/consistency).
        wanted = {f"{stem}.{ext}" for ext in extensions}
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=f"{stem}.", timeout=self._timeout(),
                                               retry=self._retry()):
                if blob.name in wanted:
                    return StoredImage(uri=self._uri(blob.name), created=False, facts=self._facts(blob))
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"listing gs://{self.bucket.name}/{stem}.*: {type(e).__name__}: {e}") from e
        return None

    def _create(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredImage:
        blob = self.bucket.blob(name)
        blob.metadata = metadata or None
        try:
            # if_generation_match=0: create only if absent, so a duplicate delivery or a retry
            # after a crash can never write a second version of the object. Being conditional,
            # the upload is safe to retry; the retry's timeout is our bound, not the default 120 s.
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0,
                                    retry=self._retry(), timeout=self._timeout())
        except gexc.PreconditionFailed:
            # Another attempt stored it first: report that object, not the bytes we were given.
            existing = self._existing(name)
            return StoredImage(uri=self._uri(name), created=False, facts=existing)
        except gexc.Forbidden:
            # An insert over an existing name also needs storage.objects.delete, which the
            # functions do not hold (roles/storage.objectCreator + objectViewer), so a duplicate
            # may be told 403 rather than 412 (https://cloud.google.com/storage/docs/request-preconditions,
            # https://cloud.google.com/storage/docs/access-control/iam-json). An object that is
            # there was written by an earlier attempt; without one, the 403 is a real refusal.
            if (existing := self._existing(name)) is None:
                raise
            return StoredImage(uri=self._uri(name), created=False, facts=existing)
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"uploading {self._uri(name)}: {type(e).__name__}: {e}") from e
        return StoredImage(uri=self._uri(name), created=True)

    def _existing(self, name: str) -> dict | None:
        try:
            blob = self.bucket.get_blob(name, timeout=self._timeout(), retry=self._retry())
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"reading {self._uri(name)}: {type(e).__name__}: {e}") from e
        return self._facts(blob) if blob is not None else None

    def _facts(self, blob: storage.Blob) -> dict:
        meta = blob.metadata or {}
        if meta.get("sha256"):
            return {"sha256": meta["sha256"], "bytes": blob.size, "format": meta.get("format"),
                    "width": int(meta["width"]) if meta.get("width") else None,
                    "height": int(meta["height"]) if meta.get("height") else None}
        # Written before the facts were kept in the metadata: read the object once.
        data = blob.download_as_bytes(timeout=self._timeout(), retry=self._retry())
        try:
            return images.inspect(data).fields()
        except images.BadImage:
            return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                    "format": None, "width": None, "height": None}

    def _retry(self):
        return DEFAULT_RETRY.with_timeout(self.upload_seconds) if self.upload_seconds else DEFAULT_RETRY

    def _timeout(self) -> float:
        # Per HTTP request (connect, read): never longer than the whole bound.
        return min(self.upload_seconds, 60.0) if self.upload_seconds else 60.0

    def _uri(self, name: str) -> str:
        return f"gs://{self.bucket.name}/{name}"

    def read(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()
