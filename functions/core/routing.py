"""Which lane a job takes: the client's wish, its size, live quota headroom, the breaker and
the daily budget."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.accounting import Prices
from core.errors import BudgetExceeded, LaneUnavailable
from core.models import Lane


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


@dataclass(frozen=True)
class Route:
    lane: Lane
    reason: str
    estimated_cost_usd: float


@dataclass(frozen=True)
class Headroom:
    """What is left today, as the breaker and the accounting see it (None: not counted)."""
    quota_exhausted: bool = False
    requests_left: int | None = None
    budget_left: float | None = None


@dataclass(frozen=True)
class Pricing:
    """How a job's cost is estimated: each item at its model's price for its size, when the
    sizes are known; otherwise every item at the model's default."""
    prices: Prices = field(default_factory=Prices)
    model: str | None = None
    sizes: list[str] | None = None


def choose_lane(
    item_count: int,
    requested: str,
    *,
    threshold: int,
    batch_available: bool,
    headroom: Headroom = Headroom(),
    pricing: Pricing = Pricing(),
) -> Route:
    """`auto` sends a job to batch when it is big (>= threshold items), when the breaker says
    quota is exhausted, or when today's requests left cannot cover it; otherwise interactive.
    A job that would overrun the daily budget goes to batch (half the price) when that fits
    and the client let us choose; otherwise it is refused."""
    if requested == Lane.INTERACTIVE.value:
        lane, reason = Lane.INTERACTIVE, "lane=interactive was requested"
    elif requested == Lane.BATCH.value:
        lane, reason = Lane.BATCH, "lane=batch was requested"
    elif item_count >= threshold:
        lane, reason = Lane.BATCH, f"{_items(item_count)}: at or over the interactive threshold of {threshold}"
    elif headroom.quota_exhausted and batch_available:
        lane, reason = Lane.BATCH, "interactive quota is exhausted (circuit breaker open)"
    elif headroom.requests_left is not None and headroom.requests_left < item_count and batch_available:
        lane, reason = Lane.BATCH, f"only {max(headroom.requests_left, 0)} interactive requests left today"
    else:
        lane, reason = Lane.INTERACTIVE, f"{_items(item_count)}: under the interactive threshold of {threshold}"
    if lane is Lane.BATCH and not batch_available:
        raise LaneUnavailable(
            f"the batch lane is not deployed: submit fewer than {threshold} items or use lane=interactive"
        )
    budget_left = headroom.budget_left

    def estimate(lane: Lane) -> float:  # each item at its model's price for its size
        if pricing.sizes:
            return pricing.prices.estimate_sizes(lane, pricing.model, pricing.sizes)
        return pricing.prices.estimate(lane, item_count, pricing.model)

    cost = estimate(lane)
    if budget_left is not None and cost > budget_left + 1e-9:
        cheaper = estimate(Lane.BATCH)
        if requested == "auto" and lane is Lane.INTERACTIVE and batch_available and cheaper <= budget_left + 1e-9:
            return Route(Lane.BATCH, f"the interactive cost (${cost:.4f}) is over today's budget left "
                         f"(${budget_left:.4f}); batch costs half", cheaper)
        raise BudgetExceeded(cost, max(budget_left, 0.0), lane)
    return Route(lane, reason, cost)
