"""The Batch API's JSONL: request lines we write, result lines we read. Pure JSON, no SDK.

A results file can be gigabytes, so nothing here holds more than one line: LineSplitter turns
a stream of byte chunks into lines, and parse_result_line reads one line into a domain outcome.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass

import pybase64

from core import images
from core.errors import (
    ContentRefused, GenerationError, InvalidRequest, MalformedResponse, QuotaExceeded, TransientError,
)
from core.models import GeneratedImage

# Error codes in a result line that a new batch may cure.
RETRYABLE_CODES = frozenset({408, 429, 500, 502, 503, 504})


def request_line(key: str, prompt: str, aspect_ratio: str, image_size: str | None) -> bytes:
    image_config = {"aspectRatio": aspect_ratio}
    if image_size:
        image_config["imageSize"] = image_size
    line = {
        "key": key,
        "request": {
            "contents": [{"parts": [{"text": prompt}], "role": "user"}],
            "generation_config": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config},
        },
    }
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class EncodedImage:
    """An image answer whose base64 data is not decoded yet: decoding a 1 MB image costs more
    than finding it in its line, and it can run on an upload worker instead of the reader."""

    data: bytes | str  # base64 as the line carries it, standard or URL-safe
    mime_type: str
    finish_reason: str
    model_version: str | None = None
    text: str | None = None
    output_tokens: int | None = None

    def decode(self) -> GeneratedImage:
        data = self.data
        try:
            if isinstance(data, str):
                raw = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
            else:
                raw = _b64decode(data.translate(_URLSAFE) if b"-" in data or b"_" in data else data)
        except (binascii.Error, ValueError) as e:
            # A 200 the model spoiled: another attempt usually answers well (retryable).
            raise MalformedResponse(f"the model returned image data that is not base64: {e}") from None
        return GeneratedImage(data=raw, mime_type=self.mime_type, finish_reason=self.finish_reason,
                              model_version=self.model_version, text=self.text, output_tokens=self.output_tokens)


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64decode(data: bytes) -> bytes:
    """binascii.a2b_base64(data, strict_mode=True), some fifty times faster for well-formed data.

    pybase64's SIMD decoder (validate=True) takes about 0.1 ms per MB where binascii takes 4 to
    5, holding the GIL that the reading thread and the uploads need. It accepts a subset of what
    the strict decoder accepts, decoded to the same bytes (it also refuses surplus padding, such
    as "QUJH=="), so what it refuses is decided by the strict decoder itself: the answers are the
    strict decoder's. (tests/unit/test_jsonl_scan.py compares the two on mutated input.)"""
    try:
        return pybase64.b64decode(data, validate=True)
    except binascii.Error:
        return binascii.a2b_base64(data, strict_mode=True)


@dataclass(frozen=True)
class ResultLine:
    key: str | None
    image: GeneratedImage | None = None
    error: GenerationError | None = None
    encoded: EncodedImage | None = None  # an image still to decode (scan_result_line)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.encoded is not None

    def decoded(self) -> ResultLine:
        """This line with its image decoded, or with the reason it cannot be."""
        if self.encoded is None:
            return self
        try:
            return ResultLine(key=self.key, image=self.encoded.decode())
        except GenerationError as e:
            return ResultLine(key=self.key, error=e)


def _get(d: dict, camel: str, snake: str, default=None):
    return d.get(camel, d.get(snake, default))


def parse_result_line(line: bytes) -> ResultLine:
    """One line of a results file: {"key", "response"} or {"key", "error"}."""
    return scan_result_line(line).decoded()


def scan_result_line(line: bytes) -> ResultLine:
    """A result line's key and outcome, its image left encoded (ResultLine.decoded decodes it).

    An image line is about 1.3 MB of which all but a few hundred bytes are one base64 string.
    When the line holds exactly one "data" member whose value is a plain string (base64 needs
    no JSON escapes), that value is cut out and the rest, a few hundred bytes, goes through the
    JSON parser with a marker in its place; anything else (thought images, several images,
    escapes, an unreadable line) is parsed whole. Both give the same answer."""
    span = _data_span(line)
    if span is not None:
        start, end = span
        try:
            obj = json.loads(line[:start] + _MARK + line[end:])
        except ValueError:
            pass  # the full parser gives the error message
        else:
            return _result(obj, line[start:end])
    try:
        obj = json.loads(line)
    except ValueError as e:
        return ResultLine(key=None, error=InvalidRequest(f"unreadable result line: {e}"))
    return _result(obj, None)


# Stands for the cut-out base64 in the small document that is parsed; "\u0000" parses to a
# string no base64 can equal.
_MARK = b"\\u0000"
_MARK_VALUE = "\u0000"
_DATA = b'"data"'


def _data_span(line: bytes) -> tuple[int, int] | None:
    """Where the one "data" string's value lies in the line, or None to parse the line whole."""
    at = line.find(_DATA)
    if at < 0:
        return None
    pos = _skip_space(line, at + len(_DATA))
    if line[pos:pos + 1] != b":":
        return None
    pos = _skip_space(line, pos + 1)
    if line[pos:pos + 1] != b'"':
        return None
    start = pos + 1
    end = line.find(b'"', start)
    # Base64 holds no quote, so a second "data" can only follow the value's end.
    if end <= start or line.find(b"\\", start, end) >= 0 or line.find(_DATA, end) >= 0:
        return None
    return start, end


def _skip_space(line: bytes, pos: int) -> int:
    while line[pos:pos + 1] in (b" ", b"\t", b"\r", b"\n"):
        pos += 1
    return pos


def _result(obj: object, span: bytes | None) -> ResultLine:
    if not isinstance(obj, dict):
        return ResultLine(key=None, error=InvalidRequest("result line is not an object"))
    key = obj.get("key")
    if key is None and isinstance(obj.get("metadata"), dict):
        key = obj["metadata"].get("key")
    if "error" in obj:
        return ResultLine(key=key, error=error_from_status(obj["error"] or {}))
    response = obj.get("response")
    if not isinstance(response, dict):
        return ResultLine(key=key, error=InvalidRequest("result line has neither response nor error"))
    try:
        return ResultLine(key=key, encoded=encoded_image(response, span))
    except GenerationError as e:
        return ResultLine(key=key, error=e)


def error_from_status(status: dict) -> GenerationError:
    code = int(status.get("code") or 0)
    message = f"{code} {status.get('status', '')}: {status.get('message', '')}".strip()
    if code == 429:
        return QuotaExceeded(message, retry_delay=None, quota_id=None)
    if code in RETRYABLE_CODES:
        return TransientError(message)
    return InvalidRequest(message)


def image_from_response(response: dict) -> GeneratedImage:
    """A GenerateContentResponse (camelCase JSON) to an image, or the reason there is none."""
    return encoded_image(response, None).decode()


def encoded_image(response: dict, span: bytes | None) -> EncodedImage:
    """The response's image, still encoded, or the reason there is none. `span` is the base64
    that scan_result_line cut out of the line, where the response holds its marker."""
    candidates = response.get("candidates") or []
    if not candidates:
        feedback = _get(response, "promptFeedback", "prompt_feedback", {}) or {}
        reason = _get(feedback, "blockReason", "block_reason", "no candidates")
        raise ContentRefused(f"prompt blocked: {reason}")
    candidate = candidates[0]
    finish = _get(candidate, "finishReason", "finish_reason", "STOP")
    texts, inline = [], None
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, dict) or part.get("thought") is True:
            # Thinking image models send up to two interim images as `thought: true` parts
            # before the final one (https://ai.google.dev/gemini-api/docs/image-generation,
            # "Thinking process"): only a part that is not a thought is the answer.
            continue
        data = _get(part, "inlineData", "inline_data")
        if data and data.get("data") and inline is None:
            inline = data
        elif part.get("text"):
            texts.append(part["text"])
    if inline is None:
        raise ContentRefused(f"no image returned: finishReason {finish}")
    encoded = inline["data"]
    if span is not None and encoded == _MARK_VALUE:
        encoded = span
    elif not isinstance(encoded, str):
        # What the full decode said of a value that is not a string.
        raise MalformedResponse(f"the model returned image data that is not base64: {type(encoded).__name__}")
    usage = _get(response, "usageMetadata", "usage_metadata", {}) or {}
    tokens = _get(usage, "candidatesTokenCount", "candidates_token_count")
    return EncodedImage(
        data=encoded,
        mime_type=_get(inline, "mimeType", "mime_type", "image/png"),
        finish_reason=finish,
        model_version=_get(response, "modelVersion", "model_version"),
        text=" ".join(texts) or None,
        output_tokens=int(tokens) if tokens is not None else None,
    )


class LineSplitter:
    """A writable sink for streamed bytes that calls on_line once per complete line.

    Memory is bounded by the longest line, never by the stream. Pass it as the destination of
    a streaming download; call close() at the end for a last line without a newline."""

    def __init__(self, on_line: Callable[[bytes], None], offset: int = 0) -> None:
        self.on_line = on_line
        self._partial = bytearray()
        self.bytes_seen = 0
        # The stream offset (counted from `offset`, where the stream starts) just past the line
        # being handed to on_line: where a resumed download continues after it.
        self.line_end = offset

    def write(self, chunk: bytes) -> int:
        base = self.line_end + len(self._partial)
        self.bytes_seen += len(chunk)
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._partial += chunk[start:]
                return len(chunk)
            if self._partial:
                self._partial += chunk[start:end]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = bytes(chunk[start:end])
            self.line_end = base + end + 1
            if line.strip():
                self.on_line(line)
            start = end + 1

    def close(self) -> None:
        if self._partial.strip():
            line = bytes(self._partial)
            self.line_end += len(self._partial)
            self._partial.clear()
            self.on_line(line)


def image_facts(data: bytes) -> dict:
    """sha256, size, format, width and height of a complete PNG, JPEG or WebP, read from the
    bytes (not the declared MIME type). A truncated or corrupt image is a MalformedResponse: the
    call was billed, but what came back cannot be stored as a success."""
    try:
        return images.inspect(data).fields()
    except images.BadImage as e:
        raise MalformedResponse(str(e)) from None


def stored_metadata(facts: dict) -> dict[str, str]:
    """The facts as the object's custom metadata (strings), so a later attempt that finds the
    object reads them without downloading it."""
    return {k: str(facts[k]) for k in ("sha256", "format", "width", "height")}
