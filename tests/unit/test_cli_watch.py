"""Following a job: one plain line per change when not on a terminal, the end waits for the
manifest, --wait-timeout gives up. The status comes over HTTP from a scripted server; the
clock is a counter, so nothing here sleeps."""
from __future__ import annotations

import io

import pytest

from imagefleet.client import ApiClient, ApiError
from imagefleet.watch import MANIFEST_GRACE_SECONDS, StillRunning, follow


def status(state: str, *, succeeded=0, failed=0, running=0, queued=0, manifest=None, total=4):
    body = {"job_id": "j1", "status": state, "item_count": total, "manifest_uri": manifest, "items": [],
            "counts": {"queued": queued, "running": running, "succeeded": succeeded, "failed": failed,
                       "dead_lettered": 0, "cancelled": 0}, "batches": []}
    return 200, body, "application/json"


class Clock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_one_plain_line_per_change_with_elapsed_and_eta(serve):
    server = serve(status("queued", queued=4), status("queued", queued=4), status("running", running=2, queued=2),
                   status("running", succeeded=2, running=2), status("succeeded", succeeded=3, failed=1,
                                                                      manifest="gs://b/j1/manifest.jsonl"))
    out = io.StringIO()

    final = follow(ApiClient(server.url), "j1", stream=out, tty=False, clock=Clock(2.0), sleep=lambda s: None)

    assert final["status"] == "succeeded"
    assert out.getvalue().splitlines() == [
        # Polls at 2, 4 (no change: no line), 6, 8 and 10 s after the start; the ETA is the
        # rate since the first poll: 2 items in 6 s, 2 to go.
        "queued: done 0/4 · failed 0 · pending 4 · elapsed 2s · ETA --",
        "running: done 0/4 · failed 0 · pending 4 · elapsed 6s · ETA --",
        "running: done 2/4 · failed 0 · pending 2 · elapsed 8s · ETA 6s",
        "succeeded: done 3/4 · failed 1 · pending 0 · elapsed 10s · ETA 0s",
    ]
    assert all(r["path"] == "/v1/jobs/j1?page_size=1" for r in server.requests)


def test_an_ended_job_is_followed_until_its_manifest_is_written(serve):
    server = serve(status("cancelled", succeeded=1), status("cancelled", succeeded=1),
                   status("cancelled", succeeded=1, manifest="gs://b/j1/manifest.jsonl"))

    final = follow(ApiClient(server.url), "j1", stream=io.StringIO(), tty=False, clock=Clock(1.0),
                   sleep=lambda s: None)

    assert final["manifest_uri"] and len(server.requests) == 3


def test_an_ended_job_without_a_manifest_is_given_up_on_after_the_grace(serve):
    server = serve(*[status("cancelled", succeeded=1)] * 5)

    final = follow(ApiClient(server.url), "j1", stream=io.StringIO(), tty=False,
                   clock=Clock(MANIFEST_GRACE_SECONDS / 2 + 1), sleep=lambda s: None)

    assert final["status"] == "cancelled" and final["manifest_uri"] is None
    assert len(server.requests) == 3


def test_the_wait_timeout_leaves_the_job_running(serve):
    server = serve(*[status("running", running=4)] * 5)

    with pytest.raises(StillRunning, match="job j1 is still running after 10s; it goes on"):
        follow(ApiClient(server.url), "j1", timeout=10, stream=io.StringIO(), tty=False, clock=Clock(4.0),
               sleep=lambda s: None)


def test_a_blip_of_the_api_is_waited_out_and_a_404_is_not(serve):
    unavailable = (503, {"error": {"code": 503, "reason": "unavailable", "message": "redeploying"}},
                   "application/json")
    server = serve(status("running", running=4), unavailable, unavailable,
                   status("succeeded", succeeded=4, manifest="gs://b/j1/manifest.jsonl"))
    out = io.StringIO()

    final = follow(ApiClient(server.url), "j1", stream=out, tty=False, clock=Clock(1.0), sleep=lambda s: None)

    assert final["status"] == "succeeded"
    assert out.getvalue().count("503 unavailable: redeploying; asking again") == 2

    gone = serve((404, {"error": {"code": 404, "reason": "not_found", "message": "job j1 not found"}},
                  "application/json"))
    with pytest.raises(ApiError, match="404 not_found"):
        follow(ApiClient(gone.url), "j1", stream=io.StringIO(), tty=False, clock=Clock(1.0), sleep=lambda s: None)
