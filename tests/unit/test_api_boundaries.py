"""The HTTP API's edges: bodies without a length, odd path segments, control characters, keys
that collide on a disk. Each answers a 4xx JSON error naming what is wrong, never an HTML page,
and never echoes more than a short, escaped prefix of what it was sent."""
import io
import json

import pytest

import wiring
from tests.unit.test_entrypoints import api, fakes, post_job  # noqa: F401 - fixtures


def _chunked(api, data: bytes):
    """A body with no Content-Length, as gunicorn hands a chunked one to the app."""
    return api.post("/v1/jobs", input_stream=io.BytesIO(data), content_type="application/json",
                    environ_overrides={"wsgi.input_terminated": True})


def test_an_oversized_body_without_a_length_is_the_same_413(api, fakes, monkeypatch):
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    wiring.get_settings.cache_clear()
    body = json.dumps({"requests": [{"prompt": "x" * 40}] * 60}).encode()
    r = _chunked(api, body)
    assert r.status_code == 413 and r.is_json
    assert r.get_json()["error"]["reason"] == "body_too_large"
    assert fakes.store.jobs == {}


def test_a_body_without_a_length_under_the_limit_is_read_whole(api, fakes):
    r = _chunked(api, json.dumps({"requests": [{"prompt": "a red fox"}]}).encode())
    assert r.status_code == 202, r.get_json()


@pytest.mark.parametrize("path", ["/v1/jobs/x%0A", "/v1/jobs/x%0A:retry", "/v1/jobs/%0A%0D", "/robots.txt"])
@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_any_path_answers_json_not_an_html_page(api, path, method):
    r = api.open(path, method=method)
    assert r.status_code in (404, 405) and r.is_json, r.get_data(as_text=True)[:200]
    assert "\n" not in r.get_json()["error"]["message"]


@pytest.mark.parametrize("route", ["/v1/jobs/{}", "/v1/jobs/{}:retry"])
def test_a_long_job_id_is_not_echoed_back(api, route):
    long_id = "a" * 100_000
    for method in ("GET", "DELETE", "POST"):
        r = api.open(route.format(long_id), method=method)
        if r.status_code == 405:
            continue
        assert r.status_code == 404 and r.is_json
        assert len(r.get_data()) < 300, r.get_data()[:300]


def test_unicode_digits_and_letters_are_not_job_ids(api):
    r = api.get("/v1/jobs/%C2%B2%C3%A9")  # "²é": str.isalnum() says yes
    assert r.status_code == 404 and r.get_json()["error"]["message"] == "job \\xb2\\xe9 not found"


@pytest.mark.parametrize("item,field", [
    ({"prompt": "a\x85b"}, "requests[0].prompt"),  # NEL, a C1 control
    ({"prompt": "a\x9bb"}, "requests[0].prompt"),  # CSI: a terminal escape on its own
    ({"prompt": "a\ud800b"}, "requests[0].prompt"),  # a lone surrogate: not encodable as UTF-8
    ({"prompt": "a", "domain": "d\x00"}, "requests[0].domain"),
    ({"prompt": "a", "domain": "d\x1b[31m"}, "requests[0].domain"),
    ({"prompt": "a", "domain": "two\nlines"}, "requests[0].domain"),
    ({"prompt": "a", "domain": "d\x9f"}, "requests[0].domain"),
])
def test_control_characters_are_refused_naming_the_field(api, fakes, item, field):
    body = {"requests": [{"prompt": "fine"}] * 3 + [item]}
    r = post_job(api, body)
    assert r.status_code == 400
    fields = r.get_json()["error"]["fields"]
    assert field.replace("[0]", "[3]") in [f["field"] for f in fields], fields
    assert fakes.store.jobs == {}


def test_a_prompt_keeps_its_line_breaks_and_tabs(api):
    assert post_job(api, {"requests": [{"prompt": "a fox\n\tin snow\r\n"}]}).status_code == 202


def test_keys_equal_ignoring_case_are_refused_naming_both(api, fakes):
    r = post_job(api, {"requests": [{"prompt": "a", "key": "Fox"}, {"prompt": "b"}, {"prompt": "c", "key": "fOX"}]})
    assert r.status_code == 400
    message = r.get_json()["error"]["fields"][0]["problem"]
    assert "requests[2].key 'fOX'" in message and "requests[0].key 'Fox'" in message
    assert fakes.store.jobs == {}


@pytest.mark.parametrize("key", ["contact-sheet", "Contact-Sheet", "manifest", "MANIFEST", "con", "Lpt1", "nul"])
def test_reserved_keys_are_refused(api, fakes, key):
    r = post_job(api, {"requests": [{"prompt": "a"}, {"prompt": "b", "key": key}]})
    assert r.status_code == 400
    (problem,) = r.get_json()["error"]["fields"]
    assert problem["field"] == "requests[1].key" and "reserved" in problem["problem"]


def test_names_beside_reserved_ones_are_fine(api):
    body = {"requests": [{"prompt": "a", "key": "manifesto"}, {"prompt": "b", "key": "contact-sheet-2"}]}
    assert post_job(api, body).status_code == 202


def test_invalid_json_is_not_echoed_at_length(api):
    r = api.post("/v1/jobs", data='{"requests": "' + "x" * 50_000, content_type="application/json")
    assert r.status_code == 400 and len(r.get_data()) < 500


@pytest.mark.parametrize("name", ["x" * 100_000, "\x1b[31mred"])
def test_an_unknown_field_is_named_by_a_short_escaped_excerpt(api, name):
    r = post_job(api, {"requests": [{"prompt": "a", name: 1}]})
    assert r.status_code == 400 and len(r.get_data()) < 300
    (problem,) = r.get_json()["error"]["fields"]
    assert problem["field"].startswith("requests[0].") and problem["field"].isprintable()


@pytest.mark.parametrize("size", ["%D9%A3", "1_0", "+5", "%205", "5.0", "0500"])
def test_page_size_is_plain_ascii_digits(api, fakes, size):
    job_id = post_job(api, {"requests": [{"prompt": "a"}]}).get_json()["job_id"]
    r = api.get(f"/v1/jobs/{job_id}?page_size={size}")
    assert r.status_code == 400 and r.get_json()["error"]["fields"][0]["field"] == "page_size"
    assert api.get(f"/v1/jobs/{job_id}?page_size=500").status_code == 200


def test_an_idempotency_key_with_a_control_character_is_refused(api, fakes):
    r = post_job(api, {"requests": [{"prompt": "a"}]}, headers={"Idempotency-Key": "order\x7f1"})
    assert r.status_code == 400 and r.get_json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    assert fakes.store.jobs == {}


@pytest.mark.parametrize("url,problem", [
    ("https://example.com/a\x85b", "not ASCII"),  # C1: http.client could never send it
    ("https://example.com/caf\u00e9", "not ASCII"),
    ("https://" + "a" * 1500 + ".", "not a valid host name"),
])
def test_a_callback_url_that_could_never_be_called_is_refused_briefly(api, fakes, monkeypatch, url, problem):
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_" + "a2trK2trK2trK2trK2trK2trK2trK2trK2trK2trK2s=")
    wiring.get_settings.cache_clear()
    r = post_job(api, {"requests": [{"prompt": "a"}], "callback_url": url})
    assert r.status_code == 400 and len(r.get_data()) < 400
    (field,) = r.get_json()["error"]["fields"]
    assert field["field"] == "callback_url" and problem in field["problem"]
