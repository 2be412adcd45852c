"""`imagefleet submit --source-bucket` against fake-gcs-server and a scripted API: the file is
uploaded once under its content's name, and the request names it as the job's source."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from typer.testing import CliRunner

import sources
from imagefleet import upload
from imagefleet.cli import app
from tests.unit.scripted_http import ScriptedServer

ACCEPTED = (202, {"job_id": "j1", "lane": "batch", "item_count": 3}, "application/json")


@pytest.fixture
def bucket(emulators):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
    return client.create_bucket(f"cli-src-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def api():
    server = ScriptedServer([ACCEPTED, ACCEPTED])
    yield server
    server.close()


def test_a_big_file_is_uploaded_once_and_submitted_as_a_source(bucket, api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "MAX_BODY_ITEMS", 2)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "key": "bee"}\n{"prompt": "c"}\n')
    argv = ["submit", str(path), "--api", api.url, "--source-bucket", f"gs://{bucket.name}/in", "--lane", "batch"]

    first = CliRunner().invoke(app, argv)
    second = CliRunner().invoke(app, argv)

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    [blob] = list(bucket.client.list_blobs(bucket.name, prefix="in/"))
    data = blob.download_as_bytes()
    assert blob.name == upload.Destination(bucket.name, "in").name(data)
    assert [line.item.key for line in sources.read_lines([data], "jsonl") if line.item] == ["item-00000", "bee",
                                                                                             "item-00002"]
    bodies = [json.loads(r["body"]) for r in api.requests]
    assert bodies == [{"source": f"gs://{bucket.name}/{blob.name}", "lane": "batch"}] * 2
    assert bucket.get_blob(blob.name).generation == blob.generation  # the second run uploaded nothing


def test_other_bytes_under_the_content_name_are_refused(bucket, api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "MAX_BODY_ITEMS", 1)
    path = tmp_path / "p.txt"
    path.write_text("a\nb\n")
    from imagefleet import inputs

    name = upload.Destination(bucket.name, "").name(upload.render_jsonl(inputs.read_prompts(str(path))))
    bucket.blob(name).upload_from_string(b'{"prompt":"something else"}\n')

    result = CliRunner().invoke(app, ["submit", str(path), "--api", api.url, "--source-bucket", f"gs://{bucket.name}"])

    assert result.exit_code == 1 and "exists with other content" in result.output
    assert api.requests == []


def test_a_missing_bucket_is_one_error_line(emulators, api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "MAX_BODY_ITEMS", 1)
    path = tmp_path / "p.txt"
    path.write_text("a\nb\n")
    result = CliRunner().invoke(app, ["submit", str(path), "--api", api.url,
                                      "--source-bucket", f"gs://no-such-{uuid.uuid4().hex[:8]}"])
    assert result.exit_code == 1 and "no such bucket" in result.output and api.requests == []


def test_the_local_stacks_sources_bucket_takes_the_upload_and_the_functions_may_read_it(emulators, api, tmp_path,
                                                                                         monkeypatch):
    """The stack sets IMAGEFLEET_SOURCE_BUCKET for the CLI and SOURCE_BUCKETS for the functions:
    what the CLI uploads, the functions' reader accepts and reads back line for line."""
    from google.cloud import storage

    from adapters.gcs_sources import GcsSources
    from config import Settings

    monkeypatch.setattr(upload, "MAX_BODY_ITEMS", 1)
    path = tmp_path / "p.csv"
    path.write_text('prompt,key\n"A fox, asleep",fox\n\nA cat,\n')

    result = CliRunner().invoke(app, ["submit", str(path), "--api", api.url])

    assert result.exit_code == 0, result.output
    uri = json.loads(api.requests[0]["body"])["source"]
    assert uri.startswith(os.environ["IMAGEFLEET_SOURCE_BUCKET"] + "/")
    settings = Settings()
    reader = GcsSources(storage.Client(project=settings.google_cloud_project), settings.source_buckets.split(","))
    obj = reader.stat(uri)
    lines = [line for line in sources.read_lines(reader.chunks(obj), "jsonl") if not line.blank]
    assert [(line.number, line.item.key, line.item.prompt) for line in lines] == [
        (2, "fox", "A fox, asleep"), (4, "item-00001", "A cat")]
