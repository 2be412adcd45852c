"""Results downloads from a byte offset (Range), on the fake and through the real SDK on our
emulator, and a connection cut mid-body resumed where it stopped."""
from __future__ import annotations

import io

import pytest
import requests

from core.batches import normalise_state
from tests.integration.test_batch_api_contract import MODEL, api, jsonl  # noqa: F401 - the fixture

__all__ = ["api"]


def finished_results(api) -> str:  # noqa: F811
    info = api.create_batch(MODEL, api.upload_jsonl(jsonl(["a", "b", "c", "d"]), "intent-r"), display_name="intent-r")
    api.finish(info.name)
    done = api.get_batch(info.name)
    assert normalise_state(done.state) == "BATCH_STATE_SUCCEEDED"
    return done.output_file


def read(api, name: str, offset: int = 0) -> bytes:  # noqa: F811
    sink = io.BytesIO()
    api.stream_file(name, sink, offset)
    return sink.getvalue()


def test_a_download_from_an_offset_is_the_rest_of_the_file(api):  # noqa: F811
    name = finished_results(api)
    whole = read(api, name)
    second_line = whole.index(b"\n") + 1
    assert read(api, name, second_line) == whole[second_line:]
    assert read(api, name, len(whole)) == b""  # a checkpoint at the file's end: nothing left


def test_a_cut_download_resumes_from_the_byte_it_reached(gemini_clean):
    from tests.integration.test_batch_api_contract import EmulatedBatchApi

    emulated = EmulatedBatchApi(gemini_clean)
    requests.post(f"{gemini_clean}/_emulator/config", timeout=10, json={
        "image_scale": 0.25, "batch": {"pending_seconds": 0.2, "running_seconds": 0.3}}).raise_for_status()
    name = finished_results(emulated)
    whole = read(emulated, name)
    cut = len(whole) // 3
    requests.post(f"{gemini_clean}/_emulator/config", timeout=10,
                  json={"files": {"cut_downloads": 2, "cut_download_after_bytes": cut}}).raise_for_status()
    assert read(emulated, name) == whole
    log = requests.get(f"{gemini_clean}/_emulator/downloads", timeout=10).json()["downloads"][-3:]
    assert [(d["range"], d["cut_after_bytes"]) for d in log] == [
        (None, cut), (f"bytes={cut}-", cut), (f"bytes={2 * cut}-", None)]


def test_an_error_of_the_sink_is_not_taken_for_a_cut(gemini_clean):
    from tests.integration.test_batch_api_contract import EmulatedBatchApi

    emulated = EmulatedBatchApi(gemini_clean)
    name = finished_results(emulated)
    before = len(requests.get(f"{gemini_clean}/_emulator/downloads", timeout=10).json()["downloads"])

    class Failing:
        def write(self, chunk):
            raise ConnectionResetError("an upload's connection, not the download's")

    with pytest.raises(ConnectionResetError):
        emulated.stream_file(name, Failing())
    assert len(requests.get(f"{gemini_clean}/_emulator/downloads", timeout=10).json()["downloads"]) == before + 1
