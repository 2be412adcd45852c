"""A JSON HTTP call with the standard library, for the stack's REST calls and the push relay."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def http_json(method: str, url: str, body: object | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) for any answer, error statuses included; OSError when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
