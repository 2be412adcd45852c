"""Files and Batch APIs of the Gemini emulator, driven by the unmodified google-genai SDK.

The SDK is the client for every API behaviour; urllib is used only for ``/_emulator/*``. One
in-process emulator (real socket, own event loop thread) serves the module with a short batch
turnaround; each test resets it, which also deletes every file it stored.

What the SDK (3.4.0) does with these APIs, as the worker adapter will see it:
* batch states arrive as ``types.JobState.JOB_STATE_*`` (the wire says ``BATCH_STATE_*``);
  ``BatchJob.done`` is derived from the state; ``BatchJob.error`` stays None even for FAILED;
* a missing or foreign file -> ``ClientError`` 403 PERMISSION_DENIED; an unknown batch -> 404;
* file results are JSONL lines ``{"response": ..., "key": ...}`` / ``{"error": ..., "key": ...}``
  in no particular order; inline results are ``dest.inlined_responses`` in input order.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from infra.gemini_emulator import BackgroundEmulator

MODEL = "gemini-2.5-flash-image"
SCALE = 0.1
PENDING_S, RUNNING_S = 0.2, 0.3
STARTUP = {"image_scale": SCALE, "batch": {"pending_seconds": PENDING_S, "running_seconds": RUNNING_S}}


# --- harness --------------------------------------------------------------------------------


class Admin:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def configure(self, patch: dict[str, Any]) -> None:
        status, body = self.call("POST", "/_emulator/config", patch)
        assert status == 200, body

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_emulator/stats")[1]

    def force(self, batch_name: str, state: str) -> dict[str, Any]:
        status, body = self.call("POST", f"/_emulator/batches/{batch_name.removeprefix('batches/')}:force", {"state": state})
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def emulator():
    with BackgroundEmulator(STARTUP) as emu:
        yield emu


@pytest.fixture
def admin(emulator) -> Admin:
    helper = Admin(emulator.base_url)
    assert helper.call("POST", "/_emulator/reset")[0] == 200
    return helper


def make_client(emulator: BackgroundEmulator, key: str = "key-a", **http_options: Any) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=emulator.base_url, **http_options))


@pytest.fixture
def client(emulator, admin) -> genai.Client:
    return make_client(emulator)  # keep a reference: a GC'd Client closes its transport


def request_line(key: str, prompt: str, **generation_config: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"key": key, "request": {"contents": [{"parts": [{"text": prompt}], "role": "user"}]}}
    if generation_config:
        line["request"]["generationConfig"] = generation_config
    return line


def upload_jsonl(client: genai.Client, lines: list[dict[str, Any]], display_name: str = "batch-input") -> types.File:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="jsonl", display_name=display_name))


def wait_done(client: genai.Client, name: str, timeout: float = 15.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state}"
        time.sleep(0.05)


def results_by_key(data: bytes) -> dict[str, dict[str, Any]]:
    assert data.endswith(b"\n")
    lines = [json.loads(line) for line in data.decode().split("\n")[:-1]]
    by_key = {line["key"]: line for line in lines}
    assert len(by_key) == len(lines), "one line per key"
    return by_key


def png_of(response: dict[str, Any]) -> Image.Image:
    (part,) = [p for p in response["candidates"][0]["content"]["parts"] if "inlineData" in p]
    assert part["inlineData"]["mimeType"] == "image/png"
    image = Image.open(io.BytesIO(base64.b64decode(part["inlineData"]["data"])))
    image.load()
    return image


# --- files ----------------------------------------------------------------------------------


def test_upload_get_list_delete_a_small_jsonl_file(client):
    data = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "x"}]}]}}\n'

    uploaded = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="jsonl", display_name="tiny"))

    assert uploaded.name.startswith("files/") and len(uploaded.name) == len("files/") + 12
    assert uploaded.name.removeprefix("files/").isalnum() and uploaded.name.islower()
    assert (uploaded.display_name, uploaded.mime_type, uploaded.size_bytes) == ("tiny", "jsonl", len(data))
    hex_digest = hashlib.sha256(data).hexdigest()
    assert uploaded.sha256_hash == base64.b64encode(hex_digest.encode()).decode()
    assert uploaded.state == types.FileState.ACTIVE and uploaded.source == types.FileSource.UPLOADED
    assert uploaded.expiration_time - uploaded.create_time == datetime.timedelta(hours=48)
    assert uploaded.download_uri is None
    assert client.files.get(name=uploaded.name) == uploaded
    assert [f.name for f in client.files.list()] == [uploaded.name]

    client.files.delete(name=uploaded.name)

    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=uploaded.name)
    assert (info.value.code, info.value.status) == (403, "PERMISSION_DENIED")
    file_id = uploaded.name.removeprefix("files/")
    assert info.value.message == f"You do not have permission to access the File {file_id} or it may not exist."


def test_upload_over_8_mib_is_sent_in_two_chunks(client, admin):
    data = bytes(range(256)) * (9 * 1024 * 1024 // 256)  # 9 MiB: one 8 MiB chunk + a 1 MiB final one

    uploaded = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="application/octet-stream"))

    assert uploaded.size_bytes == len(data)
    assert base64.b64decode(uploaded.sha256_hash).decode() == hashlib.sha256(data).hexdigest()
    assert uploaded.display_name is None
    assert admin.stats()["requests_by_endpoint"]["files.upload"] == 3  # start + 2 chunks
    assert admin.stats()["files"]["bytes_uploaded"] == len(data)


def test_files_list_paginates(client, admin):
    names = {upload_jsonl(client, [request_line(str(i), "p")]).name for i in range(3)}

    pager = client.files.list(config={"page_size": 2})

    assert len(pager.page) == 2
    assert {f.name for f in pager} == names
    assert admin.stats()["requests_by_endpoint"]["files.list"] == 2


def test_files_are_visible_only_to_the_key_that_uploaded_them(emulator, client):
    uploaded = upload_jsonl(client, [request_line("a", "p")])
    other = make_client(emulator, key="key-b")

    for call in (
        lambda: other.files.get(name=uploaded.name),
        lambda: other.files.delete(name=uploaded.name),
        lambda: other.batches.create(model=MODEL, src=uploaded.name),
    ):
        with pytest.raises(errors.ClientError) as info:
            call()
        assert info.value.code == 403
    assert list(other.files.list()) == []
    assert client.files.get(name=uploaded.name).name == uploaded.name


def test_uploaded_files_cannot_be_downloaded(client):
    uploaded = upload_jsonl(client, [request_line("a", "p")])

    with pytest.raises(ValueError, match="Only generated files"):
        client.files.download(file=uploaded)  # refused by the SDK: no download_uri
    with pytest.raises(errors.ClientError) as info:
        client.files.download(file=uploaded.name)  # by name it reaches the server
    assert info.value.code == 400


# --- file batches ---------------------------------------------------------------------------


def test_file_batch_runs_pending_running_succeeded_and_writes_results(client, admin):
    lines = [request_line(f"req-{i}", f"a red cube number {i}") for i in range(5)]
    # snake_case inside a line is accepted too, as by the real API
    lines.append({"key": "req-snake", "request": {"contents": [{"parts": [{"text": "a blue ball"}]}],
                                                  "generation_config": {"response_modalities": ["IMAGE"],
                                                                        "image_config": {"aspect_ratio": "16:9"}}}})
    source = upload_jsonl(client, lines)

    job = client.batches.create(model=MODEL, src=source.name, config={"display_name": "img-batch"})

    assert job.state == types.JobState.JOB_STATE_PENDING and not job.done
    assert job.name.startswith("batches/") and len(job.name) == len("batches/") + 36
    assert (job.display_name, job.model) == ("img-batch", f"models/{MODEL}")
    seen = {job.state}
    while not job.done:
        time.sleep(0.05)
        job = client.batches.get(name=job.name)
        seen.add(job.state)
    assert types.JobState.JOB_STATE_RUNNING in seen
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.end_time - job.create_time >= datetime.timedelta(seconds=PENDING_S + RUNNING_S - 0.001)
    assert job.dest.file_name == "files/batch-" + job.name.removeprefix("batches/")

    data = client.files.download(file=job.dest.file_name)

    results = results_by_key(data)
    assert set(results) == {line["key"] for line in lines}
    for key, result in results.items():
        assert "error" not in result, result
        image = png_of(result["response"])
        assert image.size == ((134, 77) if key == "req-snake" else (102, 102))  # 16:9 / 1:1 at SCALE
    assert len(results["req-snake"]["response"]["candidates"][0]["content"]["parts"]) == 1  # IMAGE only
    for line in data.splitlines():  # compact JSON, result before key as in real result files
        assert line.decode() == json.dumps(json.loads(line), separators=(",", ":"))
        assert line.startswith(b'{"response":')
    result_file = client.files.get(name=job.dest.file_name)
    assert result_file.source == types.FileSource.GENERATED
    assert result_file.download_uri.endswith(f"/download/v1/{job.dest.file_name}:download?alt=media")
    assert result_file.size_bytes == len(data)
    assert client.files.download(file=result_file) == data  # a types.File works since it has download_uri
    stats = admin.stats()
    assert stats["batches"]["by_state"] == {"BATCH_STATE_SUCCEEDED": 1}
    assert stats["batches"]["lines"]["succeeded"] == 6
    assert stats["requests_total"] == 0  # batch lines are not interactive requests


def test_result_lines_are_shuffled_unless_configured_otherwise(client, admin):
    admin.configure({"seed": 7, "batch": {"pending_seconds": 0, "running_seconds": 0}})
    keys = [f"k{i:02d}" for i in range(20)]
    source = upload_jsonl(client, [request_line(k, "same prompt") for k in keys])

    shuffled = client.files.download(file=wait_done(client, client.batches.create(model=MODEL, src=source.name).name).dest.file_name)
    admin.configure({"batch": {"shuffle_results": False}})
    ordered = client.files.download(file=wait_done(client, client.batches.create(model=MODEL, src=source.name).name).dest.file_name)

    def order(data: bytes) -> list[str]:
        return [json.loads(line)["key"] for line in data.splitlines()]

    assert sorted(order(shuffled)) == keys and order(shuffled) != keys
    assert order(ordered) == keys


def test_per_line_outcomes_follow_prompt_rules_and_skip_interactive_quotas(client, admin):
    admin.configure(
        {
            "quotas": {MODEL: {"rpm": 1, "ipm": 1, "concurrent": 1}},
            "faults": {
                "prompt_rules": [
                    {"contains": "[429]", "outcome": "429"},
                    {"contains": "[503]", "outcome": "503"},
                    {"contains": "[blocked]", "outcome": "blocked"},
                    {"contains": "[image_safety]", "outcome": "image_safety"},
                    {"contains": "[no_image]", "outcome": "no_image"},
                ]
            },
        }
    )
    lines = [
        request_line("ok-1", "fine"),
        request_line("ok-2", "also fine"),
        request_line("r429", "a cat [429]"),
        request_line("r503", "a cat [503]"),
        request_line("blocked", "a cat [blocked]"),
        request_line("safety", "a cat [image_safety]"),
        request_line("noimg", "a cat [no_image]"),
        request_line("bad", "a cat", imageConfig={"aspectRatio": "7:3"}),
        {"key": "no-request"},
    ]
    job = client.batches.create(model=MODEL, src=upload_jsonl(client, lines).name)

    results = results_by_key(client.files.download(file=wait_done(client, job.name).dest.file_name))

    assert png_of(results["ok-1"]["response"]) and png_of(results["ok-2"]["response"])
    assert results["r429"]["error"] == {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}
    assert results["r503"]["error"]["code"] == 503 and results["r503"]["error"]["status"] == "UNAVAILABLE"
    assert results["blocked"]["response"]["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in results["blocked"]["response"]
    assert results["safety"]["response"]["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert results["noimg"]["response"]["candidates"][0]["finishReason"] == "NO_IMAGE"
    for key in ("bad", "no-request"):
        assert results[key]["error"]["code"] == 400 and results[key]["error"]["status"] == "INVALID_ARGUMENT"
    assert "aspect_ratio" in results["bad"]["error"]["message"]
    batch_stats = admin.stats()["batches"]["lines"]
    assert (batch_stats["succeeded"], batch_stats["failed"]) == (5, 4)
    # Interactive quotas (rpm=1, concurrent=1) were never consulted, and are still all available.
    assert client.models.generate_content(model=MODEL, contents="interactive").candidates[0].finish_reason == types.FinishReason.STOP


def test_image_target_bytes_applies_to_batch_lines(client, admin):
    admin.configure({"image_target_bytes": 50_000, "batch": {"pending_seconds": 0, "running_seconds": 0}})
    source = upload_jsonl(client, [request_line("a", "same"), request_line("b", "same")])

    results = results_by_key(client.files.download(file=wait_done(client, client.batches.create(model=MODEL, src=source.name).name).dest.file_name))

    payloads = [base64.b64decode(r["response"]["candidates"][0]["content"]["parts"][-1]["inlineData"]["data"]) for r in results.values()]
    assert [len(p) for p in payloads] == [50_000, 50_000]
    assert payloads[0] != payloads[1]  # same prompt, but every line carries its own full image


def test_unreadable_or_missing_input_is_rejected_at_create(client):
    broken = client.files.upload(
        file=io.BytesIO(b'{"key": "a", "request": {}}\nnot json\n'), config=types.UploadFileConfig(mime_type="jsonl")
    )

    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=broken.name)
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert "line 2" in info.value.message
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src="files/doesnotexist")
    assert info.value.code == 403


def test_input_file_may_be_deleted_while_the_batch_runs(client):
    source = upload_jsonl(client, [request_line("a", "p")])
    job = client.batches.create(model=MODEL, src=source.name)

    client.files.delete(name=source.name)

    assert set(results_by_key(client.files.download(file=wait_done(client, job.name).dest.file_name))) == {"a"}


# --- inline batches -------------------------------------------------------------------------


def test_inline_batch_returns_inlined_responses_in_input_order(client, admin):
    admin.configure({"faults": {"prompt_rules": [{"contains": "[500]", "outcome": "500"}]}})
    src = [
        {"contents": [{"parts": [{"text": "a red cube"}], "role": "user"}],
         "config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "9:16"}},
         "metadata": {"key": "k1"}},
        {"contents": [{"parts": [{"text": "a broken ball [500]"}], "role": "user"}], "metadata": {"key": "k2"}},
        {"contents": "a plain string prompt", "metadata": {"key": "k3", "note": "x"}},
    ]

    job = wait_done(client, client.batches.create(model=MODEL, src=src, config={"display_name": "inline"}).name)

    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest.file_name is None
    first, second, third = job.dest.inlined_responses
    assert [r.metadata for r in (first, second, third)] == [{"key": "k1"}, {"key": "k2"}, {"key": "k3", "note": "x"}]
    (part,) = first.response.candidates[0].content.parts
    assert Image.open(io.BytesIO(part.inline_data.data)).size == (77, 134)
    assert second.response is None and second.error.code == 500
    assert "internal error" in second.error.message.lower()
    assert third.response.candidates[0].finish_reason == types.FinishReason.STOP
    (listed,) = client.batches.list()
    assert listed.name == job.name and listed.dest is None  # list never inlines responses


# --- batch management -----------------------------------------------------------------------


def test_batches_list_paginates_and_is_private_to_the_key(emulator, client):
    source = upload_jsonl(client, [request_line("a", "p")])
    names = [client.batches.create(model=MODEL, src=source.name).name for _ in range(3)]
    other = make_client(emulator, key="key-b")
    theirs = other.batches.create(model=MODEL, src=[{"contents": "x", "metadata": {"key": "a"}}])

    pager = client.batches.list(config={"page_size": 2})

    assert [j.name for j in pager.page] == names[::-1][:2]  # newest first
    assert [j.name for j in pager] == names[::-1]
    assert [j.name for j in other.batches.list()] == [theirs.name]
    with pytest.raises(errors.ClientError) as info:
        other.batches.get(name=names[0])
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")


def test_cancel_only_while_pending_or_running_then_delete(client, admin):
    admin.configure({"batch": {"pending_seconds": 60}})
    job = client.batches.create(model=MODEL, src=upload_jsonl(client, [request_line("a", "p")]).name)

    client.batches.cancel(name=job.name)

    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.done
    assert cancelled.end_time is not None and cancelled.dest is None
    with pytest.raises(errors.ClientError) as info:
        client.batches.cancel(name=job.name)
    assert (info.value.code, info.value.status) == (400, "FAILED_PRECONDITION")
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=job.name)
    assert info.value.code == 404


@pytest.mark.parametrize(
    ("forced", "expected"),
    [("BATCH_STATE_EXPIRED", types.JobState.JOB_STATE_EXPIRED), ("failed", types.JobState.JOB_STATE_FAILED)],
)
def test_admin_can_force_a_terminal_state(client, admin, forced, expected):
    job = client.batches.create(model=MODEL, src=upload_jsonl(client, [request_line("a", "p")]).name)

    operation = admin.force(job.name, forced)

    assert operation["done"] is True and "output" not in operation["metadata"]
    job = client.batches.get(name=job.name)
    assert job.state == expected and job.dest is None


def test_forcing_succeeded_skips_the_turnaround(client, admin):
    admin.configure({"batch": {"pending_seconds": 3600}})
    job = client.batches.create(model=MODEL, src=upload_jsonl(client, [request_line("a", "p"), request_line("b", "q")]).name)

    operation = admin.force(job.name, "JOB_STATE_SUCCEEDED")

    assert operation["metadata"]["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    job = client.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert set(results_by_key(client.files.download(file=job.dest.file_name))) == {"a", "b"}


def test_batch_outcomes_from_display_name_rules_then_script(client, admin):
    admin.configure(
        {
            "batch": {
                "pending_seconds": 0,
                "running_seconds": 0,
                "display_name_rules": [{"contains": "[fail]", "outcome": "failed"}],
                "outcome_script": ["expired"],
            }
        }
    )
    src = [{"contents": "x", "metadata": {"key": "a"}}]

    states = [
        wait_done(client, client.batches.create(model=MODEL, src=src, config={"display_name": name}).name).state
        for name in ("nightly [fail]", "nightly", "nightly")
    ]

    assert states == [types.JobState.JOB_STATE_FAILED, types.JobState.JOB_STATE_EXPIRED, types.JobState.JOB_STATE_SUCCEEDED]


def test_max_concurrent_batches_is_429_without_retry_info(client, admin):
    admin.configure({"batch": {"max_concurrent_batches": 1, "pending_seconds": 60}})
    src = [{"contents": "x", "metadata": {"key": "a"}}]
    first = client.batches.create(model=MODEL, src=src)

    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=src)

    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "details" not in info.value.details["error"]
    client.batches.cancel(name=first.name)
    assert client.batches.create(model=MODEL, src=src).state == types.JobState.JOB_STATE_PENDING


def test_async_client_and_v1beta(emulator, admin):
    client = make_client(emulator, api_version="v1beta")

    async def run() -> tuple[types.BatchJob, bytes]:
        source = await client.aio.files.upload(
            file=io.BytesIO((json.dumps(request_line("a", "async otter")) + "\n").encode()),
            config=types.UploadFileConfig(mime_type="application/jsonl"),
        )
        job = await client.aio.batches.create(model=MODEL, src=source.name)
        while not job.done:
            await asyncio.sleep(0.05)
            job = await client.aio.batches.get(name=job.name)
        return job, await client.aio.files.download(file=job.dest.file_name)

    job, data = asyncio.run(run())

    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert png_of(results_by_key(data)["a"]["response"]).size == (102, 102)
    endpoints = admin.stats()["requests_by_endpoint"]
    assert endpoints["batches.create"] == 1 and endpoints["files.download"] == 1


def test_reset_deletes_files_batches_and_their_bytes(emulator, client, admin):
    source = upload_jsonl(client, [request_line("a", "p")])
    job = wait_done(client, client.batches.create(model=MODEL, src=source.name).name)
    admin.configure({"batch": {"pending_seconds": 60}})
    client.batches.create(model=MODEL, src=source.name)
    assert any(emulator.state.data_dir.iterdir())

    assert admin.call("POST", "/_emulator/reset")[0] == 200

    with pytest.raises(errors.ClientError):
        client.files.get(name=job.dest.file_name)
    with pytest.raises(errors.ClientError):
        client.batches.get(name=job.name)
    deadline = time.monotonic() + 5
    while any(emulator.state.data_dir.iterdir()):  # a cancelled worker removes its partial file itself
        assert time.monotonic() < deadline, list(emulator.state.data_dir.iterdir())
        time.sleep(0.02)
    stats = admin.stats()
    assert stats["files"]["live"] == 0 and stats["batches"]["created"] == 0


def test_turnaround_follows_an_injected_clock():
    now = [1000.0]
    config = {"image_scale": SCALE, "batch": {"pending_seconds": 100, "running_seconds": 200}}
    with BackgroundEmulator(config, clock=lambda: now[0]) as emu:
        client = make_client(emu)
        job = client.batches.create(model=MODEL, src=[{"contents": "x", "metadata": {"key": "a"}}])

        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
        now[0] += 100
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
        now[0] += 199.999
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
        now[0] += 0.001
        done = wait_done(client, job.name)  # the worker is real, so give it a moment

    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time - done.create_time == datetime.timedelta(seconds=300)
    assert not emu.state.data_dir.exists()  # the temp dir goes with the emulator


def test_images_are_counted_per_prompt_across_both_lanes(client, admin):
    """`billed_twice` counts the prompts that got an image more than once, interactive or batch:
    the fault matrix's proof that no item was paid for twice."""
    source = upload_jsonl(client, [request_line("a", "a green cone"), request_line("b", "a grey cube")])
    job = wait_done(client, client.batches.create(model=MODEL, src=source.name).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert (admin.stats()["billed_prompts"], admin.stats()["billed_twice"]) == (2, 0)

    client.models.generate_content(model=MODEL, contents="a green cone")
    # An expired batch delivers nothing, so bills nothing, whatever its lines had done.
    expired = client.batches.create(model=MODEL, src=upload_jsonl(client, [request_line("c", "a grey cube")]).name)
    admin.force(expired.name, "expired")
    assert client.batches.get(name=expired.name).state == types.JobState.JOB_STATE_EXPIRED

    stats = admin.stats()
    assert (stats["billed_prompts"], stats["billed_twice"]) == (2, 1)
    assert stats["billed_twice_prompts"] == {"a green cone": 2}


def test_lines_of_a_batch_that_never_returns_them_are_not_counted_as_billed(client, admin):
    """A batch cancelled (or expired) after its worker wrote its lines returns nothing, and its
    prompts can be sent again without counting as billed twice."""
    admin.configure({"batch": {"pending_seconds": 0, "running_seconds": 3600}})
    source = upload_jsonl(client, [request_line("a", "a blue ring")])
    job = client.batches.create(model=MODEL, src=source.name)
    deadline = time.monotonic() + 30
    while admin.stats()["batches"]["lines"]["succeeded"] < 1:  # the worker wrote its line
        assert time.monotonic() < deadline, admin.stats()["batches"]
        time.sleep(0.05)
    client.batches.cancel(name=job.name)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_CANCELLED
    assert admin.stats()["billed_prompts"] == 0

    client.models.generate_content(model=MODEL, contents="a blue ring")

    assert (admin.stats()["billed_prompts"], admin.stats()["billed_twice"]) == (1, 0)
