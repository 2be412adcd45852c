"""The quota-aware core: the breaker, usage and budget, routing, the pending-batch pool, :retry,
Idempotency-Key and the dead-letter consumer, on in-memory fakes with a fake clock."""
import datetime as dt
import logging

import pytest

from core import accounting as acct
from core import dead_letters, jobs, redrive, submitting
from core.accounting import Accounting, DailyLimits
from core.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Decision
from core.errors import (
    BudgetExceeded, Conflict, IdempotencyMismatch, InProgress, LaneUnavailable, PermissionDenied, QuotaExceeded,
)
from core.models import ItemSpec, ItemState, JobSpec, JobStatus, Lane
from core.pool import FlushRule, flush_pool
from core.quota_day import PACIFIC, next_reset, quota_day
from core.routing import Headroom, choose_lane
from tests.fakes import (
    InMemoryBreakerStore, InMemoryCounterStore, InMemoryPoolStore, ended,
)

PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel"
PER_DAY = "GenerateRequestsPerDayPerProjectPerModel"


def quota(per_day=False, delay=0.5):
    # A real per-day 429 carries no short retryDelay (a short one means a per-minute wait).
    return QuotaExceeded("429 RESOURCE_EXHAUSTED", retry_delay=None if per_day else delay,
                         quota_id=PER_DAY if per_day else PER_MINUTE)


@pytest.fixture
def env(env):
    """With a breaker, usage accounting and the pending-batch pool."""
    env.breaker_store, env.counters = InMemoryBreakerStore(), InMemoryCounterStore()
    env.pool = InMemoryPoolStore(env.store)
    env.breaker = CircuitBreaker(env.breaker_store, env.clock, BreakerPolicy(
        threshold=3, cooldown_seconds=60, halt_seconds=600, probe_seconds=120, cache_seconds=0))
    env.accounting = Accounting(store=env.counters, clock=env.clock, cache_seconds=0)
    env.flush = lambda flush_items=100, max_age=300: flush_pool(
        pool=env.pool, jobs=env.store, batches=env.store, clock=env.clock,
        rule=FlushRule(flush_items=flush_items, max_age_seconds=max_age, max_batch_items=1000))
    return env


# --- the quota day ---------------------------------------------------------------------------


def test_the_quota_day_turns_at_midnight_pacific_across_dst():
    before = dt.datetime(2026, 3, 7, 23, 59, 59, tzinfo=PACIFIC).timestamp()
    assert quota_day(before) == "2026-03-07"
    assert quota_day(before + 1) == "2026-03-08"
    # 8 March 2026 is a 23-hour day in Pacific time (DST starts at 02:00).
    assert next_reset(before + 1) - (before + 1) == 23 * 3600


# --- the breaker -----------------------------------------------------------------------------


def test_breaker_opens_after_n_consecutive_quota_failures_and_a_success_resets_the_count(env):
    b = env.breaker
    b.on_quota_failure("w", PER_MINUTE, per_day=False)
    b.on_quota_failure("w", PER_MINUTE, per_day=False)
    b.on_success("w")
    assert b.view().consecutive_failures == 0
    for _ in range(3):
        b.on_quota_failure("w", PER_MINUTE, per_day=False)
    v = b.view()
    assert v.state is BreakerState.OPEN and v.retry_at == env.clock.now() + 60
    assert b.before_send("w") is Decision.DIVERT and b.routes_to_batch()


def test_a_success_while_closed_writes_nothing(env):
    env.breaker.on_success("w")
    env.breaker.on_success("w")
    assert env.breaker_store.writes == 0


def test_after_the_cooldown_exactly_one_probe_is_sent_and_its_success_closes(env):
    b = env.breaker
    for _ in range(3):
        b.on_quota_failure("w", PER_MINUTE, per_day=False)
    env.clock.advance(61)
    assert b.before_send("probe") is Decision.SEND
    assert b.before_send("other") is Decision.DIVERT  # one probe at a time
    assert b.view().state is BreakerState.HALF_OPEN
    b.on_success("other")  # a request sent before the breaker opened does not close it
    assert b.view().state is BreakerState.HALF_OPEN
    b.on_success("probe")
    assert b.view().state is BreakerState.CLOSED
    assert [t["to"] for t in b.view().transitions] == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_the_breaker_again(env):
    b = env.breaker
    for _ in range(3):
        b.on_quota_failure("w", PER_MINUTE, per_day=False)
    env.clock.advance(61)
    assert b.before_send("probe") is Decision.SEND
    b.on_quota_failure("probe", PER_MINUTE, per_day=False)
    assert b.view().state is BreakerState.OPEN and b.view().retry_at == env.clock.now() + 60


def test_a_per_day_quota_opens_the_breaker_until_midnight_pacific(env):
    env.breaker.on_quota_failure("w", PER_DAY, per_day=True)
    v = env.breaker.view()
    assert v.state is BreakerState.OPEN and v.retry_at == next_reset(env.clock.now())
    env.clock.advance(3600)
    assert env.breaker.before_send("w") is Decision.DIVERT


def test_permission_denied_halts_and_holds_without_failover(env):
    env.breaker.on_permission_denied("w", "403 PERMISSION_DENIED: billing disabled")
    assert env.breaker.before_send("w") is Decision.HOLD
    assert env.breaker.halted() is not None and not env.breaker.routes_to_batch()
    env.clock.advance(601)
    assert env.breaker.halted() is None  # new work is accepted again; its first send probes
    assert env.breaker.before_send("probe") is Decision.SEND
    assert env.breaker.before_send("other") is Decision.HOLD  # still no failover while probing


def test_breaker_transitions_are_logged(env, caplog):
    with caplog.at_level(logging.INFO):
        env.breaker.on_permission_denied("w", "403")
    [record] = [r for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.alert == "breaker_halted"


# --- usage, spend, budget, routing -------------------------------------------------------------


def test_thresholds_log_a_warning_at_80_and_an_error_at_100_percent_once(env, caplog):
    a = Accounting(store=env.counters, clock=env.clock, limits=DailyLimits(requests=10), cache_seconds=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(12):
            a.add({acct.REQUESTS: 1})
    alerts = [(r.levelno, r.alert) for r in caplog.records if hasattr(r, "alert")]
    assert alerts == [(logging.WARNING, "daily_requests_80"), (logging.ERROR, "daily_requests_100")]


def test_counters_sum_by_quota_id(env):
    env.accounting.add({acct.QUOTA_ERRORS: 1}, quota_id=PER_DAY)
    env.accounting.add({acct.QUOTA_ERRORS: 1}, quota_id=PER_DAY)
    env.accounting.add({acct.QUOTA_ERRORS: 1}, quota_id="weird id/with spaces")
    t = env.accounting.totals(fresh=True)
    assert t[acct.QUOTA_ERRORS] == 3
    assert t[acct.BY_QUOTA_ID] == {PER_DAY: 2, "weird_id_with_spaces": 1}


@pytest.mark.parametrize("kw, lane, reason", [
    ({}, Lane.INTERACTIVE, "under the interactive threshold"),
    ({"quota_exhausted": True}, Lane.BATCH, "circuit breaker open"),
    ({"requests_left": 2}, Lane.BATCH, "only 2 interactive requests left today"),
    ({"budget_left": 0.1}, Lane.BATCH, "batch costs half"),  # 5 x 0.039 > 0.1 >= 5 x 0.0195
])
def test_auto_routing(kw, lane, reason):
    route = choose_lane(5, "auto", threshold=10, batch_available=True, headroom=Headroom(**kw))
    assert route.lane is lane and reason in route.reason


def test_a_job_over_the_budget_is_refused_when_batch_does_not_fit_either():
    with pytest.raises(BudgetExceeded, match=r"\$0.1950 .* \$0.0500"):
        choose_lane(5, "interactive", threshold=10, batch_available=True, headroom=Headroom(budget_left=0.05))
    with pytest.raises(BudgetExceeded):
        choose_lane(5, "auto", threshold=10, batch_available=True, headroom=Headroom(budget_left=0.05))


def test_submit_reserves_the_estimate_and_failures_release_it(env):
    env.accounting = Accounting(store=env.counters, clock=env.clock, cache_seconds=0,
                                limits=DailyLimits(budget_usd=0.2))
    job = env.submit(5)  # 5 x 0.039 = 0.195 fits
    assert job.estimated_cost_usd == pytest.approx(0.195)
    assert env.accounting.budget_left() == pytest.approx(0.005)
    with pytest.raises(BudgetExceeded):
        env.submit(1, lane="interactive")
    from core.errors import ContentRefused
    env.generator.script = [ContentRefused("blocked")]
    env.process(job.job_id, "k0")
    assert env.accounting.budget_left() == pytest.approx(0.044)


# --- the worker with the breaker -------------------------------------------------------------


def test_a_per_day_429_diverts_the_item_and_the_next_ones_without_calling_the_model(env):
    job = env.submit(3)
    env.generator.script = [quota(per_day=True)]
    out = env.process(job.job_id, "k0")
    assert out.ack and "diverted" in out.reason
    out = env.process(job.job_id, "k1")
    assert out.ack and "diverted" in out.reason
    assert len(env.generator.calls) == 1
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.QUEUED and item.lane == "batch" and item.pooled_at is not None
    assert sorted(k for _, k in env.pool.entries) == ["k0", "k1"]
    # New auto jobs go to batch while the breaker is open.
    spec = JobSpec((ItemSpec("a", "p"),))
    route = submitting.plan_route(spec, submitting.RouteDeps(interactive_threshold=10, batch_available=True,
                                                             breaker=env.breaker, accounting=env.accounting))
    assert route.lane is Lane.BATCH and "breaker open" in route.reason


def test_a_duplicate_delivery_of_a_diverted_item_is_acked_and_repairs_its_pool_entry(env):
    job = env.submit(1)
    env.generator.script = [quota(per_day=True)]
    env.process(job.job_id, "k0")
    env.pool.entries.clear()  # as if the worker died between marking the item and the entry
    out = env.process(job.job_id, "k0")
    assert out.ack and out.reason == "in the batch lane"
    assert list(env.pool.entries) == [(job.job_id, "k0")]
    assert len(env.generator.calls) == 1


def test_without_the_batch_lane_a_per_day_429_hands_the_item_back_instead_of_diverting(env):
    env.pool = None  # as wiring builds it with BATCH_LANE_ENABLED=false: nothing would flush a pool
    job = env.submit(1)
    env.generator.script = [quota(per_day=True)]
    out = env.process(job.job_id, "k0")
    assert not out.ack and "interactive lane open" in out.reason
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.QUEUED and item.lane == "interactive" and item.pooled_at is None
    assert (item.attempts, item.quota_retries, item.lease_owner) == (0, 1, None)
    out = env.process(job.job_id, "k0")  # the breaker is open until midnight: no call
    assert not out.ack and len(env.generator.calls) == 1


def test_permission_denied_halts_the_lane_and_hands_items_back_without_an_attempt(env):
    job = env.submit(2)
    env.generator.script = [PermissionDenied("403 PERMISSION_DENIED: billing")]
    out = env.process(job.job_id, "k0")
    assert not out.ack and "halted" in out.reason
    assert env.store.get_item(job.job_id, "k0").attempts == 0
    out = env.process(job.job_id, "k1")  # held without a call
    assert not out.ack and len(env.generator.calls) == 1
    with pytest.raises(LaneUnavailable, match="halted"):
        env.submit(1)
    assert env.pool.entries == {}  # no failover to batch


def test_per_minute_429s_open_the_breaker_after_three(env):
    job = env.submit(1)
    env.generator.script = [quota(), quota(), quota()]
    out = env.process(job.job_id, "k0")
    assert out.ack and "diverted" in out.reason and len(env.generator.calls) == 3
    assert env.accounting.totals(fresh=True)[acct.BY_QUOTA_ID] == {PER_MINUTE: 3}


# --- the pending-batch pool ------------------------------------------------------------------


def divert_all(env, n):
    job = env.submit(n)
    env.breaker.on_quota_failure("w", PER_DAY, per_day=True)
    for i in range(n):
        env.process(job.job_id, f"k{i}")
    return job


def test_the_pool_flushes_by_size_or_age_into_one_intent_per_job(env):
    job = divert_all(env, 3)
    assert env.flush(flush_items=5, max_age=300)["flushed"] == 0
    env.clock.advance(301)
    summary = env.flush(flush_items=5, max_age=300)
    assert summary["flushed"] == 3 and summary["intents"] == 1
    [intent] = env.store.intents_of_job(job.job_id)
    assert sorted(intent.keys) == ["k0", "k1", "k2"] and intent.intent_id.endswith("-a1")
    assert env.pool.entries == {}
    assert all(it.batch_intent == intent.intent_id for it in env.store.get_items(job.job_id, intent.keys))


def test_a_flush_that_died_after_reserving_is_finished_by_the_next_without_a_second_intent(env):
    job = divert_all(env, 2)
    env.store.create_intent = lambda intent: (_ for _ in ()).throw(RuntimeError("crash"))
    with pytest.raises(RuntimeError):
        env.flush(flush_items=1)
    del env.store.create_intent
    divert_more = env.submit(1)  # a newcomer must not join the reserved intent
    env.process(divert_more.job_id, "k0")
    summary = env.flush(flush_items=1)
    assert summary["repaired"] == 2
    [intent] = env.store.intents_of_job(job.job_id)
    assert sorted(intent.keys) == ["k0", "k1"]


def test_pool_entries_of_cancelled_items_are_dropped_after_a_grace(env):
    job = divert_all(env, 1)
    jobs.cancel_job(job.job_id, store=env.store, clock=env.clock)
    assert env.flush(flush_items=1)["dropped"] == 0
    env.clock.advance(61)
    assert env.flush(flush_items=1)["dropped"] == 1 and env.store.intents_of_job(job.job_id) == []


# --- :retry ----------------------------------------------------------------------------------


def test_retry_requeues_dead_lettered_items_in_a_new_round_with_a_new_manifest(env):
    from core.errors import TransientError

    job = env.submit(2)
    env.generator.script = [TransientError("500")] * 3
    for _ in range(3):
        env.process(job.job_id, "k0", max_attempts=3)
    env.process(job.job_id, "k1")
    assert env.store.get_job(job.job_id).status is JobStatus.PARTIALLY_SUCCEEDED
    env.queue.messages.clear()
    body = jobs.retry_job(job.job_id, store=env.store, queue=env.queue, pool=env.pool, clock=env.clock)
    assert body["requeued"] == 1 and body["round"] == 2 and body["status"] == "running"
    assert env.queue.messages == [(job.job_id, "k0")]
    with pytest.raises(Conflict, match="no dead-lettered items"):
        jobs.retry_job(job.job_id, store=env.store, queue=env.queue, pool=env.pool, clock=env.clock)
    env.process(job.job_id, "k0")
    final = env.store.get_job(job.job_id)
    assert final.status is JobStatus.SUCCEEDED and final.manifest_uri.endswith(f"{job.job_id}/manifest-r2.jsonl")


def test_retry_of_an_unknown_or_cancelled_job(env):
    with pytest.raises(jobs.NotFound):
        jobs.retry_job("nope", store=env.store, queue=env.queue, pool=env.pool, clock=env.clock)
    job = env.submit(1)
    jobs.cancel_job(job.job_id, store=env.store, clock=env.clock)
    with pytest.raises(Conflict, match="cancelled"):
        jobs.retry_job(job.job_id, store=env.store, queue=env.queue, pool=env.pool, clock=env.clock)


# --- Idempotency-Key -------------------------------------------------------------------------


def submit_once(env, key="k", body="h1"):
    sub = submitting.Submission(JobSpec((ItemSpec("a", "p"),)), "gemini-2.5-flash-image", key_id=key,
                                body_sha256=body)
    return submitting.submit_once(sub, env.submit_deps())


def test_the_same_idempotency_key_returns_the_same_job(env):
    job, replayed = submit_once(env)
    again, replayed_again = submit_once(env)
    assert (replayed, replayed_again) == (False, True) and again.job_id == job.job_id
    assert len(env.store.jobs) == 1
    with pytest.raises(IdempotencyMismatch):
        submit_once(env, body="h2")


def test_an_abandoned_idempotent_submission_is_finished_under_the_same_job_id(env):
    env.idempotency.begin("k", {"job_id": "abc123", "body_sha256": "h1", "started_at": env.clock.now()})
    with pytest.raises(InProgress):
        submit_once(env)
    env.clock.advance(121)
    job, replayed = submit_once(env)
    assert job.job_id == "abc123" and not replayed


# --- the dead-letter consumer ------------------------------------------------------------------


class DeadLetters:
    def __init__(self, messages):
        self.messages, self.acked = messages, []

    def pull(self, n):
        return self.messages[:n]

    def ack(self, ids):
        self.acked += ids


def decode(data: bytes):
    import json

    body = json.loads(data)
    return body["job_id"], body["item_key"]


def test_dead_letters_end_their_items_with_the_last_error(env):
    import json

    job = env.submit(2)
    env.store.items[job.job_id]["k0"]["error"] = "503 UNAVAILABLE"
    env.store.claim_item(job.job_id, "k1", "live-worker", env.clock.now(), 120)  # still being worked on
    msg = lambda k: json.dumps({"job_id": job.job_id, "item_key": k}).encode()
    source = DeadLetters([("a0", msg("k0"), {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}),
                          ("a1", msg("k1"), {}), ("a2", b"garbage", {})])
    summary = dead_letters.drain_dead_letters(source, settling=dead_letters.DeadLettering(
        store=env.store, clock=env.clock, sink=env.sink, owner="poller"), decode=decode)
    assert summary == {"settled": 1, "unreadable": 1, "deferred": 1}
    assert source.acked == ["a0", "a2"]
    item = env.store.get_item(job.job_id, "k0")
    assert item.state is ItemState.DEAD_LETTERED
    assert item.error == "Pub/Sub gave up on the message after 5 deliveries; last error: 503 UNAVAILABLE"


def test_a_running_job_whose_last_finisher_died_is_finalized_by_the_poller(env):
    job = env.submit(2)
    for key in ("k0", "k1"):  # both items finished, but nobody finalized the job
        env.store.claim_item(job.job_id, key, "w", env.clock.now(), 60)
        env.store.finish_item(job.job_id, key, "w", ended(ItemState.FAILED, env.clock.now()))
    env.store.set_job_running(job.job_id, env.clock.now())
    other = env.submit(1)
    env.store.set_job_running(other.job_id, env.clock.now())  # still has work
    assert redrive.finalize_stalled_jobs(jobs.Finalizing(env.store, env.clock, env.sink)) == [job.job_id]
    assert env.store.get_job(job.job_id).status is JobStatus.FAILED
    assert env.store.get_job(other.job_id).status is JobStatus.RUNNING


def test_retried_batch_items_are_flushed_at_the_next_tick(env):
    job = divert_all(env, 2)
    env.flush(flush_items=1)
    [intent] = env.store.intents_of_job(job.job_id)
    for key in intent.keys:  # the batch gave up on them
        env.store.items[job.job_id][key].update(state="dead_lettered")
    published = len(env.queue.messages)
    body = jobs.retry_job(job.job_id, store=env.store, queue=env.queue, pool=env.pool, clock=env.clock)
    assert body["requeued_batch"] == 2 and len(env.queue.messages) == published  # batch items: no messages
    summary = env.flush(flush_items=100, max_age=300)  # neither big nor old: urgent
    assert summary["flushed"] == 2 and len(env.store.intents_of_job(job.job_id)) == 2


def test_a_long_halt_hands_the_message_back_at_once_a_short_one_is_waited_out(env):
    job = env.submit(2)
    env.breaker.on_permission_denied("w", "403")  # halted for 600 s, longer than the 30 s wait
    started = env.clock.now()
    out = env.process(job.job_id, "k0")
    assert not out.ack and env.clock.now() == started  # no sleeping through a long halt
    env.clock.advance(590)  # 10 s left: within this delivery's wait
    out = env.process(job.job_id, "k1")
    assert out.ack and out.state == "succeeded" and env.breaker.view().state is BreakerState.CLOSED


def test_a_failing_counter_store_never_fails_the_work(env):
    def broken(*args, **kwargs):
        raise RuntimeError("firestore is down")

    env.counters.add = broken
    job = env.submit(1)
    assert env.process(job.job_id, "k0").state == "succeeded"
