"""One command against the real Gemini API, through the project's own adapters.

    make smoke-live                       # two images through GeminiImageGenerator
    SMOKE_BATCH=1 make smoke-live         # ...and a two-line batch through GeminiBatchApi
    SMOKE_RECORD=1 make smoke-live        # ...and save the raw answers under tests/fixtures/recorded/

It uses GEMINI_API_KEY (and GOOGLE_GEMINI_BASE_URL, if set, as the functions do), checks every
answer with the parsing code the functions use, and prints what it cost at the configured prices
(PRICE_INTERACTIVE_IMAGE_USD, PRICE_BATCH_IMAGE_USD). Without a key it says what it would do and
exits 0. It is never part of `make test`: it spends money. Exit code 1 if a check fails.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

PROMPTS = ("a red bicycle leaning on a blue wall, flat illustration",
           "a lighthouse on a cliff at dusk, watercolour")
RECORD_DIR = ROOT / "tests" / "fixtures" / "recorded"
# Values that identify the caller or the request are replaced (the type is kept, for the shape
# contract); image bytes are cut short. Keys never reach the recordings: only bodies are saved.
_IDENTIFYING = frozenset({"responseId", "name", "displayName", "uri", "downloadUri", "sha256Hash",
                          "fileName", "responsesFile", "key", "consumer", "createTime", "updateTime",
                          "endTime", "expirationTime"})
_DATA_KEEP = 16


def _prices() -> tuple[float, float]:
    """PRICE_*_IMAGE_USD when set, else the model's standard-size price in the catalog."""
    import catalog

    spec = catalog.load(os.environ.get("MODEL_CATALOG_FILE")).spec(_model())
    size = spec.size_for("standard")
    interactive = float(os.environ.get("PRICE_INTERACTIVE_IMAGE_USD", spec.price(size, batch=False)))
    batch = float(os.environ.get("PRICE_BATCH_IMAGE_USD", spec.price(size, batch=True)))
    return interactive, batch


def _model() -> str:
    import catalog

    return os.environ.get("GEMINI_MODEL") or catalog.load(os.environ.get("MODEL_CATALOG_FILE")).default_model


def redact(value, key: str | None = None):
    """A copy of a JSON body safe to commit: identifying strings replaced, image data cut."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key == "data":
            return value[:_DATA_KEEP]
        if key in _IDENTIFYING:
            return "redacted"
        if key in ("message",) and "project" in value:
            return "redacted"
    return value


class Recorder:
    """Keeps the raw JSON answers of the calls worth recording (httpx response hook)."""

    KINDS = ((":generateContent", "POST", "models.generateContent"),
             (":batchGenerateContent", "POST", "batches.create"),
             ("/batches/", "GET", "batches.get"))

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []

    def hook(self, response) -> None:
        request = response.request
        path = request.url.path
        kind = next((k for marker, method, k in self.KINDS if marker in path and request.method == method), None)
        if kind is None and "upload_id=" in str(request.url) and "finalize" in request.headers.get(
                "x-goog-upload-command", ""):
            kind = "files.upload"
        if kind is None:
            return
        response.read()
        try:
            body = response.json()
        except ValueError:
            return
        if response.status_code != 200:
            kind = f"error.{response.status_code}"
        elif kind == "files.upload" and isinstance(body, dict) and "file" in body:
            body = body["file"]
        elif kind == "batches.get" and isinstance(body, dict) and body.get("done"):
            kind = "batches.get.done"
        self.bodies.append((kind, body))

    def add(self, kind: str, body: dict) -> None:
        self.bodies.append((kind, body))

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        written = []
        for n, (kind, body) in enumerate(self.bodies):
            path = directory / f"live-{stamp}-{n:02d}-{kind}.json"
            path.write_text(json.dumps({"kind": kind, "source": f"make smoke-live, {stamp}",
                                        "body": redact(body)}, indent=1) + "\n")
            written.append(path)
        return written


def _client(recorder: Recorder | None):
    from google import genai
    from google.genai import types

    client_args = {"event_hooks": {"response": [recorder.hook]}} if recorder else None
    # As wiring.genai_client(): key and base URL from the environment, no SDK retries.
    return genai.Client(http_options=types.HttpOptions(timeout=120_000, client_args=client_args))


def run_interactive(client, model: str) -> list[str]:
    from adapters.gemini_generator import GeminiImageGenerator
    from core.jsonl import image_facts

    generator, problems = GeminiImageGenerator(client, model), []
    for prompt in PROMPTS:
        image = generator.generate(prompt, "1:1", None)  # parse_image_response checks the answer
        facts = image_facts(image.data)  # the worker's own check: complete, format, size
        print(f"  interactive: {image.mime_type} ({facts['format']} in the bytes) {facts['bytes']} bytes "
              f"{facts['width']}x{facts['height']} "
              f"finishReason {image.finish_reason}, {image.output_tokens} output tokens")
        if not image.data or image.finish_reason != "STOP":
            problems.append(f"interactive image for {prompt!r}: finishReason {image.finish_reason}")
    return problems


def run_batch(client, model: str, recorder: Recorder | None, timeout: float, poll: float) -> list[str]:
    from adapters.gemini_batches import GeminiBatchApi
    from core.batches import TERMINAL_BATCH_STATES, normalise_state
    from core.jsonl import LineSplitter, parse_result_line, request_line

    api = GeminiBatchApi(client, os.environ.get("GEMINI_API_KEY"))
    name = f"imagefleet-smoke-{int(time.time())}"
    data = b"".join(request_line(f"smoke-{n}", p, "1:1", None) for n, p in enumerate(PROMPTS))
    input_file = api.upload_jsonl(data, display_name=name)
    info = api.create_batch(model, input_file, display_name=name)
    print(f"  batch {info.name} created; waiting up to {timeout:.0f}s")
    deadline, state = time.monotonic() + timeout, normalise_state(info.state)
    while state not in TERMINAL_BATCH_STATES:
        if time.monotonic() > deadline:
            api.cancel_batch(info.name)
            return [f"batch {info.name} still {state} after {timeout:.0f}s (cancelled)"]
        time.sleep(poll)  # a real batch takes minutes to hours: look again now and then
        info = api.get_batch(info.name)
        state = normalise_state(info.state)
    api.delete_file(input_file)
    if state != "BATCH_STATE_SUCCEEDED":
        return [f"batch {info.name} ended {state}"]
    lines: list[bytes] = []
    splitter = LineSplitter(lines.append)
    api.stream_file(info.output_file, splitter)
    splitter.close()
    problems = []
    for line in lines:
        result = parse_result_line(line)
        if recorder:
            recorder.add("batch.result_line", json.loads(line))
        if result.image is None:
            problems.append(f"batch line {result.key}: {result.error.reason if result.error else 'no image'}")
        else:
            print(f"  batch: {result.key} {len(result.image.data)} bytes finishReason {result.image.finish_reason}")
    if len(lines) != len(PROMPTS):
        problems.append(f"batch results have {len(lines)} lines, expected {len(PROMPTS)}")
    api.delete_file(info.output_file)
    return problems


def main() -> int:
    batch = os.environ.get("SMOKE_BATCH") == "1"
    record = os.environ.get("SMOKE_RECORD") == "1"
    model = _model()
    interactive_price, batch_price = _prices()
    if not os.environ.get("GEMINI_API_KEY"):
        print("smoke-live: GEMINI_API_KEY is not set; nothing was sent. With a key it would:")
        print(f"  - generate {len(PROMPTS)} images with {model} through GeminiImageGenerator "
              f"(~${len(PROMPTS) * interactive_price:.4f} at PRICE_INTERACTIVE_IMAGE_USD)")
        print(f"  - with SMOKE_BATCH=1, submit a {len(PROMPTS)}-line batch through GeminiBatchApi and wait for it "
              f"(~${len(PROMPTS) * batch_price:.4f} at PRICE_BATCH_IMAGE_USD)")
        print(f"  - with SMOKE_RECORD=1, save the redacted raw answers under {RECORD_DIR.relative_to(ROOT)}/")
        return 0
    recorder = Recorder() if record else None
    client = _client(recorder)
    base = os.environ.get("GOOGLE_GEMINI_BASE_URL") or "https://generativelanguage.googleapis.com"
    print(f"smoke-live against {base} with {model}")
    from core.errors import DomainError

    cost = len(PROMPTS) * interactive_price  # charged even if a check fails: the calls were made
    try:
        problems = run_interactive(client, model)
        if batch:
            cost += len(PROMPTS) * batch_price
            problems += run_batch(client, model, recorder, float(os.environ.get("SMOKE_BATCH_TIMEOUT", "3600")),
                                  float(os.environ.get("SMOKE_POLL_SECONDS", "10")))
    except DomainError as e:  # what the functions would have seen: a refusal, a 4xx/5xx, a quota error
        problems = [f"{type(e).__name__}: {e}"]
    if recorder:
        directory = Path(os.environ.get("SMOKE_RECORD_DIR") or RECORD_DIR)
        for path in recorder.save(directory):
            print(f"  recorded {path}")
    print(f"estimated cost: ${cost:.4f} (prices from config)")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
