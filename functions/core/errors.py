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
    """429 RESOURCE_EXHAUSTED. Not the item's fault: it does not count as an attempt.

    `quota_ids` are every QuotaFailure violation the answer listed (a real 429 can name a
    per-day, a per-minute and an input-token quota at once); `quota_id` is the one that
    decided the classification, for logs and counters."""

    retryable = True

    def __init__(self, reason: str, retry_delay: float | None, quota_id: str | None,
                 quota_ids: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.retry_delay = retry_delay
        self.quota_ids = tuple(quota_ids) or ((quota_id,) if quota_id else ())
        self.quota_id = quota_id or _deciding_quota(self.quota_ids, retry_delay)

    @property
    def per_day(self) -> bool:
        return is_daily_exhaustion(self.quota_ids, self.retry_delay)


# A retryDelay this short means the service expects capacity back within a minute or two:
# whatever else the 429 lists, it is a per-minute wait, not a day's exhaustion.
SHORT_RETRY_DELAY_SECONDS = 120.0


def _deciding_quota(quota_ids: tuple[str, ...], retry_delay: float | None) -> str | None:
    daily = is_daily_exhaustion(quota_ids, retry_delay)
    for quota_id in quota_ids:
        if ("PerDay" in quota_id) == daily:
            return quota_id
    return quota_ids[0] if quota_ids else None


def is_daily_exhaustion(quota_ids: tuple[str, ...], retry_delay: float | None) -> bool:
    """Is this 429 a daily quota running out (wait for the quota day to reset), or a wait of
    seconds? The real service lists every violated quota in one answer, e.g. a per-day, a
    per-minute and an input-token quota together with retryDelay "47s"
    (https://github.com/googleapis/python-genai/issues/2044). Opening the breaker until
    midnight Pacific on such an answer would stall the interactive lane for up to a day, so
    a per-day violation counts only when nothing says the wait is short."""
    if retry_delay is not None and retry_delay <= SHORT_RETRY_DELAY_SECONDS:
        return False
    if any("PerMinute" in q for q in quota_ids):
        return False
    return any("PerDay" in q for q in quota_ids)


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


class UploadRejected(InvalidRequest):
    """The Files API refused a batch's input file (e.g. HTTP 200 at finalize with an error body
    such as "Unsupported MIME type: jsonl"): the reason is the server's message."""


class StorageUnavailable(DomainError):
    """Cloud Storage could not be reached in time. Not the item's fault."""


class RateLimited(DomainError):
    """The shared rate limiter has no capacity within the wait this instance may afford."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no rate-limit capacity for {retry_after:.1f}s")
        self.retry_after = retry_after


# --- models (core/catalog.py, core/model_halts.py) ------------------------------------


class UnknownModel(DomainError):
    """A model id the catalog does not list."""


class ModelHalted(LaneUnavailable):
    """A new job for a model that is halted (Gemini answered 404 for it): refused with 503."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(
            f"model {model} is halted: {reason}. Submit with another model (the `model` field; see GET "
            f"/v1/stats for the catalog), or wait: the poller's models.get check lifts the halt once "
            f"Gemini serves {model} again"
        )
        self.model = model


class ModelUnavailable(GenerationError):
    """404 NOT_FOUND for the model, or a 400 saying the model is not supported: Gemini no
    longer serves it (retired, or closed to this project). Not the item's fault: the model is
    halted and the item waits without spending an attempt."""

    retryable = True
