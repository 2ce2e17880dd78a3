"""The state of one EVSE and its session lifecycle: sessions, authorizations, transactions, restore.

The methods here change the state and queue actions in ``_out``; ``engine.py`` decides when.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from chargepoint.timestamps import to_rfc3339

from .actions import Action, PersistSession, Publish, RequestEnergy, SetRelay
from .availability import AvailabilityRequests
from .limits import EnergyLimit
from .model import NON_BLOCKING_ERRORS, Authorization, BoardFacts, EvseConfig, MeterReading, Session, Transaction
from .sessions import (
    session_event,
    session_from_record,
    session_record,
    session_view,
    start_facts,
    token_fields,
)


class EvseState:
    def __init__(self, config: EvseConfig, new_session_id: Callable[[], str]) -> None:
        self.config = config
        self._new_session_id = new_session_id
        self.board = BoardFacts()
        self.meter = MeterReading()
        self.faults: dict[str, dict[str, str]] = {}
        self.availability = AvailabilityRequests()
        self.enabled = True
        self.paused_by_evse = False
        self.energy_limit: EnergyLimit | None = None
        self.fallback_active = False
        self.reservation_id: int | None = None
        self.session: Session | None = None
        self.authorization: Authorization | None = None
        self.pending_restore: dict[str, Any] | None = None
        self.restore_deadline: datetime | None = None
        self.meter_wait_since: datetime | None = None
        self.relay_commanded: bool | None = None
        self.relay_phases = 0
        self.pwm_duty: float | None = None
        self._pwm_known = False
        self.lock_commanded: bool | None = None
        self._last_session: dict[str, Any] = session_view(config, None, self.meter, active=False)
        self._published: dict[str, Any] = {}
        self._errors_published: set[str] = set()
        self._energy_request: RequestEnergy | None = None
        self._tx_state: str | None = None
        self._out: list[Action] = []

    @property
    def transaction(self) -> Transaction | None:
        return self.session.transaction if self.session is not None else None

    # -- faults ----------------------------------------------------------------------------
    def active_errors(self) -> list[str]:
        return sorted(kind for kind, sources in self.faults.items() if sources)

    def _blocking_errors(self) -> list[str]:
        return [kind for kind in self.active_errors() if kind not in NON_BLOCKING_ERRORS]

    def _set_fault(self, error_type: str, source: str, active: bool, message: str) -> None:
        sources = self.faults.setdefault(error_type, {})
        if active:
            sources.setdefault(source, message)
        else:
            sources.pop(source, None)

    def _take_actions(self) -> list[Action]:
        actions, self._out = self._out, []
        return actions

    # -- session lifecycle -----------------------------------------------------------------
    def _emit(self, kind: str, now: datetime, *, at: str | None = None, **fields: Any) -> None:
        if "session_id" not in fields:
            fields["session_id"] = self.session.session_id if self.session is not None else None
        session_id = fields.pop("session_id")
        event = session_event(self.config, kind, session_id, at or to_rfc3339(now), **fields)
        self._out.append(Publish("session_event", event))

    def _new_session(self, now: datetime) -> Session:
        return Session(self._new_session_id(), now)

    def _plugged_in(self, now: datetime) -> None:
        if self.session is None:
            self.session = self._new_session(now)
        self.session.plugged_in = True
        self._emit("session_started", now, reservation_id=self.reservation_id)

    def _unplugged(self, now: datetime) -> None:
        if self.transaction is not None:
            self._finish_transaction("EVDisconnected", now)
        self._emit("session_finished", now)
        self._close_session()

    def _close_session(self) -> None:
        self._last_session = session_view(self.config, self.session, self.meter, active=False)
        self.session = None
        self.authorization = None

    def _maybe_start_transaction(self, now: datetime) -> None:
        session, authorization = self.session, self.authorization
        if (session is None or authorization is None or not session.plugged_in or session.transaction is not None
                or session.finished_transaction is not None or not self.enabled or self._blocking_errors()):
            return
        if self._waiting_for_meter(now):
            return
        transaction = Transaction(authorization, now, self.meter.energy_Wh, stored=False)
        session.transaction = transaction
        self._persist(now)
        self._emit("transaction_started", now, **token_fields(authorization), meter_Wh=transaction.meter_start_Wh,
                   signed_meter_value=None, reservation_id=authorization.reservation_id)

    def _waiting_for_meter(self, now: datetime) -> bool:
        """A connected meter that has not reported yet holds the start up to ``meter_wait_s``.

        Without a first reading the transaction would have no meterStart; a meter that stays silent
        longer does not keep the EV from charging: the transaction then starts without a meter value.
        """
        if not self.config.has_powermeter or self.meter.energy_Wh is not None:
            self.meter_wait_since = None
            return False
        if self.meter_wait_since is None:
            self.meter_wait_since = now
        if now - self.meter_wait_since < timedelta(seconds=self.config.meter_wait_s):
            return True
        self.meter_wait_since = None
        return False

    def _finish_transaction(self, reason: str, now: datetime, *, stop_id_token: str | None = None,
                            details: str | None = None) -> None:
        session = self.session
        assert session is not None and session.transaction is not None
        transaction = session.transaction
        if self.relay_commanded is not False:
            self._out.append(SetRelay(False, 0))
            self.relay_commanded, self.relay_phases = False, 0
        session.transaction, session.finished_transaction = None, transaction
        session.meter_stop_Wh = self.meter.energy_Wh if self.meter.energy_Wh is not None else transaction.meter_start_Wh
        self.authorization = None
        self.paused_by_evse = False
        extra = {"details": details} if details else {}
        self._emit("transaction_finished", now, **token_fields(transaction.authorization),
                   meter_Wh=session.meter_stop_Wh, signed_meter_value=None, reason=reason,
                   stop_id_token=stop_id_token, reservation_id=transaction.authorization.reservation_id,
                   **start_facts(transaction), **extra)
        self._out.append(PersistSession(None))

    def _drop_authorization(self, kind: str, now: datetime) -> None:
        assert self.authorization is not None
        self._emit(kind, now, **token_fields(self.authorization))
        self.authorization = None
        if self.session is not None and not self.session.plugged_in:
            self._close_session()

    def _end_reservation(self, now: datetime) -> None:
        self._emit("reservation_ended", now, session_id=None, reservation_id=self.reservation_id)
        self.reservation_id = None

    def _persist(self, now: datetime) -> None:
        session = self.session
        assert session is not None and session.transaction is not None
        transaction = session.transaction
        self._out.append(PersistSession(session_record(self.config, session, transaction, self.meter.energy_Wh, now)))
        transaction.persisted_at, transaction.persisted_meter_Wh = now, self.meter.energy_Wh

    def _session_tick(self, now: datetime) -> None:
        if self.pending_restore is not None and self.restore_deadline is not None and now >= self.restore_deadline:
            self._finish_restore(now)
        authorization, session = self.authorization, self.session
        timeout = self.config.plugin_timeout_s
        if (authorization is not None and session is not None and not session.plugged_in and timeout is not None
                and now - authorization.at >= timedelta(seconds=timeout)):
            self._drop_authorization("plugin_timeout", now)
        transaction = self.transaction
        interval = timedelta(seconds=self.config.meter_persist_interval_s)
        if (transaction is not None and transaction.persisted_at is not None
                and now - transaction.persisted_at >= interval
                and self.meter.energy_Wh != transaction.persisted_meter_Wh):
            self._persist(now)

    def _finish_restore(self, now: datetime) -> None:
        """Resume the persisted transaction if allowed and the EV is still plugged in, else close it."""
        record, self.pending_restore = self.pending_restore, None
        assert record is not None
        if self.config.session_resume == "resume" and self.board.plugged:
            self.session = session_from_record(record)
            transaction = self.session.transaction
            assert transaction is not None
            self.authorization = transaction.authorization
            self._persist(now)
            meter = self.meter.energy_Wh if self.meter.energy_Wh is not None else record["meter_last_Wh"]
            self._emit("session_resumed", now, **token_fields(self.authorization), meter_Wh=meter,
                       reservation_id=self.authorization.reservation_id, **start_facts(transaction))
            return
        session = session_from_record(record)
        transaction = session.transaction
        assert transaction is not None
        session.transaction, session.finished_transaction = None, transaction
        session.meter_stop_Wh = record["meter_last_Wh"]
        at = record["meter_last_at"]
        fields = token_fields(transaction.authorization)
        self._emit("transaction_finished", now, at=at, session_id=session.session_id, **fields,
                   meter_Wh=session.meter_stop_Wh, signed_meter_value=None, reason="PowerLoss", stop_id_token=None,
                   reservation_id=transaction.authorization.reservation_id, **start_facts(transaction),
                   details=f"closed after a restart ({self.config.session_resume})")
        self._emit("session_finished", now, at=at, session_id=session.session_id)
        self._out.append(PersistSession(None))
        self._last_session = session_view(self.config, session, self.meter, active=False)
