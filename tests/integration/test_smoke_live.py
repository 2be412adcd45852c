"""tools/smoke_live.py (make smoke-live): its no-key path, and its whole run against our emulator
(GOOGLE_GEMINI_BASE_URL), which is the same code path it takes against the real service."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "smoke_live.py"


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "SMOKE_", "GOOGLE_GEMINI"))}
    return subprocess.run([sys.executable, str(SCRIPT)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_without_a_key_it_says_what_it_would_do_and_sends_nothing(gemini_clean):
    done = run({"GOOGLE_GEMINI_BASE_URL": gemini_clean})
    assert done.returncode == 0, done.stderr
    assert "GEMINI_API_KEY is not set; nothing was sent" in done.stdout
    assert "~$0.0780" in done.stdout  # 2 x PRICE_INTERACTIVE_IMAGE_USD
    assert requests.get(f"{gemini_clean}/_emulator/stats", timeout=10).json()["requests_total"] == 0


def test_against_the_emulator_it_generates_batches_records_and_prices(gemini_clean, tmp_path):
    requests.post(f"{gemini_clean}/_emulator/config", timeout=10, json={
        "image_scale": 0.25, "batch": {"pending_seconds": 0.1, "running_seconds": 0.1}}).raise_for_status()
    done = run({"GEMINI_API_KEY": "smoke-secret-key", "GOOGLE_GEMINI_BASE_URL": gemini_clean, "SMOKE_BATCH": "1",
                "SMOKE_RECORD": "1", "SMOKE_RECORD_DIR": str(tmp_path), "SMOKE_POLL_SECONDS": "0.2",
                "PRICE_INTERACTIVE_IMAGE_USD": "0.05", "PRICE_BATCH_IMAGE_USD": "0.01"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("interactive: image/png") == 2
    assert done.stdout.count("finishReason STOP") == 4  # two interactive, two batch lines
    assert "estimated cost: $0.1200" in done.stdout
    recorded = {json.loads(p.read_text())["kind"] for p in tmp_path.glob("*.json")}
    assert recorded >= {"models.generateContent", "files.upload", "batches.create", "batches.get.done",
                        "batch.result_line"}
    text = "".join(p.read_text() for p in tmp_path.glob("*.json"))
    assert "smoke-secret-key" not in text and "batches/" not in text  # ids redacted
    gen = json.loads(next(tmp_path.glob("*generateContent.json")).read_text())["body"]
    image = gen["candidates"][0]["content"]["parts"][-1]["inlineData"]["data"]
    assert len(image) == 16  # cut short


def test_a_failed_check_is_exit_code_1(gemini_clean):
    requests.post(f"{gemini_clean}/_emulator/config", timeout=10,
                  json={"image_scale": 0.25, "faults": {"script": ["no_image"]}}).raise_for_status()
    done = run({"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": gemini_clean})
    assert done.returncode == 1
    assert "no image returned" in done.stderr + done.stdout
