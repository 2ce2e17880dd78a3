"""Drives the EVSE core directly with a fake clock and records what it asks for (shared by core tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from chargepoint.interfaces import load_interface
from modules.evse_manager.actions import Action, PersistSession, Publish, PwmOff, SetPwm, SetRelay
from modules.evse_manager.core import EvseCore
from modules.evse_manager.model import EvseConfig

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
EVSE = load_interface("evse")
SESSION_NUMBERS = count(1)  # shared, so that ids stay unique across harnesses as uuids would
SOCKET_WITH_LOCK = {"min_current_A": 6, "max_current_A": 32, "max_phases": 3, "supports_phase_switching": False,
                    "has_lock": True, "tethered_cable": False, "has_rcd": True, "supports_ventilation": False}


class Harness:
    """One core, a clock, and every action it returned (each published var checked against the interface).

    With ``auto_store`` (the default) every session file write is confirmed at once, as a shell
    whose disk is instantaneous would; without it the test confirms them with :meth:`store`.
    """

    def __init__(self, auto_store: bool = True, **config: Any) -> None:
        self.core = EvseCore(EvseConfig(**config), new_session_id=lambda: f"session-{next(SESSION_NUMBERS)}")
        self.now = T0
        self.auto_store = auto_store
        self.actions: list[Action] = []
        self.record(self.core.start(self.now))

    def record(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Publish):
                EVSE.vars[action.var].validate(action.value)
        self.actions.extend(actions)
        if self.auto_store:
            for write in [a for a in actions if isinstance(a, PersistSession)]:
                actions = actions + self.store(write.record["session_id"] if write.record else None)
        return actions

    def store(self, session_id: str | None) -> list[Action]:
        """The shell reports a session file write of ``session_id`` done."""
        return self.record(self.core.session_stored(session_id, self.now))

    def persisted_session_ids(self) -> list[str]:
        return [a.record["session_id"] for a in self.actions if isinstance(a, PersistSession) and a.record]

    def feed(self, name: str, *args: Any) -> list[Action]:
        """An input without a result (cp_state, board_error, tick, ...)."""
        return self.record(getattr(self.core, name)(*args, self.now))

    def cmd(self, name: str, *args: Any) -> Any:
        result, actions = getattr(self.core, name)(*args, self.now)
        self.record(actions)
        return result

    def advance(self, seconds: float) -> list[Action]:
        self.now += timedelta(seconds=seconds)
        return self.feed("tick")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [a.value for a in self.actions if isinstance(a, Publish) and a.var == "session_event"
                and (kind is None or a.value["type"] == kind)]

    def event_types(self) -> list[str]:
        return [event["type"] for event in self.events()]

    def last(self, var: str) -> dict[str, Any]:
        return [a.value for a in self.actions if isinstance(a, Publish) and a.var == var][-1]

    @property
    def relay_closed(self) -> bool:
        relays = [a for a in self.actions if isinstance(a, SetRelay)]
        return bool(relays) and relays[-1].closed

    @property
    def pwm_duty(self) -> float | None:
        pwm = [a for a in self.actions if isinstance(a, SetPwm | PwmOff)]
        last = pwm[-1] if pwm else None
        return last.duty_cycle_percent if isinstance(last, SetPwm) else None

    def clear(self) -> None:
        self.actions.clear()

    def charging(self, token: str = "04A2B3C4", meter_Wh: float = 1000.0) -> None:
        """Plug in, authorize, EV requests power: a charging transaction."""
        self.feed("meter_reading", meter_Wh, 0.0)
        self.feed("cp_state", "B")
        assert self.cmd("authorize", token, "rfid", None, None) is True
        self.feed("cp_state", "C")
        assert self.core.charger_state == "charging"
