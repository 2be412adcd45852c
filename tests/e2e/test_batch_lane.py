"""Jobs through the batch lane, from the 202 to the images and the manifest in GCS, with the
poller called by hand one tick at a time (as Cloud Scheduler would, but deterministic): the
happy path, per-line failures, batches that end without results, two pollers at once, a
poller killed mid-ingest, a poller out of budget, a crash between creating a batch and
recording it, a cancel, a job split into several batches, and a results file that is gone.

The poller here runs without a nudge topic (BATCH_NUDGES_TOPIC empty), so each tick ingests
what it finds finished itself, as every deployment did before nudges: a hand-called tick is
then the whole ingest, and its summary says what it did. The nudged ingest (the default) is
tests/e2e/test_ingest_nudges.py.

This module versions the bucket, so that an image written twice would show as a second
generation of its object. The e2e stack has no scheduler thread, but a (re)started poller's
readiness probe (a GET) is itself one tick."""
from __future__ import annotations

import hashlib

import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from google.cloud.firestore_v1.base_query import FieldFilter
from PIL import Image

from tests.e2e.helpers import (
    HTTP_TIMEOUT, MODEL, TERMINAL_ITEM_STATES, assert_settled, configure_gemini, expanded, force_batch,
    functions_env, gemini_batch, gemini_batches, gemini_stats, item_docs, job_status, manifest,
    object_generations, objects, post_job, process_log, prompt_rules, set_bucket_versioning,
    submit, tick, tick_until_settled, wait_until,
)
from tests.e2e.slow_link import SlowLink

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "1:1", "16:9"]
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
# A results file of about 16 MB (60 lines of a padded 200 kB PNG in base64): long enough to
# ingest that a second poller meets it half-way, or that a poller can be killed half-way.
LARGE_JOB_ITEMS = 60
LARGE_IMAGE_BYTES = 200_000


@pytest.fixture(scope="module", autouse=True)
def versioned_bucket(local_stack):
    """The bucket versioned for this module, so a second write of an image would show."""
    assert local_stack.scheduler_interval is None, "a scheduler thread would tick the poller behind our backs"
    set_bucket_versioning(local_stack, True)
    try:
        yield
    finally:
        set_bucket_versioning(local_stack, False)


@pytest.fixture(scope="module", autouse=True)
def inline_ingest(local_stack):
    """The poller without a nudge topic, for this module (the API keeps its topic, so accepted
    jobs are still expanded at once): set on the stack, so a poller a test restarts keeps it."""
    local_stack.function_env_of["poller"] = {"BATCH_NUDGES_TOPIC": ""}
    local_stack.restart("poller", signal.SIGTERM)
    try:
        yield
    finally:
        del local_stack.function_env_of["poller"]
        local_stack.restart("poller", signal.SIGTERM)


@pytest.fixture
def settings(stack_function_env) -> dict[str, int]:
    """The batch settings of the functions (tests/e2e/conftest.py)."""
    return {name: int(stack_function_env[name]) for name in ("BATCH_CHECKPOINT_LINES", "BATCH_MAX_ATTEMPTS")}


def assert_batch_settled(stack, status: dict, db, bucket) -> dict[str, dict]:
    """assert_settled (every item terminal, counts, one object per success, the manifest against
    the status API and the objects' bytes), and: Firestore says the same, each object has one
    generation, and the manifest has one line per item with the lane and the image's size."""
    job_id = status["job_id"]
    items = assert_settled(status, bucket)
    docs = item_docs(db, job_id)
    assert {k: d["state"] for k, d in docs.items()} == {k: it["state"] for k, it in items.items()}
    assert set(d["state"] for d in docs.values()) <= TERMINAL_ITEM_STATES
    generations = object_generations(stack, job_id)
    assert set(generations.values()) == {1}, {k: n for k, n in generations.items() if n != 1}
    lines = manifest(bucket, job_id)
    assert len(lines) == len(items) == status["item_count"]
    blobs = objects(bucket, job_id)
    for line in lines:
        assert line["lane"] == "batch", line
        if line["state"] == "succeeded":
            image = Image.open(io.BytesIO(blobs[f"{job_id}/{line['key']}.png"].download_as_bytes()))
            image.load()
            assert (image.format, (line["width"], line["height"])) == ("PNG", image.size), line
    return items


def intents(db, job_id: str) -> dict[str, dict]:
    """The job's batch intents in Firestore, by id."""
    query = db.collection("batches").where(filter=FieldFilter("job_id", "==", job_id))
    return {s.id: s.to_dict() for s in query.stream()}


def intent_id(job_id: str, batch: int = 0, attempt: int = 1) -> str:
    return f"{job_id}-b{batch:03d}-a{attempt}"


def large_job(stack) -> tuple[str, dict]:
    """Submit LARGE_JOB_ITEMS prompts with padded images; the job id and its one batch, once
    Gemini says SUCCEEDED, so that the next tick ingests."""
    configure_gemini(stack, {"image_target_bytes": LARGE_IMAGE_BYTES})
    job_id = submit(stack, [{"key": f"big-{i:03d}", "prompt": f"a large picture {i}"}
                            for i in range(LARGE_JOB_ITEMS)])
    [batch] = batches_tried(stack, job_id)
    wait_until(stack, lambda: gemini_batch(stack, batch["gemini_batch"])["state"] == SUCCEEDED,
               "the batch to succeed")
    return job_id, batch


def ticking(stack, predicate):
    """`predicate`, with one poller call before each try: this module's poller has no nudge
    topic, so the batches a job's expansion planned are created by a tick, as Cloud Scheduler's
    would. The call's summary is not checked (a refused create counts as an error there)."""
    def step():
        r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return predicate()
    return step


def created(status: dict) -> dict | None:
    """The status once every batch of the job is created at Gemini."""
    return status if status["batches"] and all(b["gemini_batch"] for b in status["batches"]) else None


def batches_tried(stack, job_id: str) -> list[dict]:
    """The job's batches once the poller has tried to create each (the expansion plans them, a
    tick creates them here): created, or refused with an error."""
    return wait_until(stack, ticking(stack, lambda: (batches := job_status(stack, job_id)["batches"]) and all(
        b["gemini_batch"] or b["error"] for b in batches) and batches), f"job {job_id}'s batches tried")


# --- scenarios -------------------------------------------------------------------------------


def test_twelve_prompts_go_through_one_gemini_batch_into_twelve_pngs(stack, db, bucket):
    asked = {f"shot-{i:02d}": (f"product shot {i} of a teapot", RATIOS[i]) for i in range(12)}

    r = post_job(stack, [{"key": k, "prompt": p, "aspect_ratio": ar} for k, (p, ar) in asked.items()])

    assert r.status_code == 202, r.text
    assert (r.json()["lane"], r.json()["item_count"]) == ("batch", 12)  # auto, >= INTERACTIVE_THRESHOLD
    job_id = expanded(stack, r.json()["job_id"])
    # Its one intent is planned while its items are written; the poller's tick creates the batch
    # (with a nudge topic, the expansion's nudge would, at once).
    accepted = wait_until(stack, ticking(stack, lambda: created(job_status(stack, job_id))), "the batch created")
    [intent] = accepted["batches"]
    assert (intent["intent_id"], intent["state"], intent["attempt"], intent["items"]) == \
        (intent_id(job_id), "submitted", 1, 12)
    assert intent["gemini_batch"].startswith("batches/")
    assert accepted["status"] == "running"

    status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded"
    assert ticks["ingested"] == 1
    items = assert_batch_settled(stack, status, db, bucket)
    assert {k: (it["attempts"], it["lane"], it["finish_reason"], it["error"]) for k, it in items.items()} == \
        {k: (1, "batch", "STOP", None) for k in asked}
    blobs = objects(bucket, job_id)
    for key, (_, ratio) in asked.items():
        blob = blobs[f"{job_id}/{key}.png"]
        data = blob.download_as_bytes()
        # The image's facts travel with it, so a later attempt reads them without a download.
        assert blob.metadata == {"job_id": job_id, "item_key": key, "model": MODEL, "finish_reason": "STOP",
                                 "lane": "batch", "sha256": hashlib.sha256(data).hexdigest(), "format": "png",
                                 "width": str(Image.open(io.BytesIO(data)).width),
                                 "height": str(Image.open(io.BytesIO(data)).height)}
        image = Image.open(io.BytesIO(blob.download_as_bytes()))
        image.load()
        w, h = (int(n) for n in ratio.split(":"))
        assert image.width / image.height == pytest.approx(w / h, rel=0.03), (key, image.size)
    [batch] = gemini_batches(stack)
    assert (batch["name"], batch["displayName"], batch["state"], batch["batchStats"]["requestCount"]) == \
        (intent["gemini_batch"], intent["intent_id"], SUCCEEDED, "12")
    [doc] = intents(db, job_id).values()
    assert (doc["state"], doc["outcome"], doc["lines_done"], doc["lease_owner"]) == \
        ("finished", "succeeded", 12, None)
    # The input file was deleted once the batch was created, the results file once ingested.
    files = gemini_stats(stack)["files"]
    assert (files["uploaded"], files["generated"], files["deleted"], files["live"]) == (1, 1, 2, 0), files


def test_a_blocked_line_fails_and_a_500_line_is_retried_in_a_batch_of_its_own(stack, db, bucket, settings):
    max_attempts = settings["BATCH_MAX_ATTEMPTS"]
    configure_gemini(stack, prompt_rules(("[blocked]", "blocked"), ("[always-500]", "500")))
    job_id = submit(stack, [
        {"key": "blocked", "prompt": "[blocked] a forbidden thing"},
        {"key": "broken", "prompt": "[always-500] a picture the model never makes"},
        {"key": "fine-1", "prompt": "a quiet lake"},
        {"key": "fine-2", "prompt": "a busy market"},
    ], lane="batch")

    status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "partially_succeeded"
    assert {k: v for k, v in status["counts"].items() if v} == {"succeeded": 2, "failed": 1, "dead_lettered": 1}
    items = assert_batch_settled(stack, status, db, bucket)
    assert {k: (it["state"], it["attempts"]) for k, it in items.items()} == {
        "blocked": ("failed", 1),
        "broken": ("dead_lettered", max_attempts),
        "fine-1": ("succeeded", 1),
        "fine-2": ("succeeded", 1),
    }
    assert "blocked" in items["blocked"]["error"]
    assert items["broken"]["error"].startswith(f"gave up after {max_attempts} batch attempts: 500")
    # Every later batch held the retried line only.
    batches = gemini_batches(stack)
    assert [(b["displayName"], b["state"], b["batchStats"]["requestCount"]) for b in batches] == \
        [(intent_id(job_id), SUCCEEDED, "4")] + \
        [(intent_id(job_id, attempt=n), SUCCEEDED, "1") for n in range(2, max_attempts + 1)]
    docs = intents(db, job_id)
    assert {i: (d["keys"], d["state"]) for i, d in docs.items()} == {
        intent_id(job_id): (["blocked", "broken", "fine-1", "fine-2"], "finished"),
        **{intent_id(job_id, attempt=n): (["broken"], "finished") for n in range(2, max_attempts + 1)},
    }
    assert ticks["ingested"] == max_attempts
    stats = gemini_stats(stack)
    assert stats["batches"]["lines"]["by_outcome"] == {"ok": 2, "blocked": 1, "500": max_attempts}
    assert stats["files"]["live"] == 0, stats["files"]


@pytest.mark.parametrize("ending", ["BATCH_STATE_EXPIRED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED"])
def test_a_batch_that_ends_without_results_is_resubmitted_and_succeeds(stack, db, bucket, ending):
    configure_gemini(stack, {"batch": {"running_seconds": 60}})  # still running when we end it
    keys = ["e-1", "e-2", "e-3", "e-4"]
    job_id = submit(stack, [{"key": k, "prompt": f"a picture that waits {k}"} for k in keys], lane="batch")
    [first] = batches_tried(stack, job_id)
    force_batch(stack, first["gemini_batch"], ending)
    configure_gemini(stack, {"batch": {"running_seconds": 0.5}})  # the resubmission runs its course

    status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded"
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {2}  # two batches, one image each
    assert (ticks["resubmitted"], ticks["ingested"]) == (1, 1)
    retry = intent_id(job_id, attempt=2)
    assert [(b["displayName"], b["state"], b["batchStats"]["requestCount"]) for b in gemini_batches(stack)] == \
        [(first["intent_id"], ending, "4"), (retry, SUCCEEDED, "4")]
    docs = intents(db, job_id)
    assert {i: (d["state"], d["outcome"]) for i, d in docs.items()} == {
        first["intent_id"]: ("finished", f"batch ended {ending}"),
        retry: ("finished", "succeeded"),
    }
    # Every image came from the one batch that succeeded.
    assert {d["batch_intent"] for d in item_docs(db, job_id).values()} == {retry}
    files = gemini_stats(stack)["files"]
    assert (files["uploaded"], files["generated"], files["live"]) == (2, 1, 0), files


def test_two_pollers_at_once_write_each_image_once(stack, db, bucket):
    job_id, batch = large_job(stack)

    rounds = []
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(2) as pool:
        while not job_status(stack, job_id)["manifest_uri"]:
            assert time.monotonic() < deadline, f"not settled after {rounds}\n{process_log(stack, 'poller')}"
            rounds.append(list(pool.map(lambda _: tick(stack), range(2))))

    status = job_status(stack, job_id)
    assert status["status"] == "succeeded"
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    # In the first round one poller ingested (or paused at its budget) while the other found
    # the batch leased; afterwards the batch was only ever ingested once.
    first = sorted(rounds[0], key=lambda s: s["skipped"])
    assert first[1]["skipped"] == 1 and first[0]["ingested"] + first[0]["paused"] == 1, rounds
    assert sum(s["ingested"] for r in rounds for s in r) == 1, rounds
    assert {d["batch_intent"] for d in item_docs(db, job_id).values()} == {batch["intent_id"]}
    assert gemini_stats(stack)["files"]["downloads"] == sum(s["ingested"] + s["paused"] for r in rounds for s in r)


@pytest.mark.timeout(180)
def test_a_poller_killed_mid_ingest_is_resumed_from_its_checkpoint(stack, db, bucket, settings):
    # The poller writes to GCS at 2 MB/s: the 12 MB of images take about 6 s whatever the
    # machine, so the SIGKILL lands after the first checkpoint and well before the last line.
    with SlowLink(("127.0.0.1", stack.ports.gcs), 2_000_000) as link, \
            functions_env(stack, ["poller"], {"STORAGE_EMULATOR_HOST": f"http://{link.address}"}):
        job_id, batch = large_job(stack)
        intent_ref = db.collection("batches").document(batch["intent_id"])
        answers: list = []

        def doomed_tick() -> None:
            try:
                answers.append(tick(stack))
            except requests.ConnectionError as e:
                answers.append(e)

        ticker = threading.Thread(target=doomed_tick)
        ticker.start()
        try:
            wait_until(stack, lambda: intent_ref.get().to_dict().get("lines_done") or not ticker.is_alive(),
                       "the first checkpoint")
            stack.kill("poller")  # SIGKILL: no finally blocks, the lease stays taken
            ticker.join(HTTP_TIMEOUT)
            time.sleep(0.3)  # a commit the poller had already sent lands before we look
            killed = intent_ref.get().to_dict()
            done_at_kill = {s.id: s.update_time for s in
                            db.collection("jobs").document(job_id).collection("items").stream()
                            if s.get("state") == "succeeded"}
        finally:
            stack.start_function("poller")

        assert len(answers) == 1 and isinstance(answers[0], requests.ConnectionError), answers
        lines_done = killed["lines_done"]
        assert killed["state"] == "ingesting" and 0 < lines_done < LARGE_JOB_ITEMS, killed
        assert lines_done % settings["BATCH_CHECKPOINT_LINES"] == 0
        assert len(done_at_kill) == lines_done  # a checkpoint commits its lines' items with it
        assert job_status(stack, job_id)["status"] == "running"
        # The dead poller's lease holds until it runs out; then the next tick takes over. On a
        # loaded machine the restart alone can outlast the 6 s lease: the skip is asserted only
        # for a tick that ended while the lease still held.
        first = tick(stack)
        if time.time() < killed["lease_expires_at"]:
            assert first["skipped"] == 1, first
        time.sleep(max(0.0, killed["lease_expires_at"] - time.time()) + 0.2)
        status, ticks = tick_until_settled(stack, job_id, timeout=90)
        ticks.update(first)

    assert status["status"] == "succeeded"
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    assert ticks["ingested"] == 1
    # Resumed after the checkpoint: the items committed before the kill were not written again.
    after = {s.id: s.update_time for s in db.collection("jobs").document(job_id).collection("items").stream()}
    assert {k for k, t in after.items() if done_at_kill.get(k) == t} == set(done_at_kill)
    final = intent_ref.get().to_dict()
    assert (final["state"], final["outcome"], final["lines_done"]) == ("finished", "succeeded", LARGE_JOB_ITEMS)
    assert gemini_stats(stack)["files"]["live"] == 0
    # The resumed poller downloaded the rest of the file from the checkpoint's byte offset (and
    # each later tick, after a pause at its budget, from its own).
    downloads = [d["range"] for d in requests.get(f"{stack.url('gemini')}/_emulator/downloads", timeout=10)
                 .json()["downloads"] if d["file"] == killed["output_file"]]
    assert killed["bytes_done"] > 0 and downloads[:2] == [None, f"bytes={killed['bytes_done']}-"], (killed, downloads)
    offsets = [int(r.removeprefix("bytes=").removesuffix("-")) for r in downloads[1:]]
    assert offsets == sorted(set(offsets)), downloads


@pytest.mark.timeout(180)
def test_a_poller_out_of_budget_checkpoints_and_the_next_tick_resumes(stack, db, bucket):
    # The poller writes to GCS at 4 MB/s: the 12 MB of images take about 3 s whatever the
    # machine, so a 1 s budget pauses the ingest at least once, and each tick still gets
    # through some lines on a loaded machine. (Each tick reads the results file again from
    # its start, so the link to Gemini stays fast: skipped lines cost almost nothing.)
    with SlowLink(("127.0.0.1", stack.ports.gcs), 4_000_000) as link, \
            functions_env(stack, ["poller"], {"POLLER_BUDGET_SECONDS": "1",
                                              "STORAGE_EMULATOR_HOST": f"http://{link.address}"}):
        job_id, batch = large_job(stack)

        status, ticks = tick_until_settled(stack, job_id, timeout=120)

    assert status["status"] == "succeeded"
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    assert ticks["paused"] >= 1 and ticks["ingested"] == 1, ticks
    marker = f"intent {batch['intent_id']} paused at line "
    paused_at = [int(line.split(marker, 1)[1].split(";")[0])
                 for line in stack.log_path("poller").read_text().splitlines() if marker in line]
    assert len(paused_at) == ticks["paused"] and paused_at == sorted(set(paused_at)), paused_at
    assert paused_at[-1] <= LARGE_JOB_ITEMS  # a pause on the last line leaves only the cleanup
    # Each tick downloaded the file again, skipping what the last checkpoint had covered.
    files = gemini_stats(stack)["files"]
    assert (files["downloads"], files["live"]) == (ticks["paused"] + 1, 0), files


def test_a_batch_created_before_a_crash_is_found_not_created_again(stack, db, bucket):
    from google import genai
    from google.genai import types

    # The API uploads the input and records the intent as "creating"; then its batches.create
    # fails (the emulator serves no model), which leaves what a crash right after create would.
    configure_gemini(stack, {"models": ["no-such-model"]})
    keys = [f"o-{i}" for i in range(4)]
    job_id = submit(stack, [{"key": k, "prompt": f"an orphaned picture {k}"} for k in keys], lane="batch")
    # The expansion plans the intent; the tick's create is the one that fails.
    [intent] = wait_until(stack, ticking(stack, lambda: [
        b for b in job_status(stack, job_id)["batches"] if b["state"] == "creating"]),  # after a tick's create
        "the intent uploaded and its create refused")
    assert intent["gemini_batch"] is None
    doc = db.collection("batches").document(intent["intent_id"]).get().to_dict()
    # The create that "went through" before the crash: the same input, the intent id as name.
    configure_gemini(stack, {"models": None})
    client = genai.Client(api_key=stack.env()["GEMINI_API_KEY"],
                          http_options=types.HttpOptions(base_url=stack.url("gemini")))
    orphan = client.batches.create(model=MODEL, src=doc["input_file"], config={"display_name": intent["intent_id"]})

    first = tick(stack)

    assert first["submitted"] == 1
    assert db.collection("batches").document(intent["intent_id"]).get().get("gemini_batch") == orphan.name
    assert "created before a crash" in process_log(stack, "poller", 200)
    status, _ = tick_until_settled(stack, job_id)
    assert status["status"] == "succeeded"
    assert_batch_settled(stack, status, db, bucket)
    assert [(b["name"], b["displayName"]) for b in gemini_batches(stack)] == [(orphan.name, intent["intent_id"])]
    stats = gemini_stats(stack)
    assert (stats["batches"]["created"], stats["files"]["uploaded"]) == (1, 1)


def test_cancelling_a_batch_job_cancels_its_gemini_batch_on_the_next_tick(stack, db, bucket):
    configure_gemini(stack, {"batch": {"running_seconds": 60}})
    job_id = submit(stack, [{"key": f"c-{i:02d}", "prompt": f"a picture nobody waits for {i}"} for i in range(12)])
    [intent] = batches_tried(stack, job_id)

    r = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)

    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert gemini_batch(stack, intent["gemini_batch"])["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
    assert tick(stack)["cancelled"] == 1
    assert gemini_batch(stack, intent["gemini_batch"])["state"] == "BATCH_STATE_CANCELLED"
    status = job_status(stack, job_id)
    assert (status["status"], status["counts"]["cancelled"]) == ("cancelled", 12)
    items = assert_batch_settled(stack, status, db, bucket)
    assert {(it["state"], it["error"]) for it in items.values()} == {("cancelled", "job cancelled")}
    assert intents(db, job_id)[intent["intent_id"]]["outcome"] == "cancelled"
    again = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)
    assert again.status_code == 409 and again.json()["error"]["reason"] == "conflict"
    assert tick(stack)["seen"] == 0  # nothing left to reconcile


def test_a_job_larger_than_a_batch_is_split_and_every_batch_ingested(stack, db, bucket):
    keys = [f"s-{i:02d}" for i in range(12)]
    # The poller plans the intents while it expands the job, and creates the batches.
    with functions_env(stack, ["api", "poller"], {"BATCH_MAX_REQUESTS": "5"}):
        job_id = submit(stack, [{"key": k, "prompt": f"a split picture {k}"} for k in keys])

        status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded"
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    # The ticks ingest them, or a batch's create nudge finds it already ended and ingests it.
    assert 1 <= ticks["ingested"] <= 3
    assert [(b["displayName"], b["state"], b["batchStats"]["requestCount"]) for b in gemini_batches(stack)] == \
        [(intent_id(job_id, 0), SUCCEEDED, "5"), (intent_id(job_id, 1), SUCCEEDED, "5"),
         (intent_id(job_id, 2), SUCCEEDED, "2")]
    docs = item_docs(db, job_id)
    assert {k: docs[k]["batch_intent"] for k in keys} == {k: intent_id(job_id, i // 5) for i, k in enumerate(keys)}


def test_a_results_file_gone_before_ingestion_does_not_wedge_the_job(stack, db, bucket):
    configure_gemini(stack, {"files": {"ttl_seconds": 1}})
    job_id = submit(stack, [{"key": f"g-{i}", "prompt": f"a picture nobody fetched {i}"} for i in range(4)],
                    lane="batch")
    [batch] = batches_tried(stack, job_id)
    wait_until(stack, lambda: gemini_batch(stack, batch["gemini_batch"])["state"] == SUCCEEDED,
               "the batch to succeed")
    time.sleep(1.2)  # its results file has expired
    configure_gemini(stack, {"files": {"ttl_seconds": None}})  # a resubmission's results stay

    status, _ = tick_until_settled(stack, job_id, timeout=15)

    assert_batch_settled(stack, status, db, bucket)
    assert intents(db, job_id)[batch["intent_id"]]["state"] == "finished"



def test_retrying_a_refused_batch_create_leaves_no_input_files_behind(stack, db, bucket):
    configure_gemini(stack, {"batch": {"running_seconds": 60, "max_concurrent_batches": 1}})
    blocker = submit(stack, [{"key": "only", "prompt": "the picture that takes the only slot"}], lane="batch")
    job_id = submit(stack, [{"key": f"w-{i}", "prompt": f"a picture that waits its turn {i}"} for i in range(2)],
                    lane="batch")
    [waiting] = batches_tried(stack, job_id)
    assert (waiting["state"], waiting["gemini_batch"]) == ("creating", None)  # 429 from batches.create
    assert waiting["error"].startswith("429")
    for _ in range(3):  # not due yet, or due, tried again and refused: a wait either way, not an error
        summary = tick(stack)
        assert summary["running"] == 1, summary  # the blocker
        assert summary["seen"] - 1 == summary["backing_off"] <= 1 and summary["submitted"] == 0, summary
    configure_gemini(stack, {"batch": {"running_seconds": 0.5, "max_concurrent_batches": 100}})
    [slot] = job_status(stack, blocker)["batches"]
    force_batch(stack, slot["gemini_batch"], SUCCEEDED)

    status, _ = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded"
    assert_batch_settled(stack, status, db, bucket)
    assert job_status(stack, blocker)["status"] == "succeeded"
    files = gemini_stats(stack)["files"]
    assert files["live"] == 0, files
    assert files["uploaded"] == 2, files  # one input file per job, however many creates were refused


def test_a_429_on_batch_create_waits_its_retry_delay_and_the_job_is_billed_once(stack, db, bucket):
    configure_gemini(stack, {"batch": {"create_script": ["429_retry"]}, "faults": {"retry_delay_s": 3600}})
    before = time.time()
    job_id = submit(stack, [{"key": f"q-{i}", "prompt": f"a picture after a quota wait {i}"} for i in range(3)],
                    lane="batch")
    batches_tried(stack, job_id)  # the expansion's nudge had the poller try the create
    after = time.time()
    [(intent, doc)] = intents(db, job_id).items()
    assert (doc["state"], doc["quota_waits"], doc["submit_failures"]) == ("creating", 1, 0)
    assert before + 3600 <= doc["next_attempt_at"] <= after + 3600  # the answer's retryDelay
    for _ in range(4):
        summary = tick(stack)
        assert (summary["seen"], summary["submitted"]) == (0, 0), summary  # not due before the hour
    calls = gemini_stats(stack)["requests_by_endpoint"]
    assert (calls["batches.create"], calls.get("batches.list", 0)) == (1, 0), calls
    assert gemini_stats(stack)["files"]["uploaded"] == 1
    # The hour has passed, as far as the intent knows.
    db.collection("batches").document(intent).update({"next_attempt_at": time.time() - 1,
                                                      "next_check_at": time.time() - 1})

    status, ticks = tick_until_settled(stack, job_id)

    assert status["status"] == "succeeded" and ticks["submitted"] == 1
    items = assert_batch_settled(stack, status, db, bucket)
    assert {it["attempts"] for it in items.values()} == {1}
    stats = gemini_stats(stack)
    assert (stats["batches"]["created"], stats["batches"]["rejected_scripted"]) == (1, 1)
    assert stats["requests_by_endpoint"]["batches.create"] == 2
    assert stats["files"]["uploaded"] == 1 and stats["files"]["live"] == 0, stats["files"]
