"""Wire details of the Files API that the SDK never produces, checked with plain urllib: the
resumable-upload protocol's error paths, the ``/download/`` URL of ``File.downloadUri``, and
``?key=`` auth. Everything the SDK does produce is tested through it in
test_gemini_emulator_batches.py.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from google import genai
from google.genai import types

from infra.gemini_emulator import BackgroundEmulator

GRANULARITY = 8 * 1024 * 1024
KEY = "key-a"


@pytest.fixture(scope="module")
def emulator():
    with BackgroundEmulator({"image_scale": 0.1, "batch": {"pending_seconds": 0, "running_seconds": 0}}) as emu:
        yield emu


@pytest.fixture
def base(emulator) -> str:
    urllib.request.urlopen(urllib.request.Request(emulator.base_url + "/_emulator/reset", method="POST")).read()
    return emulator.base_url


def raw(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def start(base: str, size: int, *, mime: str = "application/jsonl", name: str | None = None, key: str | None = KEY,
          host: str | None = None) -> tuple[int, Any, bytes]:
    headers = {
        "Content-Type": "application/json",
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(size),
        "X-Goog-Upload-Header-Content-Type": mime,
    }
    if key:
        headers["x-goog-api-key"] = key
    if host:
        headers["Host"] = host
    file: dict[str, Any] = {"mime_type": mime, "size_bytes": size}
    if name:
        file["name"] = name
    return raw("POST", base + "/upload/v1beta/files", json.dumps({"file": file}).encode(), headers)


def chunk(url: str, data: bytes, offset: int, command: str = "upload, finalize") -> tuple[int, Any, bytes]:
    # Exactly what the SDK sends on a session URL: no API key.
    return raw("POST", url, data, {"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)})


def test_start_needs_a_key_and_returns_a_session_url_built_from_the_host_header(base):
    port = urllib.parse.urlsplit(base).port

    assert start(base, 10, key=None)[0] == 403
    status, headers, body = start(base, 10, host=f"localhost:{port}")

    assert status == 200 and body == b""
    url = headers["X-Goog-Upload-URL"]
    assert url.startswith(f"http://localhost:{port}/upload/v1beta/files?upload_id=")
    assert url.endswith("&upload_protocol=resumable")
    assert headers["X-Goog-Upload-Control-URL"] == url
    assert headers["X-Goog-Upload-Status"] == "active"
    assert headers["X-Goog-Upload-Chunk-Granularity"] == str(GRANULARITY)


def test_chunk_errors_carry_the_upload_status_and_leave_the_session_usable(base):
    data = b"x" * (GRANULARITY + 5)
    url = start(base, len(data))[1]["X-Goog-Upload-URL"]

    wrong_offset = chunk(url, data[:GRANULARITY], offset=7, command="upload")
    not_granular = chunk(url, data[:100], offset=0, command="upload")
    too_big = chunk(url, data + b"extra", offset=0)

    for status, headers, body in (wrong_offset, not_granular, too_big):
        assert status == 400 and headers["X-Goog-Upload-Status"] == "final"
        assert json.loads(body)["error"]["status"] == "INVALID_ARGUMENT"
    assert chunk(url, b"", 0, "query")[1]["X-Goog-Upload-Size-Received"] == "0"  # nothing was kept
    status, headers, _ = chunk(url, data[:GRANULARITY], offset=0, command="upload")
    assert (status, headers["X-Goog-Upload-Status"], headers["X-Goog-Upload-Size-Received"]) == (200, "active", str(GRANULARITY))
    status, headers, body = chunk(url, data[GRANULARITY:], offset=GRANULARITY)
    assert (status, headers["X-Goog-Upload-Status"]) == (200, "final")
    assert json.loads(body)["file"]["sizeBytes"] == str(len(data))
    finished = chunk(url, b"", 0)
    assert finished[0] == 404 and finished[1]["X-Goog-Upload-Status"] == "final"


def test_finalize_short_of_the_declared_size_is_rejected(base):
    url = start(base, 100)[1]["X-Goog-Upload-URL"]

    status, headers, body = chunk(url, b"only ten b", 0)

    assert status == 400 and headers["X-Goog-Upload-Status"] == "final"
    assert "100 were declared" in json.loads(body)["error"]["message"]


def test_cancel_drops_the_session(base):
    url = start(base, 10)[1]["X-Goog-Upload-URL"]

    assert chunk(url, b"", 0, "cancel")[1]["X-Goog-Upload-Status"] == "cancelled"
    assert chunk(url, b"0123456789", 0)[0] == 404


def test_unsupported_mime_type_and_names(base):
    assert start(base, 1, mime="not a mime type")[0] == 400
    assert start(base, 1, mime="jsonl")[0] == 200
    assert start(base, 1, name="files/-bad-")[0] == 400

    status, headers, _ = start(base, 3, name="files/my-file-1")
    assert status == 200 and start(base, 3, name="files/my-file-1")[0] == 409  # the session holds the name
    body = json.loads(chunk(headers["X-Goog-Upload-URL"], b"abc", 0)[2])
    assert body["file"]["name"] == "files/my-file-1"


def test_download_uri_and_query_key_auth(base):
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base))
    source = client.files.upload(
        file=io.BytesIO(b'{"key": "a", "request": {"contents": [{"parts": [{"text": "x"}]}]}}\n'),
        config=types.UploadFileConfig(mime_type="jsonl"),
    )
    job = client.batches.create(model="gemini-2.5-flash-image", src=source.name)
    deadline = time.monotonic() + 10
    while not (job := client.batches.get(name=job.name)).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    download_uri = client.files.get(name=job.dest.file_name).download_uri

    status, headers, body = raw("GET", download_uri, headers={"x-goog-api-key": KEY})
    assert status == 200 and json.loads(body)["key"] == "a"
    assert int(headers["Content-Length"]) == len(body)
    assert raw("GET", download_uri)[0] == 403
    assert raw("GET", download_uri, headers={"x-goog-api-key": "key-b"})[0] == 403
    file_url = f"{base}/v1/{job.dest.file_name}?key={KEY}"
    assert json.loads(raw("GET", file_url)[2])["source"] == "GENERATED"
