"""The Gemini emulator as a real HTTP server, driven by the unmodified google-genai SDK.

The SDK is the client for every API behaviour. Plain urllib is used only for the admin API and
for wire details the SDK cannot produce (no key at all, pure snake_case bodies, bad base64).
One emulator process serves the module (free port, ``--port 0``); each test resets it.

Exceptions the SDK raises (google-genai 3.4.0), which the worker adapter must translate:
* HTTP 4xx (400, 403, 429, ...) -> ``google.genai.errors.ClientError`` (``.code``, ``.status``,
  ``.details`` = the whole JSON body, so the rpc details are ``e.details["error"]["details"]``);
* HTTP 5xx -> ``google.genai.errors.ServerError``;
* client timeout (``HttpOptions(timeout=ms)``) -> sync: ``httpx2.ReadTimeout`` (an
  ``httpx2.TimeoutException``), async: builtin ``TimeoutError`` (aiohttp is installed, so the
  async client uses aiohttp, whose total timeout raises ``asyncio.TimeoutError`` = ``TimeoutError``).
  Neither is an ``APIError``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "gemini-2.5-flash-image"
SCALE = 0.25  # startup image_scale: small PNGs keep the suite fast
RPC = "type.googleapis.com/google.rpc."


# --- harness --------------------------------------------------------------------------------


class EmulatorProcess:
    """``python -m infra.gemini_emulator --port 0`` in its own session, URL read from stdout."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config))
        self.log_path = workdir / "emulator.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.gemini_emulator", "--host", "127.0.0.1", "--port", "0", "--config", str(config_path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self.url = self._read_url(timeout=15)

    def _read_url(self, timeout: float) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            self.stop()
            raise RuntimeError(f"emulator did not start; log:\n{self.log_path.read_text()}")
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"unexpected emulator output {line!r}; log:\n{self.log_path.read_text()}")
        return line.rsplit(" ", 1)[1].strip()

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Emu:
    """Admin-API helper for one test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        status, body = self.call("POST", "/_emulator/config", patch)
        assert status == 200, body
        return body

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_emulator/stats")[1]

    def requests(self) -> list[dict[str, Any]]:
        return self.call("GET", "/_emulator/requests")[1]["requests"]


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory):
    process = EmulatorProcess({"image_scale": SCALE}, tmp_path_factory.mktemp("gemini-emulator"))
    yield process
    assert process.stop() == 0, process.log_path.read_text()


@pytest.fixture
def emu(emulator_process) -> Emu:
    helper = Emu(emulator_process.url)
    status, _ = helper.call("POST", "/_emulator/reset")
    assert status == 200
    return helper


def make_client(emu: Emu, **http_options: Any) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=emu.url, **http_options))


@pytest.fixture
def client(emu) -> genai.Client:
    return make_client(emu)  # the fixture keeps a reference: a GC'd Client closes its transport


def generate(client: genai.Client, prompt: str = "a red fox", *, model: str = MODEL, **config: Any) -> types.GenerateContentResponse:
    cfg = types.GenerateContentConfig(**config) if config else None
    return client.models.generate_content(model=model, contents=prompt, config=cfg)


def image_of(response: types.GenerateContentResponse) -> Image.Image:
    (png,) = [p.inline_data for p in response.candidates[0].content.parts if p.inline_data]
    assert png.mime_type == "image/png"
    image = Image.open(io.BytesIO(png.data))
    image.load()
    return image


def rpc_detail(exc: errors.APIError, kind: str) -> dict[str, Any]:
    (detail,) = [d for d in exc.details["error"].get("details", []) if d["@type"] == RPC + kind]
    return detail


def seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration[:-1])


def scaled(width: int, height: int) -> tuple[int, int]:
    return round(width * SCALE), round(height * SCALE)


# --- generateContent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect_ratio", "size"),
    [(None, (1024, 1024)), ("16:9", (1344, 768)), ("9:16", (768, 1344)), ("21:9", (1536, 672))],
)
def test_sync_generate_returns_text_and_png_sized_by_aspect_ratio(client, aspect_ratio, size):
    config = {"image_config": types.ImageConfig(aspect_ratio=aspect_ratio)} if aspect_ratio else {}

    response = generate(client, "a red fox in the snow", **config)

    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content.role == "model"
    assert candidate.content.parts[0].text == "Here is your image of: a red fox in the snow"
    assert image_of(response).size == scaled(*size)
    usage = response.usage_metadata
    assert usage.candidates_token_count == 1290
    assert usage.total_token_count == usage.prompt_token_count + 1290
    assert usage.candidates_tokens_details[0].modality == types.MediaModality.IMAGE
    assert response.model_version == MODEL
    assert response.response_id


def test_full_size_image_when_image_scale_is_1(emu, client):
    emu.configure({"image_scale": 1.0})

    response = generate(client, image_config=types.ImageConfig(aspect_ratio="3:4"))

    assert image_of(response).size == (864, 1184)


def test_async_generate(client):
    async def run():
        return await client.aio.models.generate_content(
            model=MODEL,
            contents="an async otter",
            config=types.GenerateContentConfig(image_config=types.ImageConfig(aspect_ratio="4:3")),
        )

    response = asyncio.run(run())

    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert image_of(response).size == scaled(1184, 864)


def test_image_only_modality_omits_text_part(client):
    response = generate(client, response_modalities=["IMAGE"])

    parts = response.candidates[0].content.parts
    assert len(parts) == 1 and parts[0].inline_data is not None


def test_streaming_returns_the_whole_answer(client):
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="a streamed heron"))

    assert len(chunks) == 1
    assert image_of(chunks[0]).size == scaled(1024, 1024)


def test_text_model_gets_a_text_answer(client):
    response = generate(client, "hello", model="gemini-2.5-flash")

    assert response.text == "Emulated reply to: hello"


@pytest.mark.parametrize("api_version", ["v1beta", "v1alpha"])
def test_other_api_versions_are_served_identically(emu, api_version):
    client = make_client(emu, api_version=api_version)

    response = generate(client, "versioned")

    assert image_of(response).size == scaled(1024, 1024)
    assert emu.requests()[-1]["api_version"] == api_version


def test_client_configured_only_from_environment(emu, monkeypatch):
    for name in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
    monkeypatch.setenv("GEMINI_API_KEY", "env-key")
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1beta")
    emu.configure({"api_keys": ["env-key"]})
    client = genai.Client()

    response = generate(client, "from the environment")

    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert emu.requests()[-1]["api_version"] == "v1beta"


def test_unknown_aspect_ratio_is_invalid_argument_naming_the_field(client):
    with pytest.raises(errors.ClientError) as caught:
        generate(client, image_config=types.ImageConfig(aspect_ratio="7:3"))

    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert "image_config.aspect_ratio" in caught.value.message


def test_snake_case_fields_added_through_the_sdk_are_honoured(emu, client):
    # extra_body is merged into the SDK's request; nested keys stay snake_case on the wire.
    extra = {"generation_config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "3:2"}}}

    response = generate(client, http_options=types.HttpOptions(extra_body=extra))

    sent = emu.requests()[-1]["body"]["generationConfig"]
    assert sent["image_config"] == {"aspect_ratio": "3:2"}
    assert [p.inline_data is not None for p in response.candidates[0].content.parts] == [True]
    assert image_of(response).size == scaled(1248, 832)


@pytest.mark.parametrize("style", ["snake", "camel"])
def test_wire_accepts_either_casing_and_url_safe_base64(emu, style):
    inline = {"data": "-_-_", "mime_type" if style == "snake" else "mimeType": "image/jpeg"}
    if style == "snake":
        body = {
            "contents": [{"parts": [{"text": "edit this"}, {"inline_data": inline}], "role": "user"}],
            "generation_config": {"response_modalities": ["TEXT", "IMAGE"], "image_config": {"aspect_ratio": "5:4"}},
        }
    else:
        body = {
            "contents": [{"parts": [{"text": "edit this"}, {"inlineData": inline}], "role": "user"}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "5:4"}},
        }

    status, response = emu.call("POST", f"/v1beta/models/{MODEL}:generateContent?key=k", body)

    assert status == 200, response
    png = base64.b64decode(response["candidates"][0]["content"]["parts"][1]["inlineData"]["data"])
    assert Image.open(io.BytesIO(png)).size == scaled(1152, 896)
    assert response["usageMetadata"]["promptTokensDetails"][1] == {"modality": "IMAGE", "tokenCount": 258}


def test_bad_base64_is_invalid_argument(emu):
    body = {"contents": [{"parts": [{"inline_data": {"data": "not*base64", "mime_type": "image/png"}}]}]}

    status, response = emu.call("POST", f"/v1/models/{MODEL}:generateContent", body, {"x-goog-api-key": "k"})

    assert status == 400
    assert "inline_data.data" in response["error"]["message"]


# --- auth -----------------------------------------------------------------------------------


def test_wrong_api_key_is_400_api_key_invalid(emu):
    emu.configure({"api_keys": ["the-right-key"]})
    good = genai.Client(api_key="the-right-key", http_options=types.HttpOptions(base_url=emu.url))
    bad = genai.Client(api_key="a-wrong-key", http_options=types.HttpOptions(base_url=emu.url))

    assert generate(good).candidates
    with pytest.raises(errors.ClientError) as caught:
        generate(bad)

    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.message == "API key not valid. Please pass a valid API key."
    assert rpc_detail(caught.value, "ErrorInfo")["reason"] == "API_KEY_INVALID"
    assert emu.stats()["auth_failures"] == 1


def test_missing_api_key_is_403(emu):
    # The SDK refuses to build a client without a key, so this wire check uses urllib.
    status, body = emu.call("POST", f"/v1/models/{MODEL}:generateContent", {"contents": [{"parts": [{"text": "x"}]}]})

    assert status == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"


# --- quotas ---------------------------------------------------------------------------------


def test_rpm_quota_429_with_quota_failure_and_retry_info(emu, client):
    emu.configure({"window_seconds": 2, "quotas": {MODEL: {"rpm": 2}}})
    generate(client)
    generate(client)

    with pytest.raises(errors.ClientError) as caught:
        generate(client)

    exc = caught.value
    assert (exc.code, exc.status) == (429, "RESOURCE_EXHAUSTED")
    violation = rpc_detail(exc, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaDimensions"] == {"location": "global", "model": MODEL}
    assert violation["quotaValue"] == "2"
    retry_delay = seconds(rpc_detail(exc, "RetryInfo")["retryDelay"])
    assert 0 < retry_delay <= 2
    assert re.search(r"Please retry in [0-9.]+s\.", exc.message)  # precise here, whole seconds in RetryInfo
    rpc_detail(exc, "Help")

    time.sleep(retry_delay)
    assert generate(client).candidates  # the window freed a slot exactly when promised

    stats = emu.stats()
    assert stats["by_quota_id"] == {"GenerateRequestsPerMinutePerProjectPerModel": 1}
    assert stats["admitted_max_in_any_window"] == 2
    assert stats["by_outcome"] == {"ok": 3, "429": 1}
    assert sum(w["rejected"] for w in stats["windows"]) == 1


def test_ipm_quota_counts_only_image_requests(emu, client):
    emu.configure({"quotas": {MODEL: {"ipm": 1}}})
    generate(client)
    generate(client, response_modalities=["TEXT"])  # no image: not counted

    with pytest.raises(errors.ClientError) as caught:
        generate(client)

    violation = rpc_detail(caught.value, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateImagesPerMinutePerProjectPerModel"


def test_rpd_quota_uses_the_day_window(emu, client):
    emu.configure({"window_seconds": 1, "day_seconds": 3, "quotas": {"default": {"rpd": 2}}})
    generate(client)
    generate(client)

    with pytest.raises(errors.ClientError) as caught:
        generate(client)

    violation = rpc_detail(caught.value, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
    assert 1 < seconds(rpc_detail(caught.value, "RetryInfo")["retryDelay"]) <= 3


def test_default_quota_applies_to_models_without_their_own_entry(emu, client):
    emu.configure({"quotas": {"default": {"rpm": 1}, "gemini-3-pro-image-preview": {"rpm": 5}}})
    generate(client)
    generate(client, model="gemini-3-pro-image-preview")
    generate(client, model="gemini-3-pro-image-preview")

    with pytest.raises(errors.ClientError):
        generate(client)


def test_concurrency_quota(emu, client):
    emu.configure({"latency": {"mean_ms": 500}, "quotas": {MODEL: {"concurrent": 1}}})

    async def two_at_once():
        return await asyncio.gather(
            client.aio.models.generate_content(model=MODEL, contents="first"),
            client.aio.models.generate_content(model=MODEL, contents="second"),
            return_exceptions=True,
        )

    results = asyncio.run(two_at_once())

    rejected = [r for r in results if isinstance(r, errors.ClientError)]
    assert len(rejected) == 1 and len([r for r in results if isinstance(r, types.GenerateContentResponse)]) == 1
    violation = rpc_detail(rejected[0], "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateContentConcurrentRequestsPerProjectPerModel"
    assert rpc_detail(rejected[0], "RetryInfo")["retryDelay"] == "1s"
    assert emu.stats()["peak_concurrency"] == 1


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "exc_type", "code", "status"),
    [
        ("500", errors.ServerError, 500, "INTERNAL"),
        ("503", errors.ServerError, 503, "UNAVAILABLE"),
        ("403", errors.ClientError, 403, "PERMISSION_DENIED"),
        ("429", errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
    ],
)
def test_error_faults(emu, client, outcome, exc_type, code, status):
    emu.configure({"faults": {"rates": {outcome: 1.0}, "retry_delay_s": 2.5}})

    with pytest.raises(exc_type) as caught:
        generate(client)

    assert (caught.value.code, caught.value.status) == (code, status)
    if outcome == "503":
        assert caught.value.message == "The model is overloaded. Please try again later."
    if outcome == "429":  # a capacity 429: RetryInfo but no quota named
        assert rpc_detail(caught.value, "RetryInfo")["retryDelay"] == "3s"  # whole seconds, rounded up
    assert emu.stats()["faults_injected"] == {outcome: 1}


def test_blocked_prompt_is_200_without_candidates(emu, client):
    emu.configure({"faults": {"script": ["blocked"]}})

    response = generate(client)

    assert response.candidates is None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY


@pytest.mark.parametrize(("outcome", "finish_reason"), [
    ("image_safety", "IMAGE_SAFETY"), ("no_image", "NO_IMAGE"),
    ("image_prohibited", "IMAGE_PROHIBITED_CONTENT"), ("image_other", "IMAGE_OTHER"),
])
def test_image_refusals_have_a_finish_reason_and_no_image(emu, client, outcome, finish_reason):
    emu.configure({"faults": {"script": [outcome]}})

    response = generate(client)

    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason(finish_reason)
    parts = (candidate.content.parts or []) if candidate.content else []  # NO_IMAGE: no parts at all
    assert not [p for p in parts if p.inline_data]


def test_hang_times_out_in_the_sync_client(emu):
    emu.configure({"faults": {"script": ["hang"], "hang_seconds": 30}})
    client = make_client(emu, timeout=500)  # milliseconds

    with pytest.raises(httpx2.ReadTimeout):  # not an APIError
        generate(client)

    # The server cancels the abandoned request, so it does not keep holding a concurrency slot.
    deadline = time.monotonic() + 5
    while emu.stats()["current_concurrency"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emu.stats()["current_concurrency"] == 0
    assert emu.requests()[-1]["status"] == "client_disconnected"


def test_hang_times_out_in_the_async_client(emu):
    emu.configure({"faults": {"script": ["hang"], "hang_seconds": 30}})
    client = make_client(emu, timeout=500)

    async def run():
        return await client.aio.models.generate_content(model=MODEL, contents="hang")

    with pytest.raises(TimeoutError):  # aiohttp's total timeout: asyncio.TimeoutError is TimeoutError
        asyncio.run(run())


def test_hang_ends_in_504_when_the_client_waits(emu, client):
    emu.configure({"faults": {"script": ["hang"], "hang_seconds": 0.2}})

    with pytest.raises(errors.ServerError) as caught:
        generate(client)

    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")


def test_scripted_sequence_then_rates(emu, client):
    emu.configure({"faults": {"script": ["429", "500", "ok", "blocked"]}})
    seen = []
    for _ in range(5):
        try:
            response = generate(client)
            seen.append("blocked" if response.candidates is None else "ok")
        except errors.APIError as exc:
            seen.append(str(exc.code))

    assert seen == ["429", "500", "ok", "blocked", "ok"]
    assert emu.stats()["script_remaining"] == 0


def test_prompt_rules_decide_first_and_do_not_consume_the_script(emu, client):
    emu.configure(
        {"faults": {"prompt_rules": [{"contains": "forbidden", "outcome": "blocked"}], "script": ["503"]}}
    )

    assert generate(client, "a forbidden thing").candidates is None
    with pytest.raises(errors.ServerError):
        generate(client, "a fine thing")
    assert generate(client, "another fine thing").candidates
    assert generate(client, "forbidden again").candidates is None


def test_seeded_fault_rates_are_reproducible(emu, client):
    def run() -> list[str]:
        emu.configure({"seed": 42, "faults": {"rates": {"500": 0.5}}})
        outcomes = []
        for _ in range(12):
            try:
                generate(client)
                outcomes.append("ok")
            except errors.ServerError:
                outcomes.append("500")
        return outcomes

    first = run()
    emu.call("POST", "/_emulator/reset")
    assert run() == first
    assert set(first) == {"ok", "500"}


# --- latency, admin -------------------------------------------------------------------------


def test_latency_is_modelled_while_holding_a_slot(emu, client):
    emu.configure({"latency": {"mean_ms": 300, "jitter_ms": 50}})

    async def four():
        return await asyncio.gather(*(client.aio.models.generate_content(model=MODEL, contents=f"p{i}") for i in range(4)))

    asyncio.run(four())

    stats = emu.stats()
    assert stats["latency_ms"]["count"] == 4
    assert 250 <= stats["latency_ms"]["min"] <= stats["latency_ms"]["max"] <= 350
    assert stats["peak_concurrency"] >= 2  # requests overlapped while their latency elapsed
    assert stats["current_concurrency"] == 0
    assert stats["images_generated"] == 4


def test_admin_config_merge_validation_and_reset(emu, client):
    status, health = emu.call("GET", "/_emulator/healthz")
    assert (status, health) == (200, {"status": "ok"})

    merged = emu.configure({"quotas": {"default": {"rpm": 100}}, "latency": {"mean_ms": 1}})
    assert merged["quotas"] == {"default": {"rpm": 100}}
    assert merged["latency"] == {"mean_ms": 1, "jitter_ms": 0.0, "distribution": "uniform"}
    assert merged["image_scale"] == SCALE  # untouched keys keep their value

    status, error = emu.call("POST", "/_emulator/config", {"faults": {"rates": {"teapot": 0.1}}})
    assert status == 400 and "faults.rates" in error["error"]["message"]
    assert emu.call("GET", "/_emulator/config")[1] == merged  # a rejected patch changes nothing

    generate(client)
    emu.call("POST", "/_emulator/reset?keep_config=1")
    assert emu.stats()["requests_total"] == 0
    assert emu.call("GET", "/_emulator/config")[1] == merged

    emu.call("POST", "/_emulator/reset")
    assert emu.call("GET", "/_emulator/config")[1]["quotas"] == {}


def test_reset_while_a_request_is_in_flight_leaves_consistent_stats(emu, client):
    emu.configure({"latency": {"mean_ms": 400}})
    caller = threading.Thread(target=generate, args=(client, "in flight during reset"))
    caller.start()
    deadline = time.monotonic() + 5
    while not emu.stats()["current_concurrency"] and time.monotonic() < deadline:
        time.sleep(0.02)

    emu.call("POST", "/_emulator/reset?keep_config=1")
    caller.join(timeout=10)

    stats = emu.stats()
    assert (stats["current_concurrency"], stats["peak_concurrency"], stats["requests_total"]) == (0, 0, 0)


def test_background_thread_server(tmp_path):
    from infra.gemini_emulator import BackgroundEmulator

    with BackgroundEmulator({"image_scale": SCALE}) as emulator:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emulator.base_url))
        response = generate(client)
        assert image_of(response).size == scaled(1024, 1024)
        assert emulator.state.stats_snapshot()["images_generated"] == 1


def test_sigterm_stops_the_server_promptly_despite_a_hanging_request(tmp_path):
    process = EmulatorProcess({"faults": {"script": ["hang"], "hang_seconds": 60}}, tmp_path)
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=process.url, timeout=20_000))
    outcome: list[BaseException] = []

    def hanging_call() -> None:
        try:
            generate(client, "hang until shutdown")
        except BaseException as exc:  # noqa: BLE001 - any end is fine, it must just end
            outcome.append(exc)

    caller = threading.Thread(target=hanging_call)
    caller.start()
    deadline = time.monotonic() + 5
    while not Emu(process.url).stats()["current_concurrency"] and time.monotonic() < deadline:
        time.sleep(0.05)

    started = time.monotonic()
    assert process.stop() == 0
    assert time.monotonic() - started < 5
    caller.join(timeout=10)
    assert outcome  # the client got an error (connection closed / 5xx), not a hang
