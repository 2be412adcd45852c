"""Benchmark of the interactive lane: throughput against a quota, 429s, lost and duplicated items.

Runs N images through the whole local stack (API -> Firestore -> Pub/Sub -> worker -> Gemini
emulator -> GCS) with the emulator's quota set to Q requests per W-second window and several
concurrent worker deliveries, then a fixed-delay client against the same emulator:
2 concurrent requests, a fixed 15 s delay before each (scaled by W/60), 429s retried after a
doubled delay. Prints one line per strategy. A benchmark, not a test: nothing here asserts
timings; run it with `make bench-interactive`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import requests

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "functions")]

from infra.local import Ports, Stack  # noqa: E402

MODEL = "gemini-2.5-flash-image"


def emulator_config(args) -> dict:
    return {
        "image_scale": 0.25,
        "window_seconds": args.window,
        "quotas": {"default": {"rpm": args.quota, "ipm": args.quota}},
        "latency": {"mean_ms": args.latency_ms, "jitter_ms": args.latency_ms / 3},
    }


def emulator_stats(stack: Stack) -> dict:
    return requests.get(f"{stack.url('gemini')}/_emulator/stats", timeout=10).json()


def reset_emulator(stack: Stack, args) -> None:
    base = stack.url("gemini")
    requests.post(f"{base}/_emulator/reset", timeout=10).raise_for_status()
    requests.post(f"{base}/_emulator/config", json=emulator_config(args), timeout=10).raise_for_status()


def prompts(n: int) -> list[str]:
    return [f"benchmark image {i}: a lighthouse in style {i % 7}" for i in range(n)]


def count_objects(prefix: str, bucket: str) -> int:
    from google.cloud import storage

    client = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    return sum(1 for _ in client.list_blobs(bucket, prefix=prefix))


def run_pipeline(stack: Stack, args) -> dict:
    reset_emulator(stack, args)
    body = {"lane": "interactive", "requests": [{"prompt": p} for p in prompts(args.images)]}
    start = time.monotonic()
    response = requests.post(f"{stack.url('api')}/v1/jobs", json=body, timeout=120)
    response.raise_for_status()
    accepted = time.monotonic() - start
    job_id = response.json()["job_id"]
    deadline = start + args.timeout
    while True:
        status = requests.get(f"{stack.url('api')}/v1/jobs/{job_id}?page_size=1", timeout=30).json()
        if status["status"] in ("succeeded", "partially_succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            print(f"timed out; last status {status['counts']}", file=sys.stderr)
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    stats = emulator_stats(stack)
    succeeded = status["counts"]["succeeded"]
    objects = count_objects(f"{job_id}/", stack.images_bucket) - 1  # less the manifest
    items = requests.get(f"{stack.url('api')}/v1/jobs/{job_id}?page_size=500", timeout=30).json()["items"]
    for item in items:
        if item["attempts"] != 1 or item["state"] != "succeeded":
            print(f"  note: item {item['key']} {item['state']} after {item['attempts']} attempts: {item['error']}",
                  file=sys.stderr)
    return {
        "strategy": f"pipeline ({args.deliveries} deliveries)",
        "images": args.images,
        "succeeded": succeeded,
        "elapsed": elapsed,
        "accepted_s": accepted,
        "429s": stats["by_outcome"].get("429", 0),
        "model_calls_ok": stats["by_outcome"].get("ok", 0),
        "lost": args.images - succeeded,
        "duplicated": max(0, objects - succeeded) + max(0, stats["by_outcome"].get("ok", 0) - succeeded),
        "max_in_window": stats.get("admitted_max_in_any_window"),
    }


def run_baseline(stack: Stack, args) -> dict:
    """A fixed-delay client: 2 concurrent, a 15 s delay before each request, 429s retried after
    a doubled delay."""
    from google import genai
    from google.genai import errors, types

    reset_emulator(stack, args)
    delay = 15.0 * args.window / 60.0
    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=stack.url("gemini")))
    config = types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
    outcomes = {"ok": 0, "lost": 0}

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
                        outcomes["lost"] += 1
                        return
                    wait *= 2  # exponential backoff on 429

    async def main():
        semaphore = asyncio.Semaphore(2)
        await asyncio.gather(*(generate(semaphore, p, delay) for p in prompts(args.images)))

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    stats = emulator_stats(stack)
    return {
        "strategy": "fixed-delay client (2 concurrent, 15 s delay)",
        "images": args.images,
        "succeeded": outcomes["ok"],
        "elapsed": elapsed,
        "accepted_s": None,
        "429s": stats["by_outcome"].get("429", 0),
        "model_calls_ok": stats["by_outcome"].get("ok", 0),
        "lost": args.images - outcomes["ok"],
        "duplicated": 0,
        "max_in_window": stats.get("admitted_max_in_any_window"),
    }


def report(row: dict, args) -> None:
    quota_rate = args.quota / args.window
    throughput = row["succeeded"] / row["elapsed"]
    accepted = f"  accepted in {row['accepted_s']:.2f}s" if row["accepted_s"] is not None else ""
    print(
        f"{row['strategy']:<42} {row['succeeded']:>4}/{row['images']} images in {row['elapsed']:6.1f}s"
        f"  {throughput:5.2f}/s = {throughput / quota_rate:4.2f} of quota"
        f"  429s {row['429s']:>4}  lost {row['lost']}  duplicated {row['duplicated']}"
        f"  max/window {row['max_in_window']}/{args.quota}{accepted}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--quota", type=int, default=12, help="requests (and images) per window")
    parser.add_argument("--window", type=float, default=3.0, help="quota window in seconds (stands for a minute)")
    parser.add_argument("--deliveries", type=int, default=8, help="concurrent worker deliveries")
    parser.add_argument("--latency-ms", type=float, default=300.0, help="emulated model latency")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    function_env = {
        "RATE_LIMIT_REQUESTS": str(args.quota),
        "RATE_LIMIT_IMAGES": str(args.quota),
        "RATE_WINDOW_SECONDS": str(args.window),
        "RATE_CONCURRENCY": str(args.deliveries),
        "MAX_WAIT_SECONDS": "20",
        "GEMINI_TIMEOUT_SECONDS": "30",
    }
    print(f"quota {args.quota} requests / {args.window:g}s window (= {args.quota / args.window:.2f}/s), "
          f"{args.images} images, emulated latency {args.latency_ms:g} ms", flush=True)
    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=True, delivery="relay",
               relay_concurrency=args.deliveries, worker_threads=2 * args.deliveries,
               function_env=function_env, gemini_config=emulator_config(args)) as stack:
        os.environ.update(stack.env())
        report(run_pipeline(stack, args), args)
        if not args.skip_baseline:
            report(run_baseline(stack, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
