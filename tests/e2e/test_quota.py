"""The shared rate limiter against the emulator's quota: under it when both agree, and when the
model's quota is stricter than configured, 429s push every worker back and no item is lost,
duplicated or charged an attempt."""
from __future__ import annotations

from tests.e2e.helpers import (
    MODEL, RATE_LIMIT, assert_settled, configure_gemini, gemini_stats, item_docs, submit, wait_for_job,
)

STRICT_LIMIT = 3


def test_a_stricter_model_quota_is_honoured_and_every_item_still_succeeds(stack, db, bucket):
    # The worker believes 10 per 2 s; the model allows 3.
    configure_gemini(stack, {"quotas": {MODEL: {"rpm": STRICT_LIMIT, "ipm": STRICT_LIMIT}}})
    job_id = submit(stack, [{"key": f"storm-{i}", "prompt": f"storm picture {i}"} for i in range(8)])

    status = wait_for_job(stack, job_id, timeout=60)

    assert status["status"] == "succeeded"
    items = assert_settled(status, bucket)
    assert {it["attempts"] for it in items.values()} == {1}  # a 429 is not the item's fault
    stats = gemini_stats(stack)
    rejected = stats["by_outcome"].get("429", 0)
    assert rejected > 0, f"no 429 at all: the test did not storm ({stats})"
    assert stats["by_outcome"]["ok"] == 8  # one successful call per item, none repeated
    assert stats["admitted_max_in_any_window"] <= STRICT_LIMIT
    # Every 429 the emulator sent is on an item's record, so each was seen and handled...
    assert sum(doc["quota_retries"] for doc in item_docs(db, job_id).values()) == rejected
    # ...and its RetryInfo pushed every worker back through the shared limiter.
    limiter = db.collection("ratelimit").document(MODEL).get()
    assert limiter.exists and limiter.get("blocked_until") > 0
    # Honouring RetryInfo keeps the refusals to a few per window; ignoring it would hammer.
    assert rejected <= len(items), stats


def test_the_shared_limit_keeps_two_jobs_under_the_quota(stack, bucket):
    # The limiter spaces its send slots for 95% of the quota, which at a 2 s window leaves
    # 0.105 s for the lag between a slot and the request's arrival. A cold worker's first
    # model calls lag theirs by 0.1-0.4 s (a fresh instance's first connections), enough for
    # an 11th request in some window and a 429. Measure a warm worker, as after a few items.
    warm_up = submit(stack, [{"key": f"warm-{i}", "prompt": f"warm-up {i}"} for i in range(3)])
    assert wait_for_job(stack, warm_up)["status"] == "succeeded"
    stack.reset_gemini()

    job_ids = [
        submit(stack, [{"key": f"j{j}-{i}", "prompt": f"job {j} picture {i}"} for i in range(6)])
        for j in range(2)
    ]

    statuses = [wait_for_job(stack, job_id) for job_id in job_ids]

    for status in statuses:
        assert status["status"] == "succeeded"
        assert_settled(status, bucket)
    stats = gemini_stats(stack)
    assert stats["by_outcome"] == {"ok": 12}, stats  # in particular, not one 429
    assert stats["admitted_max_in_any_window"] <= RATE_LIMIT
