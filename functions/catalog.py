"""Loads models.json (or MODEL_CATALOG_FILE), validates it, and hands core/ a plain Catalog."""
from __future__ import annotations

import datetime as dt
import functools
import json
import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.catalog import Catalog, ModelSpec, SizePrice

DEFAULT_FILE = pathlib.Path(__file__).with_name("models.json")
Size = Literal["512", "1K", "2K", "4K"]


class _Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interactive: float = Field(ge=0)
    batch: float = Field(ge=0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    display_name: str
    lifecycle: Literal["ga", "preview", "deprecated"]
    released: dt.date | None = None
    shutdown_date: dt.date | None = None
    source_url: str = Field(min_length=8)
    sizes: list[Size] = Field(min_length=1)
    sends_image_size: bool = True
    quality_sizes: dict[Literal["standard", "high"], Size] = Field(min_length=1)
    aspect_ratios: list[str] = Field(min_length=1)
    max_reference_images: int = Field(ge=0)
    batch: bool
    output_mime_types: list[str] = Field(min_length=1)
    output_tokens: dict[Size, int] = {}
    prices_usd: dict[Size, _Price]
    unverified: list[str] = []
    notes: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _Model:
        for quality, size in self.quality_sizes.items():
            if size not in self.sizes:
                raise ValueError(f"{self.id}: quality {quality} maps to {size}, which is not in sizes")
        missing = [s for s in self.sizes if s not in self.prices_usd]
        if missing:
            raise ValueError(f"{self.id}: no price for sizes {missing}")
        if not self.sends_image_size and len(self.sizes) != 1:
            raise ValueError(f"{self.id}: a model that takes no imageSize has exactly one size")
        return self

    def to_spec(self) -> ModelSpec:
        return ModelSpec(
            id=self.id, display_name=self.display_name, lifecycle=self.lifecycle, source_url=self.source_url,
            sizes=tuple(self.sizes), quality_sizes={q: str(s) for q, s in self.quality_sizes.items()},
            aspect_ratios=tuple(self.aspect_ratios),
            prices={s: SizePrice(p.interactive, p.batch) for s, p in self.prices_usd.items()},
            sends_image_size=self.sends_image_size,
            shutdown_date=self.shutdown_date.isoformat() if self.shutdown_date else None,
            max_reference_images=self.max_reference_images, batch=self.batch,
            output_mime_types=tuple(self.output_mime_types), output_tokens={str(s): n for s, n in self.output_tokens.items()},
            unverified=tuple(self.unverified),
        )


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore")

    default_model: str
    models: list[_Model] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_is_listed_and_ga(self) -> _File:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids repeat")
        default = next((m for m in self.models if m.id == self.default_model), None)
        if default is None or default.lifecycle != "ga":
            raise ValueError(f"default_model {self.default_model!r} must be a listed GA model")
        return self


def parse(text: str) -> Catalog:
    data = _File.model_validate(json.loads(text))
    return Catalog(models={m.id: m.to_spec() for m in data.models}, default_model=data.default_model)


@functools.cache
def load(path: str | None = None) -> Catalog:
    """The catalog, read once per instance (a broken file fails the instance's start, not a job)."""
    return parse(pathlib.Path(path or DEFAULT_FILE).read_text())
