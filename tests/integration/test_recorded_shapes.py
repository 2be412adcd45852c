"""Contract: the emulator answers with the shape of the real Gemini API.

Every file in tests/fixtures/recorded/ is a real answer (shipped from documented sources, or
saved by `SMOKE_RECORD=1 make smoke-live`). For each, the emulator's answer of the same kind must
have every key of the real one, recursively, with the same JSON type; each element of a real
list must match one of the emulator's. The emulator may add optional keys."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from core.jsonl import request_line

MODEL = "gemini-2.5-flash-image"
RECORDED = sorted((Path(__file__).parents[1] / "fixtures" / "recorded").glob("*.json"))
KEY = {"x-goog-api-key": "shape-key"}


def json_kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}[type(value)]


def shape_mismatches(real, emulated, path: str = "$") -> list[str]:
    """What the emulated answer lacks, or types differently, compared with the real one."""
    if json_kind(real) != json_kind(emulated):
        return [f"{path}: real {json_kind(real)}, emulator {json_kind(emulated)}"]
    if isinstance(real, dict):
        found = []
        for key, value in real.items():
            if key not in emulated:
                found.append(f"{path}.{key}: missing in the emulator's answer")
            else:
                found += shape_mismatches(value, emulated[key], f"{path}.{key}")
        return found
    if isinstance(real, list):
        found = []
        for i, item in enumerate(real):
            candidates = [shape_mismatches(item, other, f"{path}[{i}]") for other in emulated]
            if not candidates:
                found.append(f"{path}[{i}]: the emulator's list is empty")
            elif all(candidates):
                found += min(candidates, key=len)
        return found
    return []


def test_shape_mismatches_finds_missing_keys_wrong_types_and_unmatched_elements():
    real = {"a": {"b": "1"}, "n": 2, "parts": [{"text": "x"}, {"inlineData": {"data": "x"}}]}
    assert shape_mismatches(real, {"a": {"b": "2", "extra": 1}, "n": 3.5,
                                   "parts": [{"inlineData": {"data": "y"}}, {"text": "z"}]}) == []
    assert shape_mismatches(real, {"a": {"b": 1}, "parts": [{"text": "x"}]}) == [
        "$.a.b: real string, emulator number",
        "$.n: missing in the emulator's answer",
        "$.parts[1].inlineData: missing in the emulator's answer",
    ]


class Emulated:
    """The emulator's answers, fetched raw (not through the SDK, which drops unknown keys)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._cache: dict[str, dict] = {}

    def post(self, path: str, body: dict, status: int = 200) -> dict:
        r = requests.post(f"{self.base}{path}", json=body, headers=KEY, timeout=30)
        assert r.status_code == status, r.text
        return r.json()

    def generate(self) -> dict:
        return self.post(f"/v1beta/models/{MODEL}:generateContent",
                         {"contents": [{"parts": [{"text": "a cat"}], "role": "user"}],
                          "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}})

    def upload(self) -> dict:
        data = request_line("k1", "a cat", "1:1", None) + request_line("k2", "a dog", "1:1", None)
        start = requests.post(f"{self.base}/upload/v1beta/files", headers={
            **KEY, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)), "X-Goog-Upload-Header-Content-Type": "jsonl",
        }, json={"file": {"display_name": "shape", "mime_type": "jsonl"}}, timeout=30)
        assert start.status_code == 200, start.text
        done = requests.post(start.headers["X-Goog-Upload-URL"], data=data, timeout=30, headers={
            "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})
        assert done.status_code == 200, done.text
        return done.json()["file"]

    def answer(self, kind: str, real: dict) -> dict:
        if kind.startswith("error."):
            return self._error(kind, real)
        if kind not in self._cache:
            self._cache.update(self._batch_answers() if kind.startswith("batch") else {})
            if kind == "models.generateContent":
                self._cache[kind] = self.generate()
            elif kind == "files.upload":
                self._cache[kind] = self.upload()
        if kind not in self._cache:
            pytest.fail(f"no emulator answer is known for recorded kind {kind!r}: add one to this test")
        return self._cache[kind]

    def _batch_answers(self) -> dict:
        created = self.post(f"/v1beta/models/{MODEL}:batchGenerateContent",
                            {"batch": {"displayName": "shape", "inputConfig": {"fileName": self.upload()["name"]}}})
        running = requests.get(f"{self.base}/v1beta/{created['name']}", headers=KEY, timeout=30).json()
        deadline = time.monotonic() + 30
        done = running
        while not done.get("done"):
            assert time.monotonic() < deadline, done
            time.sleep(0.1)
            done = requests.get(f"{self.base}/v1beta/{created['name']}", headers=KEY, timeout=30).json()
        results = requests.get(f"{self.base}/v1beta/{done['metadata']['output']['responsesFile']}:download",
                               params={"alt": "media"}, headers=KEY, timeout=30)
        line = next(json.loads(x) for x in results.content.splitlines() if b'"response"' in x)
        return {"batches.create": created, "batches.get": running, "batches.get.done": done, "batch.result_line": line}

    def _error(self, kind: str, real: dict) -> dict:
        generate = f"/v1beta/models/{MODEL}:generateContent"
        if kind != "error.429":  # a 400 (an unknown field) stands for any other recorded error
            return self.post(generate, {"contents": [{"parts": [{"text": "x"}]}], "xyz": 1}, status=400)
        details = real["error"].get("details", [])
        violations = [v for d in details if d.get("@type", "").endswith("QuotaFailure") for v in d["violations"]]
        if len(violations) > 1:
            self._configure({"faults": {"script": ["429_multi"]}})
        elif not violations:
            self._configure({"faults": {"script": ["429_help_only"]}})
        else:  # one named quota: run into a real per-minute limit
            self._configure({"quotas": {MODEL: {"rpm": 1}}})
            self.generate()
        return self.post(generate, {"contents": [{"parts": [{"text": "x"}]}]}, status=429)

    def _configure(self, patch: dict) -> None:
        r = requests.post(f"{self.base}/_emulator/config", json=patch, timeout=10)
        assert r.status_code == 200, r.text


@pytest.fixture
def emulated(gemini_clean) -> Emulated:
    requests.post(f"{gemini_clean}/_emulator/config", timeout=10, json={
        "image_scale": 0.25, "batch": {"pending_seconds": 0.1, "running_seconds": 0.1}}).raise_for_status()
    return Emulated(gemini_clean)


def test_there_is_a_recorded_answer_to_check():
    assert RECORDED, "tests/fixtures/recorded/ must hold at least one real answer"


@pytest.mark.parametrize("path", RECORDED, ids=[p.name for p in RECORDED])
def test_the_emulator_answers_with_the_recorded_shape(emulated, path):
    recorded = json.loads(path.read_text())
    mismatches = shape_mismatches(recorded["body"], emulated.answer(recorded["kind"], recorded["body"]))
    assert not mismatches, f"{path.name} ({recorded['source']}):\n" + "\n".join(mismatches)
