"""Which models the emulator serves, and ``GET /{v}/models/{model}`` / ``GET /{v}/models``.

The served models are imagefleet's model catalog (functions/models.json): one source for what
the functions may send and what the emulator answers. Config ``models`` replaces the list
(``["*"]`` serves any id), and ``removed_models`` takes models away at run time, as Google
does when it shuts one down: generateContent, batchGenerateContent and models.get then answer
404 NOT_FOUND, with the message the real API gives (quoted in
https://github.com/google-gemini/deprecated-generative-ai-python/issues/746 and
https://github.com/openclaw/openclaw/issues/14036: "models/X is not found for API version
v1beta, or is not supported for generateContent. Call ListModels to see the list of available
models and their supported methods.").

Each catalog model also checks its own sizes and aspect ratios: a Gemini 3 image model takes
imageSize 1K/2K/4K (and some 512) on its own list of ratios, per Google's image-generation page
(https://ai.google.dev/gemini-api/docs/image-generation); 2.5 Flash Image has one size.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.gemini_emulator import errors
from infra.gemini_emulator.routing import json_response, versioned
from infra.gemini_emulator.state import STATE_KEY, EmulatorState

CATALOG_FILE = Path(__file__).resolve().parents[2] / "functions" / "models.json"
ANY_MODEL = "*"
# models.get fields the SDK parses (google-genai models._Model_from_mldev). The token limits
# are placeholders no official page confirmed for these models; nothing here reads them.
_INPUT_TOKEN_LIMIT = 65_536
_OUTPUT_TOKEN_LIMIT = 32_768
_METHODS = ["generateContent", "countTokens", "batchGenerateContent"]


@functools.cache
def catalog() -> dict[str, dict[str, Any]]:
    """{model id: catalog entry} from functions/models.json."""
    data = json.loads(CATALOG_FILE.read_text())
    return {m["id"]: m for m in data["models"]}


def served(cfg: dict[str, Any], model: str) -> bool:
    """Is ``model`` served under this config (the catalog, or the configured list, minus removals)?"""
    if model in (cfg.get("removed_models") or []):
        return False
    listed = cfg["models"]
    if listed is None:
        return model in catalog()
    return ANY_MODEL in listed or model in listed


def not_found(model: str, method: str = "generateContent") -> errors.ApiError:
    return errors.not_found(
        f"models/{model} is not found for API version v1beta, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods."
    )


def check_served(state: EmulatorState, model: str, method: str = "generateContent") -> None:
    with state.lock:
        ok = served(state.config, model)
    if not ok:
        raise not_found(model, method)


def check_image_config(model: str, aspect_ratio: str, image_size: str, size_given: bool) -> None:
    """A catalog model refuses a size or ratio it does not have (400 INVALID_ARGUMENT, naming the field)."""
    entry = catalog().get(model)
    if entry is None:
        return
    field = "* GenerateContentRequest.generation_config.image_config"
    if aspect_ratio not in entry["aspect_ratios"]:
        raise errors.invalid_argument(f"{field}.aspect_ratio: {model} does not support aspect ratio "
                                      f"{aspect_ratio!r}; supported: {', '.join(entry['aspect_ratios'])}")
    if size_given and entry.get("sends_image_size", True) and image_size not in entry["sizes"]:
        raise errors.invalid_argument(f"{field}.image_size: {model} does not support image size "
                                      f"{image_size!r}; supported: {', '.join(entry['sizes'])}")


def output_tokens(model: str, image_size: str) -> int | None:
    """candidatesTokenCount of one image of this model at this size, from the catalog."""
    entry = catalog().get(model)
    if entry is None:
        return None
    tokens = entry.get("output_tokens") or {}
    return tokens.get(image_size) or tokens.get(entry["sizes"][0])


def resource(model: str) -> dict[str, Any]:
    """The Model resource as models.get and models.list answer it."""
    entry = catalog().get(model) or {"display_name": model}
    return {
        "name": f"models/{model}",
        "baseModelId": model,
        "version": "001",
        "displayName": entry["display_name"],
        "description": f"Emulated {entry['display_name']}",
        "inputTokenLimit": _INPUT_TOKEN_LIMIT,
        "outputTokenLimit": _OUTPUT_TOKEN_LIMIT,
        "supportedGenerationMethods": list(_METHODS),
        "temperature": 1.0,
        "maxTemperature": 2.0,
        "topP": 0.95,
        "topK": 64,
    }


def served_ids(cfg: dict[str, Any]) -> list[str]:
    listed = cfg["models"] if cfg["models"] is not None else list(catalog())
    return [m for m in listed if m != ANY_MODEL and served(cfg, m)]


async def handle_get(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    model = request.match_info["model"]
    with state.lock:
        ok = served(state.config, model)
    if not ok:
        raise errors.not_found(f"models/{model} is not found for API version {request.match_info['version']}")
    return json_response(resource(model))


async def handle_list(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        ids = served_ids(state.config)
    # One page holds them all (a handful of models); the SDK stops when nextPageToken is absent.
    return json_response({"models": [resource(m) for m in ids]})


def setup_routes(app: web.Application) -> None:
    app.router.add_get(versioned("/models/{model:[^/:]+}"), handle_get, name="models.get")
    app.router.add_get(versioned("/models"), handle_list, name="models.list")
