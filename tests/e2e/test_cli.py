"""The imagefleet CLI driven as a user drives it, against the session's real stack: typer's
CliRunner in this process (the stack fixture sets IMAGEFLEET_API and STORAGE_EMULATOR_HOST, so
the CLI reads the API and the GCS emulator as a user's shell would), and the installed
``imagefleet`` script once as a subprocess. Files on disk are checked against the job's
manifest in GCS."""
from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from imagefleet import client
from imagefleet.cli import app
from imagefleet.contact_sheet import grid_size
from tests.e2e.helpers import (
    HTTP_TIMEOUT, assert_settled, configure_gemini, gemini_stats, job_status, manifest, prompt_rules, submit,
    wait_for_job, wait_until,
)

JOB_ID = re.compile(r"Submitted job ([0-9a-f]+)")


def imagefleet(*args: str):
    """One CLI run; an exception other than the CLI's own exits fails the test with its traceback."""
    argv = list(args)
    if "--wait" in argv:
        argv += ["--interval", "0.3"]  # the default second is for people; tests poll faster
    return CliRunner().invoke(app, argv, catch_exceptions=False)


def job_id_of(result) -> str:
    match = JOB_ID.search(result.stdout)
    assert match, result.output
    return match.group(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_downloaded(out: Path, job_id: str, bucket) -> dict[str, dict]:
    """Every succeeded item's PNG in ``out`` with the manifest's sha256, the manifest as GCS
    holds it, and a contact sheet that shows every item; the manifest lines by key."""
    lines = {line["key"]: line for line in manifest(bucket, job_id)}
    succeeded = sorted(k for k, line in lines.items() if line["state"] == "succeeded")
    assert sorted(p.stem for p in out.glob("*.png") if not p.name.startswith("contact-sheet")) == succeeded
    for key in succeeded:
        assert sha256(out / f"{key}.png") == lines[key]["sha256"], key
    assert (out / "manifest.jsonl").read_bytes() == bucket.blob(f"{job_id}/manifest.jsonl").download_as_bytes()
    page = (out / "contact-sheet.html").read_text()
    for key, line in lines.items():
        assert line["prompt"] in page, key
        assert (f'src="{key}.png"' in page) == (line["state"] == "succeeded"), key
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.size == grid_size(len(lines))[2:]
    return lines


def no_jobs(db) -> bool:
    return not list(db.collection("jobs").limit(1).stream())


# --- submit --wait ----------------------------------------------------------------------------------


def test_submit_a_text_file_and_wait_gets_pngs_manifest_and_contact_sheet(stack, bucket, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffA lighthouse on a cliff at dusk\n\nA red fox asleep in fresh snow\n"
                       "A tiny robot watering a bonsai\n", encoding="utf-8")
    out = tmp_path / "out"

    result = imagefleet("submit", str(prompts), "--wait", "--out", str(out))

    assert result.exit_code == 0, result.output
    job_id = job_id_of(result)
    assert f"Job {job_id} succeeded" in result.stdout
    assert "Saved 3 images" in result.stdout and "contact-sheet.html" in result.stdout
    # Not a terminal: one plain progress line per change, on stderr, ending with everything done.
    progress = [line for line in result.stderr.splitlines() if ": done " in line]
    assert progress and progress[-1].startswith("succeeded: done 3/3 · failed 0 · pending 0"), result.stderr
    status = job_status(stack, job_id)
    assert_settled(status, bucket)
    lines = assert_downloaded(out, job_id, bucket)
    assert [lines[k]["prompt"] for k in sorted(lines)] == [
        "A lighthouse on a cliff at dusk", "A red fox asleep in fresh snow", "A tiny robot watering a bonsai"]


def test_submit_a_csv_to_the_batch_lane_and_wait(stack, bucket, tmp_path):
    # The e2e stack has no scheduler thread: Cloud Scheduler's ticks come from here.
    stop = threading.Event()

    def scheduler() -> None:
        while not stop.wait(0.5):
            try:
                requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
            except requests.RequestException:
                pass

    ticker = threading.Thread(target=scheduler, daemon=True)
    ticker.start()
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt,key,aspect_ratio\n"A paper boat, on a pond",boat,16:9\nA glass apple,apple,\n')
    try:
        result = imagefleet("submit", str(prompts), "--lane", "batch", "--wait", "--out", str(tmp_path / "out"))
    finally:
        stop.set()
        ticker.join()

    assert result.exit_code == 0, result.output
    job_id = job_id_of(result)
    assert "lane batch" in result.stdout
    lines = assert_downloaded(tmp_path / "out", job_id, bucket)
    assert sorted(lines) == ["apple", "boat"] and {line["lane"] for line in lines.values()} == {"batch"}
    with Image.open(tmp_path / "out" / "boat.png") as image:
        assert image.width > image.height  # 16:9 from the CSV's column


def test_the_default_out_folder_is_out_slash_the_job_id(stack, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = imagefleet("submit", "--images", "2", "--wait")

    assert result.exit_code == 0, result.output
    job_id = job_id_of(result)
    lines = assert_downloaded(tmp_path / "out" / job_id, job_id, bucket)
    assert sorted(lines) == ["sample-00000", "sample-00001"]


# --- download -----------------------------------------------------------------------------------


def test_download_again_fetches_only_the_missing_and_the_damaged(stack, bucket, tmp_path):
    job_id = submit(stack, [{"key": k, "prompt": f"A {k} in a field"} for k in ("fox", "owl", "koi")])
    wait_for_job(stack, job_id)
    out = tmp_path / "job"
    first = imagefleet("download", job_id, "--out", str(out))
    assert first.exit_code == 0, first.output
    assert "Saved 3 images" in first.stdout
    (out / "fox.png").unlink()
    (out / "owl.png").write_bytes(b"damaged")
    kept = (out / "koi.png").stat()

    again = imagefleet("download", job_id, "--out", str(out))

    assert again.exit_code == 0, again.output
    assert "Saved 2 images" in again.stdout and "kept 1 already there" in again.stdout
    assert_downloaded(out, job_id, bucket)
    after = (out / "koi.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # not written again


# --- bad input, bad answers, no answer ------------------------------------------------------------


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"prompt": "A fox"}\n{"prompt": "A cat"\n', "error: bad.jsonl line 2: not valid JSON"),
    ("bad.csv", "text,key\nA fox,fox\n", 'error: bad.csv line 1: the header row has no "prompt" column'),
    ("empty.txt", "\n\n", "error: empty.txt: no prompts in it"),
    ("bell.txt", "A fox\nA bell \x07 that rings\n",
     "error: bell.txt line 2: the prompt holds the control character U+0007"),
    ("keys.csv", "prompt,key\nA fox,Fox\nA cat,fox\n",
     "error: keys.csv line 3: key 'fox' repeats 'Fox' of keys.csv line 2"),
])
def test_a_bad_input_file_is_one_line_and_nothing_is_submitted(stack, db, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)

    result = imagefleet("submit", str(path), "--wait")

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(message)
    assert no_jobs(db)


def test_a_prompt_the_api_refuses_is_named_by_its_file_and_line(stack, db, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("A fox\n" + "A very long fox " * 300 + "\n")  # over MAX_PROMPT_CHARS: only the API knows it

    result = imagefleet("submit", str(path))

    assert result.exit_code == 1, result.output
    assert result.stderr == ("error: requests[1].prompt (prompts.txt line 2): "
                             "prompt is 4799 characters; the limit is 4000\n")
    assert no_jobs(db)


def test_an_unknown_job_is_one_line(stack):
    result = imagefleet("status", "0123abc")

    assert result.exit_code == 1
    assert result.stderr == "error: 404 not_found: job 0123abc not found\n"


def test_an_unreachable_api_is_one_line(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.05, 0.05))  # still retried, just sooner
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    path = tmp_path / "p.txt"
    path.write_text("A fox\n")

    for args in (["submit", str(path)], ["status", "abc"], ["stats"]):
        result = imagefleet(*args, "--api", f"http://127.0.0.1:{port}")

        assert result.exit_code == 3, result.output
        assert result.stderr == f"error: cannot reach the API at http://127.0.0.1:{port}: connection refused\n"


# --- cancel, status, retry, stats, dry run --------------------------------------------------------


def test_cancel_then_status_json(stack, bucket):
    configure_gemini(stack, {"latency": {"mean_ms": 1500}})
    submitted = imagefleet("submit", "--images", "5", "--lane", "interactive")
    assert submitted.exit_code == 0, submitted.output
    job_id = job_id_of(submitted)
    wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] >= 1, "a model call to start")

    cancelled = imagefleet("cancel", job_id)

    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.startswith(f"Cancelled job {job_id}: now cancelled")
    status = json.loads(imagefleet("status", job_id, "--json").stdout)
    assert status["job_id"] == job_id and status["status"] == "cancelled"
    again = imagefleet("cancel", job_id)
    assert again.exit_code == 1
    assert again.stderr.startswith(f"error: 409 conflict: job {job_id} has already ended")
    # Let the calls in flight finish, so that they don't land in the next test.
    wait_until(stack, lambda: job_status(stack, job_id)["manifest_uri"], "the cancelled job's manifest")


def test_a_partial_job_exits_5_and_retry_finishes_it(stack, bucket, tmp_path):
    configure_gemini(stack, prompt_rules(("[flaky]", "503")))  # 503 until the rule is lifted
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "A calm lake", "key": "lake"}\n{"prompt": "A storm [flaky]", "key": "storm"}\n')
    out = tmp_path / "out"

    first = imagefleet("submit", str(prompts), "--wait", "--out", str(out))

    assert first.exit_code == 5, first.output
    job_id = job_id_of(first)
    assert f"Job {job_id} partially_succeeded" in first.stdout
    assert "storm: dead_lettered" in first.stdout
    assert "dead lettered" in (out / "contact-sheet.html").read_text()
    assert [p.name for p in out.glob("*.png") if p.stem in ("lake", "storm")] == ["lake.png"]

    configure_gemini(stack, {"faults": {"prompt_rules": []}})
    retried = imagefleet("retry", job_id, "--wait", "--out", str(out))

    assert retried.exit_code == 0, retried.output
    assert f"Requeued 1 item of job {job_id}" in retried.stdout
    assert "Saved 1 image to" in retried.stdout and "kept 1 already there" in retried.stdout
    status = job_status(stack, job_id)
    assert status["status"] == "succeeded" and status["round"] == 2
    # The first round's manifest stays in GCS; the folder has the second round's.
    assert {line["key"]: line["state"] for line in manifest(bucket, job_id)} == \
        {"lake": "succeeded", "storm": "dead_lettered"}
    local = {line["key"]: line for line in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {k: line["state"] for k, line in local.items()} == {"lake": "succeeded", "storm": "succeeded"}
    for key in ("lake", "storm"):
        assert sha256(out / f"{key}.png") == local[key]["sha256"]
    nothing = imagefleet("retry", job_id)
    assert nothing.exit_code == 1 and nothing.stderr.startswith("error: 409 conflict:")


def test_stats_after_a_job(stack):
    job_id = submit(stack, [{"prompt": "A snow owl"}, {"prompt": "A neon koi"}])
    wait_for_job(stack, job_id)

    raw = wait_until(stack, lambda: (body := json.loads(imagefleet("stats", "--json").stdout))
                     ["counters"].get("succeeded") == 2 and body, "the usage counters to count the job")
    readable = imagefleet("stats")

    assert raw["day"] and raw["breaker"]["state"] == "closed"
    assert readable.exit_code == 0, readable.output
    assert readable.stdout.startswith(f"Usage on {raw['day']}")
    assert re.search(r"^    succeeded +2$", readable.stdout, re.MULTILINE), readable.stdout
    assert re.search(r"^    state +closed$", readable.stdout, re.MULTILINE), readable.stdout


def test_dry_run_prints_the_route_and_cost_and_submits_nothing(stack, db):
    big = imagefleet("submit", "--images", "12", "--dry-run")
    small = imagefleet("submit", "--images", "3", "--dry-run", "--json")

    assert big.exit_code == 0, big.output
    assert big.stdout.startswith("Dry run: 12 prompts would go to the batch lane")
    assert re.search(r"Estimated cost: \$\d+\.\d+ +circuit breaker: closed", big.stdout), big.stdout
    assert "Nothing was submitted." in big.stdout
    plan = json.loads(small.stdout)
    assert (plan["dry_run"], plan["lane"], plan["item_count"]) == (True, "interactive", 3)
    assert no_jobs(db)


# --- the installed script ---------------------------------------------------------------------------


def test_the_installed_script_is_the_same_cli(stack):
    script = Path(sys.executable).parent / "imagefleet"
    assert script.exists(), "the imagefleet script is not installed: run make venv (pip install -e .)"

    result = subprocess.run([str(script), "status", "nope"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", "error: 404 not_found: job nope not found\n")
