"""The streamed manifest against fake-gcs-server: parts composed into one create-only object,
the same body against the in-memory sink (a contract test), and what the emulator does with
the preconditions the adapter relies on."""
from __future__ import annotations

import os
import uuid

import pytest
from google.api_core import exceptions as gexc

from core import manifests
from core.models import Item, ItemState, Job, JobStatus, Lane
from tests.fakes import InMemoryImageSink, InMemoryJobStore

PAGE = 3


def gcs_bucket():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    return client, client.create_bucket(f"manifest-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["memory", "gcs"])
def sink(request):
    if request.param == "memory":
        return InMemoryImageSink()
    request.getfixturevalue("emulators")
    from adapters.gcs_sink import GcsImageSink

    client, bucket = gcs_bucket()
    return GcsImageSink(client, bucket.name)


def read(sink, name: str) -> bytes:
    return sink.objects[name][0] if isinstance(sink, InMemoryImageSink) else sink.read(name)


def finished_job(n: int) -> tuple[InMemoryJobStore, str]:
    store, job_id = InMemoryJobStore(), uuid.uuid4().hex
    store.create_job(
        Job(job_id=job_id, lane=Lane.INTERACTIVE, status=JobStatus.RUNNING, model="m", item_count=n,
            created_at=1.0, updated_at=1.0),
        [Item(job_id=job_id, key=f"k{i}", index=i, prompt=f"p{i}", aspect_ratio="1:1", domain=None,
              quality="standard", state=ItemState.SUCCEEDED, gcs_uri=f"gs://b/{job_id}/k{i}.png", lane="batch")
         for i in range(n)])
    return store, job_id


@pytest.mark.parametrize("n", [PAGE - 1, PAGE * 40 + 1])  # one object; 41 parts: a composite level
def test_the_manifest_is_the_items_lines_in_order(sink, n):
    store, job_id = finished_job(n)
    name = f"{job_id}/manifest.jsonl"
    uri = manifests.write_manifest(name, job_id, store=store, sink=sink, page=PAGE)
    assert uri.endswith(f"/{name}") and sink.existing_uri(name) == uri
    assert read(sink, name) == manifests.build_manifest(store.list_items(job_id, None, n + 1))


def test_a_second_run_keeps_the_first_manifest(sink):
    store, job_id = finished_job(PAGE * 2)
    name = f"{job_id}/manifest.jsonl"
    manifests.write_manifest(name, job_id, store=store, sink=sink, page=PAGE)
    first = read(sink, name)
    assert sink.compose(name, [manifests.part_name(name, 1)]).created is False  # create-only
    manifests.write_manifest(name, job_id, store=store, sink=sink, page=PAGE)
    assert read(sink, name) == first


def test_composed_manifests_are_jsonl_objects(emulators):
    from adapters.gcs_sink import GcsImageSink

    client, bucket = gcs_bucket()
    sink = GcsImageSink(client, bucket.name)
    store, job_id = finished_job(PAGE * 2)
    name = f"{job_id}/manifest.jsonl"
    manifests.write_manifest(name, job_id, store=store, sink=sink, page=PAGE)
    assert bucket.get_blob(name).content_type == "application/jsonl"


# --- the emulator's behaviour the adapter is built around ---------------------------------------


def test_fake_gcs_server_ignores_if_generation_match_on_compose(emulators):
    # Real Cloud Storage answers 412 (https://cloud.google.com/storage/docs/request-preconditions).
    # If this starts failing, the emulator enforces it too and GcsImageSink.compose's look
    # before composing is no longer needed to keep it create-only here.
    _, bucket = gcs_bucket()
    for name, data in [("a", b"a\n"), ("b", b"b\n")]:
        bucket.blob(name).upload_from_string(data)
    bucket.blob("m").compose([bucket.blob("a")], if_generation_match=0)
    bucket.blob("m").compose([bucket.blob("b")], if_generation_match=0)
    assert bucket.blob("m").download_as_bytes() == b"b\n"  # overwritten


def test_fake_gcs_server_enforces_if_generation_match_on_multipart_but_not_one_shot_resumable(emulators):
    _, bucket = gcs_bucket()
    bucket.blob("small").upload_from_string(b"1", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("small").upload_from_string(b"2", if_generation_match=0)
    big = 9 * 1024 * 1024  # past the client's 8 MiB multipart limit: one resumable request
    bucket.blob("big").upload_from_string(b"x" * big, if_generation_match=0)
    bucket.blob("big").upload_from_string(b"y" * big, if_generation_match=0)  # no 412
    assert bucket.blob("big").download_as_bytes(start=0, end=0) == b"y"
