"""Two tenants and an admin against the real stack: each API key owns its jobs and its usage.

Its own stack (API_KEYS with tenants); this module's `stack` fixture replaces the session's,
so the autouse clean-up wipes this one."""
from __future__ import annotations

import os
import time

import pytest
import requests

from infra.local import Ports, Stack
from tests.e2e.helpers import HTTP_TIMEOUT, TERMINAL_JOB_STATUSES

ACME, GLOBEX, OPS = ({"X-API-Key": f"{name}-key-not-a-secret"} for name in ("acme", "globex", "ops"))
API_KEYS = "acme=acme-key-not-a-secret,globex=globex-key-not-a-secret,admin:ops=ops-key-not-a-secret"


@pytest.fixture(scope="module")
def tenant_stack(tmp_path_factory):
    with Stack(ports=Ports.free(), project="demo-imagefleet-tenants", state_dir=tmp_path_factory.mktemp("tenants"),
               functions=True, gemini_config={"image_scale": 0.1}, webhooks=False,
               function_env={"API_KEYS": API_KEYS, "RATE_LIMIT_REQUESTS": "0", "RATE_LIMIT_IMAGES": "0"}) as stack:
        yield stack


@pytest.fixture
def stack(tenant_stack: Stack) -> Stack:
    os.environ.update(tenant_stack.env())
    return tenant_stack


def _call(stack: Stack, method: str, path: str, headers: dict, **kw) -> requests.Response:
    return requests.request(method, stack.url("api") + path, headers=headers, timeout=HTTP_TIMEOUT, **kw)


def _wait_done(stack: Stack, job_id: str, headers: dict, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _call(stack, "GET", f"/v1/jobs/{job_id}", headers).json()
        if status.get("status") in TERMINAL_JOB_STATUSES:
            return status
        assert time.monotonic() < deadline, f"job {job_id} is not done after {timeout:.0f}s: {status}"
        time.sleep(0.25)


def test_each_key_owns_its_jobs_and_its_usage(stack):
    r = _call(stack, "POST", "/v1/jobs", ACME, json={"requests": [{"prompt": "a red fox", "key": "fox"}]})
    assert r.status_code == 202, r.text
    acme_job = r.json()["job_id"]
    r = _call(stack, "POST", "/v1/jobs", GLOBEX, json={"requests": [{"prompt": "a moth"}, {"prompt": "a moth 2"}]})
    globex_job = r.json()["job_id"]
    done = _wait_done(stack, acme_job, ACME)
    assert done["status"] == "succeeded" and done["items"][0]["prompt"] == "a red fox"
    _wait_done(stack, globex_job, GLOBEX)

    for method, path in (("GET", "/v1/jobs/{}"), ("POST", "/v1/jobs/{}:retry"), ("DELETE", "/v1/jobs/{}")):
        theirs = _call(stack, method, path.format(acme_job), GLOBEX)
        assert theirs.status_code == 404 and "fox" not in theirs.text, (method, theirs.text)
    assert _call(stack, "GET", f"/v1/jobs/{acme_job}", OPS).json()["status"] == "succeeded"
    assert _call(stack, "GET", f"/v1/jobs/{acme_job}", {"X-API-Key": "nobody"}).status_code == 401

    acme = _call(stack, "GET", "/v1/stats", ACME).json()
    globex = _call(stack, "GET", "/v1/stats", GLOBEX).json()
    admin = _call(stack, "GET", "/v1/stats", OPS).json()
    assert (acme["tenant"], acme["counters"]["images"], "tenants" in acme) == ("acme", 1, False)
    assert (globex["tenant"], globex["counters"]["images"]) == ("globex", 2)
    assert admin["counters"]["images"] == 3
    assert {t: c["images"] for t, c in admin["tenants"].items()} == {"acme": 1, "globex": 2}
