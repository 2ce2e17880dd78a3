"""The EVSE session state machine, free of I/O: events and time in, actions out.

Every input method takes ``now`` (an aware UTC datetime) and returns the actions to carry out, in
order; cmds return ``(result, actions)``. Bad input raises ``ValueError`` and changes nothing.
The rules that keep the relay safe live in ``engine.py`` and run after every input, so no order
of inputs can leave the relay closed without an authorized transaction that is stored on disk,
an enabled EVSE, no fault and the EV asking for power.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .actions import Action, Unlock
from .engine import EvseEngine
from .limits import EnergyLimit
from .model import BOARD_ERRORS, CP_STATES, EVSE_ERRORS, STOP_REASONS, TOKEN_TYPES, Authorization, EvseConfig
from .sessions import token_fields


class EvseCore(EvseEngine):
    def __init__(self, config: EvseConfig, new_session_id: Callable[[], str] | None = None) -> None:
        super().__init__(config, new_session_id or (lambda: str(uuid.uuid4())))

    def restore(self, record: dict[str, Any], now: datetime) -> list[Action]:
        """A transaction persisted before a restart: resumed or closed once the CP state is known."""
        self.pending_restore = record
        self.restore_deadline = now + timedelta(seconds=self.config.restore_wait_s)
        if self.board.cp_state is not None or self.config.session_resume == "power_loss":
            self._finish_restore(now)
        return self._settle(now)

    # -- board, meter and time -------------------------------------------------------------
    def start(self, now: datetime) -> list[Action]:
        """First call: bring the outputs to a known safe state and publish the initial vars."""
        return self._settle(now)

    def cp_state(self, state: str, now: datetime) -> list[Action]:
        if state not in CP_STATES:
            raise ValueError(f"cp_state {state!r} is not one of {', '.join(CP_STATES)}")
        previous = self.board.cp_state
        self.board.cp_state = state
        if self.pending_restore is not None:
            self._finish_restore(now)
        if self.board.plugged and (self.session is None or not self.session.plugged_in):
            self._plugged_in(now)
        elif state == "A" and previous != "A" and self.session is not None and self.session.plugged_in:
            self._unplugged(now)
        return self._settle(now)

    def relay_feedback(self, closed: bool, now: datetime) -> list[Action]:
        self.board.relay_closed = closed
        return self._settle(now)

    def lock_state(self, state: str, now: datetime) -> list[Action]:
        if state not in ("unlocked", "locked", "unknown"):
            raise ValueError(f"lock_state {state!r} is not unlocked, locked or unknown")
        self.board.lock_state = state
        return self._settle(now)

    def pp_ampacity(self, ampacity_A: int | None, now: datetime) -> list[Action]:
        if ampacity_A is not None and ampacity_A <= 0:
            raise ValueError(f"pp_ampacity_A {ampacity_A} must be above 0")
        self.board.pp_ampacity_A = ampacity_A
        return self._settle(now)

    def capabilities(self, caps: dict[str, Any], now: datetime) -> list[Action]:
        try:
            values = (float(caps["min_current_A"]), float(caps["max_current_A"]), int(caps["max_phases"]),
                      bool(caps["has_lock"]), bool(caps["tethered_cable"]), bool(caps["supports_ventilation"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"board capabilities {caps!r}: {type(exc).__name__}: {exc}") from None
        if not 1 <= values[2] <= 3:
            raise ValueError(f"board capabilities: max_phases {values[2]} is outside 1..3")
        board = self.board
        (board.min_current_A, board.max_current_A, board.max_phases, board.has_lock, board.tethered_cable,
         board.supports_ventilation) = values
        return self._settle(now)

    def board_error(self, kind: str, active: bool, message: str, now: datetime) -> list[Action]:
        """A board error raised or cleared; unknown kinds become internal_error so none goes unseen."""
        error_type = BOARD_ERRORS.get(kind, "internal_error")
        self._set_fault(error_type, f"board:{kind}", active, f"board {kind}: {message}" if message else f"board {kind}")
        return self._settle(now)

    def fault(self, error_type: str, source: str, active: bool, message: str, now: datetime) -> list[Action]:
        """A condition the shell detected (board not answering, meter errors)."""
        if error_type not in EVSE_ERRORS:
            raise ValueError(f"error type {error_type!r} is not an error of the evse interface")
        self._set_fault(error_type, source, active, message)
        return self._settle(now)

    def meter_reading(self, energy_Wh: float, power_W: float | None, now: datetime) -> list[Action]:
        if energy_Wh < 0:
            raise ValueError(f"meter energy {energy_Wh} Wh is negative")
        self.meter.energy_Wh = energy_Wh
        self.meter.power_W = power_W
        return self._settle(now)

    def session_stored(self, session_id: str | None, now: datetime) -> list[Action]:
        """The shell finished writing a PersistSession record of ``session_id`` (None: the file was removed).

        A new transaction may close the relay only after its record is on disk, so that no energy
        flows in a transaction a power loss would forget.
        """
        transaction = self.transaction
        if transaction is not None and self.session is not None and self.session.session_id == session_id:
            transaction.stored = True
        return self._settle(now)

    def checkpoint(self, now: datetime) -> list[Action]:
        """Persist the running transaction with the latest meter value (before a clean stop)."""
        if self.transaction is not None:
            self._persist(now)
        return self._take_actions()

    def tick(self, now: datetime) -> list[Action]:
        limit = self.energy_limit
        if limit is not None and limit.expires_at is not None and now >= limit.expires_at:
            self.energy_limit = None
            self.fallback_active = self.config.energy_fallback_current_A is not None
        self._session_tick(now)
        return self._settle(now)

    # -- cmds ------------------------------------------------------------------------------
    def authorize(self, id_token: str, token_type: str, parent_id: str | None, reservation_id: int | None,
                  now: datetime) -> tuple[bool, list[Action]]:
        if not id_token:
            raise ValueError("id_token is empty")
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"token_type {token_type!r} is not one of {', '.join(TOKEN_TYPES)}")
        session = self.session
        refused = (
            self.pending_restore is not None or self.authorization is not None or self._blocking_errors()
            or not self.enabled or not self.availability.decision()[0]
            or (session is not None and session.finished_transaction is not None)
            or (self.reservation_id is not None and reservation_id != self.reservation_id)
        )
        if refused:
            return False, []
        if self.reservation_id is not None:
            self._end_reservation(now)
        if self.session is None:
            self.session = self._new_session(now)
        self.authorization = Authorization(id_token, token_type, parent_id, reservation_id, now)
        self._emit("authorized", now, **token_fields(self.authorization), reservation_id=reservation_id)
        return True, self._settle(now)

    def withdraw_authorization(self, now: datetime) -> tuple[bool, list[Action]]:
        if self.authorization is None or self.transaction is not None:
            return False, []
        self._drop_authorization("authorization_withdrawn", now)
        return True, self._settle(now)

    def enable(self, source: str, priority: int, now: datetime) -> tuple[str, list[Action]]:
        return self._request_availability(source, True, priority, now)

    def disable(self, source: str, priority: int, now: datetime) -> tuple[str, list[Action]]:
        return self._request_availability(source, False, priority, now)

    def clear_availability(self, source: str, now: datetime) -> tuple[bool, list[Action]]:
        had = self.availability.clear(source)
        return had, self._settle(now)

    def pause(self, now: datetime) -> tuple[bool, list[Action]]:
        if self.transaction is None or self.paused_by_evse:
            return False, []
        self.paused_by_evse = True
        return True, self._settle(now)

    def resume(self, now: datetime) -> tuple[bool, list[Action]]:
        if self.transaction is None or not self.paused_by_evse:
            return False, []
        self.paused_by_evse = False
        return True, self._settle(now)

    def stop_transaction(self, reason: str, id_token: str | None, now: datetime) -> tuple[bool, list[Action]]:
        if reason not in STOP_REASONS:
            raise ValueError(f"stop reason {reason!r} is not one of {', '.join(STOP_REASONS)}")
        if self.transaction is None:
            return False, []
        self._finish_transaction(reason, now, stop_id_token=id_token)
        return True, self._settle(now)

    def force_unlock(self, now: datetime) -> tuple[bool, list[Action]]:
        """False (nothing changes) when there is no lock to open; else the actions end with Unlock."""
        if not self.board.needs_lock:
            return False, []
        if self.transaction is not None:
            self._finish_transaction("UnlockCommand", now)
        actions = self._settle(now)
        if not any(isinstance(action, Unlock) for action in actions):
            actions.append(Unlock())
        self.lock_commanded = False
        return True, actions

    def set_max_current(self, current_A: float, phases: int | None, valid_for_s: float | None,
                        now: datetime) -> tuple[float, list[Action]]:
        if current_A < 0:
            raise ValueError(f"current_A {current_A} is negative")
        if phases is not None and not 1 <= phases <= 3:
            raise ValueError(f"phases {phases} is outside 1..3")
        if valid_for_s is not None and valid_for_s <= 0:
            raise ValueError(f"valid_for_s {valid_for_s} must be above 0")
        expires_at = now + timedelta(seconds=valid_for_s) if valid_for_s is not None else None
        self.energy_limit = EnergyLimit(current_A, phases, expires_at)
        self.fallback_active = False
        actions = self._settle(now)
        return self.offered_current_A, actions

    def reserve(self, reservation_id: int, now: datetime) -> tuple[str, list[Action]]:
        if self._blocking_errors():
            return "Faulted", []
        if not self.enabled or not self.availability.decision()[0]:
            return "Unavailable", []
        if self.session is not None or self.authorization is not None:
            return "Occupied", []
        if self.reservation_id is not None and self.reservation_id != reservation_id:
            return "Occupied", []
        if self.reservation_id != reservation_id:
            self.reservation_id = reservation_id
            self._emit("reservation_started", now, session_id=None, reservation_id=reservation_id)
        return "Accepted", self._settle(now)

    def cancel_reservation(self, reservation_id: int, now: datetime) -> tuple[bool, list[Action]]:
        if self.reservation_id is None or self.reservation_id != reservation_id:
            return False, []
        self._end_reservation(now)
        return True, self._settle(now)

