"""Request lines, result lines, the line splitter and PNG facts."""
import base64
import hashlib
import json

import pytest

from core.errors import ContentRefused, InvalidRequest, QuotaExceeded, TransientError
from core.errors import MalformedResponse
from core.jsonl import LineSplitter, image_facts, parse_result_line, request_line
from tests.fakes import png_response


def test_request_line_is_one_compact_json_line():
    line = request_line("k1", "a cat", "3:2", "2K")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    body = json.loads(line)
    assert body["key"] == "k1"
    assert body["request"]["generation_config"]["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "2K"}


def test_a_response_line_becomes_an_image():
    line = json.dumps({"key": "k1", **png_response("x")}).encode()
    result = parse_result_line(line)
    assert result.key == "k1" and result.error is None
    assert result.image.data.startswith(b"\x89PNG") and result.image.output_tokens == 1290
    assert result.image.finish_reason == "STOP" and result.image.text == "image of x"


def test_urlsafe_base64_and_snake_case_are_read_too():
    png = base64.b64decode(png_response("x")["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"])
    line = {"key": "k", "response": {"candidates": [{"content": {"parts": [
        {"inline_data": {"mime_type": "image/png", "data": base64.urlsafe_b64encode(png).decode()}}]},
        "finish_reason": "STOP"}]}}
    assert parse_result_line(json.dumps(line).encode()).image.data == png


@pytest.mark.parametrize("line,error,retryable", [
    ({"key": "k", "error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, QuotaExceeded, True),
    ({"key": "k", "error": {"code": 503, "status": "UNAVAILABLE"}}, TransientError, True),
    ({"key": "k", "error": {"code": 400, "status": "INVALID_ARGUMENT"}}, InvalidRequest, False),
    ({"key": "k", "response": {"promptFeedback": {"blockReason": "SAFETY"}}}, ContentRefused, False),
    ({"key": "k", "response": {"candidates": [{"finishReason": "IMAGE_SAFETY"}]}}, ContentRefused, False),
    ({"key": "k", "response": {"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": "NO_IMAGE"}]}}, ContentRefused, False),
    ({"key": "k"}, InvalidRequest, False),
    ({"key": "k", "response": {"candidates": [{"content": {"parts": [{"inlineData": {"data": "!!not base64"}}]}}]}},
     MalformedResponse, True),
])
def test_error_lines_are_classified(line, error, retryable):
    result = parse_result_line(json.dumps(line).encode())
    assert result.key == "k" and isinstance(result.error, error) and result.error.retryable is retryable


def test_garbage_lines_do_not_raise():
    assert parse_result_line(b"{not json").key is None
    assert parse_result_line(b"[1, 2]").error is not None


def test_the_splitter_yields_whole_lines_whatever_the_chunking():
    data = b'{"a": 1}\n{"b": 2}\n\n{"c": 3}'
    for size in (1, 2, 3, 7, 100):
        lines = []
        splitter = LineSplitter(lines.append)
        for i in range(0, len(data), size):
            splitter.write(data[i : i + size])
        splitter.close()
        assert lines == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']


def test_image_facts_read_format_size_and_hash():
    png = base64.b64decode(png_response("x")["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"])
    facts = image_facts(png)
    assert (facts["format"], facts["width"], facts["height"]) == ("png", 4, 3)
    assert facts["bytes"] == len(png) and facts["sha256"] == hashlib.sha256(png).hexdigest()
    with pytest.raises(MalformedResponse, match="not a PNG, JPEG or WebP"):
        image_facts(b"not a png")
    with pytest.raises(MalformedResponse, match="truncated PNG"):
        image_facts(png[: len(png) // 2])
