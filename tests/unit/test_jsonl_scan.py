"""The result-line scanner: the base64 cut out of the line gives the same answer as parsing it whole."""
import base64
import json

import pytest

from core import jsonl
from core.jsonl import parse_result_line, scan_result_line
from tests.fakes import png_response

PNG = base64.b64decode(png_response("x")["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"])
B64 = base64.b64encode(PNG).decode()


def whole(line: bytes):
    """What the full JSON parser says of the line (the scanner's fallback)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return jsonl._result(obj, None).decoded()


def parts_line(*parts, key="k", **json_args) -> bytes:
    body = {"response": {"candidates": [{"content": {"parts": list(parts), "role": "model"}, "finishReason": "STOP"}],
                         "usageMetadata": {"candidatesTokenCount": 1290}, "modelVersion": "m1"}, "key": key}
    return json.dumps(body, **json_args).encode()


def image_part(data=B64, **extra):
    return {"inlineData": {"mimeType": "image/png", "data": data}, **extra}


LINES = {
    "compact, key last": parts_line({"text": "here"}, image_part(), separators=(",", ":")),
    "spaced": parts_line({"text": "here"}, image_part()),
    "snake case": parts_line({"inline_data": {"mime_type": "image/png", "data": B64}}),
    "url-safe base64": parts_line(image_part(base64.urlsafe_b64encode(PNG).decode())),
    "thought image first": parts_line(image_part(base64.b64encode(b"thought").decode(), thought=True), image_part()),
    "two images": parts_line(image_part(), image_part(base64.b64encode(b"second").decode())),
    # JSON may escape "/" as "\\/": such a value is left to the full parser.
    "escaped slash": parts_line(image_part(base64.b64encode(PNG + b"\xff\xff\xff").decode())).replace(b"/", b"\\/"),
    "not base64": parts_line(image_part("!!not base64%%")),
    "empty data": parts_line(image_part(""), {"text": "no image"}),
    "data not a string": parts_line({"inlineData": {"mimeType": "image/png", "data": 12}}),
    "text says data": parts_line({"text": 'the "data": "x" of it'}, image_part()),
    "a data member elsewhere": parts_line({"text": "t", "data": "x"}),
    "marker text in a text part": parts_line({"text": "\u0000"}, image_part()),
    "blocked": json.dumps({"key": "k", "response": {"promptFeedback": {"blockReason": "SAFETY"}}}).encode(),
    "error line": json.dumps({"key": "k", "error": {"code": 503, "status": "UNAVAILABLE", "data": "x"}}).encode(),
    "key in metadata": json.dumps({"metadata": {"key": "m"}, **png_response("x")}).encode(),
    "broken after the data": parts_line(image_part())[:-3],
}


@pytest.mark.parametrize("name", sorted(LINES))
def test_the_scanner_answers_as_the_full_parser(name):
    line = LINES[name]
    expected, got = whole(line), parse_result_line(line)
    if expected is None:  # unreadable: the full parser's own message
        assert got.key is None and "unreadable result line" in got.error.reason
        return
    assert got.key == expected.key
    assert got.image == expected.image
    assert type(got.error) is type(expected.error)
    assert getattr(got.error, "reason", None) == getattr(expected.error, "reason", None)


def test_the_common_image_line_is_cut_not_parsed_whole():
    line = LINES["compact, key last"]
    start, end = jsonl._data_span(line)
    assert line[start:end] == B64.encode()
    result = scan_result_line(line)
    assert result.key == "k" and result.image is None and result.encoded.data == B64.encode()
    assert result.decoded().image.data == PNG and result.decoded().image.text == "here"


@pytest.mark.parametrize("name", ["thought image first", "two images", "escaped slash", "empty data"])
def test_unusual_lines_are_parsed_whole(name):
    assert jsonl._data_span(LINES[name]) is None


def test_a_thought_image_is_never_the_answer():
    assert parse_result_line(LINES["thought image first"]).image.data == PNG


def test_a_spoiled_image_is_found_at_decode_not_at_scan():
    result = scan_result_line(LINES["not base64"])
    assert result.has_image and result.error is None
    decoded = result.decoded()
    assert not decoded.has_image and "not base64" in decoded.error.reason and decoded.error.retryable


def test_the_fast_base64_decode_answers_as_the_strict_one():
    import binascii
    import random

    def outcome(decode, data):
        try:
            return decode(data)
        except binascii.Error:
            return "error"

    rng = random.Random(7)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    odd = b"=\n !-_.\x00\xff\"\\" * 3
    for n in range(20_000):
        # Short inputs, and longer ones for the SIMD decoder's wide loops (it works in blocks).
        size = rng.randint(0, 9) if n % 2 else rng.randint(10, 3000)
        data = bytearray(base64.b64encode(rng.randbytes(size)))
        for _ in range(rng.randint(0, 3)):  # insert, replace or delete a character
            at, char, op = rng.randint(0, len(data)), rng.choice(alphabet + odd), rng.random()
            if rng.random() < 0.3:
                at = max(0, len(data) - rng.randint(0, 6))  # about the padding, where the rules are
            if op < 0.4:
                data.insert(at, char)
            elif data and op < 0.7:
                data[min(at, len(data) - 1)] = char
            elif data:
                del data[min(at, len(data) - 1)]
        data = bytes(data)
        assert outcome(jsonl._b64decode, data) == outcome(lambda d: binascii.a2b_base64(d, strict_mode=True), data), data
