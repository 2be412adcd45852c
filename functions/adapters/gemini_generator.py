"""generateContent through the google-genai SDK, with its errors translated into core errors."""
from __future__ import annotations

import base64

from google.genai import Client, errors, types

from core.errors import (
    ContentRefused,
    GenerationError,
    InvalidRequest,
    MalformedResponse,
    ModelUnavailable,
    PermissionDenied,
    QuotaExceeded,
    TransientError,
)
from core.models import GeneratedImage
from core.ratelimit import parse_retry_delay

try:  # google-genai 3.x talks through httpx2; older or forced configurations use httpx.
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError,)
except ImportError:  # pragma: no cover
    _TRANSPORT_ERRORS = ()
try:
    import httpx

    _TRANSPORT_ERRORS += (httpx.TransportError,)
except ImportError:  # pragma: no cover
    pass

_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class GeminiImageGenerator:
    def __init__(self, client: Client, model: str | None = None) -> None:
        self.client = client
        self.model = model  # used only when a call names none

    def generate(self, prompt: str, aspect_ratio: str, image_size: str | None,
                 model: str | None = None) -> GeneratedImage:
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size),
        )
        name = model or self.model
        if name is None:
            raise ValueError("no model: name one in the call or when building the generator")
        try:
            response = self.client.models.generate_content(model=name, contents=prompt, config=config)
        except errors.APIError as e:
            raise translate_api_error(e) from e
        except _TRANSPORT_ERRORS as e:
            raise TransientError(f"transport: {type(e).__name__}: {e}") from e
        except Exception as e:  # noqa: BLE001 - e.g. pydantic's ValidationError on invalid base64
            # The SDK parses the 200 before we see it: an answer it cannot read was billed and
            # must count as an attempt, never escape as a crash that leaves the item running.
            raise MalformedResponse(f"the model's answer could not be read: {type(e).__name__}: {_short(e)}") from e
        try:
            return parse_image_response(response)
        except GenerationError:
            raise
        except Exception as e:  # noqa: BLE001 - a shape parse_image_response did not expect
            raise MalformedResponse(f"the model's answer could not be read: {type(e).__name__}: {_short(e)}") from e


def translate_api_error(e: errors.APIError):
    code = e.code or 0
    message = f"{code} {e.status}: {e.message}"
    if code == 429:
        quota_ids, delay = quota_details(e.details)
        return QuotaExceeded(message, retry_delay=delay, quota_id=None, quota_ids=quota_ids)
    if code == 403:
        return PermissionDenied(message)
    if code in (400, 404) and names_missing_model(e.message):
        return ModelUnavailable(message)
    if code in (400, 404):
        return InvalidRequest(message)
    return TransientError(message)  # 5xx, 408 and anything unexpected


def names_missing_model(message: str | None) -> bool:
    """Gemini's answer for a model it does not serve (retired, never existed, or closed to the
    project): 404 NOT_FOUND "models/X is not found for API version v1beta, or is not supported
    for generateContent. Call ListModels ..." (as quoted in
    https://github.com/google-gemini/deprecated-generative-ai-python/issues/746 and
    https://github.com/openclaw/openclaw/issues/14036). Only a message naming models/ counts:
    a 404 for a file or a batch is not about the model."""
    text = (message or "").lower()
    return "models/" in text and ("not found" in text or "not supported" in text)


def quota_details(body) -> tuple[tuple[str, ...], float | None]:
    """Every quotaId of google.rpc.QuotaFailure and the retryDelay of google.rpc.RetryInfo.

    Only extraction: core.errors decides what they mean. Either detail may be missing (a 429
    can carry only a google.rpc.Help link, or nothing); the SDK puts the whole JSON body in
    APIError.details (see python-genai errors.py)."""
    details: list = []
    if isinstance(body, dict):
        error = body.get("error")
        details = (error.get("details") if isinstance(error, dict) else None) or []
    quota_ids: list[str] = []
    delay = None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _QUOTA_FAILURE:
            for violation in detail.get("violations") or []:
                quota_id = violation.get("quotaId") if isinstance(violation, dict) else None
                if isinstance(quota_id, str) and quota_id not in quota_ids:
                    quota_ids.append(quota_id)
        elif detail.get("@type") == _RETRY_INFO:
            value = detail.get("retryDelay")
            delay = parse_retry_delay(value) if isinstance(value, str) else None
    return tuple(quota_ids), delay


def parse_image_response(response: types.GenerateContentResponse) -> GeneratedImage:
    if not response.candidates:
        feedback = response.prompt_feedback
        reason = feedback.block_reason if feedback and feedback.block_reason else "no candidates"
        raise ContentRefused(f"prompt blocked: {_enum_name(reason)}")
    candidate = response.candidates[0]
    finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else "STOP"
    texts, image = [], None
    for part in (candidate.content.parts if candidate.content and candidate.content.parts else []):
        if part.thought:
            continue  # an interim "thinking" image or text, not the answer (see core.jsonl)
        if part.inline_data and part.inline_data.data and image is None:
            image = part.inline_data
        elif part.text:
            texts.append(part.text)
    if image is None:
        raise ContentRefused(f"no image returned: finishReason {finish}")
    data = image.data or b""  # not empty: the loop above took only a part with data
    if isinstance(data, str):  # defensive: the SDK decodes to bytes
        data = base64.b64decode(data)
    usage = response.usage_metadata
    return GeneratedImage(
        data=data,
        mime_type=image.mime_type or "image/png",
        finish_reason=finish,
        model_version=response.model_version,
        text=" ".join(texts) or None,
        output_tokens=usage.candidates_token_count if usage else None,
    )


def _short(e: Exception, limit: int = 300) -> str:
    """The first line of an error, bounded: a validation error can quote a whole image."""
    text = str(e).splitlines()[0] if str(e) else ""
    return text if len(text) <= limit else text[:limit] + "..."


def _enum_name(value) -> str:
    return getattr(value, "value", None) or str(value)
