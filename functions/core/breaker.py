"""The circuit breaker between the interactive lane and Gemini, shared by every instance.

    closed     interactive work flows.
    open       quota is exhausted: `auto` jobs go to batch, and workers divert queued interactive
               items into the pending-batch pool. After N consecutive quota failures it opens
               for a cooldown; a per-day quota opens it until the quota day resets (midnight
               Pacific).
    half_open  the cooldown is over: exactly one worker (the probe, holding a lease) sends; its
               success closes the breaker, a quota failure opens it again.
    halted     403 PERMISSION_DENIED, billing or spend cap: the interactive lane stops and an
               ERROR is logged for the alert. No failover: batch shares the project and billing.
               After a long cooldown one probe is allowed, as for open.

The state is one small document changed by compare-and-set. It is written on transitions and
on quota failures only (never on a success while closed), and read through a short per-
instance cache, so it is not a hot document.
"""
from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from core.ports import BreakerStore
from core.quota_day import next_reset

log = logging.getLogger(__name__)

_HISTORY = 20  # transitions kept on the document, newest last


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    HALTED = "halted"


class Decision(str, enum.Enum):
    SEND = "send"  # go ahead
    DIVERT = "divert"  # quota is exhausted: move the item to the batch lane
    HOLD = "hold"  # the lane is halted: hand the message back, do not fail over


@dataclass(frozen=True)
class BreakerView:
    state: BreakerState
    consecutive_failures: int = 0
    reason: str | None = None
    opened_at: float | None = None
    retry_at: float | None = None  # when a probe may be sent
    probe_owner: str | None = None
    probe_expires_at: float | None = None
    updated_at: float = 0.0
    transitions: tuple = ()
    halted_before: bool = False  # a half-open probe after a halt: the others hold, not divert

    @classmethod
    def from_dict(cls, d: dict | None) -> BreakerView:
        if not d:
            return cls(BreakerState.CLOSED)
        return cls(
            state=BreakerState(d.get("state", "closed")),
            consecutive_failures=int(d.get("consecutive_failures", 0)),
            reason=d.get("reason"),
            opened_at=d.get("opened_at"),
            retry_at=d.get("retry_at"),
            probe_owner=d.get("probe_owner"),
            probe_expires_at=d.get("probe_expires_at"),
            updated_at=d.get("updated_at", 0.0),
            transitions=tuple(d.get("transitions") or ()),
            halted_before=bool(d.get("halted_before")),
        )

    def public(self) -> dict:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "retry_at": self.retry_at,
            "transitions": list(self.transitions),
        }


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens (threshold quota failures), how long it stays open or halted
    before a probe, how long a probe holds, and how long a read is cached."""
    threshold: int = 3
    cooldown_seconds: float = 60.0
    halt_seconds: float = 900.0
    probe_seconds: float = 120.0
    cache_seconds: float = 1.0


class CircuitBreaker:
    def __init__(self, store: BreakerStore, clock, policy: BreakerPolicy = BreakerPolicy()) -> None:
        self.store, self.clock = store, clock
        self.threshold = policy.threshold
        self.cooldown_seconds = policy.cooldown_seconds
        self.halt_seconds = policy.halt_seconds
        self.probe_seconds = policy.probe_seconds
        self.cache_seconds = policy.cache_seconds
        self._cached: tuple[float, BreakerView] | None = None
        self._lock = threading.Lock()

    # --- reading -------------------------------------------------------------------------

    def view(self, fresh: bool = False) -> BreakerView:
        now = self.clock.now()
        with self._lock:
            cached = self._cached
        if not fresh and cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        view = BreakerView.from_dict(self.store.read())
        with self._lock:
            self._cached = (now, view)
        return view

    def routes_to_batch(self) -> bool:
        """Should an `auto` job go to batch? Yes while quota is known to be exhausted."""
        v = self.view()
        return v.state is BreakerState.OPEN or (v.state is BreakerState.HALF_OPEN and not v.halted_before)

    def halted(self) -> BreakerView | None:
        """The view while the lane is halted (403): no new work is accepted for either lane."""
        v, now = self.view(), self.clock.now()
        if v.state is BreakerState.HALTED and (v.retry_at or 0) > now:
            return v
        if v.state is BreakerState.HALF_OPEN and v.halted_before and (v.probe_expires_at or 0) > now:
            return v
        return None  # after the halt's cooldown, new work is accepted and its first send probes

    def hold_ends_by(self, when: float) -> bool:
        """Will a HOLD (halted, or a probe after a halt) be decided before `when`?"""
        v = self.view()
        if v.state is BreakerState.HALTED:
            return (v.retry_at or 0) <= when
        return True  # half-open: the probe's answer comes within one model call

    # --- the worker's side ---------------------------------------------------------------

    def before_send(self, owner: str) -> Decision:
        v = self.view()
        if v.state is BreakerState.CLOSED:
            return Decision.SEND
        now = self.clock.now()
        halted = v.state is BreakerState.HALTED or (v.state is BreakerState.HALF_OPEN and v.halted_before)
        blocked = Decision.HOLD if halted else Decision.DIVERT
        probing = v.state is BreakerState.HALF_OPEN and (v.probe_expires_at or 0) > now
        if v.probe_owner == owner and probing:
            return Decision.SEND
        if probing or (v.retry_at or 0) > now:
            return blocked
        # The cooldown is over (or a probe died): try to become the one probe.
        if self._try_probe(owner):
            return Decision.SEND
        return blocked

    def _try_probe(self, owner: str) -> bool:
        now = self.clock.now()

        def decide(d):
            v = BreakerView.from_dict(d)
            if v.state is BreakerState.CLOSED:
                return None
            if v.state is BreakerState.HALF_OPEN and (v.probe_expires_at or 0) > now:
                return None
            if v.state in (BreakerState.OPEN, BreakerState.HALTED) and (v.retry_at or 0) > now:
                return None
            return self._transition(v, BreakerState.HALF_OPEN, now, f"probe after {v.state.value}",
                                    probe_owner=owner, probe_expires_at=now + self.probe_seconds,
                                    halted_before=v.state is BreakerState.HALTED)

        return self._write(decide)

    def on_success(self, owner: str) -> None:
        v = self.view()
        if v.state is BreakerState.CLOSED and v.consecutive_failures == 0:
            return  # the common case costs no write
        now = self.clock.now()

        def decide(d):
            cur = BreakerView.from_dict(d)
            if cur.state is BreakerState.CLOSED:
                return _Change({"consecutive_failures": 0, "updated_at": now}) if cur.consecutive_failures else None
            if cur.state is BreakerState.HALF_OPEN and cur.probe_owner == owner:
                return self._transition(cur, BreakerState.CLOSED, now, "probe succeeded", consecutive_failures=0)
            return None  # a request sent before the breaker opened does not close it

        self._write(decide)

    def on_quota_failure(self, owner: str, quota_id: str | None, per_day: bool) -> None:
        now = self.clock.now()

        def decide(d):
            cur = BreakerView.from_dict(d)
            failures = cur.consecutive_failures + 1
            what = f"429 {quota_id or 'RESOURCE_EXHAUSTED'}"
            if per_day:
                until = next_reset(now)
                if cur.state is BreakerState.OPEN and (cur.retry_at or 0) >= until:
                    return _Change({"consecutive_failures": failures, "updated_at": now})
                return self._transition(cur, BreakerState.OPEN, now, f"{what}: daily quota exhausted",
                                        consecutive_failures=failures, retry_at=until)
            if cur.state is BreakerState.HALF_OPEN and cur.probe_owner == owner:
                return self._transition(cur, BreakerState.OPEN, now, f"probe failed: {what}",
                                        consecutive_failures=failures, retry_at=now + self.cooldown_seconds)
            if cur.state is BreakerState.CLOSED and failures >= self.threshold:
                return self._transition(cur, BreakerState.OPEN, now,
                                        f"{failures} consecutive quota failures: {what}",
                                        consecutive_failures=failures, retry_at=now + self.cooldown_seconds)
            return _Change({"consecutive_failures": failures, "updated_at": now})

        self._write(decide)

    def on_permission_denied(self, owner: str, reason: str) -> bool:
        """Halt the lane (or keep it halted). True: the 403 is the lane's, not the item's."""
        now = self.clock.now()

        def decide(d):
            cur = BreakerView.from_dict(d)
            if cur.state is BreakerState.HALTED and (cur.retry_at or 0) > now:
                return None
            return self._transition(cur, BreakerState.HALTED, now, f"permission denied: {reason}"[:500],
                                    retry_at=now + self.halt_seconds)

        self._write(decide)
        return True

    # --- plumbing ------------------------------------------------------------------------

    def _transition(self, cur: BreakerView, to: BreakerState, now: float, reason: str, **fields) -> _Change:
        history = list(cur.transitions)[-(_HISTORY - 1):]
        history.append({"at": now, "from": cur.state.value, "to": to.value, "reason": reason})
        update: dict[str, Any] = {
            "state": to.value, "reason": reason, "updated_at": now, "transitions": history,
            "probe_owner": None, "probe_expires_at": None, "halted_before": False,
            "consecutive_failures": cur.consecutive_failures,
            "opened_at": now if to in (BreakerState.OPEN, BreakerState.HALTED) else cur.opened_at,
            "retry_at": None,
        }
        update.update(fields)
        if to is BreakerState.CLOSED:
            update["opened_at"] = None
        # Every transition is logged; halting is an ERROR (the alert), opening a WARNING.
        severity = logging.ERROR if to is BreakerState.HALTED else (
            logging.WARNING if to is BreakerState.OPEN else logging.INFO)
        return _Change(update, _Logged(severity, cur.state.value, to.value, reason))

    def _write(self, decide: Callable[[dict | None], _Change | None]) -> bool:
        # The store may call decide again after losing a race: what is logged is the change
        # of its last call, the one written.
        last: list[_Change] = []

        def fields(d: dict | None) -> dict | None:
            change = decide(d)
            last[:] = [change] if change is not None else []
            return change.fields if change is not None else None

        written = self.store.compare_and_set(fields)
        with self._lock:
            self._cached = None  # our next read sees what we (or the winner) wrote
        if written and last and (note := last[0].logged) is not None:
            log.log(note.severity, "circuit breaker %s -> %s: %s", note.frm, note.to, note.reason,
                    extra={"breaker_from": note.frm, "breaker_to": note.to, "alert": f"breaker_{note.to}"})
        return written


@dataclass(frozen=True)
class _Logged:
    """A transition's log line: halting is an ERROR (the alert), opening a WARNING."""
    severity: int
    frm: str
    to: str
    reason: str


@dataclass(frozen=True)
class _Change:
    """What one decide() writes to the breaker document, and the line to log once it is written."""
    fields: dict[str, Any]
    logged: _Logged | None = None
