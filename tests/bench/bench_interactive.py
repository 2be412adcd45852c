"""Benchmark of the interactive lane: throughput against a quota, lost and duplicated items.

For each quota Q (requests per minute, default 10, 60, 300 and 1,000) it starts the whole local
stack (API -> Firestore -> Pub/Sub -> worker -> Gemini emulator -> GCS), sets the emulator's
quota and the shared limiter to Q requests per window, submits one interactive job and waits
for it. Model latency is emulated (default 3 s +- 1 s, as image models take seconds).

Before the job, the Firestore emulator is warmed up (tests/bench/warm_up.py: a JVM whose first
large commits run before its JIT has compiled them, a cost only the local stack has).

Scaling, so that the bench takes a few minutes: each quota keeps its Q requests per window,
but the window is shortened to Q / 10 seconds, clamped to 12..60 s (10 and 60 per minute:
12 s; 300: 30 s; 1,000: 60 s, unscaled), so rates are 0.8, 5, 10 and 16.7 requests/s. Each
run lasts about --seconds at the quota and at least 1.5 windows, so a window can fill.

Printed per quota:
  pacing       sends per second between the first and the last send, / the quota's rate: what
               the limiter achieves once the pipeline runs (--check target: >= 0.97);
  end to end   images / (submit .. job done), / the quota's rate: includes the fixed costs
               printed beside it (time to first send, and the last image's model latency)
               (--check target: >= 0.97, what a caller sees);
  first send   seconds from submit to the emulator's first request;
  lost, duplicated, most admitted in any window (the emulator's exact sliding count);
  limiter reads and writes per image: counted by the worker's FirestoreSlotStore, as last
               logged (at its last block claim).

--baseline adds, for each quota, a client with no shared limiter: 2 concurrent requests,
a fixed delay before each (15 s scaled to the window), doubled after each 429.
`--check` exits 1 when a target is missed. A benchmark, not a test: `make bench-interactive`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

import requests

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "functions")]

from infra.local import Ports, Stack  # noqa: E402
from tests.bench.warm_up import warm_firestore  # noqa: E402

MODEL = "gemini-2.5-flash-image"
TARGET_RATIO = 0.97
POLL_SECONDS = 0.1


def window_for(quota: int) -> float:
    return min(60.0, max(12.0, quota / 10.0))


def emulator_config(quota: int, window: float, args) -> dict:
    return {
        "image_scale": 0.25,
        "window_seconds": window,
        "quotas": {"default": {"rpm": quota, "ipm": quota}},
        "latency": {"mean_ms": args.latency_ms, "jitter_ms": args.jitter_ms},
    }


def emulator_stats(stack: Stack) -> dict:
    return requests.get(f"{stack.url('gemini')}/_emulator/stats", timeout=10).json()


def prompts(n: int) -> list[str]:
    return [f"benchmark image {i}: a lighthouse in style {i % 7}" for i in range(n)]


def count_objects(prefix: str, bucket: str) -> int:
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    return sum(1 for _ in client.list_blobs(bucket, prefix=prefix))


def limiter_counts(stack: Stack) -> tuple[int, int]:
    """The worker's last logged limiter reads and writes (see FirestoreSlotStore)."""
    reads = writes = 0
    for line in stack.log_path("worker").read_text(errors="replace").splitlines():
        if '"limiter_reads"' in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            reads, writes = entry["limiter_reads"], entry["limiter_writes"]
    return reads, writes


def wait_for_job(stack: Stack, job_id: str, images: int, start: float, timeout: float) -> dict:
    """Poll the emulator (first and last send) and the job (done) until the job ends."""
    first_send = last_send = None
    next_status = 0.0
    while True:
        now = time.monotonic()
        sent = emulator_stats(stack)["requests_total"]
        if sent and first_send is None:
            first_send = now
        if sent >= images and last_send is None:
            last_send = now
        if now >= next_status:
            status = requests.get(f"{stack.url('api')}/v1/jobs/{job_id}?page_size=1", timeout=30).json()
            if status["status"] in ("succeeded", "partially_succeeded", "failed", "cancelled"):
                return {"status": status, "first_send": first_send, "last_send": last_send or now, "done": now}
            next_status = now + 0.5
        if now > start + timeout:
            print(f"timed out; last status {status['counts']}", file=sys.stderr)
            return {"status": status, "first_send": first_send, "last_send": last_send or now, "done": now}
        time.sleep(POLL_SECONDS)


def run_quota(quota: int, args) -> dict:
    window = window_for(quota)
    rate = quota / window
    images = max(math.ceil(rate * args.seconds), math.ceil(1.5 * quota))
    latency = (args.latency_ms + args.jitter_ms) / 1000.0
    # Leases for every call in flight at the quota (Little's law, with the slowest latency and
    # half a second for the pipeline around the call), and a quarter more deliveries so a freed
    # lease is taken at once: the sizing of infra/terraform/sizing.tf.
    leases = math.ceil(rate * (latency + 0.5))
    deliveries = leases + math.ceil(leases / 4)
    function_env = {
        "RATE_LIMIT_REQUESTS": str(quota),
        "RATE_LIMIT_IMAGES": str(quota),
        "RATE_WINDOW_SECONDS": str(window),
        "RATE_CONCURRENCY": str(leases),
        "MAX_WAIT_SECONDS": "20",
        "GEMINI_TIMEOUT_SECONDS": "30",
        "WARM_UP_CLIENTS": "false" if args.no_warm_up else "true",
    }
    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=True, delivery="relay",
               relay_concurrency=deliveries, worker_threads=deliveries + 4,
               function_env=function_env, gemini_config=emulator_config(quota, window, args)) as stack:
        os.environ.update(stack.env())
        warmed = warm_firestore()
        row = run_pipeline(stack, images, args)
        row["warm_up_s"] = warmed
        if args.baseline:
            base = run_baseline(stack, quota, window, min(images, 2 * quota), args)
        else:
            base = None
    row.update(quota=quota, window=window, rate=rate, leases=leases, deliveries=deliveries)
    return row if base is None else {**row, "baseline": base}


def run_pipeline(stack: Stack, images: int, args) -> dict:
    body = {"lane": "interactive", "requests": [{"prompt": p} for p in prompts(images)]}
    start = time.monotonic()
    response = requests.post(f"{stack.url('api')}/v1/jobs", json=body, timeout=120)
    response.raise_for_status()
    accepted = time.monotonic() - start
    job_id = response.json()["job_id"]
    seen = wait_for_job(stack, job_id, images, start, args.timeout)
    stats = emulator_stats(stack)
    succeeded = seen["status"]["counts"]["succeeded"]
    objects = count_objects(f"{job_id}/", stack.images_bucket) - 1  # less the manifest
    ok_calls = stats["by_outcome"].get("ok", 0)
    reads, writes = limiter_counts(stack)
    first = seen["first_send"] or seen["done"]
    return {
        "images": images,
        "succeeded": succeeded,
        "elapsed": seen["done"] - start,
        "accepted_s": accepted,
        "first_send_s": first - start,
        "send_span": max(seen["last_send"] - first, 1e-9),
        "429s": stats["by_outcome"].get("429", 0),
        "lost": images - succeeded,
        "duplicated": max(0, objects - succeeded) + max(0, ok_calls - succeeded),
        "max_in_window": stats.get("admitted_max_in_any_window") or 0,
        "limiter_reads": reads,
        "limiter_writes": writes,
    }


def run_baseline(stack: Stack, quota: int, window: float, images: int, args) -> dict:
    """No shared limiter: 2 concurrent requests, a fixed delay before each, doubled on a 429."""
    from google import genai
    from google.genai import errors, types

    base = stack.url("gemini")
    requests.post(f"{base}/_emulator/reset", timeout=10).raise_for_status()
    requests.post(f"{base}/_emulator/config", json=emulator_config(quota, window, args), timeout=10).raise_for_status()
    delay = 15.0 * window / 60.0
    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=base))
    config = types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
    outcomes = {"ok": 0}

    async def generate(semaphore, prompt, wait):
        async with semaphore:
            while True:
                await asyncio.sleep(wait)
                try:
                    await client.aio.models.generate_content(model=MODEL, contents=prompt, config=config)
                    outcomes["ok"] += 1
                    return
                except errors.APIError as e:
                    if e.code != 429:
                        return
                    wait *= 2

    async def main():
        semaphore = asyncio.Semaphore(2)
        await asyncio.gather(*(generate(semaphore, p, delay) for p in prompts(images)))

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    stats = emulator_stats(stack)
    return {"images": images, "succeeded": outcomes["ok"], "elapsed": elapsed,
            "429s": stats["by_outcome"].get("429", 0), "max_in_window": stats.get("admitted_max_in_any_window")}


def pacing(row: dict) -> float:
    return (row["images"] - 1) / row["send_span"] / row["rate"]


def end_to_end(row: dict) -> float:
    return row["succeeded"] / row["elapsed"] / row["rate"]


def report(row: dict) -> None:
    per_image = max(row["succeeded"], 1)
    print(
        f"{row['quota']:>5}/min (window {row['window']:g}s, {row['rate']:.2f}/s, {row['leases']} leases)"
        f"  {row['succeeded']:>4}/{row['images']} in {row['elapsed']:6.1f}s"
        f"  pacing {pacing(row):4.2f}  end to end {end_to_end(row):4.2f}"
        f"  first send {row['first_send_s']:4.1f}s (accepted {row['accepted_s']:.1f}s; Firestore warmed"
        f" in {row['warm_up_s']:.1f}s before)"
        f"  lost {row['lost']}  duplicated {row['duplicated']}  429s {row['429s']}"
        f"  most in a window {row['max_in_window']}/{row['quota']}"
        f"  limiter reads {row['limiter_reads'] / per_image:.2f}/image writes {row['limiter_writes'] / per_image:.2f}/image",
        flush=True,
    )
    if "baseline" in row:
        b = row["baseline"]
        print(f"      fixed-delay client (2 concurrent, doubled back-off): {b['succeeded']}/{b['images']} in "
              f"{b['elapsed']:.1f}s = {b['succeeded'] / b['elapsed'] / row['rate']:.2f} of quota, "
              f"429s {b['429s']}, most in a window {b['max_in_window']}/{row['quota']}", flush=True)


def misses(row: dict) -> list[str]:
    found = []
    if pacing(row) < TARGET_RATIO:
        found.append(f"pacing {pacing(row):.3f} < {TARGET_RATIO}")
    if end_to_end(row) < TARGET_RATIO:
        found.append(f"end to end {end_to_end(row):.3f} < {TARGET_RATIO}")
    if row["lost"] or row["duplicated"]:
        found.append(f"lost {row['lost']}, duplicated {row['duplicated']}")
    if row["max_in_window"] > row["quota"]:
        found.append(f"{row['max_in_window']} admitted in one window > {row['quota']}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quotas", default="10,60,300,1000", help="requests (and images) per minute")
    parser.add_argument("--seconds", type=float, default=60.0, help="run length at the quota, per quota")
    parser.add_argument("--latency-ms", type=float, default=3000.0, help="emulated model latency, mean")
    parser.add_argument("--jitter-ms", type=float, default=1000.0, help="emulated model latency, jitter")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-warm-up", action="store_true", help="build clients on the first delivery")
    parser.add_argument("--baseline", action="store_true", help="also run the fixed-delay client")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    print(f"load: {os.getloadavg()}; latency {args.latency_ms:g} +- {args.jitter_ms:g} ms", flush=True)
    failed = []
    for quota in (int(q) for q in args.quotas.split(",")):
        row = run_quota(quota, args)
        report(row)
        failed += [f"{quota}/min: {m}" for m in misses(row)]
    print(f"load: {os.getloadavg()}", flush=True)
    for line in failed:
        print(f"MISSED {line}", flush=True)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
