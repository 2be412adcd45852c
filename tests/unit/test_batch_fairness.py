"""However many batches are active, every one gets its turn: a poller tick takes the intents
longest due first, page after page, until its time budget is spent."""
from collections import Counter

from core.models import IntentState
from tests.unit.test_batches import Env


class CostlyChecks:
    """Each batches.get costs a second of the fake clock, and is counted per batch."""

    def __init__(self, env: Env) -> None:
        self.seen: Counter[str] = Counter()
        get = env.api.get_batch

        def counted(name):
            self.seen[name] += 1
            env.clock.advance(1.0)
            return get(name)

        env.api.get_batch = counted


def running(env: Env, n: int) -> list[str]:
    env.submit(n, per_batch=1)
    names = list(env.api.batches)
    assert len(names) == n
    for name in names:
        env.api.set_state(name, "JOB_STATE_RUNNING")
    return names


def test_three_hundred_running_batches_are_each_checked_once_before_any_twice():
    env = Env()
    names = running(env, 300)
    checks = CostlyChecks(env)
    for tick in range(1, 7):  # 50 s of budget a tick: 50 checks
        env.clock.advance(10.0)
        summary = env.lane.reconcile("poller", deadline=env.clock.now() + 50.0, page=40)
        assert summary["running"] == 50
        assert len(checks.seen) == 50 * tick and set(checks.seen.values()) == {1}
    env.clock.advance(10.0)
    env.lane.reconcile("poller", deadline=env.clock.now() + 50.0, page=40)
    assert max(checks.seen.values()) == 2 and set(checks.seen) == set(names)


def test_a_tick_without_a_budget_limit_reaches_every_page():
    env = Env()
    running(env, 250)
    checks = CostlyChecks(env)
    assert env.lane.reconcile("poller", deadline=env.clock.now() + 1e9, page=100)["running"] == 250
    assert len(checks.seen) == 250 and set(checks.seen.values()) == {1}


def test_a_batch_whose_check_fails_holds_up_no_other():
    env = Env()
    names = running(env, 5)
    get = env.api.get_batch

    def broken_first(name):
        if name == names[0]:
            raise RuntimeError("batches.get failed")
        return get(name)

    env.api.get_batch = broken_first
    for _ in range(2):
        env.clock.advance(1.0)
        summary = env.lane.reconcile("poller", deadline=env.clock.now() + 1e9)
        assert (summary["errors"], summary["running"]) == (1, 4)
    (broken,) = [i for i in env.store.due_intents(env.clock.now(), 10) if i.gemini_batch == names[0]]
    assert broken.state is IntentState.SUBMITTED and broken.lease_owner is None
