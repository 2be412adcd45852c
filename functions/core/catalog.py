"""The image models we may send to, as plain data (loaded and validated by catalog.py).

Sizes, ratios, prices and lifecycle come from here, never from the shape of a model's id.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from core.errors import UnknownModel

LIFECYCLES = ("ga", "preview", "deprecated")
_DAY = 86_400


@dataclass(frozen=True)
class SizePrice:
    interactive_usd: float
    batch_usd: float


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    lifecycle: str
    source_url: str
    sizes: tuple[str, ...]
    quality_sizes: dict[str, str]
    aspect_ratios: tuple[str, ...]
    prices: dict[str, SizePrice]
    sends_image_size: bool = True
    shutdown_date: str | None = None  # ISO date, as announced
    max_reference_images: int = 0
    batch: bool = True
    output_mime_types: tuple[str, ...] = ("image/png",)
    output_tokens: dict[str, int] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()

    def size_for(self, quality: str) -> str:
        return self.quality_sizes.get(quality) or self.sizes[0]

    def image_size_param(self, quality: str) -> str | None:
        """imageSize for the request, or None where the model takes none (it has one size)."""
        return self.size_for(quality) if self.sends_image_size else None

    def price(self, size: str | None, batch: bool) -> float:
        p = self.prices.get(size or self.size_for("standard")) or self.prices[self.size_for("standard")]
        return p.batch_usd if batch else p.interactive_usd

    def days_left(self, now: float) -> int | None:
        """Whole days until the announced shutdown (negative once past), or None if none is announced."""
        if not self.shutdown_date:
            return None
        shutdown = dt.datetime.combine(dt.date.fromisoformat(self.shutdown_date), dt.time(), dt.timezone.utc)
        return int((shutdown.timestamp() - now) // _DAY)

    def problems(self, aspect_ratio: str, quality: str) -> list[tuple[str, str]]:
        """(field, problem) for what this model cannot do; empty when it can."""
        out = []
        if aspect_ratio not in self.aspect_ratios:
            out.append(("aspect_ratio", f"{self.id} has no aspect ratio {aspect_ratio!r}; "
                                        f"allowed: {', '.join(self.aspect_ratios)}"))
        if quality not in self.quality_sizes:
            out.append(("quality", f"{self.id} has no size for quality {quality!r}; "
                                   f"allowed: {', '.join(self.quality_sizes)}"))
        return out


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelSpec]
    default_model: str

    def get(self, model: str) -> ModelSpec | None:
        return self.models.get(model)

    def spec(self, model: str) -> ModelSpec:
        spec = self.models.get(model)
        if spec is None:
            raise UnknownModel(f"unknown model {model!r}; allowed: {', '.join(self.models)}")
        return spec

    def image_size_for(self, model: str, quality: str) -> str | None:
        """imageSize for an item of this model and quality (None for a model outside the catalog:
        send no size rather than one it may refuse)."""
        spec = self.models.get(model)
        return spec.image_size_param(quality) if spec is not None else None
