"""adapters/gcs_sources.py against fake-gcs-server: stat, the allowlist, ranged reads pinned
to a generation, and sources.read_lines fed by them."""
from __future__ import annotations

import os
import uuid

import pytest

import sources
from adapters.gcs_sources import GcsSources, SourceError


@pytest.fixture
def bucket(emulators):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    return client.create_bucket(f"sources-{uuid.uuid4().hex[:12]}")


def put(bucket, name: str, data: bytes, **kw) -> None:
    blob = bucket.blob(name)
    for attr, value in kw.items():
        setattr(blob, attr, value)
    blob.upload_from_string(data)


def test_stat_and_ranged_chunks_read_the_whole_object(bucket):
    data = "".join(f'{{"prompt": "prompt ☃ {i}"}}\n' for i in range(500)).encode()
    put(bucket, "in/p.jsonl", data)
    gcs = GcsSources(bucket.client, [bucket.name])
    obj = gcs.stat(f"gs://{bucket.name}/in/p.jsonl")
    assert (obj.bucket, obj.name, obj.size) == (bucket.name, "in/p.jsonl", len(data)) and obj.generation > 0
    chunks = list(gcs.chunks(obj, chunk_size=1000))
    assert b"".join(chunks) == data and len(chunks) == -(-len(data) // 1000)
    lines = list(sources.read_lines(gcs.chunks(obj, chunk_size=777), "jsonl"))
    assert [line.item.prompt for line in lines] == [f"prompt ☃ {i}" for i in range(500)]
    middle = lines[250]
    rest = sources.read_lines(gcs.chunks(obj, start=middle.end, chunk_size=333), "jsonl", start=middle.end,
                              first_number=middle.number + 1, first_index=middle.next_index)
    assert list(rest) == lines[251:]


def test_a_replaced_object_is_not_read_under_the_old_generation(bucket):
    put(bucket, "p.csv", b"prompt\nfirst\n")
    gcs = GcsSources(bucket.client, [bucket.name])
    obj = gcs.stat(f"gs://{bucket.name}/p.csv")
    put(bucket, "p.csv", b"prompt\nsecond version\n")
    with pytest.raises(SourceError, match=f"generation {obj.generation} is gone"):
        list(gcs.chunks(obj))
    assert gcs.stat(f"gs://{bucket.name}/p.csv").generation != obj.generation


@pytest.mark.parametrize("uri, problem", [
    ("s3://x/y.jsonl", "gs://bucket/object"),
    ("gs://UPPER/y.jsonl", "not a Cloud Storage bucket name"),
    ("gs://ab/y.jsonl", "not a Cloud Storage bucket name"),
    ("gs://{bucket}", "no object"),
    ("gs://{bucket}/", "no object"),
    ("gs://{bucket}/a\nb.jsonl", "not a valid one"),
    ("gs://{bucket}/prompts.txt", "must end in"),
    ("gs://{bucket}/missing.jsonl", "no such object"),
    ("gs://other-bucket-name/p.jsonl", "not a source bucket of this deployment"),
])
def test_stat_refuses_with_a_clear_message(bucket, uri, problem):
    gcs = GcsSources(bucket.client, [bucket.name])
    with pytest.raises(SourceError, match=problem):
        gcs.stat(uri.format(bucket=bucket.name))


def test_the_allowlist_refuses_a_readable_bucket_it_does_not_name(bucket):
    put(bucket, "p.jsonl", b'{"prompt": "x"}\n')
    uri = f"gs://{bucket.name}/p.jsonl"
    assert GcsSources(bucket.client, [bucket.name]).stat(uri).size == 16
    with pytest.raises(SourceError, match="not a source bucket"):
        GcsSources(bucket.client, ["imagefleet-sources"]).stat(uri)
    with pytest.raises(SourceError, match="SOURCE_BUCKETS is empty"):
        GcsSources(bucket.client, []).stat(uri)


def test_a_gzip_encoded_object_is_refused(bucket):
    import gzip

    put(bucket, "p.jsonl", gzip.compress(b'{"prompt": "x"}\n'), content_encoding="gzip")
    with pytest.raises(SourceError, match="Content-Encoding: gzip"):
        GcsSources(bucket.client, [bucket.name]).stat(f"gs://{bucket.name}/p.jsonl")


def test_an_empty_object_has_no_chunks(bucket):
    put(bucket, "empty.jsonl", b"")
    gcs = GcsSources(bucket.client, [bucket.name])
    obj = gcs.stat(f"gs://{bucket.name}/empty.jsonl")
    assert obj.size == 0 and list(gcs.chunks(obj)) == []
