"""Create-only writes per second into the GCS emulator as its bucket fills, per backend.

The local stack's fake-gcs-server runs on its filesystem backend; this shows why. For each
backend it starts its own fake-gcs-server, writes small objects create-only
(`if_generation_match=0`, as the sinks do) from 4 threads, and prints the rate of every 5,000.
Run:

    .venv/bin/python tests/bench/bench_gcs_emulator.py [--objects 40000] [--backends memory,filesystem]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

STEP = 5000
THREADS = 4
OBJECT_BYTES = 20_000


def start_server(backend: str, port: int, root: str) -> subprocess.Popen:
    from infra.local.stack import fake_gcs_binary

    argv = [str(fake_gcs_binary()), "-scheme", "http", "-backend", backend, "-filesystem-root", root,
            "-host", "127.0.0.1", "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def client(port: int):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    return storage.Client(project="demo-imagefleet-bench", credentials=AnonymousCredentials())


def wait_ready(gcs, deadline: float) -> None:
    while True:
        try:
            list(gcs.list_buckets())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(backend: str, objects: int) -> None:
    from infra.local.stack import Ports

    port = Ports.free().gcs
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as root:
        server = start_server(backend, port, root)
        try:
            gcs = client(port)
            wait_ready(gcs, time.monotonic() + 30)
            bucket = gcs.create_bucket("bench-images")
            data = os.urandom(OBJECT_BYTES)

            def put(i: int) -> None:
                bucket.blob(f"job/{i:07d}.png").upload_from_string(data, content_type="image/png",
                                                                   if_generation_match=0)

            with ThreadPoolExecutor(THREADS) as pool:
                for start in range(0, objects, STEP):
                    began = time.monotonic()
                    list(pool.map(put, range(start, start + STEP)))
                    rate = STEP / (time.monotonic() - began)
                    print(f"{backend:>10}  objects {start + STEP:>7,}  {rate:6.0f} writes/s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=40_000)
    parser.add_argument("--backends", default="memory,filesystem")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}", flush=True)
    for backend in args.backends.split(","):
        run(backend, args.objects)
    print(f"load: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
