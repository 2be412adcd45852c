"""Benchmark of sources.read_lines: parsing a JSONL (and a CSV) file of LINES lines held in
memory, fed in 8 MiB chunks as GcsSources.chunks gives them; prints lines/s and MB/s.
The
wall clock and the CPU time are both shown. Run with `.venv/bin/python tests/bench/bench_sources.py [--lines N]`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "functions"))

import sources  # noqa: E402

CHUNK = 8 << 20


def jsonl(lines: int) -> bytes:
    rows = []
    for i in range(lines):
        key = f'"key": "k{i}", ' if i % 2 else ""
        rows.append(f'{{"prompt": "A lighthouse on a cliff at dusk, variation {i}", {key}"aspect_ratio": "16:9"}}\n')
    return "".join(rows).encode()


def csv_file(lines: int) -> bytes:
    rows = ["prompt,key,aspect_ratio\n"]
    rows += [f'"A lighthouse, at dusk, variation {i}",{f"k{i}" if i % 2 else ""},16:9\n' for i in range(lines)]
    return "".join(rows).encode()


def run(name: str, data: bytes, fmt: str) -> None:
    chunks = (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
    started, cpu = time.perf_counter(), time.process_time()
    count = refused = 0
    for line in sources.read_lines(chunks, fmt):
        count += 1
        refused += line.error is not None
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # CPU seconds too: on a shared machine the wall clock measures the neighbours as well.
    print(f"{name}: {count:,} lines ({len(data) / 1e6:.0f} MB), {refused} refused: "
          f"{seconds:.2f} s wall = {count / seconds:,.0f} lines/s, {len(data) / 1e6 / seconds:.1f} MB/s; "
          f"{cpu:.2f} s CPU = {count / cpu:,.0f} lines/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    lines = parser.parse_args().lines
    run("jsonl", jsonl(lines), "jsonl")
    run("csv", csv_file(lines), "csv")


if __name__ == "__main__":
    main()
