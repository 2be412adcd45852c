"""Cloud Storage for accepted jobs' sources: a body's items staged as JSONL (create-only), and
any source, staged or the caller's, read back from a checkpoint in ranges of the generation
pinned at accept (adapters/gcs_sources.py), as lines (core/expanding.py)."""
from __future__ import annotations

from collections.abc import Iterator

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY

import sources
from adapters.gcs_sources import GcsSources, SourceError, SourceObject, parse_uri
from core.errors import StorageUnavailable
from core.expanding import STAGED_FORMAT, Expansion, Line, SourceUnavailable, staged_lines


class GcsStagedSources:
    """Staged bodies in `bucket`; any source read back. A caller's file (CSV, JSONL) is parsed
    by the sources module, whose lines carry the same fields as core.expanding.Line."""

    def __init__(self, client: storage.Client, bucket: str, max_prompt_chars: int = 4000,
                 chunk_size: int = 8 << 20) -> None:
        self.client = client
        self.bucket = client.bucket(bucket)
        self.max_prompt_chars = max_prompt_chars
        self.chunk_size = chunk_size

    def put_staged(self, name: str, data: bytes) -> tuple[str, int, int]:
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
        return f"gs://{self.bucket.name}/{name}", int(blob.generation), int(blob.size or len(data))

    def delete_staged(self, source_uri: str, generation: int) -> None:
        bucket, name = parse_uri(source_uri)
        try:
            # That generation only: whatever else may have the name is not ours to delete.
            self.client.bucket(bucket).blob(name).delete(if_generation_match=generation, retry=DEFAULT_RETRY)
        except (gexc.NotFound, gexc.PreconditionFailed):
            pass  # deleted already (a repeated end), or not that generation any more
        except gexc.GoogleAPIError as e:
            raise StorageUnavailable(f"could not delete {source_uri}: {e}") from None

    def lines(self, expansion: Expansion) -> Iterator[Line]:
        """The source's lines from the checkpoint, read in ranges of the pinned generation (an
        object replaced or deleted since the accept is a SourceUnavailable, never another file)."""
        bucket, name = parse_uri(expansion.source_uri)
        obj = SourceObject(bucket=bucket, name=name, generation=expansion.generation, size=expansion.size)
        reader = GcsSources(self.client, ())  # the bucket was allowed at accept; reads check nothing more
        try:
            if expansion.format == STAGED_FORMAT:
                yield from staged_lines(reader.chunks(obj, expansion.offset, self.chunk_size),
                                        start=expansion.offset, first_number=expansion.lines + 1)
            else:
                yield from self._caller_lines(reader, obj, expansion)
        except (SourceError, sources.SourceFormatError) as e:
            raise SourceUnavailable(str(e)) from None

    def _caller_lines(self, reader: GcsSources, obj: SourceObject, expansion: Expansion) -> Iterator[Line]:
        """A caller's file, parsed by the sources module. A CSV's header is read again each time
        (one small ranged read): the checkpoint keeps offsets only."""
        start, header, first_number = expansion.offset, None, expansion.lines + 1
        if expansion.format == "csv":
            header, after = sources.read_header(reader.chunks(obj, 0, 64 * 1024))
            start, first_number = max(start, after), max(first_number, 2)
        for line in sources.read_lines(
                reader.chunks(obj, start, self.chunk_size), expansion.format, start=start, first_number=first_number,
                header=header, max_prompt_chars=self.max_prompt_chars, first_index=expansion.line_index):
            yield Line(line.number, line.end, line.item, line.error, line.index)
