"""The CLI's choice between a request body and an uploaded source: content names, the JSONL it
uploads (read back by the API's own source reader), the size limits, and the source request."""
from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

import sources
from imagefleet import inputs, upload
from imagefleet.cli import app
from imagefleet.client import ApiClient, job_body
from schemas import JobRequest


def test_the_object_name_is_the_content_hash_under_the_prefix():
    data = b'{"prompt":"a"}\n'
    digest = hashlib.sha256(data).hexdigest()
    assert upload.parse_destination("gs://my-bucket/runs/2026/").name(data) == f"runs/2026/{digest}.jsonl"
    assert upload.parse_destination("gs://my-bucket").name(data) == f"{digest}.jsonl"
    assert upload.parse_destination("gs://my-bucket/").bucket == "my-bucket"


@pytest.mark.parametrize("value", ["my-bucket", "s3://b/x", "gs://UPPER", "gs://b", "gs://ok-bucket/a\nb"])
def test_a_bad_destination_is_refused(value):
    with pytest.raises(upload.UploadError, match="--source-bucket"):
        upload.parse_destination(value)


@pytest.mark.parametrize("text, fmt", [
    ("A fox\n\n  \nA cat\nA dog", "txt"),
    ('{"prompt": "a"}\n\n{"prompt": "b", "key": "k"}\n"c"\n', "jsonl"),
    ('prompt,key\n"multi\nline",\n\nplain,x1\nlast,\n', "csv"),
])
def test_the_uploaded_jsonl_reads_back_as_the_same_items_lines_and_names(text, fmt):
    prompts = inputs.parse_prompts(text, fmt, "f")
    lines = [line for line in sources.read_lines([upload.render_jsonl(prompts)], "jsonl") if not line.blank]
    keys = JobRequest(requests=[p.item for p in prompts]).item_keys()
    assert [(line.number, line.item.key, line.item.prompt) for line in lines] == [
        (p.line, key, p.item["prompt"]) for p, key in zip(prompts, keys, strict=True)]


def test_defaults_given_on_the_command_line_are_in_the_uploaded_items():
    prompts = inputs.apply_defaults(inputs.parse_prompts('{"prompt": "a", "quality": "high"}\n', "jsonl"),
                                    aspect_ratio="16:9", quality="standard")
    [line] = sources.read_lines([upload.render_jsonl(prompts)], "jsonl")
    assert (line.item.aspect_ratio, line.item.quality) == ("16:9", "high")


def test_one_request_holds_at_most_the_apis_items_and_bytes():
    assert upload.fits_one_request(job_body([{"prompt": "p"}] * upload.MAX_BODY_ITEMS, "auto", None))
    assert not upload.fits_one_request(job_body([{"prompt": "p"}] * (upload.MAX_BODY_ITEMS + 1), "auto", None))
    assert not upload.fits_one_request(job_body([{"prompt": "p" * 4000}] * 2700, "auto", None))


def test_a_file_too_big_for_a_request_without_a_bucket_says_to_pass_one(tmp_path, serve, monkeypatch):
    monkeypatch.setattr(upload, "MAX_BODY_ITEMS", 2)
    monkeypatch.delenv(upload.SOURCE_BUCKET_ENV, raising=False)
    server = serve()
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    result = CliRunner().invoke(app, ["submit", str(tmp_path / "p.txt"), "--api", server.url])
    assert result.exit_code == 2 and "--source-bucket" in result.output and "3 prompts" in result.output
    assert server.requests == []
    small = CliRunner().invoke(app, ["submit", str(tmp_path / "p.txt"), "--api", server.url, "--dry-run"])
    assert small.exit_code == 2 and "--dry-run" in small.output


def test_a_source_submit_sends_the_uri_and_options_with_an_idempotency_key(serve):
    server = serve((202, {"job_id": "j1"}, "application/json"))
    ApiClient(server.url).submit_source("gs://b/p.jsonl", lane="batch", model="m", on_bad_line="fail",
                                        idempotency_key="k-1")
    request = server.requests[0]
    assert json.loads(request["body"]) == {"source": "gs://b/p.jsonl", "lane": "batch", "model": "m",
                                           "on_bad_line": "fail"}
    assert request["headers"]["Idempotency-Key"] == "k-1"


def test_an_unchecked_field_with_a_lone_surrogate_is_uploaded_and_refused_by_the_api_rules():
    prompts = inputs.parse_prompts('{"prompt": "caf\\u00e9", "quality": "\\ud800"}\n', "jsonl")
    [line] = sources.read_lines([upload.render_jsonl(prompts)], "jsonl")
    assert line.item is None and line.error.startswith("quality:")
    [ok] = sources.read_lines([upload.render_jsonl(inputs.parse_prompts('{"prompt": "café"}', "jsonl"))], "jsonl")
    assert ok.item.prompt == "café"


class CreatorOnlyBlob:
    """A blob as an uploader holding only roles/storage.objectCreator sees it: no reads; a
    create over an existing name is refused by its precondition."""

    def __init__(self, there: bool) -> None:
        self.there, self.uploads = there, 0

    def exists(self):
        from google.api_core import exceptions as gexc

        raise gexc.Forbidden("no storage.objects.get")

    def upload_from_string(self, data, content_type, if_generation_match):
        from google.api_core import exceptions as gexc

        assert if_generation_match == 0
        self.uploads += 1
        if self.there:
            raise gexc.PreconditionFailed("exists")
        self.there = True


@pytest.mark.parametrize("there", [False, True])
def test_an_uploader_that_may_not_read_uploads_create_only_and_takes_a_412_as_already_there(there):
    from google.api_core import exceptions as gexc

    blob = CreatorOnlyBlob(there)
    upload._create_once(blob, b"data", "gs://b/x.jsonl", gexc)
    assert blob.there and blob.uploads == 1
