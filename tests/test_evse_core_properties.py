"""Random event sequences against the EVSE core: the safety and bookkeeping rules always hold."""

from __future__ import annotations

from typing import Any

from evse_harness import SOCKET_WITH_LOCK, Harness
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chargepoint.iec61851 import current_for_duty_cycle
from modules.evse_manager.availability import SOURCES
from modules.evse_manager.model import BOARD_ERRORS, CP_STATES, STOP_REASONS

TOKENS = st.sampled_from(["CARD-A", "CARD-B", "REMOTE"])
RESERVATIONS = st.none() | st.integers(min_value=1, max_value=3)


class EvseMachine(RuleBasedStateMachine):
    """Every input the core has, in any order; the invariants are checked after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.stored: set[str] = set()
        self.restored: str | None = None
        self.seen = 0
        self.open_transactions: set[str] = set()
        self.finished_transactions: set[str] = set()
        self.open_sessions: set[str] = set()
        self.finished_sessions: set[str] = set()

    @initialize(mode=st.sampled_from(["resume", "power_loss"]), restore=st.booleans(),
                ventilation=st.booleans(), lock=st.booleans(), auto_store=st.booleans())
    def start(self, mode: str, restore: bool, ventilation: bool, lock: bool, auto_store: bool) -> None:
        self.h = Harness(auto_store=auto_store, session_resume=mode, plugin_timeout_s=20, meter_persist_interval_s=5,
                         energy_fallback_current_A=10)
        self.h.feed("capabilities", {**SOCKET_WITH_LOCK, "has_lock": lock, "supports_ventilation": ventilation})
        if restore:
            previous = Harness()
            previous.charging(meter_Wh=50.0)
            record = previous.core.checkpoint(previous.now)[0].record  # type: ignore[union-attr]
            assert record is not None
            self.restored = record["session_id"]
            self.open_transactions.add(record["session_id"])
            self.open_sessions.add(record["session_id"])
            self.h.feed("restore", record)

    # -- inputs ----------------------------------------------------------------------------
    @rule(cp=st.sampled_from(CP_STATES))
    def cp_state(self, cp: str) -> None:
        self.h.feed("cp_state", cp)

    @rule(token=TOKENS)
    def plug_in_swipe_and_charge(self, token: str) -> None:
        """The usual flow as one step, so that random runs reach charging often."""
        self.h.feed("lock_state", "locked")
        self.h.feed("cp_state", "B")
        self.h.cmd("authorize", token, "rfid", None, self.h.core.reservation_id)
        self.h.feed("cp_state", "C")

    @rule(back=st.integers(min_value=0, max_value=2), removal=st.booleans())
    def session_file_written(self, back: int, removal: bool) -> None:
        """The shell confirms a write: usually the latest, sometimes an older one or a removal."""
        written = self.h.persisted_session_ids()
        session_id = None if removal or not written else written[max(0, len(written) - 1 - back)]
        if session_id is not None:
            self.stored.add(session_id)
        self.h.store(session_id)

    @rule()
    def faults_clear(self) -> None:
        for kind in BOARD_ERRORS:
            self.h.feed("board_error", kind, False, "")

    @rule(closed=st.booleans())
    def relay_feedback(self, closed: bool) -> None:
        self.h.feed("relay_feedback", closed)

    @rule(state=st.sampled_from(["unlocked", "locked", "unknown"]))
    def lock_state(self, state: str) -> None:
        self.h.feed("lock_state", state)

    @rule(ampacity=st.sampled_from([None, 13, 20, 32, 63, 70]))
    def pp_ampacity(self, ampacity: int | None) -> None:
        self.h.feed("pp_ampacity", ampacity)

    @rule(kind=st.sampled_from(sorted(BOARD_ERRORS)), active=st.booleans())
    def board_error(self, kind: str, active: bool) -> None:
        self.h.feed("board_error", kind, active, "injected")

    @rule(active=st.booleans())
    def meter_error(self, active: bool) -> None:
        self.h.feed("fault", "powermeter_failure", "powermeter:stale_data", active, "stale")

    @rule(step=st.floats(min_value=0, max_value=500))
    def meter(self, step: float) -> None:
        energy = (self.h.core.meter.energy_Wh or 0.0) + step
        self.h.feed("meter_reading", energy, step)

    @rule(seconds=st.sampled_from([0.5, 3, 11, 30]))
    def time_passes(self, seconds: float) -> None:
        self.h.advance(seconds)

    @rule(token=TOKENS, reservation=RESERVATIONS)
    def authorize(self, token: str, reservation: int | None) -> None:
        self.h.cmd("authorize", token, "rfid", None, reservation)

    @rule()
    def withdraw(self) -> None:
        self.h.cmd("withdraw_authorization")

    @rule(enable=st.booleans(), source=st.sampled_from(SOURCES), priority=st.sampled_from([0, 100, 5000]))
    def availability(self, enable: bool, source: str, priority: int) -> None:
        self.h.cmd("enable" if enable else "disable", source, priority)

    @rule(source=st.sampled_from(SOURCES))
    def clear_availability(self, source: str) -> None:
        self.h.cmd("clear_availability", source)

    @rule(pause=st.booleans())
    def pause_or_resume(self, pause: bool) -> None:
        self.h.cmd("pause" if pause else "resume")

    @rule(reason=st.sampled_from(STOP_REASONS))
    def stop(self, reason: str) -> None:
        self.h.cmd("stop_transaction", reason, None)

    @rule()
    def force_unlock(self) -> None:
        self.h.cmd("force_unlock")

    @rule(current=st.floats(min_value=0, max_value=100), phases=st.none() | st.integers(1, 3),
          valid_for=st.none() | st.sampled_from([1.0, 10.0]))
    def set_max_current(self, current: float, phases: int | None, valid_for: float | None) -> None:
        offered = self.h.cmd("set_max_current", current, phases, valid_for)
        assert offered <= current

    @rule(reservation=st.integers(min_value=1, max_value=3), cancel=st.booleans())
    def reservation(self, reservation: int, cancel: bool) -> None:
        self.h.cmd("cancel_reservation" if cancel else "reserve", reservation)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def relay_closed_only_when_safe(self) -> None:
        core = self.h.core
        if not self.h.relay_closed:
            return
        cp = core.board.cp_state
        assert core.transaction is not None and core.authorization is not None
        assert core.session is not None and core.session.session_id in self.h.persisted_session_ids()
        assert self.h.auto_store or core.session.session_id in self.stored or self.restored == core.session.session_id
        assert core.enabled and not core._blocking_errors() and not core.paused_by_evse
        assert cp == "C" or (cp == "D" and core.board.supports_ventilation)
        assert core.limits.max_current_A >= core.min_current_A
        assert not core.board.needs_lock or core.board.lock_state != "unlocked"
        assert self.h.pwm_duty is not None

    @invariant()
    def pwm_never_offers_more_than_any_limit(self) -> None:
        core = self.h.core
        duty = self.h.pwm_duty
        if duty is None:
            return
        assert core.transaction is not None and core.board.plugged
        signalled = current_for_duty_cycle(duty)
        limits: list[float] = [core.config.max_current_A]
        limits += [value for value in (core.board.max_current_A, core.board.pp_ampacity_A) if value is not None]
        if core.energy_limit is not None:
            limits.append(core.energy_limit.current_A)
        assert all(signalled <= limit + 0.01 for limit in limits), (signalled, limits)
        assert signalled >= core.min_current_A
        assert core.offered_current_A <= min(limits)

    @invariant()
    def sessions_and_transactions_add_up(self) -> None:
        events = self.h.events()
        for event in events[self.seen:]:
            self._check(event)
        self.seen = len(events)
        assert len(self.open_transactions) <= 1
        transaction = self.h.core.transaction
        session = self.h.core.session
        if self.h.core.pending_restore is not None:  # waiting for the first CP state after the restart
            return
        assert (transaction is not None) == bool(self.open_transactions)
        if transaction is not None:
            assert session is not None and self.open_transactions == {session.session_id}

    def _check(self, event: dict[str, Any]) -> None:
        kind, session_id = event["type"], event["session_id"]
        if kind == "transaction_started":
            assert session_id not in self.finished_transactions and not self.open_transactions
            self.open_transactions.add(session_id)
        elif kind == "session_resumed":
            assert self.open_transactions == {session_id}, "only the persisted transaction resumes"
        elif kind == "transaction_finished":
            assert session_id in self.open_transactions, "finished without a start, or twice"
            self.open_transactions.remove(session_id)
            self.finished_transactions.add(session_id)
        elif kind == "session_started":
            assert session_id not in self.finished_sessions and session_id not in self.open_sessions
            self.open_sessions.add(session_id)
        elif kind == "session_finished":
            assert session_id in self.open_sessions and session_id not in self.open_transactions
            self.open_sessions.remove(session_id)
            self.finished_sessions.add(session_id)

    def teardown(self) -> None:
        """Unplugging ends whatever still runs: every started transaction finishes exactly once."""
        self.h.feed("cp_state", "A")
        self.h.advance(30)
        self.sessions_and_transactions_add_up()
        assert not self.open_transactions and not self.open_sessions
        assert not self.h.relay_closed and self.h.pwm_duty is None


EvseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestEvseMachine = EvseMachine.TestCase
