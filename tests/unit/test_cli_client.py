"""The CLI's API client against a real HTTP server on loopback that answers as scripted: headers,
one-line errors, retries of a submit with the same Idempotency-Key, unreachable addresses."""
from __future__ import annotations

import json
import socket

import pytest

from imagefleet import client as client_module
from imagefleet.client import ApiClient, ApiError, Unreachable

KEY = "unit-key-not-a-secret"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(client_module, "RETRY_DELAYS", (0.01, 0.01))


def accepted(job_id="j1"):
    return (202, {"job_id": job_id, "lane": "interactive", "status": "queued", "item_count": 1,
                  "status_url": f"/v1/jobs/{job_id}"}, "application/json")


def test_the_key_goes_in_its_header_and_the_body_is_the_contract(serve):
    server = serve(accepted())

    body = ApiClient(server.url, api_key=KEY).submit([{"prompt": "A fox"}], "batch")

    assert body["job_id"] == "j1"
    request = server.requests[0]
    assert (request["method"], request["path"]) == ("POST", "/v1/jobs")
    assert request["headers"]["X-API-Key"] == KEY
    assert json.loads(request["body"]) == {"requests": [{"prompt": "A fox"}], "lane": "batch"}
    assert len(request["headers"]["Idempotency-Key"]) == 36


def test_a_chosen_model_goes_in_the_body(serve):
    server = serve(accepted(), (200, {"dry_run": True}, "application/json"))

    ApiClient(server.url).submit([{"prompt": "A fox"}], model="gemini-3-pro-image")
    ApiClient(server.url).dry_run([{"prompt": "A fox"}], model="gemini-3-pro-image")

    for request in server.requests:
        assert json.loads(request["body"])["model"] == "gemini-3-pro-image"


def test_the_key_is_not_in_the_repr(serve):
    assert KEY not in repr(ApiClient("http://127.0.0.1:1", api_key=KEY))


def test_a_submit_sent_again_after_a_dropped_connection_reuses_its_idempotency_key(serve):
    server = serve("drop", "drop", accepted())

    ApiClient(server.url).submit([{"prompt": "A fox"}], idempotency_key="k-123")

    assert [r["headers"]["Idempotency-Key"] for r in server.requests] == ["k-123"] * 3


def test_a_resent_submit_whose_first_send_is_still_running_asks_again(serve):
    in_progress = (409, {"error": {"code": 409, "reason": "request_in_progress", "message": "still working"}},
                   "application/json", {"Retry-After": "0"})
    server = serve("drop", in_progress, in_progress, accepted("j7"))

    body = ApiClient(server.url).submit([{"prompt": "A fox"}], idempotency_key="k-9")

    assert body["job_id"] == "j7"
    assert [r["headers"]["Idempotency-Key"] for r in server.requests] == ["k-9"] * 4


def in_progress(retry_after: str):
    return (409, {"error": {"code": 409, "reason": "request_in_progress", "message": "still working"}},
            "application/json", {"Retry-After": retry_after})


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The client's waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    return waits


def test_an_in_progress_answer_is_asked_again_after_its_retry_after_within_bounds(serve, sleeps):
    server = serve(in_progress("3"), in_progress("60"), in_progress("Wed, 21 Oct 2015 07:28:00 GMT"), accepted())

    assert ApiClient(server.url).submit([{"prompt": "A fox"}])["job_id"] == "j1"

    assert sleeps == [3.0, client_module.IN_PROGRESS_MAX_WAIT, 1.0]
    assert len(server.requests) == 4


def test_an_answer_still_in_progress_after_every_retry_is_the_error(serve, sleeps):
    server = serve(*[in_progress("0")] * (client_module.IN_PROGRESS_RETRIES + 2))

    with pytest.raises(ApiError, match="409 request_in_progress"):
        ApiClient(server.url).submit([{"prompt": "A fox"}])

    assert len(server.requests) == client_module.IN_PROGRESS_RETRIES + 1


def test_connection_failures_are_counted_anew_after_each_answer(serve, sleeps):
    server = serve("drop", "drop", in_progress("0"), "drop", "drop", accepted())

    ApiClient(server.url).submit([{"prompt": "A fox"}])

    assert len(server.requests) == 6
    assert sleeps == [*client_module.RETRY_DELAYS, 0.0, *client_module.RETRY_DELAYS]


def test_three_failed_sends_in_a_row_are_unreachable(serve, sleeps):
    server = serve("drop", "drop", "drop", accepted())

    with pytest.raises(Unreachable):
        ApiClient(server.url).job("j1")

    assert len(server.requests) == 3
    assert sleeps == list(client_module.RETRY_DELAYS)


def test_a_409_to_a_call_that_is_not_repeated_is_the_answer(serve, sleeps):
    server = serve(in_progress("0"), in_progress("0"))

    with pytest.raises(ApiError, match="409"):
        ApiClient(server.url).retry("j1")
    with pytest.raises(ApiError, match="409"):
        ApiClient(server.url).job("j1")  # a GET: only a POST of a submit waits on a 409

    assert len(server.requests) == 2


def test_a_cancel_is_not_sent_twice(serve):
    server = serve("drop", accepted())

    with pytest.raises(Unreachable):
        ApiClient(server.url).cancel("j1")
    assert len(server.requests) == 1


def test_an_api_error_is_one_line_with_status_reason_and_message(serve):
    server = serve((404, {"error": {"code": 404, "reason": "not_found", "message": "job x not found"}},
                    "application/json"))

    with pytest.raises(ApiError) as excinfo:
        ApiClient(server.url).job("x")

    assert str(excinfo.value) == "404 not_found: job x not found"
    assert excinfo.value.exit_code == 1


def test_a_400_names_its_first_field_problems(serve):
    fields = [{"field": f"requests[{i}].prompt", "problem": "String should have at least 1 character"}
              for i in range(5)]
    server = serve((400, {"error": {"code": 400, "reason": "invalid_request", "message": "5 problem(s)",
                                    "fields": fields}}, "application/json"))

    with pytest.raises(ApiError) as excinfo:
        ApiClient(server.url).submit([{"prompt": "x"}])

    assert str(excinfo.value) == ("requests[0].prompt: String should have at least 1 character; "
                                  "requests[1].prompt: String should have at least 1 character; "
                                  "requests[2].prompt: String should have at least 1 character (and 2 more)")


def test_an_error_page_from_something_in_front_of_the_api_is_one_line(serve):
    server = serve((502, b"<html>\n<body>\nBad   Gateway\n</body></html>", "text/html"))

    with pytest.raises(ApiError) as excinfo:
        ApiClient(server.url).stats()

    message = str(excinfo.value)
    assert message == "502 http_error: <html> <body> Bad Gateway </body></html>"


def test_nothing_listening_is_unreachable_with_the_reason():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    with pytest.raises(Unreachable) as excinfo:
        ApiClient(f"http://127.0.0.1:{port}").job("x")

    assert str(excinfo.value) == f"cannot reach the API at http://127.0.0.1:{port}: connection refused"
    assert excinfo.value.exit_code == 3


def test_a_server_that_never_answers_times_out(serve):
    server = serve(("sleep", 2), ("sleep", 2), ("sleep", 2))

    with pytest.raises(Unreachable, match=r"timed out$"):
        ApiClient(server.url, timeout=0.2).job("x")


def test_job_ids_are_one_path_segment(serve):
    server = serve((404, {"error": {"code": 404, "reason": "not_found", "message": "nope"}}, "application/json"))

    with pytest.raises(ApiError):
        ApiClient(server.url + "/prefix/").retry("../x")

    assert server.requests[0]["path"] == "/prefix/v1/jobs/..%2Fx:retry"


def test_items_follows_the_pages(serve):
    page = {"job_id": "j1", "status": "running", "counts": {}, "item_count": 3}
    server = serve((200, {**page, "items": [{"key": "a"}, {"key": "b"}], "next_page_token": "1"}, "application/json"),
                   (200, {**page, "items": [{"key": "c"}], "next_page_token": None}, "application/json"))

    keys = [it["key"] for it in ApiClient(server.url).items("j1", page_size=2)]

    assert keys == ["a", "b", "c"]
    assert server.requests[1]["path"] == "/v1/jobs/j1?page_size=2&page_token=1"
