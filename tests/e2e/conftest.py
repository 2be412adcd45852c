"""The e2e stack's configuration, and a clean slate for every test.

Windows and timeouts are short so the folder runs in about a minute on 2 cores (10 s of it
waiting out a killed worker's lease, the test marked slow): a 2 s quota window on both sides
(worker and emulator), 3 attempts, a 3 s model timeout. The worker is fed by the Pub/Sub
emulator's push subscription (at most 2 pushes in flight), which redelivers after 1-2 s (now and
then never: the poller's sweep republishes an item left queued 20 s, see below); its
ack deadline (20 s) stays above the longest delivery (MAX_WAIT_SECONDS +
GEMINI_TIMEOUT_SECONDS + Firestore round trips), so a message is never pushed again while a
worker is still on it.
"""
from __future__ import annotations

import pytest

from infra.local import Ports, Stack
from tests.conftest import E2E_PROJECT
from tests.e2e.helpers import (
    GEMINI_TIMEOUT_SECONDS, LEASE_MARGIN_SECONDS, MAX_ATTEMPTS, MAX_WAIT_SECONDS, MODEL, RATE_LIMIT, WINDOW_SECONDS,
)

ACK_DEADLINE_SECONDS = 20


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: waits out a worker's lease (about 10 s); deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def stack_function_env() -> dict[str, str]:
    return {
        "INTERACTIVE_THRESHOLD": "10",
        "RATE_LIMIT_REQUESTS": str(RATE_LIMIT),
        "RATE_LIMIT_IMAGES": str(RATE_LIMIT),
        "RATE_WINDOW_SECONDS": str(WINDOW_SECONDS),
        "RATE_CONCURRENCY": "4",
        # The 2 s window stands for a minute, but jitter does not shrink with it: keep the margin
        # near 0.1 s, as 0.99 gives a 60 s window (core/ratelimit.py).
        "RATE_SAFETY": "0.95",
        "MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "MAX_WAIT_SECONDS": str(MAX_WAIT_SECONDS),
        "GEMINI_TIMEOUT_SECONDS": str(GEMINI_TIMEOUT_SECONDS),
        "LEASE_MARGIN_SECONDS": str(LEASE_MARGIN_SECONDS),
        # The batch lane (tests/e2e/test_batch_lane.py switches it on for its own module): a
        # short poller budget and batch lease, so a killed poller's batch is taken over in
        # seconds; a checkpoint every 5 result lines; 2 batches per item at most.
        "POLLER_BUDGET_SECONDS": "4",
        "BATCH_LEASE_SECONDS": "6",
        "BATCH_CHECKPOINT_LINES": "5",
        "BATCH_MAX_ATTEMPTS": "2",
        "BATCH_UPLOAD_CONCURRENCY": "2",
        # A batch create refused with a 429 that gives no retryDelay waits 0.5-1 s, then 1-2 s...
        "BATCH_QUOTA_BACKOFF_SECONDS": "1",
        # The circuit breaker: off for per-minute 429s here (the quota tests count every 429 and
        # expect no failover); tests/e2e/test_fault_matrix.py turns it on. Short cooldowns, and
        # a pool that every poller tick flushes.
        "BREAKER_THRESHOLD": "1000",
        "BREAKER_COOLDOWN_SECONDS": "2",
        "BREAKER_HALT_SECONDS": "3",
        "POOL_MAX_AGE_SECONDS": "0",
        # Completion webhooks (tests/e2e/test_events.py): retried after 0.25-0.5 s, then 0.5-1 s...
        "WEBHOOK_BACKOFF_BASE_SECONDS": "0.5",
        "WEBHOOK_TIMEOUT_SECONDS": "3",
        # The poller's sweep republishes a running item 1 s after its lease expired.
        "STUCK_LEASE_GRACE_SECONDS": "1",
        # ... and a queued item untouched for 20 s (900 s in a deployment: 15 windows, scaled
        # here to the 2 s window). The Pub/Sub emulator's push sometimes never redelivers a
        # message it was answered a nack for: in about one run in four of the 5xx-burst and
        # dead-letter scenarios, an item nacked twice stayed queued with no further push in
        # the emulator's log or the worker's. That is the loss this sweep exists for.
        "STUCK_QUEUED_SECONDS": "20",
    }


@pytest.fixture(scope="session")
def stack_gemini_config() -> dict:
    """The emulator's startup config, which every test starts from: the worker's quota exactly."""
    return {
        "image_scale": 0.25,
        "window_seconds": WINDOW_SECONDS,
        "quotas": {MODEL: {"rpm": RATE_LIMIT, "ipm": RATE_LIMIT, "concurrent": 4}},
        "faults": {"hang_seconds": 10},  # > GEMINI_TIMEOUT_SECONDS: the worker gives up first
        "batch": {"pending_seconds": 0.2, "running_seconds": 0.5},  # a batch is done in 0.7 s
        # The stack registers Gemini's batch webhook, but its events are dropped unless a test
        # turns them on (tests/e2e/test_gemini_webhooks.py): the other batch tests drive the
        # poller by hand and count its ticks.
        "webhooks": {"drop": True, "poll_seconds": 0.05, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0},
    }


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, stack_function_env: dict[str, str],
                stack_gemini_config: dict):
    """tests/conftest.py's stack, with a push subscription tuned for quick redeliveries."""
    with Stack(ports=Ports.free(), project=E2E_PROJECT, state_dir=tmp_path_factory.mktemp("stack"),
               functions=True, function_env=stack_function_env, gemini_config=stack_gemini_config,
               worker_threads=4, delivery="push", ack_deadline=ACK_DEADLINE_SECONDS,
               retry_min_backoff=1, retry_max_backoff=2) as stack:
        yield stack


@pytest.fixture(autouse=True)
def clean(stack: Stack) -> Stack:
    """An empty Firestore (jobs and the rate limiter's slots) and a Gemini emulator back at its
    startup config with zeroed quotas, stats and request log."""
    assert all(stack.alive().values()), f"a process of the stack is down: {stack.alive()}"
    stack.wipe_firestore()
    stack.reset_gemini()
    return stack


@pytest.fixture
def db(stack: Stack):
    from google.cloud import firestore

    return firestore.Client(project=stack.project)


@pytest.fixture
def bucket(stack: Stack):
    from google.cloud import storage

    return storage.Client(project=stack.project).bucket(stack.images_bucket)


@pytest.fixture
def publisher(stack: Stack):
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The fault matrix's table (tests/e2e/test_fault_matrix.py), when it ran: `make chaos`."""
    import sys

    module = sys.modules.get("tests.e2e.test_fault_matrix")
    rows = getattr(module, "ROWS", None)
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("fault matrix")
    name_w = max(len("scenario"), *(len(r["scenario"]) for r in rows))
    faults_w = max(len("faults injected"), *(len(r["faults"]) for r in rows))
    header = (f"{'scenario':{name_w}} {'items':>5}  {'faults injected':{faults_w}} {'lost':>4} {'dup':>4} "
              f"{'billed 2x':>9} {'calls':>5} {'max/window':>10} {'wall s':>7}")
    write(header)
    write("-" * len(header))
    for r in rows:
        write(f"{r['scenario']:{name_w}} {r['items']:>5}  {r['faults']:{faults_w}} {r['lost']:>4} "
              f"{r['duplicated']:>4} {r['billed_twice']:>9} {r['calls']:>5} "
              f"{str(r['max_in_window']) + '/' + str(config_rate()):>10} {r['seconds']:>7}")


def config_rate() -> int:
    from tests.e2e.helpers import RATE_LIMIT

    return RATE_LIMIT
