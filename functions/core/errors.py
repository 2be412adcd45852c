"""Domain exceptions. Adapters translate SDK errors into these; entry points map them to HTTP or retry/drop."""
from __future__ import annotations


class DomainError(Exception):
    """Base class for every error the core raises on purpose."""


class NotFound(DomainError):
    pass


class LaneUnavailable(DomainError):
    """The chosen lane is not deployed or switched off."""


class Conflict(DomainError):
    pass


class BudgetExceeded(DomainError):
    """A job's estimated cost is over what is left of today's budget."""

    def __init__(self, cost: float, left: float, lane) -> None:
        super().__init__(
            f"the job's estimated cost ${cost:.4f} ({getattr(lane, 'value', lane)} lane) is over "
            f"today's budget left, ${left:.4f}"
        )
        self.cost, self.left = cost, left


class IdempotencyMismatch(DomainError):
    """An Idempotency-Key was reused with a different request body."""


class InProgress(DomainError):
    """A request with the same Idempotency-Key is still being handled."""
class DeliveryFailed(DomainError):
    """An event could not be published or its webhook was not accepted (non-2xx, timeout,
    refused address...). `permanent`: retrying cannot help (410 Gone); `retry_after`: the
    receiver's Retry-After, in seconds. The reason never holds the secret or the signature."""

    def __init__(self, reason: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.permanent = reason, retry_after, permanent


# --- outcomes of a generation attempt -------------------------------------------------


class GenerationError(DomainError):
    """Base for failed generateContent calls."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QuotaExceeded(GenerationError):
    """429 RESOURCE_EXHAUSTED. Not the item's fault: it does not count as an attempt."""

    retryable = True

    def __init__(self, reason: str, retry_delay: float | None, quota_id: str | None) -> None:
        super().__init__(reason)
        self.retry_delay = retry_delay
        self.quota_id = quota_id

    @property
    def per_day(self) -> bool:
        return bool(self.quota_id and "PerDay" in self.quota_id)


class TransientError(GenerationError):
    """5xx, timeouts, connection failures: retried up to the attempt limit."""

    retryable = True


class MalformedResponse(TransientError):
    """A 200 answer we cannot use: unparseable, not base64, or an image that is truncated or
    corrupt. The call was billed; another attempt usually gets a good answer, so it counts as an
    attempt and is retried up to the limit."""


class PermissionDenied(GenerationError):
    """403: a key, billing or project problem. Retried up to the attempt limit, loudly logged."""

    retryable = True


class ContentRefused(GenerationError):
    """A blocked prompt or an image refusal (IMAGE_SAFETY, NO_IMAGE, ...): retrying will not help."""


class InvalidRequest(GenerationError):
    """400 from the model API: retrying the same request will not help."""


class StorageUnavailable(DomainError):
    """Cloud Storage could not be reached in time. Not the item's fault."""


class RateLimited(DomainError):
    """The shared rate limiter has no capacity within the wait this instance may afford."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no rate-limit capacity for {retry_after:.1f}s")
        self.retry_after = retry_after
