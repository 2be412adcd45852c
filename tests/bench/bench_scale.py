"""Benchmark of one very large batch job through the whole local stack.

One job of --prompts prompts (default 100,000) goes through the real functions under
functions-framework, the Firestore, Pub/Sub and GCS emulators and our Gemini emulator (batch
turnaround near zero, tiny images, large batches, a 1 s scheduler), and it prints one table:
time to 202, time until every item exists (the job leaves `accepting`), time until every image
is in GCS, peak RSS of each function process, Firestore reads and writes per image (each
function process logs its totals, FIRESTORE_OPS_LOG_SECONDS, functions/ops_log.py), and lost and
duplicated images (object names compared with the keys). Then an acceptance curve: time to 202
at 10, 1,000, 10,000 and 100,000 prompts, each job cancelled once its items exist.

The job is sent either as a JSONL file in the stack's sources bucket (`--source gcs`, the
default when the functions accept `{"source": "gs://..."}`), or as request bodies (`--source
body`): bodies are capped at MAX_ITEMS_PER_JOB, so a larger job goes as several jobs of that size,
one after the other, and the curve's sizes past the cap are refused (their status is printed).

`--no-images --prompts 1000000` only accepts the job and waits until every item exists
(the emulator refuses every batch create with a 429, so nothing is generated), and prints the
time to 202, the expansion time and rate, and peak RSS. `--check` exits 1 when an image is lost
or duplicated, a phase times out, or the time to 202 at the curve's largest size is more than
3x that at its smallest. Run with `make bench-scale ARGS=...`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]

CURVE = (10, 1_000, 10_000, 100_000)
CURVE_FLATNESS = 3.0  # time to 202 at the largest size over that at the smallest
FUNCTIONS = ("api", "worker", "poller", "webhooks")
OPS_LOG_SECONDS = 1.0
TERMINAL = ("succeeded", "partially_succeeded", "failed", "cancelled")


def prompt_lines(count: int, prefix: str):
    """(key, prompt) of each prompt; the keys name the image objects."""
    for i in range(count):
        # Twelve distinct prompts: the Gemini emulator renders each once and reuses it, so its CPU
        # goes to the pipeline under test rather than to drawing images.
        yield f"{prefix}{i:07d}", f"catalogue image: a chair, angle {i % 12}"


# --- the stack ----------------------------------------------------------------------------


def stack_settings(args) -> tuple[dict, dict]:
    """The functions' environment and the Gemini emulator's config for a fast batch turnaround."""
    function_env = {
        "BATCH_MAX_REQUESTS": str(args.batch_requests),
        # Tiny images: the batch size is bounded by requests, not by the expected results-file size.
        "BATCH_EXPECTED_IMAGE_BYTES": "10000",
        "FIRESTORE_OPS_LOG_SECONDS": str(OPS_LOG_SECONDS),
        "MAX_ITEMS_PER_JOB": str(args.max_items) if args.max_items else "",
        # Firestore's ramp (500 writes/s, +50% every 5 min) paces a real database's new key range; the
        # emulator has none, so the bench measures the pipeline, and docs/benchmarks.md the ramp's cost.
        "EXPAND_RAMP_START_PER_SECOND": "1000000",
    }
    batch = {"pending_seconds": 0, "running_seconds": 0, "max_concurrent_batches": 0}
    if args.no_images:
        # Every batch create is refused with a 429 (the lane backs off, nothing is generated).
        batch["max_enqueued_requests"] = 1
    gemini = {"image_scale": 0.02, "seed": 1, "batch": batch}
    return {k: v for k, v in function_env.items() if v}, gemini


PROJECT = "demo-imagefleet-bench"


def sources_bucket(stack) -> str | None:
    """The bucket the functions read gs:// sources from (None: they read none)."""
    if not (ROOT / "functions" / "sources.py").exists():
        return None
    return getattr(stack, "sources_bucket", None)


def upload_source(stack, count: int, prefix: str) -> str:
    """A JSONL file of `count` prompts in the sources bucket; its gs:// URI (not timed)."""
    import tempfile

    from google.cloud import storage

    bucket = sources_bucket(stack)
    name = f"bench/{prefix}{count}.jsonl"
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as fh:
        for key, prompt in prompt_lines(count, prefix):
            fh.write(json.dumps({"key": key, "prompt": prompt}) + "\n")
        fh.flush()
        client = storage.Client(project=stack.project)
        client.bucket(bucket).blob(name).upload_from_filename(fh.name, content_type="application/jsonl")
    return f"gs://{bucket}/{name}"


# --- submitting ---------------------------------------------------------------------------


def post_job(stack, body: dict) -> tuple[float, requests.Response]:
    start = time.monotonic()
    response = requests.post(f"{stack.url('api')}/v1/jobs", json=body, timeout=600)
    return time.monotonic() - start, response


def submit(stack, count: int, prefix: str, source: str, max_items: int) -> dict:
    """Submit `count` prompts; {"jobs": [job ids], "to_202": seconds, "keys": [(job, key)]}.
    Bodies: as jobs of at most `max_items`, one after the other (to_202 is their sum)."""
    if source == "gcs":
        uri = upload_source(stack, count, prefix)
        elapsed, response = post_job(stack, {"source": uri, "lane": "batch"})
        response.raise_for_status()
        job = response.json()["job_id"]
        return {"jobs": [job], "to_202": elapsed, "keys": [(job, k) for k, _ in prompt_lines(count, prefix)],
                "posts": [elapsed]}
    lines = list(prompt_lines(count, prefix))
    jobs, keys, posts = [], [], []
    for at in range(0, count, max_items):
        chunk = lines[at:at + max_items]
        body = {"lane": "batch", "requests": [{"key": k, "prompt": p} for k, p in chunk]}
        elapsed, response = post_job(stack, body)
        response.raise_for_status()
        job = response.json()["job_id"]
        jobs.append(job)
        keys += [(job, k) for k, _ in chunk]
        posts.append(elapsed)
    return {"jobs": jobs, "to_202": sum(posts), "keys": keys, "posts": posts}


SLOWEST_STATUS_READ = [0.0]  # seconds: the slowest GET /v1/jobs/{id} of the run, reported at the end


def job_status(stack, job: str) -> dict | None:
    """The job's status; None when the read failed or took over 300 s (reported, then polled
    again: a slow read is a finding, not the end of the run)."""
    started = time.monotonic()
    try:
        response = requests.get(f"{stack.url('api')}/v1/jobs/{job}?page_size=0", timeout=300)
        response.raise_for_status()
        return response.json()
    except requests.RequestException as e:
        print(f"  ... status read of job {job} failed after {time.monotonic() - started:.0f}s: {e}", flush=True)
        return None
    finally:
        SLOWEST_STATUS_READ[0] = max(SLOWEST_STATUS_READ[0], time.monotonic() - started)


def settled_status(stack, job: str) -> dict:
    """The job's status, read again until a read succeeds (each failure is printed)."""
    while (status := job_status(stack, job)) is None:
        time.sleep(1.0)
    return status


def wait_for(stack, jobs: list[str], done, timeout: float, label: str) -> float | None:
    """Seconds until done(status) holds for every job (polled every second), None on timeout."""
    start, last_print, pending = time.monotonic(), 0.0, list(jobs)
    while pending:
        read = {job: job_status(stack, job) for job in pending}
        statuses = {job: status for job, status in read.items() if status is not None}
        pending = [job for job in pending if job not in statuses or not done(statuses[job])]
        now = time.monotonic()
        if now - last_print >= 15 and pending and statuses and pending[0] in statuses:
            counts = {k: sum(s["counts"][k] for s in statuses.values()) for k in ("queued", "succeeded", "failed")}
            counts.update({k: n for k in ("running", "dead_lettered", "cancelled")
                           if (n := sum(s["counts"].get(k, 0) for s in statuses.values()))})
            items = sum((s.get("expansion") or {}).get("items_created", s["item_count"]) for s in statuses.values())
            print(f"  ... {label}: {now - start:.0f}s, {len(pending)} job(s) left, {statuses[pending[0]]['status']}; "
                  f"of theirs: {items:,} items created, {counts}", flush=True)
            last_print = now
        if pending and now - start > timeout:
            return None
        if pending:
            time.sleep(1.0)
    return time.monotonic() - start


# --- figures ------------------------------------------------------------------------------


def group_peak_rss_mb(stack, name: str) -> float:
    """The largest VmHWM among a stack process and its children (the process group: gunicorn's
    master and the worker it forks, or gcloud's wrapper and the emulator's JVM)."""
    from infra.local.stack import _group_members

    pid = stack.processes[name].pid
    peaks = [0]
    for member in _group_members(pid) if pid else []:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
        except OSError:
            continue
    return max(peaks) / 1024


def logged_ops(stack, name: str) -> dict:
    """A function's Firestore operations so far: the last logged totals of each of its pids, summed
    (and under "by_collection", {"items.reads": n, ...})."""
    last: dict[int, dict] = {}
    try:
        text = stack.log_path(name).read_text(errors="replace")
    except OSError:
        return {"reads": 0, "writes": 0, "deletes": 0, "by_collection": {}}
    for line in text.splitlines():
        if '"firestore_ops"' not in line:
            continue
        try:
            ops = json.loads(line)["firestore_ops"]
        except (ValueError, KeyError):
            continue  # a line cut by a crash
        last[ops["pid"]] = ops
    totals: dict = {kind: sum(o[kind] for o in last.values()) for kind in ("reads", "writes", "deletes")}
    by_collection: dict[str, int] = {}
    for o in last.values():
        for name_kind, n in o.get("by_collection", {}).items():
            by_collection[name_kind] = by_collection.get(name_kind, 0) + n
    totals["by_collection"] = by_collection
    return totals


def settled_ops(stack) -> dict[str, dict[str, int]]:
    """Every function's totals, read once their logging threads have had two periods to log the
    last changes (the poller's ticks keep adding reads: these are the totals as of now)."""
    time.sleep(2 * OPS_LOG_SECONDS)
    return {name: logged_ops(stack, name) for name in FUNCTIONS if name in stack.processes}


def lost_and_duplicated(stack, keys: list[tuple[str, str]]) -> tuple[int, int, int]:
    """(objects, lost, duplicated): a key with no image object is lost; every image object past
    the first of a key, and every object that is no key's image nor a manifest, is duplicated."""
    from google.cloud import storage

    expected = {f"{job}/{key}" for job, key in keys}
    found: dict[str, int] = {}
    stray = objects = 0
    client = storage.Client(project=stack.project)
    for job in sorted({job for job, _ in keys}):
        for blob in client.list_blobs(stack.images_bucket, prefix=f"{job}/"):
            if blob.name.rsplit("/", 1)[-1].startswith("manifest"):
                continue
            objects += 1
            stem = blob.name.rsplit(".", 1)[0]
            if stem in expected:
                found[stem] = found.get(stem, 0) + 1
            else:
                stray += 1
    lost = len(expected) - len(found)
    if lost:
        explain_lost(stack, sorted(expected - set(found))[:5])
    return objects, lost, stray + sum(n - 1 for n in found.values())


def explain_lost(stack, names: list[str]) -> None:
    """Print what Firestore holds of each lost image's item, and which batch intents name it."""
    from google.cloud import firestore

    from adapters.firestore.common import item_doc_id

    db = firestore.Client(project=stack.project)
    for name in names:
        job, key = name.split("/", 1)
        items = db.collection("jobs").document(job).collection("items")
        snap = items.document(item_doc_id(job, key)).get()
        bare = items.document(key).get()
        intents = [s.id for s in db.collection("batches").where("job_id", "==", job).stream()
                   if key in (s.to_dict().get("keys") or [])]
        item = snap.to_dict() if snap.exists else (bare.to_dict() if bare.exists else None)
        print(f"  lost {name}: item {item!r:.600}; in intents {intents}", flush=True)


# --- the runs -----------------------------------------------------------------------------


def run_images(stack, args, source: str) -> tuple[list[tuple[str, str]], list[str], dict]:
    """The whole pipeline for --prompts: (the table's rows, failures, what was submitted). The
    Firestore figures are this job's: the totals logged before it are taken off."""
    failures = []
    before = settled_ops(stack)
    print(f"submitting {args.prompts:,} prompts ({source})", flush=True)
    sub = submit(stack, args.prompts, "p", source, args.max_items_effective)
    print(f"  202 after {sub['to_202']:.2f}s ({len(sub['jobs'])} job(s))", flush=True)
    accepted = sub["to_202"]
    expand = wait_for(stack, sub["jobs"], lambda s: s["status"] != "accepting", args.timeout, "items")
    if expand is None:
        failures.append("items: timed out")
    done = wait_for(stack, sub["jobs"], lambda s: s["status"] in TERMINAL, args.timeout, "images")
    if done is None:
        failures.append("images: timed out")
    ops = minus(settled_ops(stack), before)
    rss = {name: group_peak_rss_mb(stack, name) for name in (*FUNCTIONS, "firestore") if name in stack.processes}
    counts = [settled_status(stack, job)["counts"] for job in sub["jobs"]]
    succeeded = sum(c["succeeded"] for c in counts)
    objects, lost, duplicated = lost_and_duplicated(stack, sub["keys"])
    if duplicated or (lost and done is not None):
        failures.append(f"{lost} lost, {duplicated} duplicated")
    items_at = accepted + (expand if expand is not None else args.timeout)
    images_at = items_at + (done if done is not None else args.timeout)
    # Per image: of the images made, when the phase timed out before the last.
    images = args.prompts if done is not None else max(objects, 1)
    rows = [
        ("prompts", f"{args.prompts:,} ({source}, {len(sub['jobs'])} job(s))"),
        ("time to 202", f"{accepted:.2f} s"),
        ("every item exists", ("timed out: " if expand is None else "")
         + f"{items_at:.1f} s after submit ({args.prompts / items_at:,.0f} items/s)"),
        ("every image in GCS", f"{images_at:.1f} s after submit ({args.prompts / images_at:,.0f} images/s)"
         if done is not None else f"timed out: {objects:,} images {images_at:.0f} s after submit "
         f"({objects / (images_at - items_at):,.1f} images/s after every item existed)"),
        ("images", f"{succeeded:,} succeeded, {objects:,} objects, "
         + (f"{lost} lost" if done is not None else f"{lost:,} not made yet (lost not judged)")
         + f", {duplicated} duplicated"),
    ]
    rows += [(f"peak RSS {name}", f"{mb:,.0f} MB") for name, mb in rss.items()]
    total = {k: sum(o[k] for o in ops.values()) for k in ("reads", "writes", "deletes")}
    for name, o in (*ops.items(), ("total", total)):
        rows.append((f"Firestore {name}", f"{o['reads']:,} reads, {o['writes']:,} writes; per image "
                     f"{o['reads'] / images:.2f} reads, {o['writes'] / images:.2f} writes"))
    return rows + by_collection_rows(ops, images), failures, sub


def minus(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict]:
    """Each function's operations between two readings of settled_ops()."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        out[name] = {k: a[k] - b.get(k, 0) for k in ("reads", "writes", "deletes")}
        out[name]["by_collection"] = {c: n - b.get("by_collection", {}).get(c, 0)
                                      for c, n in a["by_collection"].items()}
    return out


def by_collection_rows(ops: dict[str, dict], images: int) -> list[tuple[str, str]]:
    """Per function, the collections that cost at least 0.05 operations per image."""
    rows = []
    for name, o in ops.items():
        big = [(k, n) for k, n in sorted(o["by_collection"].items(), key=lambda kv: -kv[1]) if n >= 0.05 * images]
        if big:
            rows.append((f"Firestore {name} by collection",
                         ", ".join(f"{k} {n / images:.2f}" for k, n in big) + " per image"))
    return rows


def run_no_images(stack, args) -> tuple[list[tuple[str, str]], list[str]]:
    """Accept and expand --prompts from a gs:// source, no generation; (rows, failures)."""
    print(f"submitting a {args.prompts:,}-line source, no images", flush=True)
    sub = submit(stack, args.prompts, "m", "gcs", args.max_items_effective)
    start = time.monotonic()  # the 202 (the file's upload before it is not timed)
    print(f"  202 after {sub['to_202']:.2f}s", flush=True)
    expand = wait_for(stack, sub["jobs"], lambda s: s["status"] != "accepting", args.timeout, "items")
    waited = time.monotonic() - start
    status = settled_status(stack, sub["jobs"][0])
    created = (status.get("expansion") or {}).get("items_created", status["item_count"])
    rss = {name: group_peak_rss_mb(stack, name) for name in (*FUNCTIONS, "firestore") if name in stack.processes}
    ops = settled_ops(stack)
    failures = [] if expand is not None else ["items: timed out"]
    if expand is not None and status["item_count"] != args.prompts:
        failures.append(f"the job has {status['item_count']:,} items, not {args.prompts:,}")
    counted = sum(status["counts"].values())  # the items' counter shards: one per item written
    if expand is not None and counted != args.prompts:
        failures.append(f"the job's item counts add up to {counted:,}, not {args.prompts:,}")
    rows = [
        ("prompts", f"{args.prompts:,} (gcs, no images)"),
        ("time to 202", f"{sub['to_202']:.2f} s"),
        ("expansion", f"timed out: {created:,} items in {waited:.0f} s ({created / waited:,.0f} items/s)"
         if expand is None else f"{expand:.1f} s after the 202 ({args.prompts / expand:,.0f} items/s); "
         f"job {status['status']}, {status['item_count']:,} items"),
        ("items counted", f"{counted:,} ({', '.join(f'{k} {n:,}' for k, n in status['counts'].items() if n)})"),
    ]
    rows += [(f"peak RSS {name}", f"{mb:,.0f} MB") for name, mb in rss.items()]
    rows += [(f"Firestore {name}", f"{o['reads']:,} reads, {o['writes']:,} writes") for name, o in ops.items()]
    rows.append(("slowest status read", f"{SLOWEST_STATUS_READ[0]:.1f} s"))
    return rows, failures


def curve_how(size: int, source: str) -> str:
    return source if source == "gcs" and size >= 10_000 else "body"


def cancel(stack, jobs: list[str], timeout: float, settle: bool = True) -> None:
    """Cancel the jobs and wait until they are; with `settle`, also until no item is queued: the
    items are cancelled in the background, and that work must not land on the next job's figures
    (items of a batch still at Gemini stay queued until it ends: no settling with --no-images)."""
    for job in jobs:
        requests.delete(f"{stack.url('api')}/v1/jobs/{job}", timeout=600)
    wait_for(stack, jobs, lambda s: s["status"] in TERMINAL and not (settle and s["counts"]["queued"]),
             timeout, "cancel")


def warm_up(stack, source: str, max_items: int) -> None:
    """One untimed job of each kind, cancelled: the first request of a kind builds clients and
    reads settings, which would otherwise land on the curve's smallest size."""
    for how in {"body", source}:
        sub = submit(stack, 10, f"w{how}-", how, max_items)
        wait_for(stack, sub["jobs"], lambda s: s["status"] != "accepting", 300, "warm-up")
        cancel(stack, sub["jobs"], 300, settle=False)


def run_curve(stack, args, source: str, sizes: list[int]) -> list[tuple]:
    """Time to 202 at each size; each job cancelled once its items exist, so the next one
    is accepted by an idle stack. Rows of (size, sent as, seconds or None, note)."""
    rows = []
    for size in sizes:
        how = curve_how(size, source)
        if how == "body" and size > args.max_items_effective:
            body = {"lane": "batch", "requests": [{"key": k, "prompt": p} for k, p in prompt_lines(size, "c")]}
            elapsed, response = post_job(stack, body)
            rows.append((size, how, None, f"refused: HTTP {response.status_code} in {elapsed:.2f} s"))
            continue
        sub = submit(stack, size, f"c{size}-", how, args.max_items_effective)
        expand = wait_for(stack, sub["jobs"], lambda s: s["status"] != "accepting", args.timeout, "curve items")
        cancel(stack, sub["jobs"], args.timeout)
        rows.append((size, how, sub["to_202"], "items timed out" if expand is None
                     else f"items exist {expand:.1f} s after the 202"))
        print(f"  curve {size:>7,} ({how}): 202 after {sub['to_202']:.2f} s", flush=True)
    return rows


def curve_failures(rows: list[tuple]) -> list[str]:
    failures = [f"curve {r[0]:,}: items timed out" for r in rows if r[3] == "items timed out"]
    timed = [r for r in rows if r[2] is not None]
    if len(timed) > 1 and timed[-1][2] > CURVE_FLATNESS * max(timed[0][2], 0.05):
        failures.append(f"time to 202 at {timed[-1][0]:,} is {timed[-1][2] / timed[0][2]:.1f}x that at "
                        f"{timed[0][0]:,} (limit {CURVE_FLATNESS}x)")
    return failures


def run_all(stack, args, source: str) -> tuple[list[tuple[str, str]], list[str], list[tuple]]:
    """The curve's sizes, then the large job, whose time to 202 is the curve's point at its
    size when it went as one request of the curve's kind."""
    sizes = [] if args.no_curve else args.curve
    one_request = source == "gcs" or args.prompts <= args.max_items_effective
    shared = args.prompts in sizes and one_request and curve_how(args.prompts, source) == source
    curve = run_curve(stack, args, source, [n for n in sizes if not (shared and n == args.prompts)])
    rows, failures, sub = run_images(stack, args, source)
    if shared:
        curve.append((args.prompts, source, sub["to_202"], "the large job above"))
        curve.sort(key=lambda r: r[0])
    return rows, failures, curve


def print_table(rows: list[tuple[str, str]]) -> None:
    print("\n| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def print_curve(rows: list[tuple]) -> None:
    print("\n| prompts | sent as | time to 202 | |\n|---|---|---|---|")
    for size, how, to_202, note in rows:
        print(f"| {size:,} | {how} | {'-' if to_202 is None else f'{to_202:.2f} s'} | {note} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=100_000, help="prompts in the large job")
    parser.add_argument("--source", choices=("auto", "gcs", "body"), default="auto",
                        help="gcs: a JSONL file in the sources bucket; body: request bodies; auto: gcs when the "
                        "stack has a sources bucket")
    parser.add_argument("--no-images", action="store_true", help="accept and expand only (a gs:// source)")
    parser.add_argument("--no-curve", action="store_true", help="skip the acceptance curve")
    parser.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",")], default=list(CURVE),
                        help="sizes of the acceptance curve, comma-separated")
    parser.add_argument("--batch-requests", type=int, default=5_000, help="BATCH_MAX_REQUESTS")
    parser.add_argument("--max-items", type=int, default=0,
                        help="MAX_ITEMS_PER_JOB for the stack (0: the functions' default)")
    parser.add_argument("--firestore-heap", default="4g", help="-Xmx of the emulators' JVMs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to one phase")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a lost or duplicated image, a timeout, or a curve that is not flat")
    args = parser.parse_args()

    from config import Settings
    from infra.local import Ports, Stack

    function_env, gemini = stack_settings(args)
    args.max_items_effective = args.max_items or Settings.model_fields["max_items_per_job"].default
    # The emulators' JVMs inherit this (the bench's stack only): a million items outgrow the default heap.
    os.environ["JAVA_TOOL_OPTIONS"] = f"-Xmx{args.firestore_heap}"
    load_before = os.getloadavg()
    started = time.time()
    # The filesystem backend: the memory one slows every write as the bucket fills (stack.py).
    with Stack(ports=Ports.free(), project=PROJECT, functions=True, function_env=function_env,
               gemini_config=gemini, scheduler_interval=1.0, ack_deadline=600, gcs_backend="filesystem") as stack:
        os.environ.update(stack.env())
        source = args.source
        if source == "auto":
            source = "gcs" if sources_bucket(stack) else "body"
        if (source == "gcs" or args.no_images) and not sources_bucket(stack):
            raise SystemExit("--source gcs and --no-images need a sources bucket, and this stack has none "
                             "(the functions cannot read gs:// jobs)")
        warm_up(stack, "gcs" if args.no_images else source, args.max_items_effective)
        if args.no_images:
            rows, failures = run_no_images(stack, args)
            curve = []
        else:
            rows, failures, curve = run_all(stack, args, source)
    print_table(rows)
    if curve:
        print_curve(curve)
        failures += curve_failures(curve)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs", flush=True)
    for failure in failures:
        print(f"MISSED: {failure}", flush=True)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
