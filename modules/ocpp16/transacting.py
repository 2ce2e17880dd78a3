"""Transactions of the ocpp16 module: session events in, queued Start/Stop/MeterValues out.

A mixin of the module class (like :mod:`.metering`). Every transaction-related message goes through the
persistent queue (:mod:`.tx_sender`): stored before it is sent, delivered in order, deleted when answered,
so a restart at any moment neither loses nor reorders one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chargepoint.module import RequiredConnection

from .transactions import Transaction, TransactionEventError

if TYPE_CHECKING:
    from .transactions import TransactionBook
    from .tx_sender import TransactionalSender


class Transacting:
    book: TransactionBook
    sender: TransactionalSender
    evse_by_id: dict[int, RequiredConnection]
    begin_readings: dict[str, dict[str, Any]]

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

    def _meter_start_fallback(self, reading: dict[str, Any] | None, session_id: str | None) -> float:
        """meterStart for a transaction the EVSE started without a meter value (its meter never answered)."""
        energy = (reading or {}).get("energy_Wh_import", {}).get("total")
        if isinstance(energy, int | float) and not isinstance(energy, bool) and energy >= 0:
            return float(energy)
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
