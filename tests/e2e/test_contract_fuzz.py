"""The published OpenAPI contract, fuzzed by schemathesis against the real http_api process.

Its own small stack, with the API keys of two tenants, so the fuzzer's jobs (it submits real
ones) never mix with the other e2e tests, and it runs as a tenant that is not an admin. Zero
5xx, every response conforms to the schema (status code, content type, body), every invalid
input is rejected with a 4xx JSON error, and a request without the key is refused."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from infra.local import Ports, Stack

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "missing_required_header", "unsupported_method", "ignored_auth",
])
API_KEY = "fuzz-key-not-a-secret"
OTHER_KEY = "other-tenant-key-not-a-secret"


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    with Stack(ports=Ports.free(), project="demo-imagefleet-fuzz", state_dir=tmp_path_factory.mktemp("fuzz"),
               functions=True, api_key=API_KEY, gemini_config={"image_scale": 0.1},
               webhooks=False,  # no signing secret: every callback_url the fuzzer invents is refused
               function_env={"API_KEYS": f"fuzz={API_KEY},other={OTHER_KEY}",
                             "RATE_LIMIT_REQUESTS": "0", "RATE_LIMIT_IMAGES": "0", "MAX_ITEMS_PER_JOB": "50",
                             "BATCH_SUBMIT_BUDGET_SECONDS": "1"}) as stack:
        yield stack


def test_the_api_wants_its_key(fuzz_stack):
    api = fuzz_stack.url("api")
    assert requests.get(f"{api}/v1/jobs/abc", timeout=10).status_code == 401
    assert requests.get(f"{api}/v1/jobs/abc", headers={"X-API-Key": API_KEY}, timeout=10).status_code == 404
    assert requests.get(f"{api}/v1/openapi.json", timeout=10).json()["openapi"] == "3.1.0"


def test_the_fuzzers_tenant_owns_its_jobs(fuzz_stack):
    api = fuzz_stack.url("api")
    r = requests.post(f"{api}/v1/jobs", json={"requests": [{"prompt": "a fox"}]}, headers={"X-API-Key": API_KEY},
                      timeout=10)
    assert r.status_code == 202, r.text
    status_url = api + r.json()["status_url"]
    assert requests.get(status_url, headers={"X-API-Key": API_KEY}, timeout=10).status_code == 200
    assert requests.get(status_url, headers={"X-API-Key": OTHER_KEY}, timeout=10).status_code == 404
    stats = requests.get(f"{api}/v1/stats", headers={"X-API-Key": API_KEY}, timeout=10).json()
    assert (stats["tenant"], stats["admin"]) == ("fuzz", False)


def test_schemathesis_finds_nothing(fuzz_stack):
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{fuzz_stack.url('api')}/v1/openapi.json", "-H", f"X-API-Key: {API_KEY}",
         "--checks", CHECKS, "--max-examples", "30", "--seed", "20261125", "--workers", "1",
         "--no-color", "--generation-codec", "utf-8"],
        capture_output=True, text=True, timeout=300, cwd=fuzz_stack.state_dir,
    )
    summary = result.stdout[-3000:]
    # One worker: CPython 3.11's ast module is not thread-safe, which schemathesis's
    # coverage phase trips over with several workers.
    assert result.returncode == 0, summary + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) > 100, summary
    print(f"schemathesis: {generated.group(0)}")
