"""Finished batches ingested as tasks of their own: one scheduled tick finds three batches
succeeded, publishes one nudge each and returns; the batch-nudges push subscription brings each
nudge back to the poller (functions-framework serves them on threads of their own, as the cloud
gives each its own instance), and the ingests run at the same time. No further tick is
called: an ingest longer than its slice (POLLER_BUDGET_SECONDS, 4 s here) goes on by the nudge
it publishes itself.

Concurrency is observed, not timed: the poller's Cloud Storage link is held shut, so each ingest
stops at its first image upload, holding its intent's lease; one Firestore read that finds two
intents leased by two different nudge deliveries at once is the proof (two: the emulator's
limit of pushes in flight per subscription; the third nudge waits for one of them)."""
from __future__ import annotations

import socket
import threading

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from tests.e2e.helpers import (
    assert_settled, functions_env, gemini_batches, job_status, process_log, submit, tick, wait_until,
)

JOBS = 3
# The Pub/Sub emulator pushes at most 2 messages of a subscription at once (infra/local/stack.py);
# in the cloud each push has an instance of its own, up to poller_max_instances.
PUSHES_IN_FLIGHT = 2
ITEMS = 12  # above INTERACTIVE_THRESHOLD: each job is one batch


class HeldLink:
    """A TCP proxy to `upstream` that forwards until shut() and holds everything from then on
    (new connections accepted, nothing forwarded, pooled ones too) until open() is called."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.gate = threading.Event()
        self.gate.set()
        self.held = 0
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def open(self) -> None:
        self.gate.set()

    def shut(self) -> None:
        self.gate.clear()

    def close(self) -> None:
        self.gate.set()
        for s in [self._server, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.held += 1
        self.gate.wait()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets.append(server)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65_536):
                self.gate.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def held_gcs(stack):
    """The poller's Cloud Storage behind a HeldLink, open until the test shuts it (the poller
    reads the jobs' staged bodies from it while it expands them)."""
    link = HeldLink(("127.0.0.1", stack.ports.gcs))
    try:
        with functions_env(stack, ["poller"], {"STORAGE_EMULATOR_HOST": f"http://{link.address}"}):
            yield link
    finally:
        link.close()


def leased_by_nudges(db, job_ids: list[str]) -> dict[str, str]:
    """The jobs' intents that a nudge delivery holds right now: intent id -> lease owner."""
    owners = {}
    for job_id in job_ids:
        for doc in db.collection("batches").where(filter=FieldFilter("job_id", "==", job_id)).stream():
            d = doc.to_dict()
            if d.get("state") == "ingesting" and (d.get("lease_owner") or "").startswith("nudge-"):
                owners[doc.id] = d["lease_owner"]
    return owners


@pytest.mark.timeout(180)
def test_one_tick_hands_finished_batches_to_concurrent_ingests(stack, db, bucket, held_gcs):
    job_ids = [submit(stack, [{"key": f"k{i:02d}", "prompt": f"a harbour {j}, take {i}"} for i in range(ITEMS)])
               for j in range(JOBS)]
    wait_until(stack, lambda: len(found := gemini_batches(stack)) == JOBS and all(
        b["state"] == "BATCH_STATE_SUCCEEDED" for b in found), "the batches succeeded at Gemini")
    held_gcs.shut()

    summary = tick(stack)

    assert summary["ingest_requested"] == JOBS and summary["ingested"] == 0, summary
    owners = wait_until(stack, lambda: len(o := leased_by_nudges(db, job_ids)) >= PUSHES_IN_FLIGHT and o,
                        f"intents leased by nudges at once\n{process_log(stack, 'poller')}", timeout=60)
    assert len(set(owners.values())) == len(owners)  # one delivery per intent, at the same time
    held_gcs.open()
    for job_id in job_ids:  # no tick from here: the nudges (and their renudges) finish the work
        status = wait_until(stack, lambda job_id=job_id: (s := job_status(stack, job_id))["status"] == "succeeded"
                            and s["manifest_uri"] and all(b["state"] == "finished" for b in s["batches"]) and s,
                            f"job {job_id} ingested by its nudges\n{process_log(stack, 'poller')}", timeout=90)
        assert_settled(status, bucket)
    assert "nudged intent" in process_log(stack, "poller", lines=2000)
