"""google.rpc.Status error bodies, the only error shape the real API (and so the SDK) speaks.

Handlers raise :class:`ApiError`; the app's error middleware turns it into
``{"error": {"code", "message", "status", "details"?}}`` with ``Content-Type: application/json``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

_TYPE = "type.googleapis.com/google.rpc."
RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
SERVICE = "generativelanguage.googleapis.com"

# HTTP code -> canonical status string, for the codes the emulator produces.
STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",  # not a google.rpc code; only for wrong verbs on known paths
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiError(Exception):
    """An error answer in google.rpc.Status form."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_BY_CODE.get(code, "UNKNOWN")
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def to_response(self) -> web.Response:
        return web.Response(
            status=self.code,
            text=json.dumps(self.body()),
            content_type="application/json",
            charset="utf-8",
        )


def duration(seconds: float) -> str:
    """proto Duration JSON ("4.2s"), rounded *up* to the millisecond so a client that sleeps
    exactly this long never comes back early."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    whole, frac = divmod(millis, 1000)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"


def whole_seconds(seconds: float) -> str:
    """RetryInfo.retryDelay as the real API writes it: whole seconds ("47s"), while the message
    says "Please retry in 47.174066935s." (https://github.com/googleapis/python-genai/issues/2044,
    https://github.com/langchain-ai/langchain-google/issues/1445). Rounded up, so a client that sleeps
    exactly this long never comes back early."""
    return f"{max(0, math.ceil(seconds - 1e-9))}s"


def retry_info(seconds: float) -> dict[str, Any]:
    return {"@type": _TYPE + "RetryInfo", "retryDelay": whole_seconds(seconds)}


def help_links() -> dict[str, Any]:
    return {
        "@type": _TYPE + "Help",
        "links": [{"description": "Learn more about Gemini API quotas", "url": RATE_LIMITS_URL}],
    }


def invalid_argument(message: str) -> ApiError:
    return ApiError(400, message)


def invalid_api_key() -> ApiError:
    message = "API key not valid. Please pass a valid API key."
    return ApiError(
        400,
        message,
        details=[
            {
                "@type": _TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": SERVICE},
            },
            {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": message},
        ],
    )


def missing_api_key() -> ApiError:
    # What generativelanguage answers when no key (and no OAuth token) is sent at all. Recorded from
    # memory of the live API, not captured: treat the exact wording as unverified.
    return ApiError(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
        details=[
            {
                "@type": _TYPE + "ErrorInfo",
                "reason": "CONSUMER_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": SERVICE},
            }
        ],
    )


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def quota_exceeded(
    *,
    quota_id: str,
    quota_metric: str,
    limit: int,
    model: str,
    retry_after_s: float,
) -> ApiError:
    delay = duration(retry_after_s)
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {quota_metric}, limit: {limit}, model: {model}\n"
        f"Please retry in {delay}."
    )
    violation = {
        "quotaMetric": quota_metric,
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
        "quotaValue": str(limit),
    }
    return ApiError(
        429,
        message,
        details=[
            help_links(),
            {"@type": _TYPE + "QuotaFailure", "violations": [violation]},
            retry_info(retry_after_s),
        ],
    )


# The three violations of a real free-tier 429 (python-genai issue 2044 in the tests' fixtures):
# a per-day and a per-minute request quota and a per-minute input-token quota, listed together.
MULTI_VIOLATION_QUOTAS = (
    ("GenerateRequestsPerDayPerProjectPerModel", "generate_content_paid_tier_requests"),
    ("GenerateRequestsPerMinutePerProjectPerModel", "generate_content_paid_tier_requests"),
    ("GenerateContentInputTokensPerModelPerMinute", "generate_content_paid_tier_input_token_count"),
)


def quota_exceeded_multi(*, model: str, retry_after_s: float) -> ApiError:
    """A 429 naming several quotas at once, with a short retryDelay: the real service sends
    this shape (https://github.com/googleapis/python-genai/issues/2044: per-day, per-minute and
    input tokens, retryDelay "47s") and a client must treat it as a per-minute wait."""
    violations = [
        {"quotaMetric": f"{SERVICE}/{metric}", "quotaId": quota_id,
         "quotaDimensions": {"location": "global", "model": model}}
        for quota_id, metric in MULTI_VIOLATION_QUOTAS
    ]
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}. "
        f"Please retry in {duration(retry_after_s)}."
    )
    return ApiError(429, message, details=[
        help_links(),
        {"@type": _TYPE + "QuotaFailure", "violations": violations},
        retry_info(retry_after_s),
    ])


def quota_exceeded_help_only() -> ApiError:
    """A 429 with only a google.rpc.Help link: no QuotaFailure, no RetryInfo
    (https://github.com/gke-labs/gemini-for-kubernetes-development/issues/1215)."""
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}. "
        "To monitor your current usage, head to: https://ai.dev/rate-limit. "
    )
    return ApiError(429, message, details=[help_links()])


def unknown_fields(names: list[tuple[str, str]]) -> ApiError:
    """400 for request fields the API does not know, one line and one fieldViolation per field,
    worded as the real service does: 'Invalid JSON payload received. Unknown name "x" at
    'generation_config': Cannot find field.' (no "at ..." for a top-level field). Seen in
    https://github.com/mnfst/llm-gateway/issues/1858 and
    https://github.com/Alishahryar1/free-claude-code/issues/542."""
    lines, violations = [], []
    for name, path in names:
        where = f" at '{path}'" if path else ""
        line = f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
        lines.append(line)
        violation = {"description": line}
        if path:
            violation = {"field": path, **violation}
        violations.append(violation)
    return ApiError(400, "\n".join(lines), details=[
        {"@type": _TYPE + "BadRequest", "fieldViolations": violations},
    ])


def transient_exhausted(retry_after_s: float) -> ApiError:
    """The capacity 429 the real API sends without naming a quota (shared-pool exhaustion)."""
    return ApiError(429, "Resource has been exhausted (e.g. check quota).", details=[retry_info(retry_after_s)])


def internal() -> ApiError:
    return ApiError(500, "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting")


def overloaded() -> ApiError:
    return ApiError(503, "The model is overloaded. Please try again later.")


def permission_denied() -> ApiError:
    return ApiError(403, "The caller does not have permission")


def deadline_exceeded() -> ApiError:
    return ApiError(504, "Deadline expired before operation could complete.")


FILE_STORAGE_QUOTA_ID = "FileStorageBytesPerProject"


def file_storage_exhausted(limit: int) -> ApiError:
    """Past the Files API's per-project storage: 429 with QuotaFailure FileStorageBytesPerProject
    and Help, no RetryInfo, as reported in https://github.com/alphaXiv/feedback/issues/16 (limit
    21474836480, i.e. the documented 20 GB; https://github.com/googleapis/python-genai/issues/1172)."""
    metric = f"{SERVICE}/file_storage_bytes"
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}.\n"
        f"* Quota exceeded for metric: {metric}, limit: {limit}"
    )
    violation = {"quotaMetric": metric, "quotaId": FILE_STORAGE_QUOTA_ID, "quotaValue": str(limit)}
    return ApiError(429, message, details=[
        {"@type": _TYPE + "QuotaFailure", "violations": [violation]},
        help_links(),
    ])


def batch_enqueued_exhausted() -> ApiError:
    """batches.create past the per-model enqueued requests/tokens limit
    (https://ai.google.dev/gemini-api/docs/rate-limits#batch-api): 429 with only a Help link, as
    real batch creates answered (https://github.com/langchain4j/langchain4j/pull/3942,
    https://github.com/googleapis/python-genai/issues/1901). The client must try again later."""
    return quota_exceeded_help_only()
