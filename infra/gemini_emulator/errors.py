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


def retry_info(seconds: float) -> dict[str, Any]:
    return {"@type": _TYPE + "RetryInfo", "retryDelay": duration(seconds)}


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
