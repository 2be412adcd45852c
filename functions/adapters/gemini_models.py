"""models.get through the google-genai SDK: is a model still served?"""
from __future__ import annotations

from google.genai import Client, errors

from adapters.gemini_generator import _TRANSPORT_ERRORS, translate_api_error
from core.errors import TransientError


class GeminiModelsApi:
    def __init__(self, client: Client) -> None:
        self.client = client

    def get_model(self, model: str) -> dict | None:
        try:
            found = self.client.models.get(model=model)
        except errors.APIError as e:
            if e.code == 404:
                return None  # the model is not served (retired, or never existed)
            raise translate_api_error(e) from e
        except _TRANSPORT_ERRORS as e:
            raise TransientError(f"transport: {type(e).__name__}: {e}") from e
        return {
            "name": found.name,
            "display_name": found.display_name,
            "supported_actions": list(found.supported_actions or []),
        }
