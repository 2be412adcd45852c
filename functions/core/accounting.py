"""Daily usage and spend: what was sent, what it cost, and how close we are to the limits.

Counts live in a CounterStore as increments to one day's counters (sharded in Firestore, so
no document is written more than about once a second). Costs are estimates at configured
per-image prices: the Batch API costs half of an interactive call.

Budget bookkeeping: a job *reserves* its estimated cost when it is accepted; an item that ends
without an image *releases* its share; a diverted item releases the difference between the
lanes. Committed spend = reserved - released, which covers both images already paid for and
images still on their way, so a new job can be checked against the budget before it is run.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from collections.abc import Callable

from core.catalog import Catalog
from core.ports import Clock, CounterStore
from core.models import Lane
from core.quota_day import next_reset, quota_day

log = logging.getLogger(__name__)

# Counter names (fields of a day's counters). quota_errors.<quotaId> are added as seen.
REQUESTS = "requests"  # interactive generateContent calls
IMAGES = "images"  # images produced, both lanes
INTERACTIVE_IMAGES = "interactive_images"
BATCH_IMAGES = "batch_images"
SUCCEEDED = "succeeded"
FAILED = "failed"  # refused or invalid: ended without an image
DEAD_LETTERED = "dead_lettered"
TRANSIENT_ERRORS = "transient_errors"
PERMISSION_ERRORS = "permission_errors"
QUOTA_ERRORS = "quota_errors"  # total 429s; per quotaId under quota_errors_by_id
DIVERTED = "diverted"  # interactive items moved to the batch lane by the breaker
SPEND_USD = "spend_usd"  # images produced x price of their lane
RESERVED_USD = "reserved_usd"
RELEASED_USD = "released_usd"
BY_QUOTA_ID = "quota_errors_by_id"
BY_TENANT = "by_tenant"  # {tenant: {counter: value}} for the counters below
# What each tenant is shown of its own usage: what it sent, what came back, what it cost.
TENANT_COUNTERS = frozenset(
    {REQUESTS, IMAGES, INTERACTIVE_IMAGES, BATCH_IMAGES, SUCCEEDED, FAILED, DEAD_LETTERED, SPEND_USD}
)
_TENANT_CACHE_SIZE = 4096

_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def quota_counter(quota_id: str | None) -> str:
    """A quotaId as a counter name: the API's ids are CamelCase words; anything else is squashed."""
    return _SAFE_ID.sub("_", quota_id or "unknown")[:100]


@dataclass(frozen=True)
class Prices:
    """Price per image. With a catalog, each model's own price at the item's size; the flat
    prices are for a model outside it, or (flat_override) the operator's price for every model."""

    interactive_image_usd: float = 0.039
    batch_image_usd: float = 0.0195
    catalog: Catalog | None = None
    flat_override: bool = False

    def per_image(self, lane: Lane | str, model: str | None = None, size: str | None = None) -> float:
        lane = Lane(lane)
        spec = self.catalog.get(model) if self.catalog is not None and model and not self.flat_override else None
        if spec is not None:
            return spec.price(size, batch=lane is Lane.BATCH)
        return self.interactive_image_usd if lane is Lane.INTERACTIVE else self.batch_image_usd

    def estimate(self, lane: Lane | str, images: int, model: str | None = None, size: str | None = None) -> float:
        return round(self.per_image(lane, model, size) * images, 6)

    def estimate_sizes(self, lane: Lane | str, model: str | None, sizes: list[str]) -> float:
        """A job's cost: each item at its own size's price."""
        return round(sum(self.per_image(lane, model, s) for s in sizes), 6)


@dataclass(frozen=True)
class DailyLimits:
    """The project's daily limits we watch; None = not watched."""

    requests: int | None = None  # the model's requests-per-day quota (interactive)
    images: int | None = None
    budget_usd: float | None = None


@dataclass
class Accounting:
    """Records usage, answers "does this fit", and logs the 80% / 100% threshold crossings."""

    store: CounterStore
    clock: Clock
    prices: Prices = field(default_factory=Prices)
    limits: DailyLimits = field(default_factory=DailyLimits)
    warn_fraction: float = 0.8
    cache_seconds: float = 2.0
    # job id -> its tenant, so usage counted by job (the worker, the batch lane) is also counted
    # per tenant; None: usage is counted in totals only.
    tenant_of: Callable[[str], str | None] | None = None
    _tenants: dict = field(default_factory=dict, init=False, repr=False)
    _cache: tuple[float, str, dict] | None = field(default=None, init=False, repr=False)
    _alerted: set = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # --- recording -----------------------------------------------------------------------

    def add(self, deltas: dict[str, float], quota_id: str | None = None, **context) -> None:
        """Count, in one write. Counting is bookkeeping: a failure is logged, never raised, so
        it cannot fail (and have redone) the work it counts."""
        try:
            self._add(deltas, quota_id, **context)
        except Exception as e:  # noqa: BLE001
            log.warning("could not update the usage counters: %s", e, extra=context)

    def _add(self, deltas: dict[str, float], quota_id: str | None, **context) -> None:
        deltas = {k: v for k, v in deltas.items() if v}
        by_id = {quota_counter(quota_id): 1} if quota_id is not None or QUOTA_ERRORS in deltas else None
        if not deltas and not by_id:
            return
        day = quota_day(self.clock.now())
        self.store.add(day, deltas, by_id, self._by_tenant(deltas, context.get("job_id")))
        with self._lock:
            if self._cache and self._cache[1] == day:  # keep our own view fresh between reads
                totals = self._cache[2]
                for k, v in deltas.items():
                    totals[k] = totals.get(k, 0) + v
        self._check_thresholds(**context)

    def _by_tenant(self, deltas: dict[str, float], job_id: str | None) -> dict[str, dict[str, float]] | None:
        shown = {k: v for k, v in deltas.items() if k in TENANT_COUNTERS}
        if not shown or job_id is None or self.tenant_of is None:
            return None
        tenant = self._tenants.get(job_id)
        if tenant is None:
            try:
                tenant = self.tenant_of(job_id)
            except Exception as e:  # noqa: BLE001 - the totals are still counted
                log.warning("could not read the tenant of job %s: %s", job_id, e)
                return None
            if tenant is None:  # not (yet) a job: nothing to remember
                return None
            with self._lock:
                if len(self._tenants) >= _TENANT_CACHE_SIZE:
                    self._tenants.clear()
                self._tenants[job_id] = tenant  # a job's tenant never changes
        return {tenant: shown}

    def reserve(self, lane: Lane, images: int, cost: float | None = None, **context) -> None:
        """A new job's estimated cost, held against the budget until its items end."""
        cost = self.prices.estimate(lane, images) if cost is None else cost
        self.add({RESERVED_USD: cost}, lane=Lane(lane).value, **context)

    def image_produced(self, lane: Lane | str, model: str | None = None, size: str | None = None,
                       **context) -> dict[str, float]:
        """Deltas for one produced image (returned so a caller can merge them into one write)."""
        lane = Lane(lane)
        return {
            IMAGES: 1, SUCCEEDED: 1, SPEND_USD: self.prices.per_image(lane, model, size),
            INTERACTIVE_IMAGES if lane is Lane.INTERACTIVE else BATCH_IMAGES: 1,
        }

    def item_unsuccessful(self, lane: Lane | str, counter: str, model: str | None = None,
                          size: str | None = None) -> dict[str, float]:
        """Deltas for an item that ended without an image: its reservation is released."""
        return {counter: 1, RELEASED_USD: self.prices.per_image(lane, model, size)}

    def diverted(self, model: str | None = None, size: str | None = None) -> dict[str, float]:
        saved = self.prices.per_image(Lane.INTERACTIVE, model, size) - self.prices.per_image(Lane.BATCH, model, size)
        return {DIVERTED: 1, RELEASED_USD: round(saved, 6)}

    # --- reading -------------------------------------------------------------------------

    def totals(self, fresh: bool = False) -> dict:
        now = self.clock.now()
        day = quota_day(now)
        with self._lock:
            cached = self._cache
        if not fresh and cached and cached[1] == day and now - cached[0] < self.cache_seconds:
            return cached[2]
        totals = self.store.read(day)
        with self._lock:
            self._cache = (now, day, totals)
        return totals

    def committed_usd(self, totals: dict | None = None) -> float:
        t = totals if totals is not None else self.totals()
        return max(0.0, t.get(RESERVED_USD, 0.0) - t.get(RELEASED_USD, 0.0))

    def budget_left(self, totals: dict | None = None) -> float | None:
        if self.limits.budget_usd is None:
            return None
        return self.limits.budget_usd - self.committed_usd(totals)

    def requests_left(self, totals: dict | None = None) -> int | None:
        if self.limits.requests is None:
            return None
        t = totals if totals is not None else self.totals()
        return int(self.limits.requests - t.get(REQUESTS, 0))

    def resets_at(self) -> float:
        return next_reset(self.clock.now())

    def summary(self, tenant: str | None = None) -> dict:
        """Today's counters with limits, for GET /v1/stats: for `tenant`, its own counters and
        spend (the limits and what is left of the budget are shared); for None (an admin), the
        totals and each tenant's counters."""
        t = self.totals(fresh=True)
        now = self.clock.now()
        by_tenant = {name: _rounded(c) for name, c in sorted(t.get(BY_TENANT, {}).items())}
        if tenant is None:
            counters = _rounded({k: v for k, v in t.items() if k not in (BY_QUOTA_ID, BY_TENANT)})
            counters[BY_QUOTA_ID] = dict(t.get(BY_QUOTA_ID, {}))
            spent = t.get(SPEND_USD, 0.0)
            budget = {"committed_usd": round(self.committed_usd(t), 6)}
        else:
            counters = by_tenant.get(tenant, {})
            spent = counters.get(SPEND_USD, 0.0)
            budget = {}
        remaining = self.budget_left(t)
        left = None if remaining is None else round(remaining, 6)
        body = {
            "day": quota_day(now),
            "resets_at": next_reset(now),
            "counters": counters,
            "limits": {
                "requests_per_day": self.limits.requests,
                "images_per_day": self.limits.images,
                "daily_budget_usd": self.limits.budget_usd,
            },
            "prices": {
                "interactive_image_usd": self.prices.interactive_image_usd,
                "batch_image_usd": self.prices.batch_image_usd,
            },
            "budget": {**budget, "spent_usd": round(spent, 6), "left_usd": left},
        }
        if tenant is None:
            body["tenants"] = by_tenant
        return body

    # --- alerts --------------------------------------------------------------------------

    def _check_thresholds(self, **context) -> None:
        """WARNING at warn_fraction and ERROR at 100% of each daily limit, once per day per
        instance: the hooks that log-based alerts in Terraform match on (`alert` field)."""
        t = self.totals()
        day = quota_day(self.clock.now())
        watched = (
            ("daily_requests", t.get(REQUESTS, 0), self.limits.requests),
            ("daily_images", t.get(IMAGES, 0), self.limits.images),
            ("daily_budget", self.committed_usd(t), self.limits.budget_usd),
        )
        for name, used, limit in watched:
            if not limit:
                continue
            for level, fraction, severity in ((100, 1.0, logging.ERROR), (80, self.warn_fraction, logging.WARNING)):
                if used >= limit * fraction:
                    mark = (day, name, level)
                    if mark not in self._alerted:
                        self._alerted.add(mark)
                        log.log(severity, "%s at %d%% of its limit: %s of %s", name,
                                round(100 * used / limit), round(used, 4), limit,
                                extra={"alert": f"{name}_{level}", "used": used, "limit": limit, **context})
                    break


def _rounded(counters: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in counters.items()}
