"""Cloud Logging structured JSON lines."""
import json
import logging

from logs import CloudLoggingFormatter


def record(level, msg, *args, exc_info=None, **extra):
    r = logging.LogRecord("imagefleet", level, __file__, 1, msg, args, exc_info)
    r.__dict__.update(extra)
    return r


def test_a_line_has_severity_message_and_the_extra_context():
    line = CloudLoggingFormatter().format(record(logging.WARNING, "quota exceeded (%s)", "PerDay",
                                                 job_id="j1", item_key="k1", lane="interactive"))
    entry = json.loads(line)
    assert entry["severity"] == "WARNING" and entry["message"] == "quota exceeded (PerDay)"
    assert (entry["job_id"], entry["item_key"], entry["lane"]) == ("j1", "k1", "interactive")
    assert "\n" not in line  # one entry per line


def test_exceptions_go_into_the_message_for_error_reporting():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = json.loads(CloudLoggingFormatter().format(record(logging.ERROR, "failed", exc_info=sys.exc_info())))
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("failed\nTraceback") and "ValueError: boom" in entry["message"]


def test_values_json_cannot_encode_are_written_as_text():
    entry = json.loads(CloudLoggingFormatter().format(record(logging.INFO, "x", state={1, 2} and object())))
    assert entry["state"].startswith("<object object")
