"""429s as the real service sends them: every violation is read, and a per-minute wait is
never taken for a day's exhaustion. The bodies are real ones but one, built to their layout (tests/fixtures/quota_429/README.md)."""
import json
from pathlib import Path

import pytest

from adapters.gemini_generator import quota_details
from core.errors import QuotaExceeded, is_daily_exhaustion

BODIES = Path(__file__).parent.parent / "fixtures" / "quota_429"


def classify(name: str) -> QuotaExceeded:
    quota_ids, delay = quota_details(json.loads((BODIES / name).read_text()))
    return QuotaExceeded("429", retry_delay=delay, quota_id=None, quota_ids=quota_ids)


def test_every_violation_is_kept_in_order():
    e = classify("per_day_per_minute_tokens_47s.json")
    assert e.quota_ids == (
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
    )
    assert e.retry_delay == 47.0


@pytest.mark.parametrize("name,per_day,deciding", [
    # per-day listed first, but per-minute ones too and a 47 s delay: a per-minute wait
    ("per_day_per_minute_tokens_47s.json", False, "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    ("tokens_per_minute_26s.json", False, "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
    # no RetryInfo, but per-minute violations are listed: still a per-minute wait
    ("tokens_rpm_rpd_no_retry_info.json", False, "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
    ("paid_rpm_7s.json", False, "GenerateRequestsPerMinutePerProjectPerModel"),
    # only a Help link, or nothing: nothing says "daily", the breaker's failure count decides
    ("help_only.json", False, None),
    ("no_details.json", False, None),
])
def test_real_429_bodies_are_classified(name, per_day, deciding):
    e = classify(name)
    assert e.per_day is per_day
    assert e.quota_id == deciding


def test_help_only_429_has_no_ids_and_no_delay():
    assert quota_details(json.loads((BODIES / "help_only.json").read_text())) == ((), None)


@pytest.mark.parametrize("ids,delay,daily", [
    (("GenerateRequestsPerDayPerProjectPerModel",), None, True),
    (("GenerateRequestsPerDayPerProjectPerModel",), 50_000.0, True),
    (("GenerateRequestsPerDayPerProjectPerModel",), 47.0, False),  # a short delay wins
    (("GenerateRequestsPerDayPerProjectPerModel", "GenerateRequestsPerMinutePerProjectPerModel"), None, False),
    (("GenerateRequestsPerMinutePerProjectPerModel",), 3_600.0, False),
    ((), None, False),
])
def test_daily_exhaustion_needs_a_per_day_violation_and_no_sign_of_a_short_wait(ids, delay, daily):
    assert is_daily_exhaustion(ids, delay) is daily


def test_the_one_id_constructor_still_works():
    e = QuotaExceeded("429", retry_delay=None, quota_id="GenerateRequestsPerDayPerProjectPerModel")
    assert e.per_day and e.quota_ids == ("GenerateRequestsPerDayPerProjectPerModel",)


@pytest.mark.parametrize("body", [None, "text", {"error": "x"}, {"error": {"details": "x"}},
                                  {"error": {"details": [1, {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                                             "violations": [1, {"quotaId": 5}]}]}}])
def test_malformed_bodies_give_nothing_rather_than_crash(body):
    assert quota_details(body) == ((), None)
