"""Logs as Cloud Logging structured JSON: one JSON object per line on stdout.

Cloud Run (and so Cloud Functions gen2) parses such lines into jsonPayload and takes
`severity` and `message` from them, so log-based metrics and alerts can match fields
(jsonPayload.alert, jsonPayload.state, jsonPayload.quota_id) instead of parsing text.
Context travels in `extra=`: job_id, item_key and lane on everything about an item.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys

# Attributes every LogRecord has; anything else on a record came from extra= and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            # A stack trace inside `message` is what Error Reporting groups by.
            message = f"{message}\n{self.formatException(record.exc_info)}"
        entry = {
            "severity": "CRITICAL" if record.levelno >= logging.CRITICAL else record.levelname,
            "message": message,
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: int = logging.INFO) -> None:
    """Route every logger through one stdout handler with the JSON formatter (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, CloudLoggingFormatter):
            return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root.handlers = [handler]
    root.setLevel(level)
