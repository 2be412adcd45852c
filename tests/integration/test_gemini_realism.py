"""The emulator answers like today's Gemini API, and our adapters read those answers right:
several violations in one 429, a 429 with only a Help link, whole-second retryDelay, unknown
fields, case-insensitive enums, more refusals, thought images, an upload refused at finalize,
the Files API storage limit and the per-model enqueued batch limit. Real SDK, real emulator."""
from __future__ import annotations

import io
import time

import pytest
import requests
from google import genai
from google.genai import types
from PIL import Image

from adapters.gemini_batches import GeminiBatchApi
from adapters.gemini_generator import GeminiImageGenerator
from core.errors import ContentRefused, QuotaExceeded, UploadRejected
from core.jsonl import LineSplitter, parse_result_line, request_line

MODEL = "gemini-2.5-flash-image"


class Emulator:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = genai.Client(api_key="realism-key", http_options=types.HttpOptions(base_url=base, timeout=30_000))
        self.generator = GeminiImageGenerator(self.client, MODEL)
        self.batches = GeminiBatchApi(self.client, "realism-key")

    def configure(self, patch: dict) -> dict:
        r = requests.post(f"{self.base}/_emulator/config", json=patch, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def post_generate(self, body: dict) -> requests.Response:
        return requests.post(f"{self.base}/v1beta/models/{MODEL}:generateContent", json=body,
                             headers={"x-goog-api-key": "realism-key"}, timeout=30)


@pytest.fixture
def emu(gemini_clean) -> Emulator:
    e = Emulator(gemini_clean)
    e.configure({"image_scale": 0.25, "batch": {"pending_seconds": 0.1, "running_seconds": 0.1}})
    return e


def test_a_multi_violation_429_is_a_per_minute_wait(emu):
    emu.configure({"faults": {"script": ["429_multi"], "retry_delay_s": 46.2}})
    with pytest.raises(QuotaExceeded) as caught:
        emu.generator.generate("a cat", "1:1", None)
    e = caught.value
    assert e.quota_ids == ("GenerateRequestsPerDayPerProjectPerModel", "GenerateRequestsPerMinutePerProjectPerModel",
                           "GenerateContentInputTokensPerModelPerMinute")
    assert e.retry_delay == 47.0  # whole seconds, rounded up
    assert not e.per_day and e.quota_id == "GenerateRequestsPerMinutePerProjectPerModel"


def test_a_help_only_429_is_a_quota_error_without_ids_or_delay(emu):
    emu.configure({"faults": {"script": ["429_help_only"]}})
    with pytest.raises(QuotaExceeded) as caught:
        emu.generator.generate("a cat", "1:1", None)
    assert (caught.value.quota_ids, caught.value.retry_delay, caught.value.per_day) == ((), None, False)


def test_a_quota_429_has_a_whole_second_retry_delay(emu):
    emu.configure({"window_seconds": 30, "quotas": {"default": {"rpm": 1}}})
    emu.generator.generate("first", "1:1", None)
    r = emu.post_generate({"contents": [{"parts": [{"text": "second"}]}]})
    assert r.status_code == 429
    (retry,) = [d for d in r.json()["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry["retryDelay"].endswith("s") and retry["retryDelay"][:-1].isdigit()


def test_thought_images_are_skipped_and_the_final_image_is_kept(emu):
    emu.configure({"faults": {"script": ["thought_image"]}})
    r = emu.post_generate({"contents": [{"parts": [{"text": "a lighthouse"}]}]})
    parts = r.json()["candidates"][0]["content"]["parts"]
    assert [p.get("thought", False) for p in parts] == [True, True, False, False]

    emu.configure({"faults": {"script": ["thought_image"]}})
    image = emu.generator.generate("a lighthouse", "1:1", None)
    assert Image.open(io.BytesIO(image.data)).size == (256, 256)  # the 1:1 final at scale 0.25, not the 96 px draft
    assert image.text == "Here is your image of: a lighthouse"


@pytest.mark.parametrize("outcome,reason", [
    ("no_image", "NO_IMAGE"), ("image_prohibited", "IMAGE_PROHIBITED_CONTENT"), ("image_other", "IMAGE_OTHER"),
    ("blocked_prohibited", "PROHIBITED_CONTENT"), ("blocked_other", "OTHER"),
])
def test_refusals_are_content_refused_not_retried(emu, outcome, reason):
    emu.configure({"faults": {"script": [outcome]}})
    with pytest.raises(ContentRefused, match=reason):
        emu.generator.generate("a cat", "1:1", None)


def test_unknown_fields_are_a_400_naming_them(emu):
    r = emu.post_generate({"contents": [{"parts": [{"text": "x"}]}], "xyz": 1,
                           "generationConfig": {"imageConfig": {"aspectRatio": "1:1", "bogus": 1}, "foo": 2}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"].split("\n") == [
        'Invalid JSON payload received. Unknown name "xyz": Cannot find field.',
        "Invalid JSON payload received. Unknown name \"foo\" at 'generation_config': Cannot find field.",
        "Invalid JSON payload received. Unknown name \"bogus\" at 'generation_config.image_config': Cannot find field.",
    ]
    (bad,) = error["details"]
    assert bad["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v.get("field") for v in bad["fieldViolations"]] == [None, "generation_config", "generation_config.image_config"]


def test_enum_values_are_case_insensitive(emu):
    r = emu.post_generate({"contents": [{"parts": [{"text": "x"}]}],
                           "generationConfig": {"responseModalities": ["Text", "image"]}})
    assert r.status_code == 200
    parts = r.json()["candidates"][0]["content"]["parts"]
    assert any("inlineData" in p for p in parts)


def test_a_batch_line_with_an_unknown_field_is_an_error_line(emu):
    good = request_line("good", "a cat", "1:1", None)
    bad = b'{"key":"bad","request":{"contents":[{"parts":[{"text":"x"}]}],"generation_config":{"xyz":1}}}\n'
    info = emu.batches.create_batch(MODEL, emu.batches.upload_jsonl(good + bad, "realism-1"), "realism-1")
    lines = _results(emu, info.name)
    assert lines["good"].image is not None
    assert "Unknown name \"xyz\" at 'generation_config': Cannot find field." in lines["bad"].error.reason


def test_an_upload_refused_at_finalize_is_an_upload_rejected_with_the_servers_message(emu):
    emu.configure({"files": {"reject_finalize": 1}})
    with pytest.raises(UploadRejected, match="400 INVALID_ARGUMENT: Unsupported MIME type: jsonl"):
        emu.batches.upload_jsonl(request_line("k", "a cat", "1:1", None), "realism-2")
    assert emu.batches.upload_jsonl(request_line("k", "a cat", "1:1", None), "realism-2").startswith("files/")


def test_past_the_file_storage_limit_an_upload_is_a_quota_error(emu):
    data = request_line("k", "a cat", "1:1", None)
    emu.configure({"files": {"max_total_bytes": len(data) + 10}})
    emu.batches.upload_jsonl(data, "realism-3")
    with pytest.raises(QuotaExceeded) as caught:
        emu.batches.upload_jsonl(data, "realism-3")
    assert caught.value.quota_ids == ("FileStorageBytesPerProject",) and not caught.value.per_day


def test_past_the_enqueued_limit_create_is_a_quota_error_to_try_later(emu):
    emu.configure({"batch": {"max_enqueued_requests": 2, "pending_seconds": 60}})
    data = b"".join(request_line(k, "a cat", "1:1", None) for k in ("a", "b"))
    emu.batches.create_batch(MODEL, emu.batches.upload_jsonl(data, "realism-4"), "realism-4")
    with pytest.raises(QuotaExceeded) as caught:
        emu.batches.create_batch(MODEL, emu.batches.upload_jsonl(data, "realism-5"), "realism-5")
    assert not caught.value.per_day and caught.value.retry_delay is None
    stats = requests.get(f"{emu.base}/_emulator/stats", timeout=10).json()
    assert stats["batches"]["rejected_max_enqueued"] == 1


def test_scripted_create_refusals_reach_the_adapter_as_quota_errors_and_keep_the_input(emu):
    emu.configure({"batch": {"create_script": ["429", "429_retry", "ok"]}, "faults": {"retry_delay_s": 7}})
    input_file = emu.batches.upload_jsonl(request_line("k", "a cat", "1:1", None), "realism-6")
    with pytest.raises(QuotaExceeded) as help_only:
        emu.batches.create_batch(MODEL, input_file, "realism-6")
    with pytest.raises(QuotaExceeded) as with_delay:
        emu.batches.create_batch(MODEL, input_file, "realism-6")
    assert help_only.value.retry_delay is None and with_delay.value.retry_delay == 7.0
    info = emu.batches.create_batch(MODEL, input_file, "realism-6")  # the same file still serves
    assert _results(emu, info.name)["k"].image is not None
    stats = requests.get(f"{emu.base}/_emulator/stats", timeout=10).json()
    assert stats["batches"]["rejected_scripted"] == 2 and stats["batches"]["create_script_remaining"] == 0
    assert stats["batches"]["created"] == 1


def _results(emu: Emulator, name: str) -> dict:
    deadline = time.monotonic() + 30
    while (info := emu.batches.get_batch(name)).state not in ("JOB_STATE_SUCCEEDED", "BATCH_STATE_SUCCEEDED"):
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    lines: list[bytes] = []
    splitter = LineSplitter(lines.append)
    emu.batches.stream_file(info.output_file, splitter)
    splitter.close()
    return {r.key: r for r in map(parse_result_line, lines)}
