"""Cloud Storage: images written once, under a deterministic name."""
from __future__ import annotations

from google.api_core import exceptions as gexc
from google.cloud import storage

from core.models import StoredImage


class GcsImageSink:
    def __init__(self, client: storage.Client, bucket: str) -> None:
        self.bucket = client.bucket(bucket)

    def put_png(self, name: str, data: bytes, metadata: dict[str, str]) -> StoredImage:
        return self._create(name, data, "image/png", metadata)

    def put_manifest(self, name: str, data: bytes) -> StoredImage:
        return self._create(name, data, "application/jsonl", {})

    def _create(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredImage:
        blob = self.bucket.blob(name)
        blob.metadata = metadata or None
        uri = f"gs://{self.bucket.name}/{name}"
        try:
            # if_generation_match=0: create only if absent, so a duplicate delivery or a retry
            # after a crash can never write a second version of the object.
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
        except gexc.PreconditionFailed:
            return StoredImage(uri=uri, created=False)
        return StoredImage(uri=uri, created=True)

    def read(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()
