"""Gemini's daily quotas reset at midnight Pacific time: the "quota day" everything daily uses."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")


def quota_day(epoch: float) -> str:
    """The quota day (YYYY-MM-DD, Pacific) that `epoch` falls in."""
    return dt.datetime.fromtimestamp(epoch, tz=PACIFIC).date().isoformat()


def next_reset(epoch: float) -> float:
    """Epoch seconds of the next midnight Pacific after `epoch` (DST-aware: 23, 24 or 25 h days)."""
    local = dt.datetime.fromtimestamp(epoch, tz=PACIFIC)
    tomorrow = local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(0), tzinfo=PACIFIC).timestamp()
