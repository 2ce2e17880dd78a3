"""Transactions as the CSMS sees them: evse session events in, Start/StopTransaction payloads out. Pure.

A transaction is known by its evse session id until StartTransaction.conf gives the CSMS's transactionId.
A StopTransaction never goes out with a made-up id (-1, 0): when the session finishes before the start
was answered, the stop waits here and is released by ``start_answered``. (In memory for now; the
persistent queue of the issue "Never lose a transaction" replaces this.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ID_TAG_MAX = 20  # IdToken is CiString20Type in OCPP 1.6


class TransactionEventError(ValueError):
    """A session event that cannot become a transaction message; nothing was changed."""


@dataclass
class Transaction:
    session_id: str
    connector_id: int
    id_tag: str
    meter_start_Wh: int
    started_at: str
    transaction_id: int | None = None
    stop: dict[str, Any] | None = None
    """StopTransaction payload without transactionId, waiting for StartTransaction.conf."""
    finished: bool = False


def _meter_Wh(event: Mapping[str, Any]) -> int:
    value = event.get("meter_Wh")
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise TransactionEventError(f"session event {event.get('type')}: meter_Wh must be a number >= 0, "
                                    f"got {value!r}")
    return round(value)


class TransactionBook:
    def __init__(self) -> None:
        self._by_session: dict[str, Transaction] = {}

    def started(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A ``transaction_started`` session event: the StartTransaction.req payload."""
        session_id, id_tag = event.get("session_id"), event.get("id_token")
        if not isinstance(session_id, str) or not session_id:
            raise TransactionEventError("transaction_started without a session_id")
        if not isinstance(id_tag, str) or not 0 < len(id_tag) <= ID_TAG_MAX:
            raise TransactionEventError(f"transaction_started: id_token {id_tag!r} is not an OCPP 1.6 idTag "
                                        f"(1 to {ID_TAG_MAX} characters)")
        if session_id in self._by_session:
            raise TransactionEventError(f"transaction_started twice for session {session_id}")
        tx = Transaction(session_id, int(event["evse_id"]), id_tag, _meter_Wh(event), str(event["timestamp"]))
        self._by_session[session_id] = tx
        payload: dict[str, Any] = {"connectorId": tx.connector_id, "idTag": tx.id_tag,
                                   "meterStart": tx.meter_start_Wh, "timestamp": tx.started_at}
        if isinstance(event.get("reservation_id"), int):
            payload["reservationId"] = event["reservation_id"]
        return payload

    def start_answered(self, session_id: str, transaction_id: int) -> dict[str, Any] | None:
        """StartTransaction.conf arrived: the StopTransaction.req that waited for it, if any."""
        tx = self._by_session.get(session_id)
        if tx is None:
            return None
        tx.transaction_id = transaction_id
        if tx.stop is None:
            return None
        stop, tx.stop = {**tx.stop, "transactionId": transaction_id}, None
        del self._by_session[session_id]
        return stop

    def finished(self, event: Mapping[str, Any],
                 transaction_data: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """A ``transaction_finished`` session event: the StopTransaction.req to send now, or None when it must
        wait for the transactionId (or the transaction is unknown: started before this process)."""
        tx = self._by_session.get(str(event.get("session_id")))
        if tx is None or tx.finished:
            return None
        meter_stop = _meter_Wh(event)
        stop: dict[str, Any] = {"meterStop": meter_stop, "timestamp": str(event["timestamp"])}
        reason = event.get("reason")
        if isinstance(reason, str):
            stop["reason"] = reason
        stop_token = event.get("stop_id_token")
        if isinstance(stop_token, str) and 0 < len(stop_token) <= ID_TAG_MAX:
            stop["idTag"] = stop_token
        if transaction_data:
            stop["transactionData"] = transaction_data
        tx.finished = True
        if tx.transaction_id is None:
            tx.stop = stop
            return None
        del self._by_session[tx.session_id]
        return {**stop, "transactionId": tx.transaction_id}

    def running(self) -> list[Transaction]:
        """Transactions not finished yet, with or without a transactionId."""
        return [tx for tx in self._by_session.values() if not tx.finished]

    def by_transaction_id(self, transaction_id: int) -> Transaction | None:
        for tx in self._by_session.values():
            if tx.transaction_id == transaction_id and not tx.finished:
                return tx
        return None

    def on_connector(self, connector_id: int) -> Transaction | None:
        for tx in self._by_session.values():
            if tx.connector_id == connector_id and not tx.finished:
                return tx
        return None

    def session(self, session_id: str) -> Transaction | None:
        return self._by_session.get(session_id)
