"""A job's manifest, written as a stream: one JSON line per item, page after page of the
store's items, so finalizing a job of 50,000 items holds one page, never all of them.

A manifest that fits in one page is one create-only object, as it always was. A longer one is
written as parts, one per page, each create-only under a name fixed by the manifest and the
page's number, then composed (Cloud Storage compose: at most 32 sources per call, so in a tree
of intermediate composites) into the create-only manifest. Every step is create-only and every
name deterministic, so a finalizer killed anywhere and run again (or two running at once)
rewrites nothing that exists and ends with one complete manifest, each line once: the items of
a job with nothing left to do no longer change, so a part written by a dead run is the part a
new run would write. Parts are left behind on purpose: deleting them would need
storage.objects.delete, which the functions do not hold (objects are create-only); a bucket
lifecycle rule on their prefix removes them (infra/terraform/storage.tf).
Standard library only."""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from core.models import Item
from core.ports import ImageSink, JobStore

# Items per page and per part: a manifest line is at most ~25 kB (a 4,000-character prompt of
# escaped non-ASCII and an error), so a part stays under the 8 MiB up to which the storage
# client uploads in one request (a one-shot resumable upload above it is not create-only on
# fake-gcs-server, infra/local/stack.py).
PAGE_ITEMS = 250
# Pages per store query: one query returns 8 parts' items (2,000 at most, ~50 MB at the ~25 kB
# worst case), so a 100,000-item manifest costs 50 queries, not 400. Firestore serves each from
# its index; the emulator scans the job's items for each, which made a 100,000-item manifest
# take about 7 minutes a page at a time (docs/benchmarks.md).
PAGES_PER_READ = 8
# Sources per compose call: "There is a limit (currently 32) to the number of components that
# can be composed in a single operation" (https://cloud.google.com/sdk/gcloud/reference/storage/objects/compose).
COMPOSE_MAX_SOURCES = 32
PARTS_PREFIX = "_manifest-parts/"


def write_manifest(name: str, job_id: str, *, store: JobStore, sink: ImageSink, page: int = PAGE_ITEMS) -> str:
    """Write the job's manifest under `name` (create-only) and return its URI."""
    if (uri := sink.existing_uri(name)) is not None:
        return uri  # a run that died after composing it, before recording it
    pages = _pages(store, job_id, page)
    first = next(pages)
    if len(first) < page:
        return sink.put_manifest(name, build_manifest(first)).uri
    parts = [_put_part(sink, name, 0, first)]
    for number, items in enumerate(pages, start=1):
        if items:  # a job whose size is a multiple of a read ends with an empty one
            parts.append(_put_part(sink, name, number, items))
    return _compose(sink, name, parts)


def build_manifest(items: Sequence[Item]) -> bytes:
    """One JSON line per item: where its image is and what it is."""
    lines = []
    for it in items:
        lines.append(json.dumps({
            "key": it.key, "prompt": it.prompt, "state": it.state.value, "gcs_uri": it.gcs_uri, "sha256": it.sha256,
            "bytes": it.bytes, "format": it.format, "width": it.width, "height": it.height, "finish_reason": it.finish_reason,
            "output_tokens": it.output_tokens, "lane": it.lane, "attempts": it.attempts, "error": it.error,
        }, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def part_name(manifest: str, number: int, level: int = 0) -> str:
    """Level 0: the page's lines; level n: a composite of level n-1 parts."""
    return f"{PARTS_PREFIX}{manifest}/{level}-{number:05d}.part"


def _pages(store: JobStore, job_id: str, page: int) -> Iterator[list[Item]]:
    """The job's items in index order, a page at a time (the last one may be empty), read
    PAGES_PER_READ pages at a time."""
    after, read = None, page * PAGES_PER_READ
    while True:
        items = store.list_items(job_id, after, read)
        for start in range(0, max(len(items), 1), page):
            yield items[start:start + page]
        if len(items) < read:
            return
        after, items = items[-1].index, []  # this read freed before the next is held


def _put_part(sink: ImageSink, manifest: str, number: int, items: Sequence[Item]) -> str:
    name = part_name(manifest, number)
    sink.put_manifest(name, build_manifest(items))  # an existing part (a dead run's) is the same lines
    return name


def _compose(sink: ImageSink, name: str, parts: list[str]) -> str:
    """Compose the parts, in order, into `name`: level by level while there are more than one
    call takes."""
    level = 1
    while len(parts) > COMPOSE_MAX_SOURCES:
        composed = []
        for n, start in enumerate(range(0, len(parts), COMPOSE_MAX_SOURCES)):
            composed.append(part_name(name, n, level))
            sink.compose(composed[-1], parts[start:start + COMPOSE_MAX_SOURCES])
        parts, level = composed, level + 1
    return sink.compose(name, parts).uri
