"""The emulator's models through the real google-genai SDK: the catalog is served, models.get and
models.list answer what the SDK parses, an unknown or removed model is 404, and each model has
its own sizes, ratios and tokens per image."""
from __future__ import annotations

import pytest
from google.genai import errors, types

from adapters.gemini_generator import names_missing_model, translate_api_error
from adapters.gemini_models import GeminiModelsApi
from catalog import load as load_catalog
from core.errors import ModelUnavailable
from tests.integration.test_gemini_emulator import (  # noqa: F401 - fixtures
    client, emu, emulator_process, generate, image_of, scaled,
)

CATALOG = load_catalog()


def test_models_get_and_list_serve_the_catalog(client):
    model = client.models.get(model="gemini-3-pro-image")
    assert model.name == "models/gemini-3-pro-image"
    assert "generateContent" in model.supported_actions and model.display_name
    listed = [m.name.removeprefix("models/") for m in client.models.list()]
    assert listed == list(CATALOG.models)


def test_an_unknown_model_is_404_with_the_real_message(client):
    with pytest.raises(errors.ClientError) as caught:
        generate(client, model="imagen-4.0-generate-001")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    assert "models/imagen-4.0-generate-001 is not found for API version v1beta" in caught.value.message
    assert isinstance(translate_api_error(caught.value), ModelUnavailable)
    with pytest.raises(errors.ClientError) as got:
        client.models.get(model="imagen-4.0-generate-001")
    assert got.value.code == 404


def test_a_model_removed_at_run_time_is_gone_everywhere_until_restored(emu, client):
    api = GeminiModelsApi(client)
    assert api.get_model("gemini-nano-banana-2.1")["name"] == "models/gemini-nano-banana-2.1"
    emu.configure({"removed_models": ["gemini-nano-banana-2.1"]})
    assert api.get_model("gemini-nano-banana-2.1") is None
    with pytest.raises(errors.ClientError) as caught:
        generate(client, model="gemini-nano-banana-2.1")
    assert names_missing_model(caught.value.message)
    assert "gemini-nano-banana-2.1" not in [m.name for m in client.models.list()]
    generate(client, model="gemini-3-pro-image")  # the others are unaffected
    emu.configure({"removed_models": []})
    assert image_of(generate(client, model="gemini-nano-banana-2.1"))


def test_each_model_has_its_own_sizes_ratios_and_tokens(client):
    pro = generate(client, model="gemini-3-pro-image",
                   image_config=types.ImageConfig(aspect_ratio="16:9", image_size="4K"))
    assert image_of(pro).size == scaled(1344 * 4, 768 * 4)
    assert pro.usage_metadata.candidates_token_count == CATALOG.spec("gemini-3-pro-image").output_tokens["4K"]

    with pytest.raises(errors.ClientError) as caught:  # Pro has no 8:1
        generate(client, model="gemini-3-pro-image", image_config=types.ImageConfig(aspect_ratio="8:1"))
    assert caught.value.code == 400 and "aspect_ratio" in caught.value.message
    assert image_of(generate(client, model="gemini-nano-banana-2.1",
                             image_config=types.ImageConfig(aspect_ratio="8:1")))
    with pytest.raises(errors.ClientError) as caught:  # 2.1 has no 512 tier
        generate(client, model="gemini-nano-banana-2.1", image_config=types.ImageConfig(image_size="512"))
    assert caught.value.code == 400 and "image_size" in caught.value.message
    assert generate(client).usage_metadata.candidates_token_count == 1290  # 2.5 Flash Image
