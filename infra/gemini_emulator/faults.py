"""What happens to an admitted request: its outcome (rules, script, rates) and its latency;
and how a batch ends (display-name rules, then an outcome script).

Pure: the caller passes the RNG and the script cursor, and keeps the new cursor. Outcome order:
1. ``prompt_rules`` - first rule whose ``contains`` is a substring of the prompt (and whose
   optional ``model`` matches) decides; such a request does not consume a script entry;
2. ``script`` - outcomes consumed in order, one per request, until exhausted;
3. ``rates`` - one uniform draw against the cumulative probabilities; the remainder is "ok".
"""

from __future__ import annotations

import random
from typing import Any

OK = "ok"
# Each admitted request ends in exactly one of these (the wire behaviour is in generate.py).
FAULT_OUTCOMES: tuple[str, ...] = ("429", "500", "503", "403", "hang", "blocked", "image_safety", "no_image")
# Answers as today's API sends them (README "Outcomes"): a 429 listing several quotas with a
# short retryDelay, a 429 with only a Help link, more image refusals and block reasons, and
# an image preceded by thought parts. Appended, so a seeded run of the outcomes above replays.
FAULT_OUTCOMES += (
    "429_multi", "429_help_only", "image_prohibited", "image_other",
    "blocked_prohibited", "blocked_other", "thought_image",
)
# A 200 whose inlineData is not base64, or whose image is cut in half: the image is rendered,
# then spoiled on the way out.
SPOILED_IMAGE_OUTCOMES = ("bad_base64", "truncated_image")
FAULT_OUTCOMES += SPOILED_IMAGE_OUTCOMES
OUTCOMES = (OK, *FAULT_OUTCOMES)
# How a whole batch ends (its lines have the outcomes above). Picked at create time.
BATCH_OUTCOMES = ("succeeded", "failed", "cancelled", "expired")


def choose_outcome(
    *,
    prompt: str,
    model: str,
    faults: dict[str, Any],
    script_pos: int,
    rng: random.Random,
) -> tuple[str, int]:
    """Return ``(outcome, new_script_pos)``."""
    for rule in faults["prompt_rules"]:
        if rule["contains"] in prompt and rule.get("model", model) == model:
            return rule["outcome"], script_pos
    script = faults["script"]
    if script_pos < len(script):
        return script[script_pos], script_pos + 1
    rates = faults["rates"]
    if rates:
        draw = rng.random()
        cumulative = 0.0
        for outcome in FAULT_OUTCOMES:  # fixed order, so a seed replays identically
            cumulative += rates.get(outcome, 0.0)
            if draw < cumulative:
                return outcome, script_pos
    return OK, script_pos


def latency_seconds(latency: dict[str, Any], rng: random.Random) -> float:
    """Modelled service time: mean +/- jitter (uniform) or N(mean, jitter) (normal), never < 0."""
    mean, jitter = latency["mean_ms"], latency["jitter_ms"]
    if not mean and not jitter:
        return 0.0
    if latency["distribution"] == "normal":
        ms = rng.gauss(mean, jitter)
    else:
        ms = mean + rng.uniform(-jitter, jitter)
    return max(ms, 0.0) / 1000.0


def choose_batch_outcome(*, display_name: str, batch: dict[str, Any], script_pos: int) -> tuple[str, int]:
    """Terminal state planned for a new batch: ``display_name_rules``, then ``outcome_script``,
    then "succeeded". Return ``(outcome, new_script_pos)``; a rule does not consume the script."""
    for rule in batch["display_name_rules"]:
        if rule["contains"] in display_name:
            return rule["outcome"], script_pos
    script = batch["outcome_script"]
    if script_pos < len(script):
        return script[script_pos], script_pos + 1
    return "succeeded", script_pos
