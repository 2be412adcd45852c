"""Plumbing for every test folder: markers by folder, a clean ``os.environ`` per test, and the
emulators (integration) or the whole stack (e2e) started once per session, only when a selected
test asks for them: ``make unit`` starts nothing."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import Ports, Stack

TESTS_DIR = Path(__file__).parent
FOLDER_MARKERS = ("unit", "integration", "e2e", "bench")
TEST_PROJECT = "demo-imagefleet-test"
E2E_PROJECT = "demo-imagefleet-e2e"

# Variables a session fixture set for the whole session; the per-test restore puts them back
# even when the session fixture was first started from inside a test (getfixturevalue).
_session_env: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(item.path).resolve().relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(autouse=True)
def _restore_environ():
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)
    os.environ.update(_session_env)


# --- integration: the emulators -------------------------------------------------------------


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory):
    """Firestore, Pub/Sub, GCS and Gemini emulators on free ports, started once; their variables
    (FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST, GOOGLE_GEMINI_BASE_URL,
    GOOGLE_CLOUD_PROJECT, GEMINI_API_KEY, IMAGES_BUCKET, WORK_TOPIC) are set for the session.
    Pub/Sub has no per-test reset that is safe to share: use uuid topic names."""
    stack = Stack(ports=Ports.free(), project=TEST_PROJECT, state_dir=tmp_path_factory.mktemp("emulators"),
                  functions=False)
    with stack:
        saved = dict(os.environ)
        _session_env.update(stack.env())
        os.environ.update(stack.env())
        yield stack
        for key in stack.env():
            _session_env.pop(key, None)
            if key in saved:
                os.environ[key] = saved[key]
            else:
                os.environ.pop(key, None)


@pytest.fixture
def firestore_clean(emulators: Stack) -> Stack:
    """An empty Firestore (the test project's documents are wiped before the test)."""
    emulators.wipe_firestore()
    return emulators


@pytest.fixture
def gemini_clean(emulators: Stack) -> Iterator[str]:
    """The Gemini emulator back at its startup config with zeroed quotas and stats; its base URL."""
    emulators.reset_gemini()
    yield emulators.url("gemini")
    emulators.reset_gemini()


# --- e2e: the whole stack ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def stack_function_env() -> dict[str, str]:
    """Extra environment of the function processes (Settings: INTERACTIVE_THRESHOLD,
    RATE_LIMIT_REQUESTS, ...). Override it in tests/e2e/conftest.py."""
    return {}


@pytest.fixture(scope="session")
def stack_gemini_config() -> dict | None:
    """Startup config patch of the e2e Gemini emulator. Override it in tests/e2e/conftest.py."""
    return None


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, stack_function_env: dict[str, str],
                stack_gemini_config: dict | None):
    """The whole stack (its own emulators, project demo-imagefleet-e2e, the three functions, the
    push subscription), started once. Its logs are under the session's tmp dir."""
    with Stack(ports=Ports.free(), project=E2E_PROJECT, state_dir=tmp_path_factory.mktemp("stack"),
               functions=True, function_env=stack_function_env, gemini_config=stack_gemini_config,
               worker_threads=4) as stack:
        yield stack


@pytest.fixture
def stack(local_stack: Stack) -> Stack:
    """The session's stack with its client variables set in ``os.environ`` for this test (the
    e2e project differs from the integration one, so they are set per test, not per session)."""
    os.environ.update(local_stack.env())
    return local_stack
