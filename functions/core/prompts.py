"""The prompt sent to Gemini for an item, the same in both lanes."""
from __future__ import annotations

from core.models import Item


def compose_prompt(item: Item) -> str:
    if item.domain:
        return f"{item.prompt}\n\nDomain: {item.domain}"
    return item.prompt
