"""Running a batch's lines: parse each request, pick its outcome, render, and write the results.

Runs on a worker thread, never on the event loop. Memory stays flat whatever the batch size:
the input is re-read line by line from byte offsets recorded at create time, each result line
goes to disk as soon as it is built, and only a few megabytes of unpadded PNGs are cached (for
repeated prompts). Outcomes follow the fault config like generateContent, minus what only makes
sense interactively: no quotas, no latency, no ``script`` (it belongs to interactive requests).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from infra.gemini_emulator import content, errors, images
from infra.gemini_emulator.faults import OK, SPOILED_IMAGE_OUTCOMES, choose_outcome

PNG_CACHE_BYTES = 32 * 1024**2

# A failed line carries {code, message, status} only: the SDK's JobError.details is list[str],
# so google.rpc detail objects would crash batches.get. A ``hang`` has nobody to time out here.
_ERROR_OUTCOMES: dict[str, Callable[[], errors.ApiError]] = {
    "429": lambda: errors.transient_exhausted(0.0),
    "500": errors.internal,
    "503": errors.overloaded,
    "403": errors.permission_denied,
    "hang": errors.deadline_exceeded,
    "429_multi": lambda: errors.transient_exhausted(0.0),
    "429_help_only": lambda: errors.transient_exhausted(0.0),
}
_REFUSALS = content.REFUSALS


class InputError(ValueError):
    """The input file cannot be read as batch input at all (create answers 400)."""


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs, copied from the config when the batch was created."""

    model: str
    faults: dict[str, Any]
    image_scale: float
    image_target_bytes: int | None
    seed: int
    shuffle: bool
    repeat_rules: tuple[tuple[str, str], ...] = ()  # (substring of the key, "duplicate" | "error")


@dataclass(frozen=True)
class LineResult:
    body: dict[str, Any]  # {"response": ...} or {"error": ...}
    outcome: str  # "ok", a fault outcome, or "400" for an invalid request
    image: bool
    prompt: str | None = None  # the request's prompt, when it returned an image

    @property
    def ok(self) -> bool:
        return "response" in self.body


def scan_input(path: Path) -> array:
    """Byte offsets of the request lines of a JSONL input; blank lines are skipped.

    A line that is not a JSON object with a ``key`` makes the whole file unreadable: without a
    key there is no way to report that line's error. A line with a key but a bad ``request``
    is fine here and becomes an error line in the results.
    """
    offsets = array("q")
    offset = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as exc:  # also UnicodeDecodeError
                    raise InputError(f"Invalid JSON in batch input line {number}: {exc}") from None
                if not isinstance(obj, dict) or obj.get("key") is None:
                    raise InputError(f'Batch input line {number} must be a JSON object with a "key" and a "request".')
                offsets.append(offset)
            offset += len(line)
    return offsets


class _PngCache:
    """Unpadded PNGs by (prompt, aspect ratio, size), least recently used out first."""

    def __init__(self, max_bytes: int = PNG_CACHE_BYTES) -> None:
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, key: tuple[str, str, str], make: Callable[[], bytes]) -> bytes:
        png = self._items.get(key)
        if png is not None:
            self._items.move_to_end(key)
            return png
        png = make()
        self._items[key] = png
        self._bytes += len(png)
        while self._bytes > self._max and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)
        return png


class LineRunner:
    """Turns one request into its result; holds the batch's RNG and PNG cache."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self._faults = {**spec.faults, "script": []}
        self._pngs = _PngCache()

    def run(self, raw_request: Any) -> LineResult:
        if raw_request is None:
            return _error_line(errors.invalid_argument("* BatchRequest.request: required field is missing"), "400")
        try:
            req = content.parse_request(self.spec.model, raw_request)
        except errors.ApiError as exc:
            return _error_line(exc, str(exc.code))
        outcome, _ = choose_outcome(prompt=req.prompt, model=req.model, faults=self._faults, script_pos=0, rng=self.rng)
        if outcome in _ERROR_OUTCOMES:
            return _error_line(_ERROR_OUTCOMES[outcome](), outcome)
        if outcome in _REFUSALS:
            return LineResult({"response": _REFUSALS[outcome](req)}, outcome, image=False)
        assert outcome in (OK, "thought_image", *SPOILED_IMAGE_OUTCOMES), outcome
        png = self._render(req) if req.want_image else None
        if outcome == "thought_image" and png is not None:
            body = content.thought_image_response(req, png, images.draft_png(req.prompt))
            return LineResult({"response": body}, outcome, image=True, prompt=req.prompt)
        response = content.success_response(req, png)
        if outcome in SPOILED_IMAGE_OUTCOMES:  # a line whose image is not base64, or cut in half
            return LineResult({"response": content.spoil_image(response, outcome)}, outcome, image=False,
                              prompt=req.prompt)
        return LineResult({"response": response}, outcome, image=png is not None, prompt=req.prompt)

    def _render(self, req: content.GenerateRequest) -> bytes:
        png = self._pngs.get(
            (req.prompt, req.aspect_ratio, req.image_size),
            lambda: images.render_for_request(req.model, req.prompt, req.aspect_ratio, req.image_size, self.spec.image_scale),
        )
        # Padded per line (fresh random bytes), so every line is full size and distinct.
        return images.pad_png(png, self.spec.image_target_bytes)


def _error_line(exc: errors.ApiError, outcome: str) -> LineResult:
    return LineResult({"error": {"code": exc.code, "message": exc.message, "status": exc.status}}, outcome, image=False)


def _repeats(spec: RunSpec, key: str, data: bytes) -> bytes:
    """The extra lines a repeat_key_rules fault adds after a key's result: the same line again, or
    an error line for the same key (a results file that names a key twice)."""
    extra = b""
    for contains, then in spec.repeat_rules:
        if contains in key:
            if then == "duplicate":
                extra += data
            else:
                extra += _dumps({**_error_line(errors.internal(), "500").body, "key": key})
    return extra


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"


def processing_order(count: int, spec: RunSpec, rng: random.Random) -> list[int]:
    order = list(range(count))
    if spec.shuffle:
        rng.shuffle(order)  # the API promises no order; consumers must match lines by key
    return order


def write_results_file(
    spec: RunSpec,
    input_path: Path,
    offsets: array,
    out_path: Path,
    cancel: threading.Event,
    progress: Callable[[LineResult], None],
) -> tuple[int, str] | None:
    """Write one ``{"response"|"error", "key"}`` line per input line to ``out_path``.

    Returns ``(size, sha256 hex)``, or None (and no file) if ``cancel`` was set meanwhile.
    """
    runner = LineRunner(spec)
    hasher = hashlib.sha256()
    size = 0
    try:
        with input_path.open("rb") as source, out_path.open("wb") as out:
            for index in processing_order(len(offsets), spec, runner.rng):
                if cancel.is_set():
                    break
                source.seek(offsets[index])
                line = json.loads(source.readline())
                result = runner.run(line.get("request"))
                # Same field order as the real files: the result first, then the key.
                data = _dumps({**result.body, "key": line["key"]})
                data += _repeats(spec, str(line["key"]), data)
                out.write(data)
                hasher.update(data)
                size += len(data)
                progress(result)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    if cancel.is_set():
        out_path.unlink(missing_ok=True)
        return None
    return size, hasher.hexdigest()


def inline_results(
    spec: RunSpec,
    requests: list[tuple[dict[str, str] | None, Any]],
    cancel: threading.Event,
    progress: Callable[[LineResult], None],
) -> list[dict[str, Any]] | None:
    """``inlinedResponses`` items, in input order (the SDK user zips them with the inputs)."""
    runner = LineRunner(spec)
    results: list[dict[str, Any]] = []
    for metadata, raw_request in requests:
        if cancel.is_set():
            return None
        result = runner.run(raw_request)
        item = dict(result.body)
        if metadata is not None:
            item["metadata"] = metadata
        results.append(item)
        progress(result)
    return results
