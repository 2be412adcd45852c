"""Cloud Storage: a job's source file (gs://bucket/object), checked and then read in ranges,
every read pinned to the generation seen when the job was accepted, so a file replaced while its
job expands can never mix two versions' lines."""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import requests
from google.api_core import exceptions as gexc
import google.cloud.storage as storage

from core.errors import StorageUnavailable
from sources import source_format

# What an unreachable or failing Cloud Storage raises once the client's own retries are spent:
# worth trying again later, unlike a SourceError.
_UNAVAILABLE = (gexc.RetryError, gexc.ServerError, gexc.TooManyRequests, requests.ConnectionError,
                requests.Timeout)
# Bucket names: 3-63 characters (up to 222 with dots, 63 between dots) of lower-case letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit
# (https://cloud.google.com/storage/docs/buckets#naming).
_BUCKET = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{1,220})[a-z0-9]$")
# Object names are 1-1024 bytes of UTF-8 and may not hold \r or \n; control characters are
# discouraged (https://cloud.google.com/storage/docs/objects#naming). We refuse every one, so a
# name shown in an error or a log is what it looks like.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME_BYTES = 1024


class SourceError(Exception):
    """A source the job cannot use; the message is fit for a 400 or a failed job's error."""


@dataclass(frozen=True)
class SourceObject:
    bucket: str
    name: str
    generation: int
    size: int

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name) of a gs:// URI, or SourceError saying what is wrong with it."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise SourceError("a source is a gs://bucket/object URI")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket or any(len(part) > 63 for part in bucket.split(".")):
        raise SourceError(f"{bucket[:70]!r} is not a Cloud Storage bucket name")
    if not name:
        raise SourceError("the source names a bucket but no object in it")
    if _CONTROL.search(name) or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or name in (".", ".."):
        raise SourceError("the source's object name is not a valid one (control characters, '.', '..' or "
                          f"more than {MAX_NAME_BYTES} bytes)")
    try:
        source_format(name)
    except ValueError:
        raise SourceError("a source file's name must end in .jsonl, .ndjson or .csv") from None
    return bucket, name


class GcsSources:
    def __init__(self, client: storage.Client, allowed_buckets: Sequence[str]) -> None:
        """`allowed_buckets`: the only buckets a source may name. The functions' service account
        can read buckets its callers must not (the images bucket holds every tenant's images), so
        a source in any other bucket is refused before anything is read: without this a caller
        could have another tenant's files read back to it as prompts and error messages."""
        self.client = client
        self.allowed = frozenset(b.strip() for b in allowed_buckets if b.strip())

    def stat(self, uri: str) -> SourceObject:
        """The object's current generation and size; SourceError if the URI is malformed, not in
        an allowed bucket, missing or unreadable."""
        bucket, name = parse_uri(uri)
        if bucket not in self.allowed:
            allowed = ", ".join(sorted(self.allowed)) or "none: SOURCE_BUCKETS is empty"
            raise SourceError(f"bucket {bucket!r} is not a source bucket of this deployment (allowed: {allowed})")
        try:
            blob = self.client.bucket(bucket).get_blob(name)
        except gexc.Forbidden:
            raise SourceError(f"gs://{bucket}/{_shown(name)}: the service may not read it") from None
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"reading gs://{bucket}/{_shown(name)}: {type(e).__name__}: {e}") from e
        if blob is None:  # get_blob answers None for a missing object or bucket (404)
            raise SourceError(f"gs://{bucket}/{_shown(name)}: no such object")
        if (blob.content_encoding or "").lower() == "gzip":
            # Served decompressed, Range headers are ignored (https://cloud.google.com/storage/docs/transcoding):
            # a ranged read, and so resuming, would be wrong.
            raise SourceError(f"gs://{bucket}/{_shown(name)}: stored with Content-Encoding: gzip; upload it "
                              "uncompressed")
        return SourceObject(bucket=bucket, name=name, generation=int(blob.generation), size=int(blob.size or 0))

    def chunks(self, obj: SourceObject, start: int = 0, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """The object's bytes from `start` on, in ranged reads of that generation only: if it was
        replaced or deleted since `stat`, SourceError (the job must not read another file)."""
        blob = self.client.bucket(obj.bucket).blob(obj.name, generation=obj.generation)
        pos = start
        while pos < obj.size:
            last = min(pos + chunk_size, obj.size) - 1
            data = self._range(blob, obj, pos, last)
            if not data:
                raise SourceError(f"{_shown(obj.uri)}: ended at byte {pos}, before its size ({obj.size})")
            pos += len(data)
            yield data

    def _range(self, blob: storage.Blob, obj: SourceObject, first: int, last: int) -> bytes:
        try:
            # checksum=None: a part of an object has no stored checksum to compare with.
            return blob.download_as_bytes(start=first, end=last, checksum=None, raw_download=True)
        except gexc.NotFound:
            raise SourceError(f"{_shown(obj.uri)}: generation {obj.generation} is gone (the file was replaced "
                              "or deleted after the job was accepted)") from None
        except gexc.Forbidden:
            raise SourceError(f"{_shown(obj.uri)}: the service may no longer read it") from None
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"reading {_shown(obj.uri)}: {type(e).__name__}: {e}") from e


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
