"""``make demo``: a 5-prompt interactive job and a 12-prompt batch job through the whole local
stack, PNGs (and each job's manifest) into ./out/<job_id>/.

With the Gemini emulator (the default) the functions and the emulator share a 60-per-minute
quota, so the progress shows the shared rate limiter pacing requests, and the emulator's
batches finish in seconds. With GEMINI_API_KEY set and GOOGLE_GEMINI_BASE_URL unset, the same
stack calls the real Gemini API instead (where a batch may take hours).
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import requests

from infra.local.stack import REPO_ROOT, Stack

OUT_DIR = REPO_ROOT / "out"
TERMINAL = {"succeeded", "partially_succeeded", "failed", "cancelled"}

PROMPTS = [
    {"prompt": "A lighthouse on a cliff at dusk, watercolour", "key": "lighthouse", "aspect_ratio": "16:9"},
    {"prompt": "A red fox asleep in fresh snow", "key": "fox"},
    {"prompt": "A tiny robot watering a bonsai tree", "key": "robot", "aspect_ratio": "3:4"},
    {"prompt": "Isometric city block made of cardboard", "key": "city", "domain": "architecture"},
    {"prompt": "A bowl of ramen seen from above, studio light", "key": "ramen", "aspect_ratio": "4:5"},
]

# The worker's limiter and the emulator's quota agree: 60 requests per minute.
FUNCTION_ENV = {"RATE_LIMIT_REQUESTS": "60", "RATE_LIMIT_IMAGES": "60", "RATE_WINDOW_SECONDS": "60"}
GEMINI_CONFIG = {
    "quotas": {"default": {"rpm": 60, "ipm": 60}},
    "latency": {"mean_ms": 1500, "jitter_ms": 500},
    "batch": {"pending_seconds": 2, "running_seconds": 4},
}
# Cloud Scheduler calls the poller every minute in the cloud; every 2 s here.
SCHEDULER_INTERVAL = 2.0

BATCH_SUBJECTS = ["a paper boat", "a glass apple", "a copper teapot", "a desert cactus", "a snow owl",
                  "a neon koi", "a wooden robot", "a moss castle", "a jazz trumpet", "a tiny volcano",
                  "a lantern fish", "a cloud whale"]
BATCH_PROMPTS = [{"prompt": f"Product shot of {subject}, soft light", "key": f"batch-{i:02d}"}
                 for i, subject in enumerate(BATCH_SUBJECTS)]


def use_real_gemini(environ=os.environ) -> bool:
    return bool(environ.get("GEMINI_API_KEY")) and not environ.get("GOOGLE_GEMINI_BASE_URL")


def run_demo(stack: Stack) -> int:
    api = stack.url("api")
    target = "the real Gemini API" if not stack.gemini else f"the Gemini emulator at {stack.url('gemini')}"
    print(f"\nLocal stack up; the API is {api} (X-API-Key: {stack.api_key}); images come from {target}.")
    results = [_run_job(stack, "interactive", PROMPTS), _run_job(stack, "batch", BATCH_PROMPTS)]
    return 0 if all(results) else 1


def _headers(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.api_key} if stack.api_key else {}


def _run_job(stack: Stack, lane: str, prompts: list[dict]) -> bool:
    api = stack.url("api")
    print(f"\n== {lane} lane: {len(prompts)} prompts")
    started = time.monotonic()
    response = requests.post(f"{api}/v1/jobs", json={"requests": prompts, "lane": lane}, timeout=60,
                             headers=_headers(stack))
    if response.status_code != 202:
        print(f"submit failed: HTTP {response.status_code} {response.text}")
        return False
    job = response.json()
    print(f"Submitted job {job['job_id']}: {job['item_count']} prompts, lane {job['lane']}.")
    status = _follow(api, job["status_url"], started, _headers(stack))
    out = OUT_DIR / job["job_id"]
    saved = _download(stack, status, out)
    _summary(status, saved, time.monotonic() - started)
    print(f"Images in {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return status["status"] == "succeeded"


def _follow(api: str, status_url: str, started: float, headers: dict, timeout: float = 600.0) -> dict:
    last = None
    while True:
        status = requests.get(f"{api}{status_url}", timeout=30, headers=headers).json()
        counts = status["counts"]
        line = (f"  {status['status']:<20} done {counts['succeeded']}/{status['item_count']}"
                f"  failed {counts['failed'] + counts['dead_lettered']}"
                f"  running {counts['running']}  queued {counts['queued']}")
        if status.get("batches"):
            line += "  batches " + ", ".join(
                f"{b['gemini_state'] or b['state']}".removeprefix("BATCH_STATE_").lower() for b in status["batches"])
        if line != last:
            print(f"{line}  ({time.monotonic() - started:4.1f}s)", flush=True)
            last = line
        if status["status"] in TERMINAL or time.monotonic() - started > timeout:
            return status
        time.sleep(0.5)


def _download(stack: Stack, status: dict, out: Path) -> dict[str, Path]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from PIL import Image

    # The stack's GCS emulator, named explicitly: this process's environment is left alone.
    client = storage.Client(project=stack.project, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": stack.url("gcs")})
    out.mkdir(parents=True, exist_ok=True)
    saved = {}
    if status.get("manifest_uri"):
        bucket, _, name = status["manifest_uri"].removeprefix("gs://").partition("/")
        (out / "manifest.jsonl").write_bytes(client.bucket(bucket).blob(name).download_as_bytes())
    for item in status["items"]:
        if not item["gcs_uri"]:
            continue
        bucket, _, name = item["gcs_uri"].removeprefix("gs://").partition("/")
        data = client.bucket(bucket).blob(name).download_as_bytes()
        Image.open(io.BytesIO(data)).verify()  # a real PNG, or this raises
        path = out / f"{item['key']}.png"
        path.write_bytes(data)
        saved[item["key"]] = path
    return saved


def _summary(status: dict, saved: dict[str, Path], elapsed: float) -> None:
    from PIL import Image

    print(f"\nJob {status['job_id']}: {status['status']} in {elapsed:.1f}s")
    for item in status["items"]:
        if item["key"] in saved:
            with Image.open(saved[item["key"]]) as image:
                detail = f"{image.width}x{image.height}  {saved[item['key']].stat().st_size:>7} bytes"
        else:
            detail = item["error"] or ""
        print(f"  {item['key']:<12} {item['state']:<14} attempts {item['attempts']}  {detail}")
