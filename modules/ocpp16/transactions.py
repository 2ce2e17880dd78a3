"""Transactions as the CSMS sees them: evse session events in, Start/StopTransaction payloads out. Pure.

A transaction is known by its evse session id; the CSMS's transactionId arrives with StartTransaction.conf.
Payloads for a session leave here without a transactionId: the transactional queue (:mod:`.tx_queue`)
fills it in when the message goes out, after the StartTransaction was answered, so no StopTransaction or
MeterValues ever carries a made-up id (-1, 0). The book is persisted by the shell and restored after a
restart; a transaction the book never saw (the process died between the EVSE's start and its storage
here) is rebuilt from the start facts that ``transaction_finished`` and ``session_resumed`` carry.

A session whose transaction is over for the CSMS (StopTransaction delivered, or its StartTransaction dropped)
is *closed*: its id is kept (persisted, the newest :data:`CLOSED_SESSIONS_KEPT`) and no event or retained
``session`` var about it ever starts a transaction again — that would be a duplicate at the CSMS.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chargepoint.timestamps import parse_rfc3339

ID_TAG_MAX = 20  # IdToken is CiString20Type in OCPP 1.6
CLOSED_SESSIONS_KEPT = 1000


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
    finished: bool = False
    last_meter_Wh: int | None = None
    last_meter_at: str | None = None


def _meter_Wh(event: Mapping[str, Any]) -> int:
    value = event.get("meter_Wh")
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise TransactionEventError(f"session event {event.get('type')}: meter_Wh must be a number >= 0, "
                                    f"got {value!r}")
    return round(value)


def _start_payload(tx: Transaction, reservation_id: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"connectorId": tx.connector_id, "idTag": tx.id_tag,
                               "meterStart": tx.meter_start_Wh, "timestamp": tx.started_at}
    if isinstance(reservation_id, int) and not isinstance(reservation_id, bool):
        payload["reservationId"] = reservation_id
    return payload


def _id_tag(event: Mapping[str, Any]) -> str:
    id_tag = event.get("id_token")
    if not isinstance(id_tag, str) or not 0 < len(id_tag) <= ID_TAG_MAX:
        raise TransactionEventError(f"{event.get('type')}: id_token {id_tag!r} is not an OCPP 1.6 idTag "
                                    f"(1 to {ID_TAG_MAX} characters)")
    return id_tag


def is_later(a: str, b: str) -> bool:
    """Whether RFC 3339 time ``a`` is after ``b``; an unreadable time is never later."""
    try:
        return parse_rfc3339(a) > parse_rfc3339(b)
    except ValueError:
        return False


class TransactionBook:
    def __init__(self, transactions: list[Transaction] | None = None, closed: Iterable[str] = ()) -> None:
        """``closed``: ids of closed sessions, oldest first."""
        self._by_session: dict[str, Transaction] = {tx.session_id: tx for tx in transactions or []}
        self._closed: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        for session_id in closed:
            self._close(session_id)

    @property
    def closed(self) -> Collection[str]:
        """Sessions whose transaction is over for the CSMS (a view; it follows later changes)."""
        return self._closed.keys()

    def _close(self, session_id: str) -> None:
        self._by_session.pop(session_id, None)
        self._closed.pop(session_id, None)
        self._closed[session_id] = None
        while len(self._closed) > CLOSED_SESSIONS_KEPT:
            del self._closed[next(iter(self._closed))]

    def _refuse_closed(self, event: Mapping[str, Any]) -> None:
        session_id = event.get("session_id")
        if session_id in self._closed:
            raise TransactionEventError(f"{event.get('type')} of session {session_id}, whose transaction is "
                                        "already closed at the CSMS: ignored (it would be a duplicate)")

    def started(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A ``transaction_started`` session event: the StartTransaction.req payload."""
        session_id = event.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise TransactionEventError("transaction_started without a session_id")
        self._refuse_closed(event)
        id_tag = _id_tag(event)
        if session_id in self._by_session:
            raise TransactionEventError(f"transaction_started twice for session {session_id}")
        tx = Transaction(session_id, int(event["evse_id"]), id_tag, _meter_Wh(event), str(event["timestamp"]))
        self._by_session[session_id] = tx
        return _start_payload(tx, event.get("reservation_id"))

    def resumed(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """``session_resumed``: the StartTransaction.req of a transaction this book never saw, else None."""
        session_id = event.get("session_id")
        if not isinstance(session_id, str) or session_id in self._by_session:
            return None
        self._refuse_closed(event)
        return self._rebuild(event)

    def _rebuild(self, event: Mapping[str, Any]) -> dict[str, Any]:
        started_at, meter_start = event.get("transaction_started_at"), event.get("meter_start_Wh")
        if not isinstance(started_at, str) or meter_start is None:
            raise TransactionEventError(f"{event.get('type')} of unknown session {event.get('session_id')} "
                                        "without transaction_started_at and meter_start_Wh")
        start_event = {**event, "type": "transaction_started", "timestamp": started_at, "meter_Wh": meter_start}
        return self.started(start_event)

    def sampled(self, session_id: str, energy_Wh: float, at: str) -> None:
        """A MeterValues of the transaction was queued: its stop may report neither less energy nor an earlier
        time (a PowerLoss stop uses the EVSE's last *persisted* reading, which can be older)."""
        tx = self._by_session.get(session_id)
        if tx is None or tx.finished:
            return
        if tx.last_meter_Wh is None or energy_Wh >= tx.last_meter_Wh:
            tx.last_meter_Wh = round(energy_Wh)
        if tx.last_meter_at is None or is_later(at, tx.last_meter_at):
            tx.last_meter_at = at

    def start_answered(self, session_id: str, transaction_id: int) -> None:
        """StartTransaction.conf arrived."""
        tx = self._by_session.get(session_id)
        if tx is not None:
            tx.transaction_id = transaction_id

    def finished(self, event: Mapping[str, Any],
                 transaction_data: list[dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """A ``transaction_finished`` session event: the messages to queue — the StopTransaction.req (without
        transactionId), preceded by its StartTransaction.req when this book never saw the start."""
        session_id = str(event.get("session_id"))
        messages: list[tuple[str, dict[str, Any]]] = []
        if session_id not in self._by_session:
            self._refuse_closed(event)
            messages.append(("StartTransaction", self._rebuild(event)))
        tx = self._by_session[session_id]
        if tx.finished:
            return []
        stop: dict[str, Any] = {"meterStop": max(_meter_Wh(event), tx.meter_start_Wh, tx.last_meter_Wh or 0),
                                "timestamp": str(event["timestamp"])}
        if tx.last_meter_at is not None and is_later(tx.last_meter_at, stop["timestamp"]):
            stop["timestamp"] = tx.last_meter_at
        reason = event.get("reason")
        if isinstance(reason, str):
            stop["reason"] = reason
        stop_token = event.get("stop_id_token")
        if isinstance(stop_token, str) and 0 < len(stop_token) <= ID_TAG_MAX:
            stop["idTag"] = stop_token
        if transaction_data:
            stop["transactionData"] = transaction_data
        tx.finished = True
        messages.append(("StopTransaction", stop))
        return messages

    def close(self, session_id: str) -> None:
        """The transaction is over for the CSMS: its StopTransaction was delivered (or dropped), or its
        StartTransaction was dropped or answered without a transactionId (the CSMS will never place it)."""
        self._close(session_id)

    def all(self) -> list[Transaction]:
        return list(self._by_session.values())

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
