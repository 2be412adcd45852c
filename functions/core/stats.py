"""GET /v1/stats: today's usage, the limits and the breaker."""
from __future__ import annotations

from core.accounting import Accounting
from core.breaker import CircuitBreaker


def get_stats(*, accounting: Accounting, breaker: CircuitBreaker | None, pool_size: int | None = None,
              tenant: str | None = None, models: list[dict] | None = None) -> dict:
    """Today's usage as `tenant` may see it (None: an admin: the totals and every tenant's),
    beside the limits and the breaker, which every tenant shares."""
    body = accounting.summary(tenant)
    body["breaker"] = breaker.view(fresh=True).public() if breaker is not None else {"state": "closed"}
    body["pending_batch_pool"] = pool_size
    body["models"] = models or []
    return body
