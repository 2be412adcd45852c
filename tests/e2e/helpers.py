"""What the e2e tests share: the HTTP API and the Gemini emulator's admin API over HTTP, the
final state as Firestore and GCS hold it, and polling with a deadline whose failure message
shows what was last seen (the job's status and the end of the worker's log)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import requests

from infra.local import Stack

TERMINAL_ITEM_STATES = frozenset({"succeeded", "failed", "dead_lettered", "cancelled"})
TERMINAL_JOB_STATUSES = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})
# The model the functions use unless GEMINI_MODEL says otherwise: the catalog's default (functions/models.json).
MODEL = "gemini-nano-banana-2.1"
HTTP_TIMEOUT = 30

# The functions' settings in these tests (conftest.stack_function_env), short so the folder is quick.
WINDOW_SECONDS = 2
RATE_LIMIT = 10
MAX_ATTEMPTS = 3
MAX_WAIT_SECONDS = 5
GEMINI_TIMEOUT_SECONDS = 3
# config.Settings.lease_seconds: how long a killed worker's item stays leased.
LEASE_MARGIN_SECONDS = 2
LEASE_SECONDS = MAX_WAIT_SECONDS + GEMINI_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS

T = TypeVar("T")


# --- the HTTP API ------------------------------------------------------------------------------


def post_job(stack: Stack, items: list[dict], **fields: Any) -> requests.Response:
    return requests.post(f"{stack.url('api')}/v1/jobs", json={"requests": items, **fields},
                         timeout=HTTP_TIMEOUT)


def submit(stack: Stack, items: list[dict], **fields: Any) -> str:
    """Submit a job that must be accepted; its id, once its items are all written (the API
    answers while the job is still `accepting`, and expands it in the background)."""
    r = post_job(stack, items, **fields)
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    return expanded(stack, r.json()["job_id"])


def expanded(stack: Stack, job_id: str, timeout: float = 30.0) -> str:
    """Wait until the job has left `accepting` (its background expansion is over); its id."""
    wait_until(stack, lambda: job_status(stack, job_id)["status"] != "accepting", f"job {job_id} expanded",
               timeout=timeout)
    return job_id


def job_status(stack: Stack, job_id: str) -> dict:
    r = requests.get(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"GET /v1/jobs/{job_id}: {r.status_code} {r.text}"
    return r.json()


def wait_for_job(stack: Stack, job_id: str, timeout: float = 45.0) -> dict:
    """Poll the status API until the job is terminal; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(stack, job_id)
        if status["status"] in TERMINAL_JOB_STATUSES:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} is still {status['status']} after {timeout:.0f}s\n"
                f"{json.dumps(status, indent=1)}\n{worker_log(stack)}"
            )
        time.sleep(0.25)


def wait_until(stack: Stack, predicate: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{worker_log(stack)}")
        time.sleep(0.2)


def worker_log(stack: Stack, lines: int = 60) -> str:
    try:
        text = stack.log_path("worker").read_text(errors="replace")
    except OSError as e:
        return f"(no worker log: {e})"
    return f"--- last {lines} lines of the worker's log ---\n" + "\n".join(text.splitlines()[-lines:])


def worker_outcomes(stack: Stack, job_id: str, key: str) -> list[str]:
    """The worker's "item {job}/{key}: {state} {reason}" log lines for one item, one per delivery
    that got as far as process_item's answer."""
    prefix = f"item {job_id}/{key}: "
    return [m.split(prefix, 1)[1] for m in log_messages(stack, "worker") if prefix in m]


def log_messages(stack: Stack, name: str) -> list[str]:
    """The `message` of each structured (Cloud Logging JSON) line a function process logged."""
    messages = []
    for line in stack.log_path(name).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # functions-framework's and gunicorn's own lines
        if isinstance(entry, dict) and "message" in entry:
            messages.append(entry["message"])
    return messages


# --- the Gemini emulator's admin API -------------------------------------------------------------


def _admin(stack: Stack, method: str, path: str, body: dict | None = None) -> dict:
    r = requests.request(method, f"{stack.url('gemini')}/_emulator/{path}", json=body, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"{method} /_emulator/{path}: {r.status_code} {r.text}"
    return r.json()


def configure_gemini(stack: Stack, patch: dict) -> dict:
    """Deep-merge ``patch`` into the emulator's config (lists such as prompt_rules replace)."""
    return _admin(stack, "POST", "config", patch)


def gemini_stats(stack: Stack) -> dict:
    return _admin(stack, "GET", "stats")


def gemini_requests(stack: Stack, containing: str | None = None) -> list[dict]:
    """The emulator's log of generate requests, oldest first; only those whose body holds
    ``containing`` when given (the prompt travels in the body as the worker composed it)."""
    entries = _admin(stack, "GET", "requests")["requests"]
    if containing is None:
        return entries
    return [e for e in entries if containing in json.dumps(e["body"])]


def prompt_rules(*rules: tuple[str, str]) -> dict:
    """A config patch: each (substring, outcome) decides the outcome of the prompts holding it."""
    return {"faults": {"prompt_rules": [{"contains": c, "outcome": o} for c, o in rules]}}


# --- final state ------------------------------------------------------------------------------


def objects(bucket, job_id: str) -> dict[str, Any]:
    """The job's objects by name: everything under ``{job_id}/``."""
    return {blob.name: blob for blob in bucket.client.list_blobs(bucket, prefix=f"{job_id}/")}


def item_docs(db, job_id: str) -> dict[str, dict]:
    # By key: item document ids carry a hash prefix (adapters.firestore.common.item_doc_id).
    return {s.get("key"): s.to_dict() for s in db.collection("jobs").document(job_id).collection("items").stream()}


def manifest(bucket, job_id: str) -> list[dict]:
    text = bucket.blob(f"{job_id}/manifest.jsonl").download_as_text()
    return [json.loads(line) for line in text.splitlines()]


def assert_settled(status: dict, bucket) -> dict[str, dict]:
    """Every item in exactly one terminal state with the counts agreeing; under ``{job_id}/``
    one object per succeeded item at its deterministic name, none for the others, and the
    job's manifest, which agrees with the status API item by item. The items by key."""
    job_id = status["job_id"]
    items = {it["key"]: it for it in status["items"]}
    assert len(items) == len(status["items"]) == status["item_count"], f"items lost or repeated: {status}"
    not_terminal = {k: it["state"] for k, it in items.items() if it["state"] not in TERMINAL_ITEM_STATES}
    assert not not_terminal, f"items not terminal in a {status['status']} job: {not_terminal}"
    by_state: dict[str, int] = {}
    for it in items.values():
        by_state[it["state"]] = by_state.get(it["state"], 0) + 1
    assert {s: n for s, n in status["counts"].items() if n} == by_state
    succeeded = sorted(k for k, it in items.items() if it["state"] == "succeeded")
    stored = objects(bucket, job_id)
    assert sorted(stored) == sorted([f"{job_id}/{k}.png" for k in succeeded] + [f"{job_id}/manifest.jsonl"])
    for key, it in items.items():
        expected_uri = f"gs://{bucket.name}/{job_id}/{key}.png" if it["state"] == "succeeded" else None
        assert it["gcs_uri"] == expected_uri, (key, it)
    assert status["manifest_uri"] == f"gs://{bucket.name}/{job_id}/manifest.jsonl"
    lines = {line["key"]: line for line in manifest(bucket, job_id)}
    assert sorted(lines) == sorted(items)
    for key, it in items.items():
        line = lines[key]
        assert (line["state"], line["gcs_uri"], line["attempts"], line["error"]) == \
            (it["state"], it["gcs_uri"], it["attempts"], it["error"]), (key, line, it)
        if it["state"] == "succeeded":  # the object is the image the item recorded
            blob = stored[f"{job_id}/{key}.png"]
            assert (blob.size, hashlib.sha256(blob.download_as_bytes()).hexdigest()) == \
                (line["bytes"], line["sha256"]), key
    return items


# --- the batch lane --------------------------------------------------------------------------
# The e2e stack runs no scheduler thread: a test calls the poller itself, one tick at a time.


def process_log(stack: Stack, name: str, lines: int = 60) -> str:
    try:
        text = stack.log_path(name).read_text(errors="replace")
    except OSError as e:
        return f"(no {name} log: {e})"
    return f"--- last {lines} lines of the {name}'s log ---\n" + "\n".join(text.splitlines()[-lines:])


def tick(stack: Stack) -> dict[str, int]:
    """One scheduled_poller call, as Cloud Scheduler makes it; its batch summary
    (seen, skipped, submitted, running, ingested, paused, resubmitted, cancelled, errors)."""
    r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"poller: {r.status_code} {r.text}\n{process_log(stack, 'poller')}"
    summary = r.json()["batches"]
    assert summary.get("errors", 0) == 0, f"{summary}\n{process_log(stack, 'poller')}"
    return summary


def tick_until_settled(stack: Stack, job_id: str, timeout: float = 30.0) -> tuple[dict, Counter]:
    """Call the poller until the job is terminal and has its manifest (a cancelled job is
    terminal at once, and settled by a later tick) and every batch intent of the job is
    finished (the poller's sweep may finish a job whose items are all done before its intent's
    cleanup tick); its last status and the ticks' summaries added up."""
    deadline = time.monotonic() + timeout
    total: Counter = Counter()
    while True:
        total.update(tick(stack))
        status = job_status(stack, job_id)
        if (status["status"] in TERMINAL_JOB_STATUSES and status["manifest_uri"]
                and all(b["state"] == "finished" for b in status["batches"])):
            return status, total
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} is still {status['status']} after {timeout:.0f}s of ticks {dict(total)}\n"
                f"{json.dumps(status['batches'], indent=1)}\n{process_log(stack, 'poller')}"
            )
        time.sleep(0.1)


def gemini_batches(stack: Stack) -> list[dict]:
    """Every batch of the stack's API key as batches.list shows it (each Operation's metadata:
    displayName, state, batchStats...), oldest first."""
    found, token = [], None
    while True:
        r = requests.get(f"{stack.url('gemini')}/v1beta/batches", timeout=HTTP_TIMEOUT,
                         params={"pageSize": 100, **({"pageToken": token} if token else {})},
                         headers={"x-goog-api-key": stack.env()["GEMINI_API_KEY"]})
        assert r.status_code == 200, f"batches.list: {r.status_code} {r.text}"
        body = r.json()
        found += [op["metadata"] for op in body.get("operations", [])]
        token = body.get("nextPageToken")
        if not token:
            return found[::-1]  # the API lists newest first


def gemini_batch(stack: Stack, name: str) -> dict:
    """batches.get of one batch (``batches/...``): its Operation's metadata."""
    r = requests.get(f"{stack.url('gemini')}/v1beta/{name}", timeout=HTTP_TIMEOUT,
                     headers={"x-goog-api-key": stack.env()["GEMINI_API_KEY"]})
    assert r.status_code == 200, f"batches.get {name}: {r.status_code} {r.text}"
    return r.json()["metadata"]


def force_batch(stack: Stack, name: str, state: str) -> dict:
    """End a PENDING or RUNNING batch in ``state`` now (the emulator's admin API)."""
    return _admin(stack, "POST", f"batches/{name.removeprefix('batches/')}:force", {"state": state})


def object_generations(stack: Stack, job_id: str) -> Counter:
    """How many generations each object under ``{job_id}/`` has, noncurrent ones included (they
    are kept while the bucket is versioned; the storage SDK's listing shows only the live one)."""
    url = f"{stack.url('gcs')}/storage/v1/b/{stack.images_bucket}/o"
    found: Counter = Counter()
    token = None
    while True:
        params = {"versions": "true", "prefix": f"{job_id}/", **({"pageToken": token} if token else {})}
        r = requests.get(url, params=params, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, f"objects.list: {r.status_code} {r.text}"
        body = r.json()
        found.update(obj["name"] for obj in body.get("items", []))
        token = body.get("nextPageToken")
        if not token:
            return found


def set_bucket_versioning(stack: Stack, enabled: bool) -> None:
    r = requests.patch(f"{stack.url('gcs')}/storage/v1/b/{stack.images_bucket}",
                       json={"versioning": {"enabled": enabled}}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["versioning"]["enabled"] is enabled, r.text


@contextlib.contextmanager
def functions_env(stack: Stack, names: list[str], env: dict[str, str]) -> Iterator[None]:
    """Run the named function processes with ``env`` added to their environment (Settings are
    read once per instance, so each is restarted), and restart them as they were on the way out.
    Nothing is restarted for a process whose environment already says so."""
    changed = [name for name in names if any(stack.processes[name].env.get(k) != v for k, v in env.items())]
    for name in changed:
        stack.restart(name, signal.SIGTERM, env=env)
    try:
        yield
    finally:
        for name in changed:
            stack.restart(name, signal.SIGTERM)
