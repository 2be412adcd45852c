"""The poller's watch over the models in use: models.get for each, a halt for a missing one,
a cleared halt for one that is back, and a warning as an announced shutdown date comes near.

Every model in use is looked up at an instance's first tick and then once a day; a halted
model is looked up at every tick, so its items resume within a tick of Gemini serving it again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.catalog import Catalog
from core.errors import GenerationError
from core.model_halts import ModelHalts
from core.ports import ModelsApi

log = logging.getLogger(__name__)


class ModelWatch:
    def __init__(self, *, api: ModelsApi, halts: ModelHalts, catalog: Catalog, clock,
                 interval_seconds: float = 86_400.0, warn_days: int = 30) -> None:
        self.api, self.halts, self.catalog, self.clock = api, halts, catalog, clock
        self.interval_seconds, self.warn_days = interval_seconds, warn_days
        self._last_full: float | None = None  # per instance: its first tick checks everything
        self._lock = threading.Lock()

    def tick(self, models_in_use: Callable[[], set[str]]) -> dict[str, str]:
        """Check what is due now; {model: "present" | "restored" | "missing" | "error: ..."}
        ("restored": its halt was lifted by this check). `models_in_use` is called only when
        the full check is due. Never raises: the watch must not cost the poller its tick."""
        try:
            now = self.clock.now()
            halted = set(self.halts.all(fresh=True))
            with self._lock:
                full = self._last_full is None or now - self._last_full >= self.interval_seconds
            in_use = models_in_use() if full else set()
        except Exception as e:  # noqa: BLE001 - Firestore down: the next tick tries again
            log.warning("the models check could not start: %s", e)
            return {}
        result = {model: self._check(model, model in halted) for model in sorted(in_use | halted)}
        if full:
            with self._lock:
                self._last_full = now  # only once it ran: a failed start is retried next tick
            self._warn_near_shutdown(in_use, now)
        return result

    def _check(self, model: str, halted: bool) -> str:
        try:
            found = self.api.get_model(model)
            if found is None:
                self.halts.halt(model, f"models.get answered 404 NOT_FOUND for {model}", source="models.get")
                return "missing"
            if halted and self.halts.clear(model, "models.get finds it again"):
                return "restored"
            return "present"
        except GenerationError as e:  # a blip of models.get says nothing about the model
            log.warning("models.get %s failed: %s", model, e.reason, extra={"model": model})
            return f"error: {e.reason}"[:200]
        except Exception as e:  # noqa: BLE001 - the halt store: leave it to the next tick
            log.warning("checking model %s failed: %s", model, e, extra={"model": model})
            return f"error: {e}"[:200]

    def _warn_near_shutdown(self, models_in_use: set[str], now: float) -> None:
        for model in sorted(models_in_use):
            spec = self.catalog.get(model)
            days = spec.days_left(now) if spec is not None else None
            if spec is not None and days is not None and days <= self.warn_days:
                log.warning("model %s has an announced shutdown on %s (%d days left); move to another model "
                            "(GEMINI_MODEL, or the job's `model`)", model, spec.shutdown_date, days,
                            extra={"alert": "model_shutdown_near", "model": model, "days_left": days})


def models_section(catalog: Catalog, halts: ModelHalts | None, now: float, default_model: str,
                   warn_days: int = 30) -> list[dict]:
    """The `models` section of GET /v1/stats: every catalog model, and any halted one outside it."""
    halted = halts.all(fresh=True) if halts is not None else {}
    out = []
    for model_id in list(catalog.models) + sorted(set(halted) - set(catalog.models)):
        spec = catalog.get(model_id)
        days = spec.days_left(now) if spec is not None else None
        halt = halted.get(model_id)
        out.append({
            "id": model_id,
            "default": model_id == default_model,
            "lifecycle": spec.lifecycle if spec is not None else None,
            "shutdown_date": spec.shutdown_date if spec is not None else None,
            "days_left": days,
            "shutdown_near": days is not None and days <= warn_days,
            "halted": halt is not None,
            "halt_reason": halt.reason if halt is not None else None,
            "source_url": spec.source_url if spec is not None else None,
        })
    return out
