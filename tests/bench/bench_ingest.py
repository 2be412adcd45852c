"""Benchmark of the batch lane: accepting a 10,000-prompt job, and ingesting large results files.

For each results-file size it runs, on the same file, in separate processes so that peak RSS
is each one's own:
  baseline  the naive approach: files.download() of the whole file into memory,
            then split, parse and decode every line, writing each image to GCS
  poller    our poller (scheduled_poller's code path): the file streamed line by line,
            images written create-only, progress checkpointed to Firestore
and prints MB/s and peak RSS for both. Run with `make bench-ingest`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]

MODEL = "gemini-2.5-flash-image"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- children -----------------------------------------------------------------------------


def child_poller(args) -> None:
    import wiring

    lane = wiring.batch_lane()
    wiring.job_store(), wiring.image_sink(), wiring.genai_client()  # clients built before timing
    before = rss_mb()
    start = time.monotonic()
    summary = lane.reconcile("bench-poller", time.time() + 3600)
    elapsed = time.monotonic() - start
    print(json.dumps({"elapsed": elapsed, "rss_before": before, "peak_rss": peak_rss_mb(), "summary": summary}))


def child_baseline(args) -> None:
    import base64

    import wiring

    client, sink = wiring.genai_client(), wiring.image_sink()
    before = rss_mb()
    start = time.monotonic()
    results = client.files.download(file=args.file)  # the whole file, in memory
    count = 0
    for line in results.decode("utf-8").split("\n"):
        if not line:
            continue
        response = json.loads(line)
        if "response" in response:
            for part in response["response"]["candidates"][0]["content"]["parts"]:
                if "inlineData" in part:
                    data = base64.b64decode(part["inlineData"]["data"])
                    sink.put_image(f"baseline-{args.prefix}/{response['key']}.png", data, "image/png", {})
                    count += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"elapsed": elapsed, "rss_before": before, "peak_rss": peak_rss_mb(), "images": count}))


def run_child(stack_env: dict, *argv: str) -> dict:
    env = {**os.environ, **stack_env, "PYTHONPATH": f"{ROOT}:{ROOT / 'functions'}"}
    out = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the benchmark --------------------------------------------------------------------------


def accept_10k(stack, label: str) -> float:
    body = {"lane": "batch", "requests": [{"prompt": f"catalogue image {i}: a chair, angle {i % 12}"} for i in range(10_000)]}
    start = time.monotonic()
    response = requests.post(f"{stack.url('api')}/v1/jobs", json=body, timeout=300)
    elapsed = time.monotonic() - start
    response.raise_for_status()
    status = requests.get(f"{stack.url('api')}{response.json()['status_url']}?page_size=1", timeout=60).json()
    submitted = sum(1 for b in status["batches"] if b["gemini_batch"])
    print(f"accepted a 10,000-prompt job in {elapsed:.2f}s ({label}; HTTP 202, {len(status['batches'])} batches, "
          f"{submitted} created at Gemini before answering, the rest left to the poller)", flush=True)
    return elapsed


def ingest_size(stack, size_mb: int, line_bytes: int) -> None:
    import wiring
    from core import jobs, submitting
    from core.models import ItemSpec, JobSpec

    base = stack.url("gemini")
    # Padded PNGs of line_bytes; base64 makes each result line about 4/3 of that.
    lines = max(1, int(size_mb * 1e6 / (line_bytes * 4 / 3)))
    requests.post(f"{base}/_emulator/config", json={"image_scale": 0.25, "image_target_bytes": line_bytes,
                                                     "batch": {"pending_seconds": 0, "running_seconds": 0}},
                  timeout=10).raise_for_status()
    spec = JobSpec(tuple(ItemSpec(key=f"i{n:06d}", prompt="a studio photo of a chair") for n in range(lines)), "batch")
    deps = submitting.SubmitDeps(route=submitting.RouteDeps(interactive_threshold=10, batch_available=True),
                                 store=wiring.job_store(), queue=None, clock=wiring.clock(), batch=wiring.batch_lane(),
                                 batch_max_requests=lines)
    job = submitting.submit_job(submitting.Submission(spec, MODEL), deps)
    (intent,) = wiring.job_store().intents_of_job(job.job_id)
    api = wiring.batch_lane().api
    while (info := api.get_batch(intent.gemini_batch)).output_file is None:
        time.sleep(0.5)
    file_bytes = int(wiring.genai_client().files.get(name=info.output_file).size_bytes)
    mb = file_bytes / 1e6

    env = stack.env()
    baseline = run_child(env, "--child-baseline", "--file", info.output_file, "--prefix", job.job_id)
    poller = run_child(env, "--child-poller")
    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(wiring.job_store()), page_size=1)
    for name, r in (("baseline: download whole file, then parse", baseline), ("poller: streamed, checkpointed", poller)):
        print(f"  {mb:7.0f} MB  {name:<42} {mb / r['elapsed']:6.1f} MB/s  peak RSS {r['peak_rss']:6.0f} MB "
              f"(after imports {r['rss_before']:4.0f} MB)", flush=True)
    print(f"           job {status['status']}: {status['counts']['succeeded']}/{lines} images", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000", help="results-file sizes in MB")
    parser.add_argument("--line-bytes", type=int, default=1_000_000, help="PNG bytes per result line")
    parser.add_argument("--child-poller", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_poller:
        child_poller(args)
        return 0
    if args.child_baseline:
        child_baseline(args)
        return 0

    from infra.local import Ports, Stack

    function_env = {"BATCH_MAX_REQUESTS": "1000"}
    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=True, function_env=function_env) as stack:
        os.environ.update(stack.env())
        os.environ.update(function_env)
        # The Firestore emulator is a JVM: its first large write runs before the JIT warms up.
        accept_10k(stack, "first job, cold emulator")
        accept_10k(stack, "second job")
        requests.post(f"{stack.url('gemini')}/_emulator/reset", timeout=30).raise_for_status()
        stack.wipe_firestore()
        for size in [int(s) for s in args.sizes.split(",")]:
            ingest_size(stack, size, args.line_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
