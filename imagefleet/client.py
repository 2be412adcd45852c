"""A small client of the imagefleet HTTP API (openapi.json): base URL, keys, timeouts, and every
failure turned into one exception whose message is one line a person can act on."""
from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

API_KEY_HEADER = "X-API-Key"
DEFAULT_API = "http://localhost:8080"
# Connection errors before an answer: the submit is sent again with the same Idempotency-Key,
# so a job the server did record is answered again, not created twice.
RETRY_DELAYS = (0.5, 1.0)
# 409 request_in_progress: how many times to ask again for the answer to an earlier send, and
# the longest wait between two asks whatever Retry-After says (1 s when it says nothing usable).
IN_PROGRESS_RETRIES = 10
IN_PROGRESS_MAX_WAIT = 5.0
# How many field problems of a 400 the one-line message names.
SHOWN_PROBLEMS = 3


class ClientError(Exception):
    """Anything the CLI reports as one ``error: ...`` line."""

    exit_code = 1


class Unreachable(ClientError):
    """Nothing answered at the API's address (refused, unknown host, timeout, TLS)."""

    exit_code = 3


class ApiError(ClientError):
    """The API answered with an error status; ``str()`` is its one-line summary."""

    def __init__(self, status: int, reason: str, message: str, fields: list[dict] | None = None,
                 retry_after: float | None = None) -> None:
        self.status, self.reason, self.message, self.fields = status, reason, message, fields or []
        self.retry_after = retry_after
        super().__init__(self.summary())

    def summary(self) -> str:
        if self.fields:
            problems = [f"{f.get('field', '?')}: {f.get('problem', '?')}" for f in self.fields[:SHOWN_PROBLEMS]]
            more = len(self.fields) - SHOWN_PROBLEMS
            return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
        return f"{self.status} {self.reason}: {self.message}"

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """The API's JSON error body ``{"error": {code, reason, message, fields}}``, or, from
        something in front of it (a load balancer, Cloud Run's IAM check), the status and the
        first line of whatever it sent."""
        try:
            retry_after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error.get("reason") or "error"),
                       str(error.get("message") or ""), error.get("fields") or [], retry_after)
        except (ValueError, KeyError, TypeError, AttributeError):
            text = " ".join(response.text.split())[:200] or response.reason or "no body"
            return cls(response.status_code, "http_error", text, retry_after=retry_after)


def describe_connection_error(exc: BaseException) -> str:
    """A few words for why nothing answered, from the causes requests wraps (urllib3's
    MaxRetryError, NewConnectionError, then the socket's own error)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if type(cause).__name__ == "NameResolutionError" or isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause}"
    # After its last retry urllib3 reports a read timeout as a connection error wrapping it.
    if any(isinstance(cause, (TimeoutError, Urllib3Timeout)) for cause in causes):
        return "timed out"
    return str(causes[-1]) or type(causes[-1]).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        todo += [c for c in linked if isinstance(c, BaseException)]


class ApiRetry(Retry):
    """urllib3's Retry with the CLI's policy, for the calls that are safe to send again (GETs,
    a submit with its Idempotency-Key, a dry run):

    - no answer (refused, reset, dropped, timed out): sent again after each of RETRY_DELAYS,
      counted anew after every answer;
    - 409 with Retry-After to a POST: the API is still handling an earlier send of the same
      Idempotency-Key (request_in_progress; the API's other 409s answer calls that are never
      retried), so it is asked again after Retry-After (at most IN_PROGRESS_MAX_WAIT), up to
      IN_PROGRESS_RETRIES times; then that 409 is the answer.
    """

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        return method.upper() == "POST" and status_code == 409 and has_retry_after

    def is_exhausted(self) -> bool:
        return self._failures_in_a_row() > len(RETRY_DELAYS) or super().is_exhausted()

    def sleep(self, response=None) -> None:
        if response is not None:
            time.sleep(_in_progress_wait(response.headers.get("Retry-After")))
        else:
            time.sleep(RETRY_DELAYS[min(self._failures_in_a_row(), len(RETRY_DELAYS)) - 1])

    def _failures_in_a_row(self) -> int:
        count = 0
        for attempt in reversed(self.history):
            if attempt.error is None:
                break
            count += 1
        return count


def _in_progress_wait(retry_after: str | None) -> float:
    try:
        seconds = float(retry_after) if retry_after is not None else 1.0
    except ValueError:  # an HTTP date, or nonsense
        seconds = 1.0
    return min(max(seconds, 0.0), IN_PROGRESS_MAX_WAIT)


class ApiClient:
    """One API, one key. Timeouts on every call; the key goes in a header and nowhere else.

    Two sessions share the headers: `session` retries through ApiRetry (calls safe to repeat),
    `once` never retries (a cancel or a retry, which must not be sent twice)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, id_token: str | None = None,
                 timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=ApiRetry(
                total=None, status=IN_PROGRESS_RETRIES, allowed_methods=None, raise_on_status=False)))
        self.once = requests.Session()
        self.once.headers = self.session.headers
        self.session.headers["User-Agent"] = "imagefleet-cli"
        if api_key:
            self.session.headers[API_KEY_HEADER] = api_key
        if id_token:  # a private Cloud Functions / Cloud Run service wants an identity token
            self.session.headers["Authorization"] = f"Bearer {id_token}"

    def __repr__(self) -> str:  # never shows the key
        return f"ApiClient({self.base_url!r})"

    # -- the endpoints -----------------------------------------------------------------------

    def submit(self, items: list[dict], lane: str = "auto", *, idempotency_key: str | None = None,
               model: str | None = None) -> dict:
        """POST /v1/jobs: the accepted job (202, or 200 when the key was seen before)."""
        # Sent again after a lost answer, or while the server still handles an earlier send of
        # this key (ApiRetry): the same key, so the server answers with the job it recorded.
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", "/v1/jobs", json=job_body(items, lane, model),
                          headers={"Idempotency-Key": key}, retry=True)

    def submit_source(self, uri: str, *, lane: str = "auto", model: str | None = None,
                      on_bad_line: str | None = None, idempotency_key: str | None = None) -> dict:
        """POST /v1/jobs with a `source` (a gs:// JSONL or CSV file the API reads) instead of
        `requests`; retried with its Idempotency-Key as submit is."""
        body: dict[str, Any] = {"source": uri, "lane": lane}
        if model:
            body["model"] = model
        if on_bad_line:
            body["on_bad_line"] = on_bad_line
        return self._call("POST", "/v1/jobs", json=body,
                          headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())}, retry=True)

    def dry_run(self, items: list[dict], lane: str = "auto", model: str | None = None) -> dict:
        """POST /v1/jobs?dry_run=true: the route and estimated cost; nothing is submitted."""
        return self._call("POST", "/v1/jobs", json=job_body(items, lane, model),
                          params={"dry_run": "true"}, retry=True)

    def job(self, job_id: str, *, page_size: int = 100, page_token: str | None = None) -> dict:
        params: dict[str, Any] = {"page_size": page_size}
        if page_token:
            params["page_token"] = page_token
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}", params=params, retry=True)

    def items(self, job_id: str, *, page_size: int = 500) -> Iterator[dict]:
        """Every item of a job, page after page."""
        token = None
        while True:
            page = self.job(job_id, page_size=page_size, page_token=token)
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{_segment(job_id)}")

    def retry(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{_segment(job_id)}:retry")

    def stats(self) -> dict:
        return self._call("GET", "/v1/stats", retry=True)

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> dict:
        """One call; with ``retry``, through the retrying session (GETs, and POSTs that are safe
        to repeat: an idempotent submit, a dry run)."""
        url = self.base_url + path
        session = self.session if retry else self.once
        try:
            response = session.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(f"cannot reach the API at {self.base_url}: "
                              f"{describe_connection_error(exc)}") from None
        except requests.RequestException as exc:  # an invalid URL and the like
            raise ClientError(f"cannot call the API at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"the API at {self.base_url} answered {method} {path} with "
                              f"HTTP {response.status_code} and a body that is not JSON") from None


def _segment(value: str) -> str:
    """A path segment: a job id with a slash in it names no other route."""
    return quote(value, safe="")


def job_body(items: list[dict], lane: str, model: str | None) -> dict:
    """The POST /v1/jobs body; no `model` key unless one was chosen (the server's default)."""
    body = {"requests": items, "lane": lane}
    if model:
        body["model"] = model
    return body
