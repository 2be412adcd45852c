"""Quota engine, fault selection and config merging of the Gemini emulator: pure logic, no I/O."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from infra.gemini_emulator import config as emu_config
from infra.gemini_emulator.errors import duration
from infra.gemini_emulator.faults import choose_outcome, latency_seconds
from infra.gemini_emulator.quota import (
    QUOTA_ID_CONCURRENT,
    QUOTA_ID_IPM,
    QUOTA_ID_RPD,
    QUOTA_ID_RPM,
    QuotaEngine,
    QuotaLimits,
)
from infra.gemini_emulator.stats import Stats

MODEL = "gemini-2.5-flash-image"


def acquire(engine: QuotaEngine, now: float, limits: QuotaLimits, *, images: int = 1, window: float = 60.0, day: float = 86400.0):
    violation = engine.try_acquire(MODEL, images=images, now=now, limits=limits, window_s=window, day_s=day)
    if violation is None:
        engine.release(MODEL)  # model instant requests unless a test holds the slot itself
    return violation


def test_rpm_admits_up_to_limit_then_reports_when_the_oldest_ages_out():
    engine, limits = QuotaEngine(), QuotaLimits(rpm=3)
    for t in (0.0, 1.0, 2.0):
        assert acquire(engine, t, limits) is None

    violation = acquire(engine, 10.0, limits)

    assert violation.quota_id == QUOTA_ID_RPM
    assert violation.limit == 3
    assert violation.retry_after_s == pytest.approx(50.0)  # entry at t=0 leaves at t=60


def test_window_is_half_open_so_retrying_exactly_at_retry_delay_succeeds():
    engine, limits = QuotaEngine(), QuotaLimits(rpm=1)
    assert acquire(engine, 0.0, limits) is None
    assert acquire(engine, 59.999, limits) is not None
    assert acquire(engine, 60.0, limits) is None


def test_rejections_are_not_counted():
    engine, limits = QuotaEngine(), QuotaLimits(rpm=2)
    acquire(engine, 0.0, limits)
    acquire(engine, 30.0, limits)
    for t in range(31, 60):
        assert acquire(engine, float(t), limits) is not None  # hammering does not extend the window
    assert acquire(engine, 60.0, limits) is None


def test_sliding_window_never_admits_more_than_limit_in_any_window():
    engine, limits = QuotaEngine(), QuotaLimits(rpm=5)
    stats = Stats(epoch=0.0)
    rng = random.Random(3)
    now = 0.0
    for _ in range(2000):
        now += rng.expovariate(1.0)
        if engine.try_acquire(MODEL, images=1, now=now, limits=limits, window_s=10.0, day_s=86400.0) is None:
            stats.record_admission(MODEL, now, 10.0, 0.0)
            engine.release(MODEL)
            stats.record_release(MODEL)

    assert stats.snapshot()["admitted_max_in_any_window"] == 5


def test_ipm_counts_images_and_ignores_text_only_requests():
    engine, limits = QuotaEngine(), QuotaLimits(ipm=2)
    assert acquire(engine, 0.0, limits) is None
    assert acquire(engine, 1.0, limits) is None
    assert acquire(engine, 2.0, limits, images=0) is None

    violation = acquire(engine, 3.0, limits)

    assert violation.quota_id == QUOTA_ID_IPM
    assert violation.retry_after_s == pytest.approx(57.0)


def test_rpd_uses_the_day_window_and_is_checked_first():
    engine, limits = QuotaEngine(), QuotaLimits(rpm=1, rpd=2)
    assert acquire(engine, 0.0, limits, window=1.0, day=100.0) is None
    assert acquire(engine, 5.0, limits, window=1.0, day=100.0) is None

    violation = acquire(engine, 5.5, limits, window=1.0, day=100.0)  # RPM is also exceeded

    assert violation.quota_id == QUOTA_ID_RPD
    assert violation.retry_after_s == pytest.approx(94.5)


def test_concurrency_limit_holds_until_release():
    engine, limits = QuotaEngine(), QuotaLimits(concurrent=2)
    kwargs = dict(images=1, limits=limits, window_s=60.0, day_s=86400.0, concurrency_retry_s=0.5)
    assert engine.try_acquire(MODEL, now=0.0, **kwargs) is None
    assert engine.try_acquire(MODEL, now=0.0, **kwargs) is None

    violation = engine.try_acquire(MODEL, now=0.0, **kwargs)
    engine.release(MODEL)

    assert (violation.quota_id, violation.retry_after_s) == (QUOTA_ID_CONCURRENT, 0.5)
    assert engine.try_acquire(MODEL, now=0.0, **kwargs) is None


def test_model_entry_replaces_default_and_zero_means_unlimited():
    quotas = {"default": {"rpm": 1, "rpd": 5}, MODEL: {"ipm": 2, "rpm": 0}}
    assert QuotaLimits.from_config(quotas, MODEL) == QuotaLimits(ipm=2)
    assert QuotaLimits.from_config(quotas, "other") == QuotaLimits(rpm=1, rpd=5)
    assert QuotaLimits.from_config({}, MODEL) == QuotaLimits()


@pytest.mark.parametrize(("seconds", "text"), [(4.2, "4.2s"), (47.0, "47s"), (0.0, "0s"), (0.0001, "0.001s"), (1.2345, "1.235s")])
def test_retry_delay_is_rounded_up_to_the_millisecond(seconds, text):
    assert duration(seconds) == text


def test_outcome_order_is_rules_then_script_then_rates():
    faults = {
        "prompt_rules": [{"contains": "nsfw", "outcome": "blocked"}, {"contains": "x", "outcome": "500", "model": "other"}],
        "script": ["429", "ok"],
        "rates": {"503": 1.0},
    }
    rng = random.Random(0)
    outcomes, pos = [], 0
    for prompt in ("nsfw cat", "x", "x", "x", "nsfw"):
        outcome, pos = choose_outcome(prompt=prompt, model=MODEL, faults=faults, script_pos=pos, rng=rng)
        outcomes.append(outcome)
    assert outcomes == ["blocked", "429", "ok", "503", "blocked"]


def test_seeded_rates_replay_identically():
    faults = {"prompt_rules": [], "script": [], "rates": {"500": 0.3, "hang": 0.1}}

    def run(seed):
        rng = random.Random(seed)
        return [choose_outcome(prompt="p", model=MODEL, faults=faults, script_pos=0, rng=rng)[0] for _ in range(50)]

    assert run(7) == run(7)
    assert {"ok", "500", "hang"} == set(run(7))


def test_latency_is_never_negative():
    rng = random.Random(1)
    latency = {"mean_ms": 10.0, "jitter_ms": 100.0, "distribution": "normal"}
    assert min(latency_seconds(latency, rng) for _ in range(500)) == 0.0


def test_config_merge_null_restores_default_and_validation_names_the_key():
    cfg = emu_config.apply_patch(emu_config.DEFAULT_CONFIG, {"quotas": {"m": {"rpm": 5, "ipm": 2}}, "image_scale": 0.5})
    cfg = emu_config.apply_patch(cfg, {"quotas": {"m": {"rpm": None}}, "image_scale": None})
    assert cfg["quotas"] == {"m": {"ipm": 2}}
    assert cfg["image_scale"] == 1.0

    with pytest.raises(emu_config.ConfigError, match="faults.rates: unknown key"):
        emu_config.apply_patch(cfg, {"faults": {"rates": {"418": 0.1}}})
    with pytest.raises(emu_config.ConfigError, match="sum to more than 1"):
        emu_config.apply_patch(cfg, {"faults": {"rates": {"500": 0.6, "503": 0.6}}})
    with pytest.raises(emu_config.ConfigError, match=r"quotas.m.rpm"):
        emu_config.apply_patch(cfg, {"quotas": {"m": {"rpm": -1}}})


def test_example_config_is_valid():
    path = Path(__file__).resolve().parents[2] / "infra" / "gemini_emulator" / "example.config.json"
    emu_config.initial_config(json.loads(path.read_text()))
