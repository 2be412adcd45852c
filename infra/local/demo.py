"""``make demo``: the imagefleet CLI, as a user runs it, against a fresh local stack: a 5-prompt
interactive job and a 12-prompt batch job (examples/), each followed to its end and downloaded
with its manifest and contact sheet into ./out/<job_id>/.

With the Gemini emulator (the default) the functions and the emulator share a 60-per-minute
quota, so the progress shows the shared rate limiter pacing requests, and the emulator's
batches finish in seconds. With GEMINI_API_KEY set and GOOGLE_GEMINI_BASE_URL unset, the same
stack calls the real Gemini API instead (where a batch may take hours: the CLI stops following
after --wait-timeout, and `imagefleet download JOB` fetches it later).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from infra.local.stack import REPO_ROOT, Stack

# The worker's limiter and the emulator's quota agree: 60 requests per minute.
FUNCTION_ENV = {"RATE_LIMIT_REQUESTS": "60", "RATE_LIMIT_IMAGES": "60", "RATE_WINDOW_SECONDS": "60"}
GEMINI_CONFIG = {
    "quotas": {"default": {"rpm": 60, "ipm": 60}},
    "latency": {"mean_ms": 1500, "jitter_ms": 500},
    "batch": {"pending_seconds": 2, "running_seconds": 4},
}
# Cloud Scheduler calls the poller every minute in the cloud; every 2 s here.
SCHEDULER_INTERVAL = 2.0
REAL_GEMINI_WAIT_SECONDS = 600

# (prompt file, lane): the files are in the repository for anyone to run again.
JOBS = [("examples/interactive.jsonl", "interactive"), ("examples/batch.csv", "batch")]
_JOB_ID = re.compile(r"^Submitted job ([0-9a-f]+)")


def use_real_gemini(environ=os.environ) -> bool:
    return bool(environ.get("GEMINI_API_KEY")) and not environ.get("GOOGLE_GEMINI_BASE_URL")


def cli_env(stack: Stack) -> dict[str, str]:
    """What a user's shell needs for the CLI to use this stack: the API, its key, and the GCS
    emulator in place of Cloud Storage (the same variables `make up` prints)."""
    env = {"IMAGEFLEET_API": stack.url("api"), "STORAGE_EMULATOR_HOST": stack.url("gcs")}
    if stack.api_key:
        env["IMAGEFLEET_API_KEY"] = stack.api_key
    return env


def cli_command(prompt_file: str, lane: str, *, real_gemini: bool) -> list[str]:
    command = ["imagefleet", "submit", prompt_file, "--lane", lane, "--wait"]
    if real_gemini:
        command += ["--wait-timeout", str(REAL_GEMINI_WAIT_SECONDS)]
    return command


def run_demo(stack: Stack) -> int:
    target = "the real Gemini API" if not stack.gemini else f"the Gemini emulator at {stack.url('gemini')}"
    env = cli_env(stack)
    print(f"\nLocal stack up; the API is {stack.url('api')}; images come from {target}.")
    print("The imagefleet CLI talks to it with:")
    for key, value in env.items():
        print(f"  export {key}={shlex.quote(value)}")
    ran, job_ids, codes = [], [], []
    for prompt_file, lane in JOBS:
        command = cli_command(prompt_file, lane, real_gemini=not stack.gemini)
        print(f"\n== {lane} lane\n$ {shlex.join(command)}", flush=True)
        code, job_id = _run_cli(command, env)
        ran.append(command)
        codes.append(code)
        if job_id:
            job_ids.append(job_id)
    print("\n== done")
    for job_id in job_ids:
        print(f"  out/{job_id}/    PNGs, manifest.jsonl, contact-sheet.html, contact-sheet.png")
    print("\nThe same against `make up` (its export lines in your shell) or a deployed API "
          "(IMAGEFLEET_API, IMAGEFLEET_API_KEY):")
    for command in ran:
        print(f"  {shlex.join(command)}")
    return 0 if all(code == 0 for code in codes) else 1


def _run_cli(command: list[str], env: dict[str, str]) -> tuple[int, str | None]:
    """Run the installed script (python -m imagefleet where it isn't installed) in the
    repository, so images land in ./out/<job_id>/; its output is passed through as it comes,
    the progress bar included. Its exit code and the job id it printed."""
    script = Path(sys.executable).parent / "imagefleet"
    argv = ([str(script)] if script.exists() else [sys.executable, "-m", "imagefleet"]) + command[1:]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            text=True, bufsize=1)
    job_id = None
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        match = _JOB_ID.match(line)
        job_id = job_id or (match.group(1) if match else None)
    return proc.wait(), job_id
