"""Benchmark of the batch lane: accepting a 10,000-prompt job, and ingesting large results files.

For each results-file size it runs, on the same file, in separate processes so that peak RSS
is each one's own:
  baseline  the naive approach: files.download() of the whole file into memory,
            then split, parse and decode every line, writing each image to GCS
  ceiling   the raw decode+upload rate: the file's lines read from a local copy (no download,
            no JSON parser, no image checks, no Firestore), each line's base64 found by two
            byte searches, decoded by the poller's decoder (pybase64) and uploaded create-only
            by as many threads as the poller uses, to the same GCS emulator
  poller    our poller (the code path of the batch-nudges push that ingests a finished
            batch, BatchLane.reconcile_intent): the file streamed line by line,
            images decoded, checked and written create-only, progress checkpointed to Firestore
and prints MB/s and peak RSS for each, the poller's fraction of the ceiling and its ratio to
the baseline. Run with `make bench-ingest`; `ARGS=--check` exits 1 when the poller is under
CEILING_TARGET of the ceiling or BASELINE_TARGET times the baseline at any size, when its peak
RSS grows with the file, or when a run fails or times out.
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
CEILING_TARGET = 0.9  # the poller's MB/s over the ceiling's
BASELINE_TARGET = 1.3  # the poller's MB/s over the baseline's
RSS_GROWTH_LIMIT_MB = 64  # the poller's peak RSS at the largest size over that at the smallest


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    """User and system CPU time of this process, all its threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- children -----------------------------------------------------------------------------


def child_poller(args) -> None:
    import wiring

    wiring.warm_up("scheduled_poller")  # before timing, as on an instance that has started
    lane = wiring.deps().batch_lane
    streamed = []  # (start, end) of each download: the rest of the poller's time is fixed per batch
    stream_file = lane.api.stream_file

    def timed_stream(*a, **kw):
        began = time.monotonic()
        try:
            return stream_file(*a, **kw)
        finally:
            streamed.append((began, time.monotonic()))

    lane.api.stream_file = timed_stream
    finalized = []  # the job's finalisation (its manifest): once per job, whatever its batches
    finalize_job = lane.finalize_job

    def timed_finalize(*a, **kw):
        began = time.monotonic()
        try:
            return finalize_job(*a, **kw)
        finally:
            finalized.append(time.monotonic() - began)

    lane.finalize_job = timed_finalize
    before = rss_mb()
    profile = os.environ.get("BENCH_INGEST_PROFILE")  # a path: cProfile of the poller's thread there
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu = time.monotonic(), cpu_seconds()
    # What the batch-nudges push runs for a finished batch (the stack's topic is set, so a tick
    # would only publish the nudge and the stack's own poller would ingest the file).
    summary = lane.reconcile_intent(args.intent, "bench-poller", time.time() + 3600)
    elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "rss_before": before, "peak_rss": peak_rss_mb(),
                      "summary": summary, "streamed": sum(end - began for began, end in streamed),
                      "finalized": sum(finalized)}))


def child_baseline(args) -> None:
    import base64

    import wiring

    client, sink = wiring.genai_client(), wiring.image_sink()
    before = rss_mb()
    start, cpu = time.monotonic(), cpu_seconds()
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
    elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "rss_before": before, "peak_rss": peak_rss_mb(), "images": count}))


def child_ceiling(args) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pybase64

    import wiring
    from core.jsonl import LineSplitter

    sink, threads = wiring.image_sink(), wiring.settings().batch_upload_concurrency
    api = wiring.batch_lane().api  # clients built before timing, as in the other runs
    slots = threading.BoundedSemaphore(2 * threads)  # the poller's bound on lines in flight
    pool = ThreadPoolExecutor(threads)
    uploaded, failures = [], []

    def upload(key: str, encoded: bytes) -> None:
        try:
            sink.put_image(f"ceiling-{args.prefix}/{key}.png", pybase64.b64decode(encoded, validate=True), "image/png", {})
            uploaded.append(key)
        except Exception as e:  # noqa: BLE001 - reported, and the run counts as failed
            failures.append(repr(e))
        finally:
            slots.release()

    def on_line(line: bytes) -> None:
        start = line.find(b'"data":"') + len(b'"data":"')
        at = line.rfind(b'"key":"') + len(b'"key":"')
        if start > 7 and at > 6:
            slots.acquire()
            pool.submit(upload, line[at:line.index(b'"', at)].decode(), line[start:line.index(b'"', start)])

    before = rss_mb()
    start, cpu = time.monotonic(), cpu_seconds()
    splitter = LineSplitter(on_line)
    if args.local:
        with open(args.local, "rb") as fh:
            while chunk := fh.read(1 << 20):
                splitter.write(chunk)
    else:  # streamed from the Gemini emulator, as the poller reads it
        api.stream_file(args.file, splitter)
    splitter.close()
    pool.shutdown(wait=True)
    elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu
    if failures:
        raise SystemExit(f"{len(failures)} uploads failed, e.g. {failures[0]}")
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "rss_before": before, "peak_rss": peak_rss_mb(),
                      "images": len(uploaded)}))


def run_child(stack_env: dict, timeout: float, *argv: str) -> dict:
    """One child's figures, or {"failed": reason} when it fails or outlasts `timeout`."""
    env = {**os.environ, **stack_env, "PYTHONPATH": f"{ROOT}:{ROOT / 'functions'}"}
    command = [sys.executable, __file__, *argv]
    spy = os.environ.get("BENCH_INGEST_PYSPY")  # a folder: a py-spy profile of every child's threads there
    if spy:
        out_file = Path(spy) / f"{argv[0].removeprefix('--child-')}-{time.monotonic_ns()}.txt"
        command = [os.environ.get("PY_SPY", "py-spy"), "record", "--threads", "--idle", "--format", "raw",
                   "--rate", "200", "--output", str(out_file), "--", *command]
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f}s"}
    if out.returncode != 0:
        return {"failed": f"exit {out.returncode}: {out.stderr[-3000:]}"}
    # The child's figures are its last JSON line (py-spy, when used, prints after it).
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def download_copy(name: str, path: Path) -> None:
    """The results file on local disk, for the ceiling (not timed)."""
    import wiring

    with path.open("wb") as fh:
        wiring.batch_lane().api.stream_file(name, fh)


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


def ingest_size(stack, size_mb: int, line_bytes: int, timeout: float) -> dict:
    """One size's runs; returns its figures (and a list of failures) for the checks."""
    import tempfile

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
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        local = Path(tmp) / "results.jsonl"
        download_copy(info.output_file, local)
        runs = {
            "baseline": run_child(env, timeout, "--child-baseline", "--file", info.output_file, "--prefix", job.job_id),
            "local": run_child(env, timeout, "--child-ceiling", "--local", str(local), "--prefix", f"l{job.job_id}"),
            "ceiling": run_child(env, timeout, "--child-ceiling", "--file", info.output_file, "--prefix", job.job_id),
        }
    runs["poller"] = run_child(env, timeout, "--child-poller", "--intent", intent.intent_id)
    status = jobs.get_job_status(job.job_id, jobs.StatusDeps(wiring.job_store()), page_size=1)
    labels = {"baseline": "baseline: download whole, then parse", "local": "decode+upload of local lines",
              "ceiling": "ceiling: streamed, decode+upload", "poller": "poller: streamed, checkpointed"}
    failures = []
    for name, r in runs.items():
        if "failed" in r:
            failures.append(f"{mb:.0f} MB {name}: {r['failed']}")
            print(f"  {mb:7.0f} MB  {labels[name]:<42} FAILED {r['failed'][-500:]}", flush=True)
            continue
        r["mb_s"] = mb / r["elapsed"]
        print(f"  {mb:7.0f} MB  {labels[name]:<38} {r['mb_s']:6.1f} MB/s  CPU {r['cpu'] / mb * 1000:5.1f} ms/MB  "
              f"peak RSS {r['peak_rss']:5.0f} MB (after imports {r['rss_before']:4.0f} MB)", flush=True)
    succeeded = status["counts"]["succeeded"]
    print(f"           job {status['status']}: {succeeded}/{lines} images", flush=True)
    if succeeded != lines and "summary" in runs["poller"]:
        print(f"           poller tick: {runs['poller']['summary']}", flush=True)
    if succeeded != lines:
        failures.append(f"{mb:.0f} MB: {succeeded}/{lines} images")
    poller = runs["poller"]
    if "mb_s" in poller and poller.get("streamed"):
        print(f"           poller's download loop {mb / poller['streamed']:.1f} MB/s; "
              f"{poller['elapsed'] - poller['streamed']:.2f}s outside it (the reads before, the last "
              f"checkpoint, and {poller['finalized']:.2f}s of the job's finalisation)", flush=True)
    if "mb_s" in poller:
        if "mb_s" in runs["local"]:
            print(f"           poller / decode+upload of local lines: {poller['mb_s'] / runs['local']['mb_s']:.2f}",
                  flush=True)
        for name, target in (("ceiling", CEILING_TARGET), ("baseline", BASELINE_TARGET)):
            if "mb_s" not in runs[name]:
                continue
            ratio = poller["mb_s"] / runs[name]["mb_s"]
            met = "met" if ratio >= target else "MISSED"
            print(f"           poller / {name}: {ratio:.2f} (target {target}: {met})", flush=True)
            if ratio < target:
                failures.append(f"{mb:.0f} MB: poller / {name} {ratio:.2f} < {target}")
    return {"mb": mb, "poller_peak_rss": poller.get("peak_rss"), "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000", help="results-file sizes in MB")
    parser.add_argument("--line-bytes", type=int, default=1_000_000, help="PNG bytes per result line")
    parser.add_argument("--child-poller", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--local", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed or a run fails or times out")
    parser.add_argument("--no-accept", action="store_true", help="skip the 10,000-prompt accept runs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to one run")
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--intent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_poller:
        child_poller(args)
        return 0
    if args.child_baseline:
        child_baseline(args)
        return 0
    if args.child_ceiling:
        child_ceiling(args)
        return 0

    from infra.local import Ports, Stack
    from tests.bench.warm_up import warm_firestore

    function_env = {"BATCH_MAX_REQUESTS": "1000"}
    # No Gemini webhooks: their nudge would have the stack's poller ingest each file before the runs.
    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=True, function_env=function_env,
               gemini_webhooks=False) as stack:
        os.environ.update(stack.env())
        os.environ.update(function_env)
        if not args.no_accept:
            # The Firestore emulator is a JVM: its first large write runs before the JIT warms up.
            accept_10k(stack, "first job, cold emulator")
            accept_10k(stack, "second job")
            requests.post(f"{stack.url('gemini')}/_emulator/reset", timeout=30).raise_for_status()
            stack.wipe_firestore()
        print(f"Firestore emulator warmed up in {warm_firestore():.1f}s", flush=True)
        results = [ingest_size(stack, int(size), args.line_bytes, args.timeout) for size in args.sizes.split(",")]
    failures = [f for r in results for f in r["failures"]]
    peaks = [r["poller_peak_rss"] for r in results if r["poller_peak_rss"] is not None]
    if len(peaks) > 1 and peaks[-1] - peaks[0] > RSS_GROWTH_LIMIT_MB:
        failures.append(f"poller peak RSS grew {peaks[-1] - peaks[0]:.0f} MB from the smallest file to the largest")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs", flush=True)
    for failure in failures:
        print(f"MISSED: {failure}", flush=True)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
