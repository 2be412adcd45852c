"""What each part of a job's status read costs as the job grows, on the Firestore emulator.

Writes a batch-lane job with N items and one intent per 5,000 of them (the shape of a large job
expanded in the background) straight through the adapters, then times each read that
core.jobs.get_job_status makes, and the whole status, at every size. Run:

    .venv/bin/python tests/bench/bench_status.py [--sizes 10000,100000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]

KEYS_PER_INTENT = 5000


def write_job(store, n: int, now: float):
    from core.batches import plan_intents
    from core.models import Item, Job, JobStatus, Lane

    job = Job(job_id=f"bench{n}", lane=Lane.BATCH, status=JobStatus.QUEUED, model="gemini-2.5-flash-image",
              item_count=n, created_at=now, updated_at=now)
    store.create_job_doc(job)
    for start in range(0, n, KEYS_PER_INTENT):
        items = [Item(job_id=job.job_id, key=f"k{i:07d}", index=i, prompt=f"catalogue image {i}", aspect_ratio="1:1",
                      domain=None, quality="standard",
                      lane="batch", updated_at=now) for i in range(start, min(n, start + KEYS_PER_INTENT))]
        store.create_items(job.job_id, items, job_created_at=now)
        store.create_intents(plan_intents(job, items, max_requests=KEYS_PER_INTENT, now=now,
                                          series=f"e{start // KEYS_PER_INTENT:07d}."))
    return job


def timed(label: str, call) -> None:
    start = time.monotonic()
    call()
    print(f"    {label:<34} {time.monotonic() - start:8.3f} s", flush=True)


def measure(store, events, job, n: int) -> None:
    from core.jobs import StatusDeps, get_job_status

    print(f"{n:>9} items, {-(-n // KEYS_PER_INTENT)} intents:", flush=True)
    timed("get_job", lambda: store.get_job(job.job_id))
    timed("list_items (first page of 100)", lambda: store.list_items(job.job_id, None, 100))
    timed("list_items (last page of 100)", lambda: store.list_items(job.job_id, n - 101, 100))
    timed("count_items", lambda: store.count_items(job.job_id))
    timed("count_succeeded_by_lane", lambda: store.count_succeeded_by_lane(job.job_id))
    timed("intents_of_job (whole intents)", lambda: store.intents_of_job(job.job_id))
    if hasattr(store, "intent_page"):
        timed("intent_page (100, no keys)", lambda: store.intent_page(job.job_id, None, 100))
        timed("count_intents", lambda: store.count_intents(job.job_id))
    timed("events_of_job", lambda: events.events_of_job(job.job_id))
    timed("get_job_status (page_size=100)",
          lambda: get_job_status(job.job_id, StatusDeps(store, batches=store, events=events), page_size=100))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    from infra.local import Ports, Stack

    with Stack(ports=Ports.free(), project="demo-imagefleet-bench", functions=False) as stack:
        os.environ.update(stack.env())
        from google.cloud import firestore

        from adapters.firestore.events import FirestoreEventStore
        from adapters.firestore.jobs import FirestoreJobStore

        client = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
        store, events = FirestoreJobStore(client), FirestoreEventStore(client)
        for n in (int(s) for s in args.sizes.split(",")):
            start = time.monotonic()
            job = write_job(store, n, time.time())
            print(f"  (wrote {n} items in {time.monotonic() - start:.0f} s)", flush=True)
            measure(store, events, job, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
