"""Thinking image models send interim `thought: true` images before the final one: the stored
image must be the final one, in both lanes (SDK response and batch result line)."""
import base64
import io
import json

import pytest
from google.genai import types
from PIL import Image

from adapters.gemini_generator import parse_image_response
from core.errors import ContentRefused
from core.jsonl import image_from_response


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


DRAFT, FINAL = png((1, 2, 3)), png((200, 100, 50))


def response_json(parts) -> dict:
    return {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"candidatesTokenCount": 1290}}


def image_part(data: bytes, thought: bool = False) -> dict:
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(data).decode()}}
    if thought:
        part["thought"] = True
    return part


THOUGHTFUL = [{"text": "planning the layout", "thought": True}, image_part(DRAFT, thought=True),
              image_part(DRAFT, thought=True), {"text": "Here it is."}, image_part(FINAL)]


def test_batch_line_skips_thought_images_and_thought_text():
    image = image_from_response(response_json(THOUGHTFUL))
    assert image.data == FINAL
    assert image.text == "Here it is."


def test_sdk_response_skips_thought_images_and_thought_text():
    response = types.GenerateContentResponse.model_validate(response_json(THOUGHTFUL))
    image = parse_image_response(response)
    assert image.data == FINAL
    assert image.text == "Here it is."


@pytest.mark.parametrize("parse", [
    lambda body: image_from_response(body),
    lambda body: parse_image_response(types.GenerateContentResponse.model_validate(body)),
])
def test_only_thought_images_is_no_image(parse):
    with pytest.raises(ContentRefused, match="no image"):
        parse(response_json([image_part(DRAFT, thought=True)]))


def test_a_part_that_is_not_an_object_is_skipped():
    body = json.loads(json.dumps(response_json(["junk", image_part(FINAL)])))
    assert image_from_response(body).data == FINAL


@pytest.mark.parametrize("body,reason", [
    ({"candidates": [{"finishReason": "IMAGE_PROHIBITED_CONTENT", "index": 0}]}, "IMAGE_PROHIBITED_CONTENT"),
    ({"candidates": [{"finishReason": "IMAGE_OTHER", "index": 0}]}, "IMAGE_OTHER"),
    ({"candidates": [{"content": {"role": "model"}, "finishReason": "NO_IMAGE", "index": 0}]}, "NO_IMAGE"),
    ({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, "PROHIBITED_CONTENT"),
    ({"promptFeedback": {"blockReason": "OTHER"}}, "OTHER"),
])
def test_refusals_are_content_refused_in_both_lanes(body, reason):
    """A refusal is not retried (ContentRefused is not retryable): the same prompt is refused again."""
    with pytest.raises(ContentRefused, match=reason) as caught:
        image_from_response(body)
    assert not caught.value.retryable
    with pytest.raises(ContentRefused, match=reason):
        parse_image_response(types.GenerateContentResponse.model_validate(body))
