"""Benchmark of the constant-time accept and the background expansion (core/expanding.py).

On a fresh local stack (functions under functions-framework, the batch lane on, no scheduler):
POST /v1/jobs with 10, 10,000 and 100,000 prompts (the batch lane: their intents are planned
during the expansion), the time to the 202, then the time from the 202 until the job leaves
`accepting` (its expansion, run by the poller function from the nudge and its continuations,
at the local stack's ramp, EXPAND_RAMP_START_PER_SECOND). Run:

    .venv/bin/python tests/bench/bench_expand.py [--sizes 10,10000,100000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]


def body(n: int) -> dict:
    return {"lane": "batch", "requests": [{"prompt": f"catalogue image {i}: a chair, angle {i % 12}"}
                                          for i in range(n)]}


def accept_and_expand(stack, n: int, timeout: float) -> tuple[float, float, int]:
    """Seconds to the 202, seconds from the 202 until queued, and the body's bytes."""
    import json

    data = json.dumps(body(n)).encode()
    start = time.monotonic()
    r = requests.post(f"{stack.url('api')}/v1/jobs", data=data, headers={"Content-Type": "application/json"},
                      timeout=300)
    accepted = time.monotonic()
    assert r.status_code == 202, r.text
    url = f"{stack.url('api')}{r.json()['status_url']}?page_size=1"
    while True:
        status = requests.get(url, timeout=60).json()
        if status["status"] != "accepting":
            break
        if time.monotonic() - accepted > timeout:
            raise AssertionError(f"still accepting after {timeout}s: {status.get('expansion')}")
        time.sleep(0.2)
    assert status["status"] == "queued" and status["item_count"] == n, status
    return accepted - start, time.monotonic() - accepted, len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,10000,100000")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    from infra.local import Ports, Stack

    function_env = {"BATCH_LANE_ENABLED": "true", "MAX_ITEMS_PER_JOB": "100000"}
    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=True, function_env=function_env,
               gemini_webhooks=False) as stack:
        os.environ.update(stack.env())
        accept_and_expand(stack, 10, args.timeout)  # warm the JVM and the functions
        for n in (int(s) for s in args.sizes.split(",")):
            to_202, expansion, size = accept_and_expand(stack, n, args.timeout)
            print(f"{n:>7} prompts ({size / 1e6:.2f} MB body): 202 in {to_202:.3f} s; expanded "
                  f"(accepting -> queued) {expansion:.2f} s later ({n / max(expansion, 1e-9):,.0f} items/s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
