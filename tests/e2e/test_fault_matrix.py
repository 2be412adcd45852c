"""The fault matrix: the local stack driven through scripted faults on the Gemini emulator and
the platform. For every scenario: every item ends in exactly one terminal state, exactly one
object (one generation: the bucket is versioned) per succeeded item, zero items lost, no prompt
billed twice (the emulator counts the images it returned per prompt, in both lanes), Gemini
called exactly once per item where no retryable error was injected, and the emulator never
admitted more than the configured rate in any window.

A worker killed mid-item is tests/e2e/test_delivery.py's (it waits out the item's lease,
which the emulator's push backoff can stretch past this module's time budget).

Each scenario adds a row (items, faults injected, lost, duplicated, billed twice, Gemini calls,
wall time) that
``make chaos`` prints as a table at the end of the run (see pytest_terminal_summary below)."""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from tests.e2e.helpers import (
    HTTP_TIMEOUT, LEASE_SECONDS, MODEL, RATE_LIMIT, TERMINAL_ITEM_STATES, TERMINAL_JOB_STATUSES, configure_gemini,
    functions_env, gemini_batches, gemini_stats, job_status, object_generations, post_job, process_log,
    prompt_rules, set_bucket_versioning, submit, wait_until, worker_log,
)
from tests.e2e.slow_link import SlowLink

ROWS: list[dict] = []
IMAGE_EXTENSIONS = ("png", "jpg", "webp")
BREAKER = {"BREAKER_THRESHOLD": "3"}


@pytest.fixture(scope="module", autouse=True)
def matrix_stack(local_stack):
    """A versioned bucket (a second write of an image shows as a second generation) and the
    breaker at its default threshold of 3 on every function."""
    set_bucket_versioning(local_stack, True)
    try:
        with functions_env(local_stack, ["api", "worker", "poller"], BREAKER):
            yield
    finally:
        set_bucket_versioning(local_stack, False)


@pytest.fixture(autouse=True)
def caches_expired(clean):
    """The functions read the breaker through a 1 s cache (and usage through 2 s): after the
    wipe, wait them out so one scenario's open breaker cannot route the next one's items."""
    time.sleep(2.1)


def tick(stack) -> dict:
    r = requests.post(f"{stack.url('poller')}/", json={}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"poller: {r.status_code} {r.text}\n{process_log(stack, 'poller')}"
    return r.json()


def drive(stack, job_ids: list[str], timeout: float = 90.0, ticks: bool = True) -> list[dict]:
    """Wait for every job to be terminal with its manifest, calling the poller as Cloud
    Scheduler would (pool flushes, batches, dead letters, republishing)."""
    deadline = time.monotonic() + timeout
    while True:
        if ticks:
            tick(stack)
        statuses = [job_status(stack, j) for j in job_ids]
        if all(s["status"] in TERMINAL_JOB_STATUSES and s["manifest_uri"] for s in statuses):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled after {timeout:.0f}s: "
                                 f"{json.dumps([(s['status'], s['counts']) for s in statuses])}\n"
                                 f"{worker_log(stack)}\n{process_log(stack, 'poller')}")
        time.sleep(0.3)


def check(stack, name: str, faults: str, statuses: list[dict], started: float, retryable: bool = False) -> dict:
    """The invariants, measured (then asserted) and recorded as the scenario's row. `retryable`:
    the scenario injected errors that are retried, so Gemini may be called more than once per
    item (never billed more than once)."""
    items = lost = duplicated = unterminal = 0
    by_state: dict[str, int] = {}
    for status in statuses:
        job_id = status["job_id"]
        pages, token = [], None
        while True:  # every item, not only the first page
            r = requests.get(f"{stack.url('api')}/v1/jobs/{job_id}", params={"page_size": 500,
                             **({"page_token": token} if token else {})}, timeout=HTTP_TIMEOUT)
            body = r.json()
            pages += body["items"]
            token = body["next_page_token"]
            if not token:
                break
        items += status["item_count"]
        lost += status["item_count"] - len({it["key"] for it in pages})
        unterminal += sum(1 for it in pages if it["state"] not in TERMINAL_ITEM_STATES)
        for it in pages:
            by_state[it["state"]] = by_state.get(it["state"], 0) + 1
        generations = object_generations(stack, job_id)
        # An item's image is <job>/<key>.png, .jpg or .webp: the format the model returned.
        succeeded = {it["gcs_uri"].split("/", 3)[3] if it["gcs_uri"] else f"{job_id}/{it['key']}"
                     for it in pages if it["state"] == "succeeded"}
        images = {name: n for name, n in generations.items() if name.rpartition(".")[2] in IMAGE_EXTENSIONS}
        lost += len(succeeded - set(images))  # succeeded without its object
        duplicated += sum(n - 1 for n in images.values()) + len(set(images) - succeeded)
    stats = gemini_stats(stack)
    lines = stats["batches"]["lines"]
    row = {"scenario": name, "items": items, "faults": faults, "lost": lost + unterminal,
           "duplicated": duplicated, "billed_twice": stats["billed_twice"],
           "calls": stats["requests_total"] + lines["succeeded"] + lines["failed"], "states": by_state,
           "max_in_window": stats["admitted_max_in_any_window"], "seconds": round(time.monotonic() - started, 1)}
    ROWS.append(row)
    assert unterminal == 0 and lost == 0 and duplicated == 0, row
    assert row["billed_twice"] == 0, (row, stats["billed_twice_prompts"])
    assert retryable or row["calls"] == items, row
    assert stats["admitted_max_in_any_window"] <= RATE_LIMIT, row
    return row


def items(prefix: str, n: int, **extra) -> list[dict]:
    return [{"key": f"{prefix}-{i}", "prompt": f"{prefix} picture {i}", **extra} for i in range(n)]


def outcome_count(stack, outcome: str) -> int:
    return gemini_stats(stack)["by_outcome"].get(outcome, 0)


# --- the scenarios -------------------------------------------------------------------------


def test_429_storm_with_retry_delay(stack):
    started = time.monotonic()
    configure_gemini(stack, {"quotas": {MODEL: {"rpm": 3, "ipm": 3}}})
    job_id = submit(stack, items("storm", 8))
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    check(stack, "429 storm (retryDelay)", f"{outcome_count(stack, '429')} x 429", statuses, started, retryable=True)


def test_daily_quota_exhausted_moves_the_rest_to_the_batch_lane(stack):
    started = time.monotonic()
    configure_gemini(stack, {"quotas": {MODEL: {"rpd": 3}}})
    job_id = submit(stack, items("daily", 8))
    statuses = drive(stack, [job_id])
    lanes = {it["lane"] for it in statuses[0]["items"]}
    stats = requests.get(f"{stack.url('api')}/v1/stats", timeout=HTTP_TIMEOUT).json()
    assert statuses[0]["status"] == "succeeded" and lanes == {"interactive", "batch"}, statuses[0]["items"]
    assert stats["breaker"]["state"] == "open" and "daily quota" in stats["breaker"]["reason"]
    assert stats["counters"]["quota_errors_by_id"].get("GenerateRequestsPerDayPerProjectPerModel", 0) >= 1
    assert stats["counters"]["diverted"] >= 5
    # While the breaker is open, a new auto job goes to batch and says why.
    dry = requests.post(f"{stack.url('api')}/v1/jobs?dry_run=true", json={"requests": items("next", 2)},
                        timeout=HTTP_TIMEOUT).json()
    assert dry["lane"] == "batch" and "breaker open" in dry["reason"]
    check(stack, "daily quota exhausted", f"{outcome_count(stack, '429')} x 429 PerDay", statuses, started, retryable=True)


def test_5xx_burst(stack):
    started = time.monotonic()
    configure_gemini(stack, {"seed": 7, "faults": {"rates": {"500": 0.25, "503": 0.25}}})
    job_id = submit(stack, items("burst", 8))
    statuses = drive(stack, [job_id])
    faults = outcome_count(stack, "500") + outcome_count(stack, "503")
    assert faults > 0, (gemini_stats(stack), statuses[0]["items"])
    check(stack, "5xx burst", f"{faults} x 5xx", statuses, started, retryable=True)


def test_hangs(stack):
    started = time.monotonic()
    configure_gemini(stack, {"faults": {"script": ["hang", "hang"]}})
    job_id = submit(stack, items("hang", 6))
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    check(stack, "hangs (timeouts)", "2 x hang", statuses, started, retryable=True)


def test_blocked_prompts_and_image_safety(stack):
    started = time.monotonic()
    configure_gemini(stack, prompt_rules(("picture 1", "blocked"), ("picture 2", "image_safety")))
    job_id = submit(stack, items("refused", 6))
    statuses = drive(stack, [job_id])
    assert statuses[0]["counts"]["failed"] == 2 and statuses[0]["counts"]["succeeded"] == 4
    check(stack, "blocked + IMAGE_SAFETY", "1 blocked, 1 IMAGE_SAFETY", statuses, started)


def test_permission_denied_halts_then_a_probe_resumes(stack):
    started = time.monotonic()
    configure_gemini(stack, {"faults": {"script": ["403"]}})
    job_id = submit(stack, items("halt", 4))
    # While halted no lane takes new work: batch shares the project and its billing.
    deadline = time.monotonic() + 20
    while requests.get(f"{stack.url('api')}/v1/stats", timeout=HTTP_TIMEOUT).json()["breaker"]["state"] != "halted":
        assert time.monotonic() < deadline, "the 403 did not halt the lane"
        time.sleep(0.1)
    time.sleep(1.1)  # the API's breaker cache
    refused = post_job(stack, items("during-halt", 1))
    assert refused.status_code == 503 and "halted" in refused.json()["error"]["message"], refused.text
    statuses = drive(stack, [job_id])
    stats = requests.get(f"{stack.url('api')}/v1/stats", timeout=HTTP_TIMEOUT).json()
    assert [t["to"] for t in stats["breaker"]["transitions"]][-3:] == ["halted", "half_open", "closed"]
    assert statuses[0]["status"] == "succeeded" and {it["lane"] for it in statuses[0]["items"]} == {"interactive"}
    check(stack, "403 halt, probe, resume", "1 x 403", statuses, started, retryable=True)


def model_row(stack, model: str) -> dict:
    stats = requests.get(f"{stack.url('api')}/v1/stats", timeout=HTTP_TIMEOUT).json()
    return next(m for m in stats["models"] if m["id"] == model)


def test_model_removed_mid_job_halts_it_and_the_items_wait(stack):
    """Google shuts the job's model down while it runs: the 404 halts that model (an incident,
    not a failed item each), its items wait without spending attempts, a new job for it is
    refused, and once the model is back (the poller's models.get sees it) every item ends."""
    started = time.monotonic()
    configure_gemini(stack, {"latency": {"mean_ms": 300}})
    job_id = submit(stack, items("retired", 8))
    wait_until(stack, lambda: job_status(stack, job_id)["counts"]["succeeded"] >= 1, "a first image")
    configure_gemini(stack, {"removed_models": [MODEL]})
    halted = wait_until(stack, lambda: (row := model_row(stack, MODEL))["halted"] and row, "the model halt")
    assert "not found" in halted["halt_reason"], halted
    time.sleep(1.1)  # the API's halt cache
    refused = post_job(stack, items("after-removal", 1))
    assert refused.status_code == 503 and MODEL in refused.json()["error"]["message"], refused.text
    tick(stack)  # models.get: still missing, still halted
    during = job_status(stack, job_id)
    assert during["counts"]["failed"] == during["counts"]["dead_lettered"] == 0, during["counts"]
    assert all(it["attempts"] <= 1 for it in during["items"]), during["items"]
    assert model_row(stack, MODEL)["halted"]

    configure_gemini(stack, {"removed_models": []})
    statuses = drive(stack, [job_id], timeout=60)  # the poller's tick lifts the halt
    assert statuses[0]["status"] == "succeeded", statuses[0]["counts"]
    assert not model_row(stack, MODEL)["halted"]
    check(stack, "model removed mid-job", f"{outcome_count(stack, '404')} x 404 (model halted)", statuses, started,
          retryable=True)  # the 404s are calls that made no image


def test_model_removed_then_the_job_cancelled(stack):
    """The model does not come back: cancelling the job ends every waiting item at once."""
    started = time.monotonic()
    configure_gemini(stack, {"removed_models": [MODEL]})
    job_id = submit(stack, items("gone", 6))
    wait_until(stack, lambda: model_row(stack, MODEL)["halted"], "the model halt")
    r = requests.delete(f"{stack.url('api')}/v1/jobs/{job_id}", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    statuses = drive(stack, [job_id], timeout=60)
    counts = statuses[0]["counts"]
    assert statuses[0]["status"] == "cancelled" and counts["cancelled"] == 6, counts
    check(stack, "model removed, job cancelled", f"{outcome_count(stack, '404')} x 404, 1 cancel", statuses, started,
          retryable=True)


def test_per_line_batch_errors(stack):
    started = time.monotonic()
    configure_gemini(stack, prompt_rules(("picture 1", "500"), ("picture 2", "blocked"), ("picture 3", "503")))
    job_id = submit(stack, items("lines", 12), lane="batch")
    statuses = drive(stack, [job_id])
    counts = statuses[0]["counts"]
    # 500 and 503 lines are retried in a second batch and dead-lettered after BATCH_MAX_ATTEMPTS.
    assert (counts["succeeded"], counts["failed"], counts["dead_lettered"]) == (7, 1, 4), counts
    check(stack, "per-line batch errors", "500/503/blocked lines", statuses, started, retryable=True)


def test_expired_batch(stack):
    started = time.monotonic()
    configure_gemini(stack, {"batch": {"outcome_script": ["expired"]}})
    job_id = submit(stack, items("expired", 6), lane="batch")
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    assert [b["gemini_state"] for b in statuses[0]["batches"]] == ["BATCH_STATE_EXPIRED", "BATCH_STATE_SUCCEEDED"]
    check(stack, "EXPIRED batch", "1 batch expired", statuses, started, retryable=True)


def test_duplicate_deliveries(stack, publisher):
    started = time.monotonic()
    job_id = submit(stack, items("dup", 6))
    futures = [publisher.publish(stack.topic_path, json.dumps({"job_id": job_id, "item_key": f"dup-{i}"}).encode())
               for i in range(6) for _ in range(2)]
    for f in futures:
        f.result(timeout=30)
    statuses = drive(stack, [job_id])
    assert outcome_count(stack, "ok") == 6
    check(stack, "duplicate deliveries", "12 extra messages", statuses, started)


def test_overlapping_pollers(stack):
    started = time.monotonic()
    configure_gemini(stack, {"image_target_bytes": 100_000})
    job_id = submit(stack, items("overlap", 30), lane="batch")
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            tick(stack)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        statuses = drive(stack, [job_id])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses[0]["status"] == "succeeded" and len(gemini_batches(stack)) == 1
    check(stack, "overlapping pollers", "3 pollers at once", statuses, started)


def test_poller_killed_mid_ingest(stack):
    started = time.monotonic()
    configure_gemini(stack, {"image_target_bytes": 200_000})
    job_id = submit(stack, items("ingest", 40), lane="batch")
    # Let the batch finish on the emulator, then kill the poller while it ingests.
    deadline = time.monotonic() + 30
    while not any(b["state"] == "BATCH_STATE_SUCCEEDED" for b in gemini_batches(stack)):
        tick(stack)
        assert time.monotonic() < deadline, "the batch did not finish"
        time.sleep(0.2)
    def doomed_tick():
        try:
            requests.post(f"{stack.url('poller')}/", json={}, timeout=60)
        except requests.ConnectionError:
            pass  # killed under it: the point of the scenario

    t = threading.Thread(target=doomed_tick)
    t.start()
    time.sleep(0.4)
    stack.restart("poller", env=BREAKER)
    t.join()
    statuses = drive(stack, [job_id], timeout=120)
    assert statuses[0]["status"] == "succeeded"
    check(stack, "poller killed mid-ingest", "1 SIGKILL", statuses, started)


def test_dead_letters_from_pubsub_then_retry(stack, publisher):
    """Pub/Sub gave up on a message (here: published to the dead-letter topic as Pub/Sub does);
    the poller ends its item dead_lettered, and POST :retry re-queues it in a new round."""
    started = time.monotonic()
    configure_gemini(stack, prompt_rules(("picture 0", "500")))
    job_id = submit(stack, items("dlq", 3))
    # The 500s dead-letter item 0 in the worker; items 1 and 2 succeed. The poller ticks, as
    # Cloud Scheduler's would: its sweep republishes a message the emulator failed to redeliver.
    statuses = drive(stack, [job_id])
    assert statuses[0]["counts"]["dead_lettered"] == 1
    configure_gemini(stack, {"faults": {"prompt_rules": []}})
    r = requests.post(f"{stack.url('api')}/v1/jobs/{job_id}:retry", timeout=HTTP_TIMEOUT)
    assert r.status_code == 202 and r.json()["requeued"] == 1 and r.json()["round"] == 2, r.text
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded" and statuses[0]["round"] == 2
    assert statuses[0]["manifest_uri"].endswith("/manifest-r2.jsonl")
    # Now a message Pub/Sub gave up on, for an item still queued.
    configure_gemini(stack, {"latency": {"mean_ms": 2000}})
    job2 = submit(stack, items("dlq2", 1))
    publisher.publish(f"{stack.topic_path}-dead", json.dumps({"job_id": job2, "item_key": "dlq2-0"}).encode(),
                      CloudPubSubDeadLetterSourceDeliveryCount="5").result(timeout=30)
    configure_gemini(stack, {"latency": {"mean_ms": 0}})
    statuses2 = drive(stack, [job2])
    item = statuses2[0]["items"][0]
    # Either the dead letter settled it first, or the worker finished it first (then the dead
    # letter found it terminal): never both, never lost.
    assert item["state"] in ("dead_lettered", "succeeded"), item
    if item["state"] == "dead_lettered":
        assert "Pub/Sub gave up on the message after 5 deliveries" in item["error"]
    check(stack, "Pub/Sub dead letters + :retry", "1 dead letter, 1 retry", statuses + statuses2, started, retryable=True)


# --- accepting jobs and the batch lane ------------------------------------------------------------


class Ticking:
    """Poller ticks from `threads` threads at once, until the block ends; a failed tick fails
    the scenario (after the block)."""

    def __init__(self, stack, threads: int) -> None:
        self.stack, self.stop, self.errors = stack, threading.Event(), []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                tick(self.stack)
            except Exception as e:  # noqa: BLE001 - reported by __exit__
                self.errors.append(repr(e))

    def __enter__(self) -> Ticking:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        assert not self.errors, self.errors[:3]


@pytest.mark.timeout(400)
def test_submit_races_poller_ticks(stack):
    """Three pollers tick while the API writes a 2,000-item batch job: none of them may act on
    the job before it is queued (its intents are left, not finished as "job missing")."""
    started = time.monotonic()
    configure_gemini(stack, {"image_target_bytes": 2_000})
    with Ticking(stack, threads=3):
        job_id = submit(stack, items("race", 2000), lane="batch")
        statuses = drive(stack, [job_id], timeout=300)
    assert statuses[0]["status"] == "succeeded" and len(gemini_batches(stack)) == 2, statuses[0]["batches"]
    check(stack, "submit races poller ticks", "3 pollers ticking during the accept", statuses, started)


N_KILLED = 600


def accepting_job(db) -> str | None:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.collection("jobs").where(filter=FieldFilter("status", "==", "accepting"))
    return next((s.id for s in query.stream()), None)


@pytest.mark.timeout(300)
def test_api_killed_mid_accept_then_resent_with_its_idempotency_key(stack, db):
    """SIGKILL of the API while it stages a job's body; the client resends with the same
    Idempotency-Key: "in progress" (409) while the first attempt could be alive, then the
    resend takes over under the same job id and the job runs.

    The API writes no item while accepting (core/expanding.py expands the job in the
    background): what a kill can interrupt is the body's staging in Cloud Storage, before the
    one job document. The first attempt talks to Cloud Storage over a slow link (2.4 MB of
    body at 400 KB/s), so its upload lasts seconds: the kill lands during it, on any machine."""
    started = time.monotonic()
    configure_gemini(stack, {"image_target_bytes": 2_000})
    resend_env = {**BREAKER, "IDEMPOTENCY_TAKEOVER_SECONDS": "20"}
    gcs = stack.url("gcs").removeprefix("http://").rsplit(":", 1)
    with SlowLink((gcs[0], int(gcs[1])), bytes_per_second=400_000) as link:
        stack.restart("api", signal.SIGTERM, env={**resend_env, "STORAGE_EMULATOR_HOST": f"http://{link.address}"})
        try:
            body = {"requests": [{**it, "prompt": it["prompt"] + " " + "x" * 3900}
                                 for it in items("killed", N_KILLED)], "lane": "batch"}
            headers = {"Idempotency-Key": "mid-accept-1"}
            first = threading.Thread(target=doomed_post, args=(stack, body, headers))
            first.start()
            wait_until(stack, lambda: any(True for _ in db.collection("idempotency").limit(1).stream()),
                       "the Idempotency-Key record", timeout=60)
            wait_until(stack, lambda: link.forwarded > 100_000, "the body's upload under way", timeout=60)
            stack.kill("api")  # SIGKILL, mid-accept
            first.join()
            assert accepting_job(db) is None and not list(db.collection("jobs").limit(1).stream())
            stack.start_function("api", env=resend_env)  # back on the usual link
            answers = []
            while not answers or answers[-1].status_code == 409:
                answers.append(requests.post(f"{stack.url('api')}/v1/jobs", json=body, headers=headers,
                                             timeout=HTTP_TIMEOUT))
                assert len(answers) < 60, [a.status_code for a in answers]
                if answers[-1].status_code == 409:
                    assert answers[-1].headers["Retry-After"] == "1", answers[-1].text
                    time.sleep(1)
            codes = [a.status_code for a in answers]
            assert codes[0] == 409 and codes[-1] == 202, codes
            job_id = answers[-1].json()["job_id"]
            statuses = drive(stack, [job_id], timeout=300)
        finally:
            stack.restart("api", signal.SIGTERM, env=BREAKER)
    assert statuses[0]["status"] == "succeeded" and len(gemini_batches(stack)) == 1
    check(stack, "API killed mid-accept + Idempotency-Key resend",
          f"1 SIGKILL while staging the body, {len(codes)} resends", statuses, started)


def doomed_post(stack, body: dict, headers: dict) -> None:
    try:
        requests.post(f"{stack.url('api')}/v1/jobs", json=body, headers=headers, timeout=120)
    except requests.ConnectionError:
        pass  # killed under it: the point of the scenario


def test_repeated_key_in_results(stack):
    """A results file names a key twice: an error line after an image line, and an image line
    twice. The first success stands; nothing is batched or paid for again."""
    started = time.monotonic()
    configure_gemini(stack, {"batch": {"repeat_key_rules": [{"contains": "rep-3", "then": "error"},
                                                            {"contains": "rep-5", "then": "duplicate"}]}})
    job_id = submit(stack, items("rep", 12), lane="batch")
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded" and len(gemini_batches(stack)) == 1, statuses[0]["batches"]
    check(stack, "repeated key in results", "1 error line after a success, 1 line twice", statuses, started)


def test_batch_stuck_running_past_the_local_deadline(stack):
    """A batch that stays RUNNING is cancelled by the poller at BATCH_RUNNING_DEADLINE_SECONDS
    and its items go to a new batch, which succeeds."""
    started = time.monotonic()
    stack.restart("poller", signal.SIGTERM, env={**BREAKER, "BATCH_RUNNING_DEADLINE_SECONDS": "3"})
    try:
        configure_gemini(stack, {"batch": {"running_seconds": 3600}})
        job_id = submit(stack, items("stuck", 6), lane="batch")
        wait_until(stack, lambda: [b for b in gemini_batches(stack) if b["state"] == "BATCH_STATE_RUNNING"],
                   "the first batch running")
        configure_gemini(stack, {"batch": {"running_seconds": 0.5}})  # the retry runs normally
        statuses = drive(stack, [job_id], timeout=60)
    finally:
        stack.restart("poller", signal.SIGTERM, env=BREAKER)
    assert statuses[0]["status"] == "succeeded"
    assert [b["gemini_state"] for b in statuses[0]["batches"]] == ["BATCH_STATE_CANCELLED", "BATCH_STATE_SUCCEEDED"]
    check(stack, "batch stuck RUNNING past the local deadline", "1 batch cancelled at 3 s", statuses, started,
          retryable=True)


# --- answers as today's API sends them --------------------------------------------------------


def test_multi_violation_429_is_a_per_minute_wait(stack):
    """Three 429s listing a per-day, a per-minute and a token quota together with a 1 s
    retryDelay, as the real service sends them: a per-minute wait, never a day-long breaker."""
    started = time.monotonic()
    configure_gemini(stack, {"faults": {"script": ["429_multi"] * 3, "retry_delay_s": 1.0}})
    job_id = submit(stack, items("multi", 6))
    statuses = drive(stack, [job_id])
    stats = requests.get(f"{stack.url('api')}/v1/stats", timeout=HTTP_TIMEOUT).json()
    breaker = stats["breaker"]
    assert statuses[0]["status"] == "succeeded", statuses[0]["items"]
    assert not any("daily" in (t["reason"] or "") for t in breaker["transitions"]), breaker
    assert breaker["retry_at"] is None or breaker["retry_at"] < time.time() + 60, breaker
    by_id = stats["counters"]["quota_errors_by_id"]
    assert by_id.get("GenerateRequestsPerMinutePerProjectPerModel", 0) == 3 and not any("PerDay" in q for q in by_id)
    check(stack, "multi-violation 429", f"{outcome_count(stack, '429_multi')} x 429 (day+minute+tokens, 1s)",
          statuses, started, retryable=True)


def test_upload_rejected_at_finalize(stack):
    """The Files API answers the finalize with HTTP 200 and an error body: the refusal shows in
    the job's status, the next tick succeeds; past 3 refusals the items fail with the message,
    and nothing retries in a loop."""
    started = time.monotonic()
    configure_gemini(stack, {"files": {"reject_finalize": 1}})
    passing = submit(stack, items("finalize", 4), lane="batch")
    (intent,) = job_status(stack, passing)["batches"]
    assert intent["submit_failures"] == 1 and "Unsupported MIME type: jsonl" in intent["error"], intent
    statuses = drive(stack, [passing])
    assert statuses[0]["status"] == "succeeded", statuses[0]
    configure_gemini(stack, {"files": {"reject_finalize": 5}})
    refused = submit(stack, items("refused", 3), lane="batch")
    statuses += drive(stack, [refused])
    for _ in range(3):
        tick(stack)  # more ticks: a finished intent must not upload again
    assert configure_gemini(stack, {})["files"]["reject_finalize"] == 2  # exactly 3 attempts
    configure_gemini(stack, {"files": {"reject_finalize": 0}})
    final = statuses[1]
    assert final["status"] == "failed" and final["counts"]["failed"] == 3, final
    assert all("Unsupported MIME type: jsonl" in it["error"] for it in final["items"]), final["items"]
    assert final["batches"][0]["submit_failures"] == 3
    # retryable: the refused job's items fail before any call, so calls < items.
    check(stack, "upload rejected at finalize", "1 + 3 finalize errors", statuses, started, retryable=True)


def test_thought_image_parts(stack, bucket):
    """A thinking image model sends an interim thought image before the final one: in both
    lanes the stored image is the final one (256 px at the stack's image_scale), not the 96 px draft."""
    import io

    from PIL import Image

    started = time.monotonic()
    configure_gemini(stack, {"faults": {"rates": {"thought_image": 1.0}}})
    interactive = submit(stack, items("thinking", 4))
    batch = submit(stack, items("thinking-batch", 4), lane="batch")
    statuses = drive(stack, [interactive, batch])
    assert [s["status"] for s in statuses] == ["succeeded", "succeeded"], statuses
    for status in statuses:
        for it in status["items"]:
            png = bucket.blob(f"{status['job_id']}/{it['key']}.png").download_as_bytes()
            assert Image.open(io.BytesIO(png)).size == (256, 256), it
    check(stack, "thought image parts", f"{outcome_count(stack, 'thought_image')} answers with a thought image",
          statuses, started)


# --- what reaches the worker's integrity: malformed answers, formats, crashes around the upload --


def all_items(stack, job_id: str) -> list[dict]:
    return requests.get(f"{stack.url('api')}/v1/jobs/{job_id}", params={"page_size": 500},
                        timeout=HTTP_TIMEOUT).json()["items"]


def stored_objects(stack, job_id: str) -> dict[str, dict]:
    """The job's live objects by name, with their contentType and metadata, from the GCS emulator."""
    r = requests.get(f"{stack.url('gcs')}/storage/v1/b/{stack.images_bucket}/o", params={"prefix": f"{job_id}/"},
                     timeout=HTTP_TIMEOUT)
    return {o["name"]: o for o in r.json().get("items", [])}


def manifest_rows(stack, job_id: str) -> list[dict]:
    r = requests.get(f"{stack.url('gcs')}/storage/v1/b/{stack.images_bucket}/o/"
                     f"{requests.utils.quote(job_id + '/manifest.jsonl', safe='')}", params={"alt": "media"},
                     timeout=HTTP_TIMEOUT)
    return [json.loads(line) for line in r.text.splitlines()]


def object_sha256(stack, name: str) -> str:
    import hashlib

    r = requests.get(f"{stack.url('gcs')}/storage/v1/b/{stack.images_bucket}/o/{requests.utils.quote(name, safe='')}",
                     params={"alt": "media"}, timeout=HTTP_TIMEOUT)
    return hashlib.sha256(r.content).hexdigest()


@pytest.mark.parametrize("fault,name", [("bad_base64", "malformed 200 (invalid base64)"),
                                        ("truncated_image", "truncated PNG")])
def test_a_spoiled_200_is_one_counted_attempt_then_a_good_image(stack, fault, name):
    started = time.monotonic()
    configure_gemini(stack, {"faults": {"script": [fault, fault]}})
    job_id = submit(stack, items(fault, 4))
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    # Two attempts counted for the two spoiled answers, and no more calls than that: before, an
    # unparseable answer escaped as a crash and was generated again every lease period.
    assert sum(it["attempts"] for it in all_items(stack, job_id)) == 4 + 2
    stats = gemini_stats(stack)
    assert stats["by_outcome"].get(fault) == 2 and stats["by_outcome"].get("ok") == 4, stats["by_outcome"]
    for row in manifest_rows(stack, job_id):  # the manifest describes the object that is stored
        assert row["format"] == "png" and row["sha256"] == object_sha256(stack, row["gcs_uri"].split("/", 3)[3])
    check(stack, name, f"2 x {fault}", statuses, started, retryable=True)


def test_jpeg_output_is_stored_as_jpeg(stack):
    started = time.monotonic()
    configure_gemini(stack, {"image_format": "jpeg"})
    job_id = submit(stack, items("jpeg", 4))
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    objects = stored_objects(stack, job_id)
    jpegs = {n: o for n, o in objects.items() if n.endswith(".jpg")}
    assert len(jpegs) == 4 and not any(n.endswith(".png") for n in objects), sorted(objects)
    assert {o["contentType"] for o in jpegs.values()} == {"image/jpeg"}
    rows = manifest_rows(stack, job_id)
    assert {r["format"] for r in rows} == {"jpeg"} and all(r["width"] and r["height"] for r in rows)
    check(stack, "JPEG output", "image_format jpeg", statuses, started)


def test_a_worker_sigkilled_between_upload_and_commit_is_not_billed_twice(stack):
    """The worker process dies right after each image object is created (TEST_KILL_AFTER_UPLOAD);
    gunicorn starts a new one; the redelivery, once the dead worker's lease is over, records the
    stored object instead of generating the image again."""
    started = time.monotonic()
    stack.restart("worker", signal.SIGTERM, env={**BREAKER, "TEST_KILL_AFTER_UPLOAD": "true"})
    try:
        job_id = submit(stack, items("killed", 1))
        statuses = drive(stack, [job_id], timeout=60)
    finally:
        stack.restart("worker", signal.SIGTERM, env=BREAKER)
    assert statuses[0]["status"] == "succeeded"
    assert gemini_stats(stack)["images_generated"] == 1  # one image paid for
    (row,) = manifest_rows(stack, job_id)
    # The manifest's hash is the stored object's, so `imagefleet download` accepts the file.
    assert row["sha256"] == object_sha256(stack, row["gcs_uri"].split("/", 3)[3])
    assert any("recording the image an earlier attempt stored" in line for line in
               worker_log(stack, 400).splitlines()), worker_log(stack)
    check(stack, "worker SIGKILLed between upload and commit", "1 SIGKILL after upload", statuses, started)


def test_gcs_unavailable_longer_than_the_lease(stack, publisher):
    """GCS stops answering while the images are being generated, for longer than an item's
    lease; meanwhile the items' messages are delivered again. The workers renew their leases
    around bounded upload tries, so the extra deliveries find the items leased and nothing is
    generated twice; once GCS answers, the uploads go through."""
    started = time.monotonic()
    configure_gemini(stack, {"latency": {"mean_ms": 1500}})
    job_id = submit(stack, items("gcsdown", 2))
    wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] == 2, "both calls in flight")
    claimed_until = max(d["lease_expires_at"] for d in item_docs_of(stack, job_id))
    stack.pause("gcs")
    try:
        # Hold the outage until the leases taken at the claim have run out (a data-defined
        # deadline, polled), then deliver every message again, as Pub/Sub would.
        wait_until(stack, lambda: time.time() > claimed_until + 1, "the claim's leases to run out", timeout=30)
        for key in ("gcsdown-0", "gcsdown-1"):
            publisher.publish(stack.topic_path, json.dumps({"job_id": job_id, "item_key": key}).encode()).result(30)
        wait_until(stack, lambda: any("leased by another delivery" in line for line in
                                      worker_log(stack, 200).splitlines()), "a duplicate delivery refused")
    finally:
        stack.resume("gcs")
    statuses = drive(stack, [job_id])
    assert statuses[0]["status"] == "succeeded"
    assert gemini_stats(stack)["images_generated"] == 2  # nothing generated twice
    check(stack, "GCS unavailable longer than the lease", f"GCS frozen > {LEASE_SECONDS}s lease", statuses, started)


def item_docs_of(stack, job_id: str) -> list[dict]:
    from google.cloud import firestore

    db = firestore.Client(project=stack.project)
    return [s.to_dict() for s in db.collection("jobs").document(job_id).collection("items").stream()]


def test_worker_killed_with_deliveries_in_flight_and_no_redelivery(stack):
    """The worker dies mid-call and its messages are gone (the subscription is detached, as if
    they had been acked): the poller's sweep republishes the items whose lease expired."""
    started = time.monotonic()
    configure_gemini(stack, {"latency": {"mean_ms": 2500}})
    job_id = submit(stack, items("inflight", 2))
    wait_until(stack, lambda: gemini_stats(stack)["current_concurrency"] == 2, "both calls in flight")
    stack.detach_push_subscription()
    try:
        stack.restart("worker", signal.SIGKILL, env=BREAKER)
    finally:
        stack.attach_push_subscription()
    configure_gemini(stack, {"latency": {"mean_ms": 0}})
    assert {d["state"] for d in item_docs_of(stack, job_id)} == {"running"}  # left running, no message
    statuses = drive(stack, [job_id], timeout=60)
    assert statuses[0]["status"] == "succeeded"
    assert gemini_stats(stack)["images_generated"] == 2  # the killed calls never returned an image
    # retryable: the killed calls were sent (and cut off before any image came back).
    check(stack, "worker killed with deliveries in flight, no redelivery", "1 SIGKILL, messages dropped", statuses,
          started, retryable=True)
