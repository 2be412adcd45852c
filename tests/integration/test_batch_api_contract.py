"""Contract: FakeBatchApi and GeminiBatchApi (real google-genai SDK on our emulator) agree.

The unit tests of the batch lane run on the fake; this is what keeps it truthful."""
from __future__ import annotations

import json
import os
import time

import pytest
import requests
from google import genai
from google.genai import types

from adapters.gemini_batches import GeminiBatchApi
from core.batches import normalise_state
from core.errors import PermissionDenied
from core.jsonl import LineSplitter, parse_result_line, request_line
from tests.fakes import FakeBatchApi

MODEL = "gemini-2.5-flash-image"


class EmulatedBatchApi(GeminiBatchApi):
    """The real adapter, plus the test-only moves that FakeBatchApi offers (via the admin API)."""

    def __init__(self, base: str) -> None:
        client = genai.Client(api_key="contract-key", http_options=types.HttpOptions(base_url=base, timeout=30_000))
        super().__init__(client, "contract-key")
        self.base = base

    def finish(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while normalise_state(self.get_batch(name).state) != "BATCH_STATE_SUCCEEDED":
            assert time.monotonic() < deadline, "batch did not finish"
            time.sleep(0.2)

    def set_state(self, name: str, state: str) -> None:
        r = requests.post(f"{self.base}/_emulator/batches/{name.split('/')[1]}:force", json={"state": state}, timeout=10)
        r.raise_for_status()


@pytest.fixture(params=["fake", "emulator"])
def api(request):
    if request.param == "fake":
        return FakeBatchApi()
    base = request.getfixturevalue("gemini_clean")
    requests.post(f"{base}/_emulator/config", timeout=10, json={
        "image_scale": 0.25, "batch": {"pending_seconds": 0.2, "running_seconds": 0.3},
    }).raise_for_status()
    return EmulatedBatchApi(base)


def jsonl(keys):
    return b"".join(request_line(k, f"prompt {k}", "1:1", None) for k in keys)


def test_create_find_get_and_stream_results(api):
    input_file = api.upload_jsonl(jsonl(["a", "b", "c"]), display_name="intent-1")
    assert input_file.startswith("files/")
    info = api.create_batch(MODEL, input_file, display_name="intent-1")
    assert info.name.startswith("batches/")
    assert normalise_state(info.state) == "BATCH_STATE_PENDING"
    assert api.find_batch("intent-1").name == info.name
    assert api.find_batch("no-such-intent") is None
    api.delete_file(input_file)  # the batch has what it needs

    api.finish(info.name)
    done = api.get_batch(info.name)
    assert normalise_state(done.state) == "BATCH_STATE_SUCCEEDED" and done.output_file.startswith("files/batch-")
    lines = []
    splitter = LineSplitter(lines.append)
    api.stream_file(done.output_file, splitter)
    splitter.close()
    results = [parse_result_line(line) for line in lines]
    assert sorted(r.key for r in results) == ["a", "b", "c"]  # in any order
    assert all(r.image is not None and r.image.data.startswith(b"\x89PNG") for r in results)
    api.delete_file(done.output_file)
    # A file that is gone is a 403 PERMISSION_DENIED on the Files API, for reads and deletes.
    with pytest.raises(PermissionDenied):
        api.stream_file(done.output_file, LineSplitter(lines.append))
    with pytest.raises(PermissionDenied):
        api.delete_file(done.output_file)


def test_unknown_batches_are_none_and_terminal_states_are_reported(api):
    assert api.get_batch("batches/doesnotexist0000000000000000000000000") is None
    info = api.create_batch(MODEL, api.upload_jsonl(jsonl(["x"]), "intent-2"), display_name="intent-2")
    api.set_state(info.name, "BATCH_STATE_EXPIRED")
    assert normalise_state(api.get_batch(info.name).state) == "BATCH_STATE_EXPIRED"


def test_cancel(api):
    info = api.create_batch(MODEL, api.upload_jsonl(jsonl(["x"]), "intent-3"), display_name="intent-3")
    api.cancel_batch(info.name)
    assert normalise_state(api.get_batch(info.name).state) == "BATCH_STATE_CANCELLED"


def test_batches_of_another_key_are_invisible(gemini_clean):
    mine = EmulatedBatchApi(gemini_clean)
    theirs = GeminiBatchApi(genai.Client(api_key="other-key", http_options=types.HttpOptions(base_url=gemini_clean)), "other-key")
    info = mine.create_batch(MODEL, mine.upload_jsonl(jsonl(["x"]), "intent-4"), display_name="intent-4")
    assert theirs.get_batch(info.name) is None
    assert theirs.find_batch("intent-4") is None
    assert mine.key_fingerprint() != theirs.key_fingerprint()
    assert "contract-key" not in json.dumps(mine.key_fingerprint())
