"""The Firestore emulator warmed up before a bench's timed runs.

The emulator is a JVM: on a new stack its first commits of a few hundred documents run before
its JIT has compiled them, a cost a deployment's Firestore does not have. In bench-ingest, a
150-item checkpoint took 0.55 s in the first ingest and 0.17 s once warm. In bench-interactive
it changed little: over three runs, the first send at 1,000/min came 8.1 to 10.8 s after the
submit, against 9.6 to 11.7 s without it (most of it is writing the job's 1,500 items).
"""
from __future__ import annotations

import os
import time


def warm_firestore(rounds: int = 6, items: int = 500) -> float:
    """Checkpoint- and expansion-shaped work on a scratch collection, deleted after: `items`
    documents created in one batch, then `rounds` times read, updated conditionally in one
    batch and queried in order. The seconds it took."""
    from google.cloud import firestore

    started = time.monotonic()
    db = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    scratch = db.collection("bench_warm_up")
    refs = [scratch.document(f"d{n:04d}") for n in range(items)]
    batch = db.batch()
    for n, ref in enumerate(refs):
        batch.create(ref, {"state": "queued", "index": n, "prompt": "a studio photo of a chair"})
    batch.commit()
    for r in range(rounds):
        batch = db.batch()
        for snap in db.get_all(refs):
            batch.update(snap.reference, {"state": f"round-{r}", "gcs_uri": f"gs://warm/{snap.id}"},
                         option=db.write_option(last_update_time=snap.update_time))
        batch.commit()
        list(scratch.order_by("index").limit(items).stream())
    batch = db.batch()
    for ref in refs:
        batch.delete(ref)
    batch.commit()
    return time.monotonic() - started
