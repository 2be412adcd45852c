"""When a stored record may be deleted: Firestore's TTL policies delete a document after its
expire_at (infra/terraform/firestore.tf). Plain epoch seconds here; the adapters store them as
Timestamps, the only type a TTL policy acts on."""
from __future__ import annotations

import datetime as dt

from core.quota_day import PACIFIC

DAY_SECONDS = 86_400.0


def expire_at(start: float, retention_days: int) -> float:
    """`retention_days` after `start` (epoch seconds)."""
    return start + retention_days * DAY_SECONDS


def day_expire_at(day: str, retention_days: int) -> float:
    """`retention_days` after the end of quota day `day` (YYYY-MM-DD, Pacific, core/quota_day.py),
    so every write to a day's counters carries the same value and none outlives the others."""
    end = dt.datetime.combine(dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time(0), tzinfo=PACIFIC)
    return expire_at(end.timestamp(), retention_days)
