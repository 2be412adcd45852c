"""GeminiImageGenerator through the real google-genai SDK against our Gemini API emulator."""
from __future__ import annotations

import io
import os

import pytest
import requests
from google import genai
from google.genai import types
from PIL import Image

from adapters.gemini_generator import GeminiImageGenerator
from core.errors import ContentRefused, MalformedResponse, PermissionDenied, QuotaExceeded, TransientError
from core.jsonl import image_facts

MODEL = "gemini-2.5-flash-image"


@pytest.fixture
def gemini(emulators):
    base = os.environ["GOOGLE_GEMINI_BASE_URL"].rstrip("/")
    requests.post(f"{base}/_emulator/reset", timeout=10).raise_for_status()

    def configure(patch: dict) -> None:
        requests.post(f"{base}/_emulator/config", json=patch, timeout=10).raise_for_status()

    configure({"image_scale": 0.25})
    # Built like wiring.image_generator(): base URL and key from the environment.
    client = genai.Client(http_options=types.HttpOptions(timeout=3000))
    generator = GeminiImageGenerator(client, MODEL)
    generator.configure = configure
    generator.stats = lambda: requests.get(f"{base}/_emulator/stats", timeout=10).json()
    yield generator
    requests.post(f"{base}/_emulator/reset", timeout=10)


def test_generates_a_png_of_the_requested_shape(gemini):
    image = gemini.generate("a lighthouse at dusk", "16:9", None)
    assert image.mime_type == "image/png" and image.finish_reason == "STOP"
    assert image.output_tokens == 1290
    png = Image.open(io.BytesIO(image.data))
    assert png.format == "PNG"
    assert png.size[0] > png.size[1]  # 16:9 is landscape (scaled by image_scale)


def test_quota_429_carries_quota_id_and_retry_delay(gemini):
    gemini.configure({"window_seconds": 30, "quotas": {"default": {"rpm": 1}}})
    gemini.generate("first", "1:1", None)
    with pytest.raises(QuotaExceeded) as e:
        gemini.generate("second", "1:1", None)
    assert e.value.quota_id == "GenerateRequestsPerMinutePerProjectPerModel"
    assert 0 < e.value.retry_delay <= 30
    assert not e.value.per_day


def test_daily_quota_is_recognised(gemini):
    gemini.configure({"quotas": {"default": {"rpd": 1}}})
    gemini.generate("first", "1:1", None)
    with pytest.raises(QuotaExceeded) as e:
        gemini.generate("second", "1:1", None)
    assert e.value.per_day


@pytest.mark.parametrize("outcome,error", [
    ("500", TransientError), ("503", TransientError), ("403", PermissionDenied),
    ("blocked", ContentRefused), ("image_safety", ContentRefused), ("no_image", ContentRefused),
])
def test_faults_become_domain_errors(gemini, outcome, error):
    gemini.configure({"faults": {"script": [outcome]}})
    with pytest.raises(error) as e:
        gemini.generate("anything", "1:1", None)
    if outcome == "image_safety":
        assert "IMAGE_SAFETY" in e.value.reason
    if outcome == "blocked":
        assert "blocked" in e.value.reason


def test_a_hang_becomes_a_transient_timeout(gemini):
    gemini.configure({"faults": {"script": ["hang"], "hang_seconds": 10}})
    with pytest.raises(TransientError, match="transport"):
        gemini.generate("slow", "1:1", None)


def test_invalid_base64_in_a_200_is_a_malformed_response_not_a_crash(gemini):
    """The SDK's pydantic model refuses the answer (ValidationError): the adapter turns it into
    a retryable domain error the worker counts as an attempt."""
    gemini.configure({"faults": {"script": ["bad_base64"]}})
    with pytest.raises(MalformedResponse, match="could not be read") as e:
        gemini.generate("anything", "1:1", None)
    assert e.value.retryable
    assert gemini.stats()["by_outcome"]["bad_base64"] == 1


def test_a_truncated_png_parses_but_fails_the_image_check(gemini):
    gemini.configure({"faults": {"script": ["truncated_image"]}})
    image = gemini.generate("anything", "1:1", None)
    assert image.mime_type == "image/png"  # still declared a PNG
    with pytest.raises(MalformedResponse, match="truncated PNG"):
        image_facts(image.data)


def test_a_jpeg_answer_is_read_as_a_jpeg_whatever_it_declares(gemini):
    gemini.configure({"image_format": "jpeg"})
    image = gemini.generate("a lighthouse at dusk", "16:9", None)
    facts = image_facts(image.data)
    assert image.mime_type == "image/jpeg" and facts["format"] == "jpeg"
    assert facts["width"] > facts["height"]
    assert Image.open(io.BytesIO(image.data)).size == (facts["width"], facts["height"])


def test_each_call_names_its_model_and_a_removed_one_is_model_unavailable(gemini):
    from core.errors import ModelUnavailable

    image = gemini.generate("a heron", "1:1", "2K", model="gemini-3-pro-image")
    assert image.model_version == "gemini-3-pro-image" and image.output_tokens == 1120
    gemini.configure({"removed_models": ["gemini-3-pro-image"]})
    with pytest.raises(ModelUnavailable, match="models/gemini-3-pro-image is not found"):
        gemini.generate("a heron", "1:1", "2K", model="gemini-3-pro-image")
    assert gemini.generate("still here", "1:1", None).model_version == MODEL  # the instance's default
