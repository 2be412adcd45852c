"""The pure parts of the emulator's Files and Batch APIs: the batch timeline and its Operation
JSON, per-line outcomes and the results writer, the file store, page tokens and config. No HTTP,
no sleeping: times are plain numbers."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path

import pytest

from infra.gemini_emulator import batch_jobs, batch_runner
from infra.gemini_emulator import config as emu_config
from infra.gemini_emulator.batch_jobs import BatchRecord
from infra.gemini_emulator.errors import ApiError
from infra.gemini_emulator.faults import choose_batch_outcome
from infra.gemini_emulator.filestore import GENERATED, FileStore, file_resource, sha256_field
from infra.gemini_emulator.wire import paginate, rfc3339

MODEL = "gemini-2.5-flash-image"
NO_FAULTS = {"rates": {}, "script": [], "prompt_rules": []}


def record(**overrides) -> BatchRecord:
    fields = dict(
        id="b" * 36, owner="k", model=MODEL, display_name="nightly", seq=1, created=100.0, pending_s=1.0,
        running_s=2.0, outcome="succeeded", request_count=4, input_file="files/abc",
    )
    fields.update(overrides)
    return BatchRecord(**fields)


def identity(t: float) -> float:
    return t


# --- timeline -------------------------------------------------------------------------------


def test_timeline_pending_then_running_then_succeeded_once_results_exist():
    batch = record()

    assert not batch_jobs.advance(batch, 100.9) and batch.state == batch_jobs.PENDING
    assert not batch_jobs.advance(batch, 101.0) and batch.state == batch_jobs.RUNNING and batch.updated == 101.0
    assert not batch_jobs.advance(batch, 150.0) and batch.state == batch_jobs.RUNNING  # results not written yet
    batch.results_ready_at = 102.5

    assert batch_jobs.advance(batch, 150.0)
    # It ended when it was due (103), not when someone looked (150).
    assert (batch.state, batch.updated, batch.ended) == (batch_jobs.SUCCEEDED, 103.0, 103.0)
    assert not batch_jobs.advance(batch, 200.0)


def test_a_slow_worker_makes_the_batch_run_longer():
    batch = record(results_ready_at=110.0)

    batch_jobs.advance(batch, 105.0)
    assert batch.state == batch_jobs.RUNNING
    batch_jobs.advance(batch, 110.0)
    assert (batch.state, batch.ended) == (batch_jobs.SUCCEEDED, 110.0)


@pytest.mark.parametrize("outcome", ["failed", "cancelled", "expired"])
def test_planned_failures_end_on_time_without_results_and_stop_the_worker(outcome):
    batch = record(outcome=outcome)
    batch.succeeded = 1

    assert batch_jobs.advance(batch, 103.0)

    assert batch.state == batch_jobs.STATE_OF_OUTCOME[outcome] and batch.cancel.is_set()
    batch.succeeded = 3  # the worker may still count a line before it notices
    assert batch_jobs.batch_stats(batch) == {"requestCount": "4", "successfulRequestCount": "1", "pendingRequestCount": "3"}
    assert "output" not in batch_jobs.operation(batch, identity)["metadata"]


def test_collapse_timeline_makes_everything_due_now():
    batch = record(pending_s=3600.0, running_s=3600.0, results_ready_at=100.5)

    batch_jobs.collapse_timeline(batch, 101.0)

    assert batch_jobs.advance(batch, 101.0) and batch.ended == 101.0


def test_batch_stats_are_strings_and_omit_zeros():
    batch = record()
    batch.succeeded, batch.failed = 2, 1
    assert batch_jobs.batch_stats(batch) == {"requestCount": "4", "pendingRequestCount": "4"}  # still PENDING

    batch.state = batch_jobs.RUNNING
    assert batch_jobs.batch_stats(batch) == {
        "requestCount": "4", "successfulRequestCount": "2", "failedRequestCount": "1", "pendingRequestCount": "1"
    }


def test_parse_state_accepts_wire_sdk_and_short_names():
    assert batch_jobs.parse_state("BATCH_STATE_EXPIRED") == batch_jobs.EXPIRED
    assert batch_jobs.parse_state("JOB_STATE_FAILED") == batch_jobs.FAILED
    assert batch_jobs.parse_state("cancelled") == batch_jobs.CANCELLED
    with pytest.raises(ValueError):
        batch_jobs.parse_state("RUNNING")


# --- Operation JSON -------------------------------------------------------------------------


def test_pending_operation_matches_the_wire_shape():
    op = batch_jobs.operation(record(), identity)

    assert op == {
        "name": "batches/" + "b" * 36,
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{MODEL}",
            "displayName": "nightly",
            "inputConfig": {"fileName": "files/abc"},
            "createTime": rfc3339(100.0),
            "updateTime": rfc3339(100.0),
            "batchStats": {"requestCount": "4", "pendingRequestCount": "4"},
            "state": "BATCH_STATE_PENDING",
            "name": "batches/" + "b" * 36,
        },
    }


def test_succeeded_file_batch_points_at_its_results_file_and_mirrors_it():
    batch = record(results_ready_at=100.0)
    batch.succeeded, batch.failed = 3, 1
    batch_jobs.advance(batch, 103.0)

    op = batch_jobs.operation(batch, identity)

    expected = {"responsesFile": "files/batch-" + "b" * 36}
    assert op["metadata"]["output"] == expected and op["done"] is True
    assert op["response"] == {"@type": batch_jobs.OUTPUT_TYPE, **expected}
    assert op["metadata"]["endTime"] == rfc3339(103.0)
    assert op["metadata"]["batchStats"] == {"requestCount": "4", "successfulRequestCount": "3", "failedRequestCount": "1"}


def test_inline_results_are_in_get_but_never_in_list():
    batch = record(input_file=None, display_name=None, results_ready_at=100.0)
    batch.inline_results = [{"response": {}, "metadata": {"key": "a"}}]
    batch_jobs.advance(batch, 103.0)

    got = batch_jobs.operation(batch, identity)
    listed = batch_jobs.operation(batch, identity, include_inline=False)

    assert got["metadata"]["output"] == {"inlinedResponses": {"inlinedResponses": batch.inline_results}}
    assert "inputConfig" not in got["metadata"] and "displayName" not in got["metadata"]
    assert "output" not in listed["metadata"] and "response" not in listed


def test_failed_operation_carries_an_rpc_status():
    batch = record()
    batch_jobs.finish(batch, batch_jobs.FAILED, 101.0)

    op = batch_jobs.operation(batch, identity)

    assert op["done"] is True and set(op["error"]) == {"code", "message"}


def test_batch_outcome_rules_come_before_the_script():
    cfg = {"display_name_rules": [{"contains": "[x]", "outcome": "failed"}], "outcome_script": ["expired"]}

    assert choose_batch_outcome(display_name="a [x]", batch=cfg, script_pos=0) == ("failed", 0)
    assert choose_batch_outcome(display_name="a", batch=cfg, script_pos=0) == ("expired", 1)
    assert choose_batch_outcome(display_name="a", batch=cfg, script_pos=1) == ("succeeded", 1)


# --- lines and results ----------------------------------------------------------------------


def spec(**overrides) -> batch_runner.RunSpec:
    fields = dict(model=MODEL, faults=NO_FAULTS, image_scale=0.05, image_target_bytes=None, seed=1, shuffle=True)
    fields.update(overrides)
    return batch_runner.RunSpec(**fields)


def line(key: str, prompt: str) -> dict:
    return {"key": key, "request": {"contents": [{"parts": [{"text": prompt}]}]}}


def write_input(path: Path, lines: list[dict], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(item) for item in lines) + "\n")
    return path


def test_scan_input_records_offsets_of_request_lines_and_skips_blanks(tmp_path):
    source = write_input(tmp_path / "in.jsonl", [line("a", "x"), line("b", "y")], blank_lines=True)

    offsets = batch_runner.scan_input(source)

    with source.open("rb") as f:
        keys = []
        for offset in offsets:
            f.seek(offset)
            keys.append(json.loads(f.readline())["key"])
    assert keys == ["a", "b"]


@pytest.mark.parametrize(("text", "problem"), [("{}\n", '"key"'), ('{"key": "a"}\nnope\n', "line 2"), ("[1]\n", '"key"')])
def test_scan_input_rejects_lines_that_cannot_be_answered(tmp_path, text, problem):
    path = tmp_path / "in.jsonl"
    path.write_text(text)

    with pytest.raises(batch_runner.InputError, match=problem):
        batch_runner.scan_input(path)


def test_results_file_has_one_compact_line_per_key_and_its_hash(tmp_path):
    source = write_input(tmp_path / "in.jsonl", [line(f"k{i}", f"prompt {i % 2}") for i in range(6)])
    out = tmp_path / "out.jsonl"
    seen = []

    size, digest = batch_runner.write_results_file(
        spec(), source, batch_runner.scan_input(source), out, threading.Event(), seen.append
    )

    data = out.read_bytes()
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    lines = [json.loads(text) for text in data.splitlines()]
    assert sorted(item["key"] for item in lines) == [f"k{i}" for i in range(6)]
    assert all(text.decode() == json.dumps(json.loads(text), separators=(",", ":")) for text in data.splitlines())
    assert len(seen) == 6 and all(r.ok and r.image for r in seen)


def test_repeat_key_rules_name_a_key_twice(tmp_path):
    source = write_input(tmp_path / "in.jsonl", [line(f"k{i}", f"prompt {i}") for i in range(3)])
    out = tmp_path / "out.jsonl"
    seen = []
    rules = (("k1", "duplicate"), ("k2", "error"))

    batch_runner.write_results_file(spec(shuffle=False, repeat_rules=rules), source, batch_runner.scan_input(source),
                                    out, threading.Event(), seen.append)

    lines = [json.loads(text) for text in out.read_bytes().splitlines()]
    assert [(item["key"], "response" in item) for item in lines] == [
        ("k0", True), ("k1", True), ("k1", True), ("k2", True), ("k2", False)]
    assert lines[1] == lines[2] and lines[4]["error"]["code"] == 500
    assert len(seen) == 3  # the stats count each key once


def test_shuffle_is_seeded(tmp_path):
    source = write_input(tmp_path / "in.jsonl", [line(f"k{i}", "p") for i in range(12)])
    offsets = batch_runner.scan_input(source)

    def keys(seed: int, shuffle: bool = True) -> list[str]:
        out = tmp_path / f"out-{seed}-{shuffle}.jsonl"
        batch_runner.write_results_file(spec(seed=seed, shuffle=shuffle), source, offsets, out, threading.Event(), lambda r: None)
        return [json.loads(text)["key"] for text in out.read_bytes().splitlines()]

    assert keys(1) == keys(1) != keys(2)
    assert keys(1, shuffle=False) == [f"k{i}" for i in range(12)]


def test_a_cancelled_writer_leaves_no_file(tmp_path):
    source = write_input(tmp_path / "in.jsonl", [line("a", "p")])
    out = tmp_path / "out.jsonl"
    cancel = threading.Event()
    cancel.set()

    assert batch_runner.write_results_file(spec(), source, batch_runner.scan_input(source), out, cancel, lambda r: None) is None
    assert not out.exists()


@pytest.mark.parametrize(
    ("outcome", "code", "status"),
    [("429", 429, "RESOURCE_EXHAUSTED"), ("500", 500, "INTERNAL"), ("503", 503, "UNAVAILABLE"), ("hang", 504, "DEADLINE_EXCEEDED")],
)
def test_error_outcomes_become_error_lines_without_details(outcome, code, status):
    runner = batch_runner.LineRunner(spec(faults={**NO_FAULTS, "prompt_rules": [{"contains": "!", "outcome": outcome}]}))

    result = runner.run(line("a", "boom!")["request"])

    assert not result.ok and result.outcome == outcome
    assert set(result.body["error"]) == {"code", "message", "status"}
    assert (result.body["error"]["code"], result.body["error"]["status"]) == (code, status)


def test_script_is_ignored_and_rates_are_seeded():
    faults = {**NO_FAULTS, "script": ["500"] * 10, "rates": {"503": 0.5}}

    def outcomes(seed: int) -> list[str]:
        runner = batch_runner.LineRunner(spec(faults=faults, seed=seed))
        return [runner.run(line("a", "p")["request"]).outcome for _ in range(20)]

    assert outcomes(3) == outcomes(3)
    assert set(outcomes(3)) == {"ok", "503"}


def test_invalid_or_missing_requests_are_400_lines():
    runner = batch_runner.LineRunner(spec())

    missing = runner.run(None)
    invalid = runner.run({"contents": []})

    assert missing.body["error"]["code"] == invalid.body["error"]["code"] == 400
    assert invalid.outcome == "400"


def test_padding_applies_per_line():
    runner = batch_runner.LineRunner(spec(image_target_bytes=20_000))

    first, second = (runner.run(line("a", "same")["request"]) for _ in range(2))

    def png(result: batch_runner.LineResult) -> bytes:
        return base64.b64decode(result.body["response"]["candidates"][0]["content"]["parts"][-1]["inlineData"]["data"])

    assert len(png(first)) == len(png(second)) == 20_000 and png(first) != png(second)


def test_inline_results_keep_input_order_and_metadata():
    results = batch_runner.inline_results(
        spec(), [({"key": "a"}, line("a", "x")["request"]), (None, {"contents": []})], threading.Event(), lambda r: None
    )

    assert results[0]["metadata"] == {"key": "a"} and "response" in results[0]
    assert "metadata" not in results[1] and results[1]["error"]["code"] == 400


# --- files ----------------------------------------------------------------------------------


def test_sha256_hash_is_base64_of_the_hex_digest():
    # The cookbook's 202-byte JSONL upload, as printed by the real API
    # (https://github.com/google-gemini/cookbook/blob/main/quickstarts/Batch_mode.ipynb, batch embeddings):
    # the bytes hash to this digest, and the printed sha256_hash is base64 of its hex text.
    digest = "597b96e5c7d2b0d01acdc80dd0bcd653da099bb26d8106b12d870edadf2837fc"
    assert sha256_field(digest) == "NTk3Yjk2ZTVjN2QyYjBkMDFhY2RjODBkZDBiY2Q2NTNkYTA5OWJiMjZkODEwNmIxMmQ4NzBlZGFkZjI4MzdmYw=="


def upload(store: FileStore, owner: str, data: bytes, now: float = 0.0, **kwargs) -> str:
    session = store.open_session(owner=owner, file_id=None, mime_type="jsonl", declared_size=len(data), display_name=None, **kwargs)
    session.path.write_bytes(data)
    session.received = len(data)
    session.hasher.update(data)
    return store.finish_session(session, now=now, ttl_s=100.0).id


def test_files_are_private_and_expire(tmp_path):
    store = FileStore(tmp_path)
    file_id = upload(store, "a", b"hello")

    assert store.lookup(file_id, "a", 99.0).size == 5
    with pytest.raises(ApiError) as info:
        store.lookup(file_id, "b", 1.0)
    assert info.value.code == 403
    with pytest.raises(ApiError):
        store.lookup(file_id, "a", 100.0)
    assert not any(tmp_path.iterdir()) and store.expired == 1


def test_file_names_mime_types_and_duplicates(tmp_path):
    store = FileStore(tmp_path)

    def open_session(file_id, mime="text/plain"):
        return store.open_session(owner="a", file_id=file_id, mime_type=mime, declared_size=1, display_name=None)

    open_session("my-file")
    for bad_id, code in (("my-file", 409), ("-x", 400), ("UPPER", 400), ("a" * 41, 400)):
        with pytest.raises(ApiError) as info:
            open_session(bad_id)
        assert info.value.code == code
    for mime in ("jsonl", "application/jsonl", "text/plain; charset=utf-8"):
        open_session(None, mime)
    with pytest.raises(ApiError):
        open_session(None, "json")


def test_generated_file_resource_has_download_uri(tmp_path):
    store = FileStore(tmp_path)
    partial = tmp_path / "results.partial"
    partial.write_bytes(b"{}\n")

    rec = store.add_generated(file_id="batch-x", owner="a", path=partial, size=3, sha256_hex="ab", now=10.0, ttl_s=172800.0)
    body = file_resource(rec, base_url="http://127.0.0.1:1", version="v1beta", wall=identity)

    assert rec.source == GENERATED and not partial.exists() and rec.path.read_bytes() == b"{}\n"
    assert body["downloadUri"] == "http://127.0.0.1:1/download/v1beta/files/batch-x:download?alt=media"
    assert body["uri"] == "http://127.0.0.1:1/v1beta/files/batch-x"
    assert (body["sizeBytes"], body["state"], body["source"]) == ("3", "ACTIVE", "GENERATED")
    assert body["expirationTime"] == rfc3339(10.0 + 172800.0) and "displayName" not in body


def test_page_tokens_survive_deletions_between_pages():
    items = [5, 4, 3, 2, 1]  # newest first, by sequence number

    page, token = paginate(items, lambda i: i, "2", None)
    assert (page, token) == ([5, 4], "4")
    page, token = paginate([5, 3, 2, 1], lambda i: i, "2", token)  # 4 was deleted meanwhile
    assert (page, token) == ([3, 2], "2")
    assert paginate([1], lambda i: i, "2", token) == ([1], None)
    with pytest.raises(ValueError):
        paginate(items, lambda i: i, "2", "not-a-token")


def test_rfc3339_is_utc_with_fraction():
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250000Z"


# --- config ---------------------------------------------------------------------------------


def test_batch_and_files_config_validation():
    cfg = emu_config.initial_config({"batch": {"outcome_script": ["expired"], "max_concurrent_batches": None}})
    assert cfg["batch"]["outcome_script"] == ["expired"] and cfg["batch"]["pending_seconds"] == 1.0
    assert cfg["batch"]["max_concurrent_batches"] == 100  # null restores the default

    for bad in (
        {"batch": {"outcome_script": ["exploded"]}},
        {"batch": {"display_name_rules": [{"contains": "", "outcome": "failed"}]}},
        {"batch": {"repeat_key_rules": [{"contains": "k", "then": "twice"}]}},
        {"batch": {"repeat_key_rules": [{"contains": "", "then": "error"}]}},
        {"batch": {"pending_seconds": -1}},
        {"batch": {"shuffle_results": "yes"}},
        {"batch": {"surprise": 1}},
        {"files": {"ttl_seconds": 0}},
    ):
        with pytest.raises(emu_config.ConfigError):
            emu_config.initial_config(bad)
