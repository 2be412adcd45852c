"""The emulator's configuration: defaults, merge semantics and validation.

Config stays a plain JSON-shaped dict so the admin API can return exactly what is in effect.
Patches (``POST /_emulator/config`` or ``--config``) are deep-merged: dicts merge key by key,
lists and scalars replace, and ``null`` puts a key back to its default (for a quota limit,
which has no default, that means unlimited). A patch is validated as a whole before it takes
effect, so a bad patch leaves the running config untouched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from infra.gemini_emulator.faults import BATCH_OUTCOMES, FAULT_OUTCOMES, OUTCOMES
from infra.gemini_emulator.quota import LIMIT_KEYS

DEFAULT_CONFIG: dict[str, Any] = {
    "api_keys": None,  # null: any non-empty key is valid
    "models": None,  # null: the model catalog (functions/models.json); ["*"]: any id; or a list of ids
    "removed_models": [],  # served no more (404 NOT_FOUND): a model shut down at run time
    "seed": None,  # null: unseeded RNG
    "image_scale": 1.0,  # multiplies the aspect-ratio sizes (e.g. 0.25 for fast tests)
    "image_target_bytes": None,  # pad every PNG up to this many bytes (benchmarks)
    "image_format": "png",  # generateContent's images: "png", "jpeg" (as Gemini 3 image models may) or "webp"
    "window_seconds": 60.0,  # sliding window for RPM/IPM, and the stats window
    "day_seconds": 86400.0,  # sliding window for RPD
    "quotas": {},  # {"default" | <model id>: {"rpm", "ipm", "rpd", "concurrent"}}
    "concurrency_retry_delay_s": 1.0,
    "latency": {"mean_ms": 0.0, "jitter_ms": 0.0, "distribution": "uniform"},
    "faults": {
        "rates": {},
        "script": [],
        "prompt_rules": [],
        "hang_seconds": 300.0,
        "retry_delay_s": 1.0,  # RetryInfo.retryDelay on an injected 429
    },
    "request_log_size": 100,
    "files": {
        "ttl_seconds": 172800.0,  # expirationTime = createTime + 48 h; an expired file is gone (403)
        # FileStorageBytesPerProject: 20 GiB of live files per project (uploads and results);
        # past it an upload start answers 429. 0 = unlimited.
        "max_total_bytes": 21474836480,
        # The next N finalizes answer HTTP 200 with an error body instead of {"file": ...}.
        "reject_finalize": 0,
        "reject_finalize_message": "Unsupported MIME type: jsonl",
        # The next N downloads send cut_download_after_bytes of their body, then close the connection.
        "cut_downloads": 0,
        "cut_download_after_bytes": 1048576,
    },
    "batch": {
        "pending_seconds": 1.0,  # BATCH_STATE_PENDING for this long after create
        "running_seconds": 2.0,  # then RUNNING at least this long (longer if results take longer)
        "max_concurrent_batches": 100,  # PENDING+RUNNING batches per project; 0 = unlimited
        # Per model, over its PENDING+RUNNING batches: requests and input tokens (ceil(bytes/4)
        # of the input) that may be enqueued at once; past either, create answers 429. null = unlimited.
        "max_enqueued_requests": None,
        "max_enqueued_tokens": None,
        "shuffle_results": True,  # result-file lines in a seeded random order (the API promises none)
        "outcome_script": [],  # terminal outcome per created batch, consumed in order
        # One entry per create request that passes validation, consumed in order: "429" (Help only,
        # as real batch creates past quota answered), "429_retry" (with RetryInfo) or "ok".
        "create_script": [],
        "display_name_rules": [],  # [{"contains": str, "outcome": str}], checked before the script
        # [{"contains": str, "then": "duplicate"|"error"}]: after the result line of a key that
        # contains the substring, the file repeats that line, or adds an error line for the key
        "repeat_key_rules": [],
    },
    # Batch webhooks (webhooks.py). Gemini retries for 24 h; here the window stands for that.
    "webhooks": {
        "poll_seconds": 0.1,  # how often ended batches are looked for and due deliveries sent
        "timeout_seconds": 5.0,  # one delivery attempt
        "retry_base_seconds": 0.5,  # wait after the first failed attempt, doubling per attempt
        "retry_max_seconds": 5.0,
        "retry_window_seconds": 120.0,  # stands for the real 24 h; then the delivery is failed
        "drop": False,  # faults: queue nothing (recorded as dropped)
        "duplicate": False,  # deliver each event twice, with the same webhook-id
        "delay_seconds": 0.0,  # first attempt this long after the batch ended
        "bad_signature": False,  # sign with a key nobody has
    },
}


class ConfigError(ValueError):
    """A config patch the emulator refuses; the message names the offending key."""


def merge(base: dict[str, Any], patch: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """Deep-merge ``patch`` into a copy of ``base``; ``null`` restores ``defaults`` at that path."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        default_here = defaults.get(key) if isinstance(defaults, dict) else None
        if value is None:
            if isinstance(defaults, dict) and key in defaults:
                out[key] = copy.deepcopy(defaults[key])
            else:
                out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, default_here if isinstance(default_here, dict) else {})
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_patch(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Return the validated config that results from ``patch``; raise :class:`ConfigError`."""
    if not isinstance(patch, dict):
        raise ConfigError("config must be a JSON object")
    merged = merge(current, patch, DEFAULT_CONFIG)
    validate(merged)
    return merged


def initial_config(patch: dict[str, Any] | None = None) -> dict[str, Any]:
    return apply_patch(DEFAULT_CONFIG, patch or {})


# --- validation -----------------------------------------------------------------------------


def _check_keys(obj: dict[str, Any], allowed: set[str] | dict[str, Any], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _number(value: Any, where: str, *, minimum: float = 0.0, exclusive: bool = False, allow_null: bool = False) -> None:
    if value is None and allow_null:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        op = ">" if exclusive else ">="
        raise ConfigError(f"{where}: must be {op} {minimum}, got {value!r}")


def _int(value: Any, where: str, *, allow_null: bool = False) -> None:
    if value is None and allow_null:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")


def _string_list(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected null or a list of non-empty strings, got {value!r}")


def validate(cfg: dict[str, Any]) -> None:
    _check_keys(cfg, DEFAULT_CONFIG, "config")
    _string_list(cfg["api_keys"], "api_keys")
    _string_list(cfg["models"], "models")
    _string_list(cfg["removed_models"], "removed_models")
    if cfg["seed"] is not None and (isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], (int, str))):
        raise ConfigError(f"seed: expected null, an integer or a string, got {cfg['seed']!r}")
    _number(cfg["image_scale"], "image_scale", exclusive=True)
    if cfg["image_scale"] > 4:
        raise ConfigError("image_scale: must be <= 4")
    _int(cfg["image_target_bytes"], "image_target_bytes", allow_null=True)
    if cfg["image_format"] not in ("png", "jpeg", "webp"):
        raise ConfigError("image_format: expected one of png, jpeg, webp")
    _number(cfg["window_seconds"], "window_seconds", exclusive=True)
    _number(cfg["day_seconds"], "day_seconds", exclusive=True)
    _number(cfg["concurrency_retry_delay_s"], "concurrency_retry_delay_s")
    _int(cfg["request_log_size"], "request_log_size")
    _validate_quotas(cfg["quotas"])
    _validate_latency(cfg["latency"])
    _validate_faults(cfg["faults"])
    _validate_files(cfg["files"])
    _validate_batch(cfg["batch"])
    _validate_webhooks(cfg["webhooks"])


def _validate_quotas(quotas: Any) -> None:
    if not isinstance(quotas, dict):
        raise ConfigError("quotas: expected an object {model id | 'default': limits}")
    for model, limits in quotas.items():
        where = f"quotas.{model}"
        if not isinstance(limits, dict):
            raise ConfigError(f"{where}: expected an object with keys {list(LIMIT_KEYS)}")
        _check_keys(limits, set(LIMIT_KEYS), where)
        for key, value in limits.items():
            _int(value, f"{where}.{key}", allow_null=True)


def _validate_latency(latency: Any) -> None:
    if not isinstance(latency, dict):
        raise ConfigError("latency: expected an object")
    _check_keys(latency, DEFAULT_CONFIG["latency"], "latency")
    _number(latency["mean_ms"], "latency.mean_ms")
    _number(latency["jitter_ms"], "latency.jitter_ms")
    if latency["distribution"] not in ("uniform", "normal"):
        raise ConfigError("latency.distribution: expected 'uniform' or 'normal'")


def _validate_faults(faults: Any) -> None:
    if not isinstance(faults, dict):
        raise ConfigError("faults: expected an object")
    _check_keys(faults, DEFAULT_CONFIG["faults"], "faults")
    rates = faults["rates"]
    if not isinstance(rates, dict):
        raise ConfigError("faults.rates: expected an object {outcome: probability}")
    _check_keys(rates, set(FAULT_OUTCOMES), "faults.rates")
    for outcome, p in rates.items():
        _number(p, f"faults.rates.{outcome}")
        if p > 1:
            raise ConfigError(f"faults.rates.{outcome}: a probability must be <= 1")
    if sum(rates.values()) > 1 + 1e-9:
        raise ConfigError("faults.rates: probabilities sum to more than 1")
    script = faults["script"]
    if not isinstance(script, list) or any(o not in OUTCOMES for o in script):
        raise ConfigError(f"faults.script: expected a list of outcomes from {list(OUTCOMES)}")
    rules = faults["prompt_rules"]
    if not isinstance(rules, list):
        raise ConfigError("faults.prompt_rules: expected a list")
    for i, rule in enumerate(rules):
        where = f"faults.prompt_rules[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: expected an object")
        _check_keys(rule, {"contains", "outcome", "model"}, where)
        if not isinstance(rule.get("contains"), str) or not rule["contains"]:
            raise ConfigError(f"{where}.contains: expected a non-empty string")
        if rule.get("outcome") not in OUTCOMES:
            raise ConfigError(f"{where}.outcome: expected one of {list(OUTCOMES)}")
        if "model" in rule and not isinstance(rule["model"], str):
            raise ConfigError(f"{where}.model: expected a model id string")
    _number(faults["hang_seconds"], "faults.hang_seconds")
    _number(faults["retry_delay_s"], "faults.retry_delay_s")


def _validate_files(files: Any) -> None:
    if not isinstance(files, dict):
        raise ConfigError("files: expected an object")
    _check_keys(files, DEFAULT_CONFIG["files"], "files")
    _number(files["ttl_seconds"], "files.ttl_seconds", exclusive=True)
    _int(files["max_total_bytes"], "files.max_total_bytes")
    _int(files["reject_finalize"], "files.reject_finalize")
    _int(files["cut_downloads"], "files.cut_downloads")
    _int(files["cut_download_after_bytes"], "files.cut_download_after_bytes")
    if not isinstance(files["reject_finalize_message"], str) or not files["reject_finalize_message"]:
        raise ConfigError("files.reject_finalize_message: expected a non-empty string")


def _validate_batch(batch: Any) -> None:
    if not isinstance(batch, dict):
        raise ConfigError("batch: expected an object")
    _check_keys(batch, DEFAULT_CONFIG["batch"], "batch")
    _number(batch["pending_seconds"], "batch.pending_seconds")
    _number(batch["running_seconds"], "batch.running_seconds")
    _int(batch["max_concurrent_batches"], "batch.max_concurrent_batches", allow_null=True)
    _int(batch["max_enqueued_requests"], "batch.max_enqueued_requests", allow_null=True)
    _int(batch["max_enqueued_tokens"], "batch.max_enqueued_tokens", allow_null=True)
    if not isinstance(batch["shuffle_results"], bool):
        raise ConfigError("batch.shuffle_results: expected true or false")
    script = batch["outcome_script"]
    if not isinstance(script, list) or any(o not in BATCH_OUTCOMES for o in script):
        raise ConfigError(f"batch.outcome_script: expected a list of outcomes from {list(BATCH_OUTCOMES)}")
    create = batch["create_script"]
    if not isinstance(create, list) or any(o not in CREATE_OUTCOMES for o in create):
        raise ConfigError(f"batch.create_script: expected a list of outcomes from {list(CREATE_OUTCOMES)}")
    _validate_contains_rules(batch["display_name_rules"], "batch.display_name_rules", "outcome", BATCH_OUTCOMES)
    _validate_contains_rules(batch["repeat_key_rules"], "batch.repeat_key_rules", "then", REPEATS)


REPEATS = ("duplicate", "error")
CREATE_OUTCOMES = ("ok", "429", "429_retry")


def _validate_webhooks(hooks: Any) -> None:
    if not isinstance(hooks, dict):
        raise ConfigError("webhooks: expected an object")
    _check_keys(hooks, DEFAULT_CONFIG["webhooks"], "webhooks")
    for key in ("poll_seconds", "timeout_seconds", "retry_base_seconds", "retry_max_seconds"):
        _number(hooks[key], f"webhooks.{key}", exclusive=True)
    for key in ("retry_window_seconds", "delay_seconds"):
        _number(hooks[key], f"webhooks.{key}")
    for key in ("drop", "duplicate", "bad_signature"):
        if not isinstance(hooks[key], bool):
            raise ConfigError(f"webhooks.{key}: expected true or false")


def _validate_contains_rules(rules: Any, path: str, value_key: str, allowed: tuple[str, ...]) -> None:
    """A list of {"contains": non-empty string, value_key: one of allowed} rules."""
    if not isinstance(rules, list):
        raise ConfigError(f"{path}: expected a list")
    for i, rule in enumerate(rules):
        where = f"{path}[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: expected an object")
        _check_keys(rule, {"contains", value_key}, where)
        if not isinstance(rule.get("contains"), str) or not rule["contains"]:
            raise ConfigError(f"{where}.contains: expected a non-empty string")
        if rule.get(value_key) not in allowed:
            raise ConfigError(f"{where}.{value_key}: expected one of {list(allowed)}")
