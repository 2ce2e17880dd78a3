"""Transactions of the ocpp16 module: session events in, queued Start/Stop/MeterValues out.

A mixin of the module class (like :mod:`.metering`). Every transaction-related message goes through the
persistent queue (:mod:`.tx_sender`): stored before it is sent, delivered in order, deleted when answered,
so a restart at any moment neither loses nor reorders one. A transaction event that never arrived (broker
restart, this module down) is made up for from the retained ``session`` var (:mod:`.reconcile`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chargepoint.module import RequiredConnection

from .meter_values import energy_register_Wh
from .reconcile import Fix, GracePeriods, MissedFinish, reconcile
from .transactions import Transaction, TransactionEventError

if TYPE_CHECKING:
    from .transactions import TransactionBook
    from .tx_sender import TransactionalSender


class Transacting:
    book: TransactionBook
    sender: TransactionalSender
    evse_by_id: dict[int, RequiredConnection]
    begin_readings: dict[str, dict[str, Any]]
    sessions: dict[int, dict[str, Any]]
    grace: GracePeriods
    reconciling: set[int]

    def _on_session_event(self, connection: RequiredConnection, event: dict[str, Any]) -> None:
        self.evse_by_id[event["evse_id"]] = connection
        kind, session_id = event["type"], event.get("session_id")
        try:
            if kind == "transaction_started":
                begin = self._current_reading(event["evse_id"])  # type: ignore[attr-defined]
                if event.get("meter_Wh") is None:
                    event = {**event, "meter_Wh": self._meter_start_fallback(begin, session_id)}
                payload = self.book.started(event)
                if begin is not None:
                    self.begin_readings[session_id] = {**begin, "timestamp": event["timestamp"]}  # type: ignore[index]
                self.sender.enqueue([("StartTransaction", payload)], session_id)
            elif kind == "session_resumed":
                start = self.book.resumed(event)
                if start is not None:
                    self.log.warning("resumed transaction was never reported; StartTransaction queued now",  # type: ignore[attr-defined]
                                     session_id=session_id)
                    self.sender.enqueue([("StartTransaction", start)], session_id)
            elif kind == "transaction_finished":
                messages = self.book.finished(event, self._stop_transaction_data(event))  # type: ignore[attr-defined]
                if messages:
                    self.log.info("transaction finished", session_id=session_id,  # type: ignore[attr-defined]
                                  reason=event.get("reason"), meter_stop=messages[-1][1]["meterStop"])
                    self.sender.enqueue(messages, session_id)
        except TransactionEventError as exc:
            self.log.error("session event not sent to the CSMS", session_id=session_id, error=str(exc))  # type: ignore[attr-defined]

    # -- reconciliation with the retained session var ------------------------------------------------
    def _check_session_var(self, var: dict[str, Any]) -> None:
        """A var that disagrees with the book is looked at again once the grace period has passed."""
        evse_id = var["evse_id"]
        due = self.grace.seen(evse_id, reconcile(self.book, var, self.book.closed), self._loop_time())
        if due is not None and evse_id not in self.reconciling:
            self.reconciling.add(evse_id)
            self.spawn(self._reconcile_when_due(evse_id), name=f"{self.id}-reconcile-{evse_id}")  # type: ignore[attr-defined]

    async def _reconcile_when_due(self, evse_id: int) -> None:
        try:
            while (due := self.grace.next_due(evse_id)) is not None:
                await asyncio.sleep(max(0.0, due - self._loop_time()))
                var = self.sessions.get(evse_id)
                fixes = reconcile(self.book, var, self.book.closed) if var is not None else []
                for fix in self.grace.due(evse_id, fixes, self._loop_time()):
                    self._apply_fix(fix)
        finally:
            self.reconciling.discard(evse_id)

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _apply_fix(self, fix: Fix) -> None:
        """Through the same book and queue as the event would have gone. A made-up stop carries no
        transactionData: the meter's reading now is not the one at the stop (another transaction may run)."""
        event = fix.event
        try:
            if isinstance(fix, MissedFinish):
                self.begin_readings.pop(fix.session_id, None)
                messages = self.book.finished(event)
                if messages:
                    self.log.warning("transaction_finished was missed; StopTransaction queued from the session var",  # type: ignore[attr-defined]
                                     session_id=fix.session_id, meter_stop=messages[-1][1]["meterStop"],
                                     timestamp=messages[-1][1]["timestamp"])
                    self.sender.enqueue(messages, fix.session_id)
                return
            if event.get("meter_start_Wh") is None:  # the EVSE started it without a meter value
                event = {**event, "meter_start_Wh": self._meter_start_fallback(None, fix.session_id)}
            start = self.book.resumed(event)
            if start is not None:
                self.log.warning("transaction_started was missed; StartTransaction queued from the session var",  # type: ignore[attr-defined]
                                 session_id=fix.session_id, meter_start=start["meterStart"],
                                 timestamp=start["timestamp"])
                self.sender.enqueue([("StartTransaction", start)], fix.session_id)
        except TransactionEventError as exc:
            self.log.error("session var not reconciled", session_id=fix.session_id, error=str(exc))  # type: ignore[attr-defined]

    def _meter_start_fallback(self, reading: dict[str, Any] | None, session_id: str | None) -> float:
        """meterStart for a transaction the EVSE started without a meter value (its meter never answered)."""
        energy = None if reading is None else energy_register_Wh(reading)
        if energy is not None:
            return energy
        self.log.warning("transaction started without a meter reading; meterStart 0",  # type: ignore[attr-defined]
                         session_id=session_id)
        return 0.0

    def _start_answered(self, tx: Transaction, answer: dict[str, Any]) -> None:
        """StartTransaction.conf: the idTagInfo may withdraw the authorization (StopTransactionOnInvalidId)."""
        info = answer.get("idTagInfo")
        status = info.get("status") if isinstance(info, dict) else None
        self.log.info("transaction started", session_id=tx.session_id,  # type: ignore[attr-defined]
                      transaction_id=tx.transaction_id, id_tag_status=status)
        cache = getattr(self, "_cache_id_tag_info", None)
        if cache is not None:
            cache(tx.id_tag, info, "StartTransaction.conf")
        connection = self.evse_by_id.get(tx.connector_id)
        if (status != "Accepted" and not tx.finished and connection is not None
                and self.ocpp.bool("StopTransactionOnInvalidId")):  # type: ignore[attr-defined]
            self.spawn(connection.try_call("stop_transaction", reason="DeAuthorized"))  # type: ignore[attr-defined]
