"""The facts derived from the EVSE state, and *settling*.

After every input the core settles: it finishes a transaction a fault forbids, applies scheduled
availability, starts a transaction an authorized plug-in allows, then commands relay, lock and
PWM to what is safe now (relay opened first, then PWM off, lock or unlock, PWM on, relay closed
last), and publishes what changed.
"""

from __future__ import annotations

from datetime import datetime

from chargepoint.timestamps import to_rfc3339

from .actions import (
    Action,
    ClearError,
    Lock,
    Publish,
    PwmOff,
    RaiseError,
    RequestEnergy,
    SetPwm,
    SetRelay,
    Unlock,
)
from .limits import Limits, combine, offered_by, pwm_for
from .sessions import session_view
from .state import EvseState


class EvseEngine(EvseState):
    # -- derived facts ---------------------------------------------------------------------
    @property
    def limits(self) -> Limits:
        fallback = self.config.energy_fallback_current_A if self.fallback_active else None
        energy = self.energy_limit
        return combine(
            config_max_A=self.config.max_current_A, config_phases=self.config.phases,
            board_max_A=self.board.max_current_A, board_phases=self.board.max_phases,
            cable_A=self.board.pp_ampacity_A,
            energy_A=energy.current_A if energy is not None else fallback,
            energy_source="energy" if energy is not None else "fallback",
            energy_phases=energy.phases if energy is not None else None,
        )

    @property
    def min_current_A(self) -> float:
        return max(self.config.min_current_A, self.board.min_current_A)

    @property
    def offered_current_A(self) -> float:
        return offered_by(self.pwm_duty, self.limits.max_current_A)

    def _pwm_wanted(self, limits: Limits) -> float | None:
        if (self.transaction is None or not self.board.plugged or not self.enabled or self.paused_by_evse
                or self._blocking_errors()):
            return None
        return pwm_for(limits.max_current_A, self.min_current_A)

    def _relay_wanted(self, duty: float | None) -> bool:
        cp = self.board.cp_state
        ev_requests = cp == "C" or (cp == "D" and self.board.supports_ventilation)
        locked = not self.board.needs_lock or self.board.lock_state != "unlocked"
        stored = self.transaction is not None and self.transaction.stored
        return duty is not None and ev_requests and locked and stored

    @property
    def charger_state(self) -> str:
        if self._blocking_errors():
            return "faulted"
        transaction = self.transaction
        if transaction is not None:
            if self.relay_commanded:
                return "charging"
            if self.paused_by_evse or self.limits.max_current_A < self.min_current_A:
                return "suspended_evse"
            if self.board.cp_state in ("C", "D"):  # the EV asks, the connector lock is not confirmed yet
                return "suspended_evse" if transaction.has_charged else "preparing"
            return "suspended_ev" if transaction.has_charged else "preparing"
        if not self.enabled:
            return "unavailable"
        session = self.session
        if session is not None and session.plugged_in:
            return "finishing" if session.finished_transaction is not None else "waiting_for_authorization"
        if self.authorization is not None:
            return "preparing"
        if self.reservation_id is not None:
            return "reserved"
        return "idle"

    # -- settling --------------------------------------------------------------------------
    def _settle(self, now: datetime) -> list[Action]:
        self._derive_cp_faults()
        if self.transaction is not None and self._blocking_errors():
            details = "; ".join(self._fault_messages())
            self._finish_transaction("EmergencyStop", now, details=details)
        self._apply_availability(now)
        self._maybe_start_transaction(now)
        self._command_outputs()
        self._publish_errors()
        self._track_charging(now)
        self._publish_vars(now)
        self._publish_energy_request()
        return self._take_actions()

    def _derive_cp_faults(self) -> None:
        cp = self.board.cp_state
        self._set_fault("ev_communication_error", "cp", cp in ("E", "F"), f"control pilot in state {cp}")
        needs_ventilation = cp == "D" and not self.board.supports_ventilation
        self._set_fault("ventilation_required", "cp", needs_ventilation,
                        "EV requests ventilation (CP state D) and this station has none")

    def _fault_messages(self) -> list[str]:
        return [message for kind in self._blocking_errors() for message in self.faults[kind].values()]

    def _apply_availability(self, now: datetime) -> None:
        decided, _ = self.availability.decision()
        if decided == self.enabled or (not decided and self.transaction is not None):
            return
        self.enabled = decided
        session = self.session
        self._emit("enabled" if decided else "disabled", now, session_id=session.session_id if session else None)
        if not decided and self.authorization is not None and self.transaction is None:
            self._drop_authorization("authorization_withdrawn", now)

    def _request_availability(self, source: str, enable: bool, priority: int,
                              now: datetime) -> tuple[str, list[Action]]:
        self.availability.set(source, enable, priority)
        decided, decider = self.availability.decision()
        if decider != source:
            status = "Rejected"
        elif not decided and self.transaction is not None:
            status = "Scheduled"
        else:
            status = "Accepted"
        return status, self._settle(now)

    def _command_outputs(self) -> None:
        limits = self.limits
        duty = self._pwm_wanted(limits)
        relay = self._relay_wanted(duty)
        phases = limits.phases if relay else 0
        if self.relay_commanded is not False and not relay:
            self._out.append(SetRelay(False, 0))
            self.relay_commanded, self.relay_phases = False, 0
        if duty is None and (not self._pwm_known or self.pwm_duty is not None):
            self._out.append(PwmOff())  # X1 right after the relay opens: the unlock may take long
            self.pwm_duty, self._pwm_known = None, True
        if self.board.needs_lock:
            lock = self.transaction is not None
            if self.lock_commanded is not lock:
                self._out.append(Lock() if lock else Unlock())
                self.lock_commanded = lock
        if duty is not None and duty != self.pwm_duty:
            self._out.append(SetPwm(duty))
            self.pwm_duty, self._pwm_known = duty, True
        if relay and (not self.relay_commanded or phases != self.relay_phases):
            self._out.append(SetRelay(True, phases))
            self.relay_commanded, self.relay_phases = True, phases

    def _publish_errors(self) -> None:
        active = set(self.active_errors())
        for kind in sorted(active - self._errors_published):
            self._out.append(RaiseError(kind, "; ".join(self.faults[kind].values())))
        for kind in sorted(self._errors_published - active):
            self._out.append(ClearError(kind))
        self._errors_published = active

    def _track_charging(self, now: datetime) -> None:
        """charging_started / charging_paused / charging_resumed from charger state changes in a transaction."""
        transaction = self.transaction
        if transaction is None:
            self._tx_state = None
            return
        state, before = self.charger_state, self._tx_state
        self._tx_state = state
        if state == before:
            return
        if state == "charging":
            self._emit("charging_resumed" if transaction.has_charged else "charging_started", now)
            transaction.has_charged = True
        elif before == "charging" and state in ("suspended_ev", "suspended_evse"):
            self._emit("charging_paused", now, paused_by="ev" if state == "suspended_ev" else "evse")

    def _publish_vars(self, now: datetime) -> None:
        limits = self.limits
        _, source = self.availability.decision()
        session = self.session
        views = {
            "state": {
                "evse_id": self.config.evse_id, "connector_id": self.config.connector_id,
                "charger_state": self.charger_state, "cp_state": self.board.cp_state or "A",
                "plugged": self.board.plugged, "enabled": self.enabled, "availability_source": source,
                "authorized": self.authorization is not None, "relay_closed": self.board.relay_closed,
                "session_id": session.session_id if session else None,
                "transaction_active": self.transaction is not None, "reservation_id": self.reservation_id,
                "active_errors": self.active_errors(),
            },
            "limits": {
                "evse_id": self.config.evse_id, "max_current_A": limits.max_current_A,
                "offered_current_A": self.offered_current_A, "phases": limits.phases,
                "max_power_W": round(limits.max_current_A * limits.phases * self.config.nominal_voltage_V, 1),
                "limited_by": limits.limited_by,
            },
            "session": (session_view(self.config, session, self.meter, active=True) if session is not None
                        else self._last_session),
        }
        for var, value in views.items():
            if self._published.get(var) != value:
                self._published[var] = value
                self._out.append(Publish(var, {**value, "timestamp": to_rfc3339(now)}))

    def _publish_energy_request(self) -> None:
        board = self.board
        cable = board.pp_ampacity_A if board.pp_ampacity_A is not None else self.config.max_current_A
        board_max = board.max_current_A if board.max_current_A is not None else self.config.max_current_A
        request = RequestEnergy(
            wants_energy=self.transaction is not None and not self.paused_by_evse,
            min_current_A=self.min_current_A,
            max_current_A=min(self.config.max_current_A, board_max, cable),
            max_phases=min(self.config.phases, board.max_phases),
        )
        if request != self._energy_request:
            self._energy_request = request
            self._out.append(request)

