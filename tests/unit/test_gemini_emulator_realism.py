"""The emulator's pure parts that make it answer like today's API."""
import pytest

from infra.gemini_emulator import content, errors
from infra.gemini_emulator.config import ConfigError, initial_config
from infra.gemini_emulator.faults import FAULT_OUTCOMES

MODEL = "gemini-2.5-flash-image"


@pytest.mark.parametrize("seconds,text", [(46.2, "47s"), (47.0, "47s"), (0.0, "0s"), (0.001, "1s")])
def test_retry_delay_is_whole_seconds_rounded_up(seconds, text):
    assert errors.retry_info(seconds)["retryDelay"] == text


def test_unknown_fields_are_named_with_their_snake_case_path():
    with pytest.raises(errors.ApiError) as caught:
        content.parse_request(MODEL, {"contents": [{"parts": [{"text": "x"}]}],
                                      "generation_config": {"imageConfig": {"aspect_ratio": "1:1", "Colour": 1}}})
    assert caught.value.code == 400
    assert caught.value.message == ("Invalid JSON payload received. Unknown name \"Colour\" at "
                                    "'generation_config.image_config': Cannot find field.")


def test_known_fields_in_either_casing_pass():
    req = content.parse_request(MODEL, {
        "contents": [{"parts": [{"text": "x"}]}], "systemInstruction": {"parts": [{"text": "s"}]},
        "safety_settings": [], "generationConfig": {"temperature": 1, "thinkingConfig": {"include_thoughts": True},
                                                    "response_modalities": ["image"],
                                                    "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}})
    assert req.want_image and not req.want_text and req.aspect_ratio == "16:9"


def test_no_image_has_no_parts_and_thought_images_come_first():
    req = content.parse_request(MODEL, {"contents": [{"parts": [{"text": "x"}]}]})
    assert "parts" not in content.no_image_response(req)["candidates"][0]["content"]
    body = content.thought_image_response(req, b"final", b"draft")
    parts = body["candidates"][0]["content"]["parts"]
    assert [p.get("thought", False) for p in parts] == [True, True, False, False]


def test_new_outcomes_are_appended_so_seeded_runs_replay():
    assert FAULT_OUTCOMES[:8] == ("429", "500", "503", "403", "hang", "blocked", "image_safety", "no_image")
    assert {"429_multi", "429_help_only", "thought_image"} <= set(FAULT_OUTCOMES)


def test_new_config_keys_keep_todays_behaviour_by_default_and_are_validated():
    cfg = initial_config()
    assert cfg["files"]["reject_finalize"] == 0 and cfg["files"]["max_total_bytes"] == 21474836480
    assert cfg["batch"]["max_enqueued_requests"] is None and cfg["batch"]["max_enqueued_tokens"] is None
    for bad in ({"files": {"reject_finalize": -1}}, {"files": {"reject_finalize_message": ""}},
                {"batch": {"max_enqueued_tokens": "many"}}):
        with pytest.raises(ConfigError):
            initial_config(bad)
