"""GenerateContentRequest parsing and GenerateContentResponse bodies, free of HTTP.

Kept apart from the handler so the Batch API can run the same parsing and build the same
response bodies for each JSONL line or inlined request.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from infra.gemini_emulator import errors
from infra.gemini_emulator.images import (
    ASPECT_RATIO_SIZES,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_IMAGE_SIZE,
    IMAGE_SIZE_FACTORS,
)
from infra.gemini_emulator.wire import decode_bytes, encode_bytes, normalize_keys, snake

IMAGE_OUTPUT_TOKENS = 1290  # per image up to 1024x1024 (2.5 Flash Image pricing docs)
IMAGE_INPUT_TOKENS = 258  # per input image up to 384x384 (Gemini token docs)
_MODALITIES = {"TEXT", "IMAGE", "AUDIO", "MODALITY_UNSPECIFIED"}
_FIELD = "GenerateContentRequest"


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str  # user text, joined; what the image shows and prompt_rules match
    text_chars: int  # every text in the request, for token counting
    input_images: int
    want_text: bool
    want_image: bool
    aspect_ratio: str
    image_size: str

    @property
    def images_requested(self) -> int:
        return 1 if self.want_image else 0


def is_image_model(model: str) -> bool:
    from infra.gemini_emulator.models import catalog  # every catalog model is an image model

    return "image" in model or model in catalog()


def _bad(path: str, problem: str) -> errors.ApiError:
    return errors.invalid_argument(f"* {_FIELD}.{path}: {problem}")


# The fields the real API knows, as snake_case (google.ai.generativelanguage GenerateContentRequest,
# GenerationConfig, ImageConfig; the SDK's types.py lists the same). Anything else is a 400.
_REQUEST_FIELDS = frozenset({
    "model", "contents", "tools", "tool_config", "safety_settings", "system_instruction",
    "generation_config", "cached_content", "service_tier", "labels", "store",
})
_GENERATION_CONFIG_FIELDS = frozenset({
    "stop_sequences", "response_mime_type", "response_schema", "response_json_schema",
    "_response_json_schema", "response_modalities", "candidate_count", "max_output_tokens",
    "temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty",
    "response_logprobs", "logprobs", "enable_enhanced_civic_answers", "speech_config",
    "thinking_config", "image_config", "media_resolution",
})
_IMAGE_CONFIG_FIELDS = frozenset({
    "aspect_ratio", "image_size", "person_generation", "output_mime_type",
    "output_compression_quality",
})


def _unknown_names(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(name as sent, where) for every unknown field at the request, generation_config and
    image_config levels; the path is snake_case whatever the request's casing, as the real
    service reports it."""
    found = [(k, "") for k in raw if snake(k) not in _REQUEST_FIELDS]
    for key, value in raw.items():
        if snake(key) != "generation_config" or not isinstance(value, dict):
            continue
        found += [(k, "generation_config") for k in value if snake(k) not in _GENERATION_CONFIG_FIELDS]
        for inner, image_config in value.items():
            if snake(inner) == "image_config" and isinstance(image_config, dict):
                found += [(k, "generation_config.image_config") for k in image_config
                          if snake(k) not in _IMAGE_CONFIG_FIELDS]
    return found


def parse_request(model: str, raw: Any) -> GenerateRequest:
    """Validate a request body (either key casing) or raise a 400 ApiError naming the field."""
    if not isinstance(raw, dict):
        raise errors.invalid_argument("Invalid JSON payload received. Expected an object.")
    if unknown := _unknown_names(raw):
        raise errors.unknown_fields(unknown)
    body = normalize_keys(raw)
    contents = body.get("contents")
    if not contents:
        raise _bad("contents", "contents is not specified")
    if not isinstance(contents, list):
        raise _bad("contents", "expected a list of Content")

    user_texts: list[str] = []
    text_chars = 0
    input_images = 0
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
            raise _bad(f"contents[{i}].parts", "contents.parts must not be empty.")
        role = content.get("role") or "user"
        for j, part in enumerate(content["parts"]):
            where = f"contents[{i}].parts[{j}]"
            if not isinstance(part, dict):
                raise _bad(where, "expected a Part object")
            if isinstance(part.get("text"), str):
                text_chars += len(part["text"])
                if role == "user":
                    user_texts.append(part["text"])
            if "inline_data" in part:
                blob = part["inline_data"]
                if not isinstance(blob, dict) or not isinstance(blob.get("data"), str):
                    raise _bad(f"{where}.inline_data.data", "required field is missing")
                try:
                    decode_bytes(blob["data"])
                except ValueError:
                    raise _bad(f"{where}.inline_data.data", "Base64 decoding failed") from None
                input_images += str(blob.get("mime_type", "")).startswith("image/")
            if isinstance(part.get("file_data"), dict):
                input_images += str(part["file_data"].get("mime_type", "")).startswith("image/")
    system = body.get("system_instruction")
    if isinstance(system, dict):
        system_parts = system.get("parts")
        for p in system_parts if isinstance(system_parts, list) else []:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                text_chars += len(p["text"])

    config = body.get("generation_config") or {}
    if not isinstance(config, dict):
        raise _bad("generation_config", "expected a GenerationConfig object")
    modalities = config.get("response_modalities") or []
    if isinstance(modalities, list) and all(isinstance(m, str) for m in modalities):
        # Enum values are read case-insensitively by the real API: ["Text", "Image"] was what
        # early image-model docs sent (google-gemini/deprecated-generative-ai-js pull 434).
        modalities = [m.upper() for m in modalities]
    if not isinstance(modalities, list) or any(m not in _MODALITIES for m in modalities):
        raise _bad("generation_config.response_modalities", f"invalid value {modalities!r}")
    image_config = config.get("image_config") or {}
    if not isinstance(image_config, dict):
        raise _bad("generation_config.image_config", "expected an ImageConfig object")
    aspect_ratio = image_config.get("aspect_ratio") or DEFAULT_ASPECT_RATIO
    if aspect_ratio not in ASPECT_RATIO_SIZES:
        raise _bad(
            "generation_config.image_config.aspect_ratio",
            f"unsupported aspect ratio {aspect_ratio!r}; supported: {', '.join(ASPECT_RATIO_SIZES)}",
        )
    image_size = image_config.get("image_size") or DEFAULT_IMAGE_SIZE
    if image_size not in IMAGE_SIZE_FACTORS:
        raise _bad(
            "generation_config.image_config.image_size",
            f"unsupported image size {image_size!r}; supported: {', '.join(IMAGE_SIZE_FACTORS)}",
        )

    image_model = is_image_model(model)
    # Image models answer TEXT+IMAGE unless told otherwise; other models only ever answer text.
    want_image = image_model and (not modalities or "IMAGE" in modalities)
    want_text = not image_model or not modalities or "TEXT" in modalities
    return GenerateRequest(
        model=model,
        prompt=" ".join(t.strip() for t in user_texts if t.strip()),
        text_chars=text_chars,
        input_images=input_images,
        want_text=want_text,
        want_image=want_image,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
    )


# --- responses ------------------------------------------------------------------------------


def _response_id() -> str:
    return secrets.token_urlsafe(16)  # 22 chars, the shape of real responseIds


def _prompt_usage(req: GenerateRequest) -> tuple[int, list[dict[str, Any]]]:
    text_tokens = math.ceil(req.text_chars / 4)
    image_tokens = IMAGE_INPUT_TOKENS * req.input_images
    details = [{"modality": "TEXT", "tokenCount": text_tokens}] if text_tokens else []
    if image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    return text_tokens + image_tokens, details


def _usage(req: GenerateRequest, candidate_details: list[dict[str, Any]]) -> dict[str, Any]:
    # proto3 JSON omits zero counters, and so does the real API.
    prompt_tokens, prompt_details = _prompt_usage(req)
    candidate_tokens = sum(d["tokenCount"] for d in candidate_details)
    usage: dict[str, Any] = {}
    if prompt_tokens:
        usage["promptTokenCount"] = prompt_tokens
    if candidate_tokens:
        usage["candidatesTokenCount"] = candidate_tokens
    usage["totalTokenCount"] = prompt_tokens + candidate_tokens
    if prompt_details:
        usage["promptTokensDetails"] = prompt_details
    if candidate_details:
        usage["candidatesTokensDetails"] = candidate_details
    return usage


def _envelope(req: GenerateRequest, candidates: list[dict[str, Any]] | None, usage: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if candidates is not None:
        body["candidates"] = candidates
    body["usageMetadata"] = usage
    body["modelVersion"] = req.model
    body["responseId"] = _response_id()
    return body


def reply_text(req: GenerateRequest) -> str:
    shown = req.prompt if len(req.prompt) <= 200 else req.prompt[:199] + "…"
    if req.want_image:
        return f"Here is your image of: {shown}"
    return f"Emulated reply to: {shown}"


def image_output_tokens(req: GenerateRequest) -> int:
    """The model's tokens per image at the request's size (the catalog), else 2.5 Flash Image's."""
    from infra.gemini_emulator.models import output_tokens  # models imports the app state

    return output_tokens(req.model, req.image_size) or IMAGE_OUTPUT_TOKENS


def success_response(req: GenerateRequest, png: bytes | None, mime_type: str = "image/png") -> dict[str, Any]:
    """A STOP candidate: optional text part, then the PNG as inlineData.

    candidatesTokenCount counts only the image (the model's tokens per image at its size); the
    short text part is free here, unlike on the real API.
    """
    parts: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    if req.want_text or png is None:
        parts.append({"text": reply_text(req)})
        if png is None:
            details.append({"modality": "TEXT", "tokenCount": max(1, math.ceil(len(parts[0]["text"]) / 4))})
    if png is not None:
        parts.append({"inlineData": {"mimeType": mime_type, "data": encode_bytes(png)}})
        details.append({"modality": "IMAGE", "tokenCount": image_output_tokens(req)})
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}
    return _envelope(req, [candidate], _usage(req, details))


def spoil_image(body: dict[str, Any], outcome: str) -> dict[str, Any]:
    """A 200 whose image part is unusable: "bad_base64" puts characters outside the base64
    alphabet in ``inlineData.data`` (the google-genai SDK's pydantic model refuses the answer);
    "truncated_image" keeps valid base64 of the first half of the image (a cut-off transfer
    that still declares image/png)."""
    for candidate in body.get("candidates") or []:
        for part in (candidate.get("content") or {}).get("parts") or []:
            inline = part.get("inlineData")
            if not inline:
                continue
            if outcome == "bad_base64":
                inline["data"] = "!!" + inline["data"][2:-2] + "%%"
            else:
                raw = decode_bytes(inline["data"])
                inline["data"] = encode_bytes(raw[: len(raw) // 2])
    return body


_SAFETY_CATEGORIES = (
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)


def blocked_response(req: GenerateRequest, reason: str = "SAFETY") -> dict[str, Any]:
    """HTTP 200 with no candidates: the prompt itself was refused."""
    ratings: list[dict[str, Any]] = [{"category": c, "probability": "NEGLIGIBLE"} for c in _SAFETY_CATEGORIES]
    ratings[-1] = {"category": _SAFETY_CATEGORIES[-1], "probability": "HIGH", "blocked": True}
    body = _envelope(req, None, _usage(req, []))
    return {"promptFeedback": {"blockReason": reason, "safetyRatings": ratings}, **body}


def image_safety_response(req: GenerateRequest) -> dict[str, Any]:
    """The image was generated then filtered: a candidate with no content at all."""
    candidate = {
        "finishReason": "IMAGE_SAFETY",
        "finishMessage": "Unable to show the generated image. The generated image was filtered out "
        "because it violated Google's Generative AI Prohibited Use policy.",
        "index": 0,
    }
    return _envelope(req, [candidate], _usage(req, []))


def no_image_response(req: GenerateRequest) -> dict[str, Any]:
    """The model produced no image: a NO_IMAGE candidate with no parts at all (the SDK then
    sees `content` without `parts`), as gemini-2.5-flash-image answers
    (https://github.com/BerriAI/litellm/issues/40477). FinishReason values:
    https://ai.google.dev/api/generate-content#FinishReason."""
    candidate = {"content": {"role": "model"}, "finishReason": "NO_IMAGE", "index": 0}
    return _envelope(req, [candidate], _usage(req, []))


def image_refusal_response(req: GenerateRequest, finish_reason: str) -> dict[str, Any]:
    """IMAGE_PROHIBITED_CONTENT or IMAGE_OTHER: like IMAGE_SAFETY, a candidate without content.
    Both are FinishReason values of the SDK (types.py FinishReason) for image models."""
    candidate = {"finishReason": finish_reason, "index": 0}
    return _envelope(req, [candidate], _usage(req, []))


def thought_image_response(req: GenerateRequest, png: bytes, draft_png: bytes) -> dict[str, Any]:
    """A thinking image model's answer: a thought text and an interim image marked
    `thought: true`, then the final image (https://ai.google.dev/gemini-api/docs/image-generation,
    "Thinking process": up to two interim images; the last is the final render)."""
    body = success_response(req, png)
    thoughts = [
        {"text": "**Planning the composition**", "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": encode_bytes(draft_png)}, "thought": True},
    ]
    parts = body["candidates"][0]["content"]["parts"]
    body["candidates"][0]["content"]["parts"] = thoughts + parts
    return body


# Fault outcomes answered with HTTP 200 and a body, shared by generateContent and batch lines.
REFUSALS = {
    "blocked": blocked_response,
    "blocked_prohibited": lambda req: blocked_response(req, "PROHIBITED_CONTENT"),
    "blocked_other": lambda req: blocked_response(req, "OTHER"),
    "image_safety": image_safety_response,
    "image_prohibited": lambda req: image_refusal_response(req, "IMAGE_PROHIBITED_CONTENT"),
    "image_other": lambda req: image_refusal_response(req, "IMAGE_OTHER"),
    "no_image": no_image_response,
}
