"""Cloud Storage for accepted jobs' sources: a body's items staged as JSONL (create-only) and
the ranged reads that expand any source, staged or the caller's, at the generation pinned at
accept (core/expanding.py)."""
from __future__ import annotations

from collections.abc import Iterator

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY

from core.expanding import STAGED_FORMAT, Expansion, Line, SourceUnavailable, staged_lines


def split_uri(uri: str) -> tuple[str, str]:
    """("bucket", "name") of "gs://bucket/name"; ValueError for anything else."""
    bucket, sep, name = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not sep or not name:
        raise ValueError(f"not a gs://bucket/object uri: {uri[:100]!r}")
    return bucket, name


class GcsStagedSources:
    """Staged bodies in `bucket`; any source read back. A caller's file (CSV, JSONL) is parsed
    by the sources module, whose lines carry the same fields as core.expanding.Line."""

    def __init__(self, client: storage.Client, bucket: str, max_prompt_chars: int = 4000,
                 chunk_size: int = 8 << 20) -> None:
        self.client = client
        self.bucket = client.bucket(bucket)
        self.max_prompt_chars = max_prompt_chars
        self.chunk_size = chunk_size

    def put_staged(self, name: str, data: bytes) -> tuple[str, int]:
        blob = self.bucket.blob(name)
        try:
            # if_generation_match=0: create only if absent. A resent request (Idempotency-Key
            # takeover) stages the same bytes under the same name: the first object is kept.
            blob.upload_from_string(data, content_type="application/jsonl", if_generation_match=0,
                                    retry=DEFAULT_RETRY)
        except gexc.PreconditionFailed:
            blob = self.bucket.get_blob(name)
            if blob is None:
                raise
        return f"gs://{self.bucket.name}/{name}", int(blob.generation)

    def lines(self, expansion: Expansion) -> Iterator[Line]:
        if expansion.format == STAGED_FORMAT:
            chunks = self.chunks(expansion.source_uri, expansion.generation, expansion.offset)
            return staged_lines(chunks, start=expansion.offset, first_number=expansion.lines + 1)
        return self._caller_lines(expansion)

    def _caller_lines(self, expansion: Expansion) -> Iterator[Line]:
        """A caller's file from the checkpoint, parsed by the sources module. A CSV's header is
        read again each time (one small ranged read): the checkpoint keeps offsets only."""
        import sources
        from adapters.gcs_sources import GcsSources, SourceError, SourceObject

        bucket, name = split_uri(expansion.source_uri)
        obj = SourceObject(bucket=bucket, name=name, generation=expansion.generation, size=expansion.size)
        reader = GcsSources(self.client, ())  # the bucket was allowed at accept; reads check nothing more
        start, header, first_number = expansion.offset, None, expansion.lines + 1
        try:
            if expansion.format == "csv":
                header, after = sources.read_header(reader.chunks(obj, 0))
                start, first_number = max(start, after), max(first_number, 2)
            yield from sources.read_lines(
                reader.chunks(obj, start, self.chunk_size), expansion.format, start=start, first_number=first_number,
                header=header, max_prompt_chars=self.max_prompt_chars, first_index=expansion.line_index)
        except (SourceError, sources.SourceFormatError) as e:
            raise SourceUnavailable(str(e)) from None

    def chunks(self, uri: str, generation: int, start: int) -> Iterator[bytes]:
        """The object's bytes from `start`, in ranged reads of that generation only: an object
        overwritten or deleted since the accept raises SourceUnavailable (a 404 for the
        generation), it never mixes two files."""
        bucket, name = split_uri(uri)
        blob = self.client.bucket(bucket).blob(name, generation=generation)
        offset = start
        while True:
            try:
                data = blob.download_as_bytes(start=offset, end=offset + self.chunk_size - 1, retry=DEFAULT_RETRY)
            except gexc.RequestRangeNotSatisfiable:
                return  # the end of the object (GCS answers 416 for a range that starts past it)
            except (gexc.NotFound, gexc.Forbidden) as e:
                raise SourceUnavailable(f"{uri} (generation {generation}): {type(e).__name__}") from None
            if not data:
                return
            yield data
            offset += len(data)
            if len(data) < self.chunk_size:
                return
