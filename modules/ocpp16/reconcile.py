"""Transactions whose session event was lost, found from the retained evse ``session`` var. Pure.

``transaction_started`` / ``transaction_finished`` are not retained: an event published while the broker
restarted or while this module was down is gone, and the CSMS would never see the Start (a lost
transaction) or the Stop (a transaction open forever). The evse_manager's retained ``session`` var says
what the EVSE believes; :func:`reconcile` compares it with the transaction book and says what to queue.
The shell waits :data:`RECONCILE_GRACE_S` after a disagreeing var and asks again with the latest var and
book, so an event that is merely late arrives first and nothing is done twice.

A var showing a later session on the connector than a transaction of the book (with or without a
transaction of its own) means that transaction is over: it is stopped where the later transaction began, or
else at its last sample, no later than the later session's start.

Never acted on: a var without a session (the evse_manager publishes one while it restores a persisted
transaction after its restart, then sends ``session_resumed`` or a PowerLoss ``transaction_finished``
itself), a session whose transaction is closed at the CSMS, and a var older than a transaction the book has
on that connector (both: a stale retained var, e.g. after a kill -9). A whole transaction that started and
ended while this module was down is not rebuilt: a retained var of a finished session cannot tell it from
one that ended before OCPP was wired in.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from .meter_values import finite_number
from .transactions import Transaction, TransactionBook, is_later

RECONCILE_GRACE_S = 3.0
STOP_REASON = "Other"


@dataclass(frozen=True)
class MissedFinish:
    """Finish ``session_id`` with this synthetic ``transaction_finished`` event."""

    session_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class MissedStart:
    """Start ``session_id`` with this synthetic ``session_resumed`` event (its start facts)."""

    session_id: str
    event: dict[str, Any]


Fix = MissedFinish | MissedStart


def _number(value: Any) -> float | None:
    number = finite_number(value)
    return number if number is not None and number >= 0 else None


def _finish(tx: Transaction, meter_Wh: float | None, at: Any) -> MissedFinish:
    """``meter_Wh`` None (the EVSE had no meter): 0, which the book raises to meterStart or the last sample."""
    return MissedFinish(tx.session_id, {
        "type": "transaction_finished", "session_id": tx.session_id, "evse_id": tx.connector_id,
        "connector_id": tx.connector_id, "timestamp": at if isinstance(at, str) else tx.started_at,
        "meter_Wh": meter_Wh if meter_Wh is not None else 0.0, "reason": STOP_REASON})


def ended_on_evse(var: Mapping[str, Any], session_id: str) -> bool:
    """The session var shows ``session_id`` with its transaction over on the EVSE."""
    return var.get("session_id") == session_id and var.get("transaction_active") is False


def reconcile(book: TransactionBook, var: Mapping[str, Any], closed: Container[str]) -> list[Fix]:
    """What the session var of one EVSE shows that the book missed: finishes first, then the start."""
    session_id, evse_id = var.get("session_id"), var.get("evse_id")
    if not isinstance(session_id, str) or not session_id or not isinstance(evse_id, int):
        return []
    active = var.get("transaction_active") is True
    started_at = var.get("transaction_started_at")
    has_transaction = isinstance(started_at, str)
    began = started_at if has_transaction else var.get("started_at")  # the session's (or its transaction's) start
    if not isinstance(began, str):
        return []
    on_connector = [tx for tx in book.running() if tx.connector_id == evse_id]
    if any(tx.session_id != session_id and is_later(tx.started_at, began) for tx in on_connector):
        return []  # a stale var: the book has a transaction on this connector that started after it
    meter_start = _number(var.get("meter_start_Wh"))
    fixes: list[Fix] = []
    for tx in on_connector:
        if ended_on_evse(var, tx.session_id):
            energy = _number(var.get("energy_Wh"))
            meter_stop = None if meter_start is None else meter_start + (energy or 0.0)
            fixes.append(_finish(tx, meter_stop, var.get("timestamp")))
        elif tx.session_id != session_id:  # a later session on the connector: this transaction is over
            # where the later transaction began; without one (no meter_start) at the last sample
            fixes.append(_finish(tx, meter_start, began))
    if active and book.session(session_id) is None and session_id not in closed:
        fixes.append(MissedStart(session_id, {
            "type": "session_resumed", "session_id": session_id, "evse_id": evse_id, "connector_id": evse_id,
            "timestamp": var.get("timestamp"), "id_token": var.get("id_token"),
            "transaction_started_at": started_at, "meter_start_Wh": var.get("meter_start_Wh")}))
    return fixes


def fix_key(fix: Fix) -> tuple[str, str]:
    return ("finish" if isinstance(fix, MissedFinish) else "start", fix.session_id)


class GracePeriods:
    """Which fixes have been wanted without a break for the grace period (times are given, never read).

    Each fix waits its own grace period, from the first var that showed it: one disagreement that shows up
    late in another's wait still gives its own late event the full time. A fix is handed out once: if
    applying it fails, the same var does not retry it on every update.
    """

    def __init__(self, grace_s: float = RECONCILE_GRACE_S, remembered: int = 100) -> None:
        self.grace_s = grace_s
        self._since: dict[int, dict[tuple[str, str], float]] = {}
        self._handed_out: dict[tuple[str, str], None] = {}
        self._remembered = remembered

    def seen(self, evse_id: int, fixes: list[Fix], now: float) -> float | None:
        """The fixes the latest var of ``evse_id`` shows; when the next one is due (None: nothing waits)."""
        before = self._since.get(evse_id, {})
        keys = [fix_key(fix) for fix in fixes if fix_key(fix) not in self._handed_out]
        self._since[evse_id] = {key: before.get(key, now) for key in keys}
        return self.next_due(evse_id)

    def next_due(self, evse_id: int) -> float | None:
        since = self._since.get(evse_id)
        return min(since.values()) + self.grace_s if since else None

    def due(self, evse_id: int, fixes: list[Fix], now: float) -> list[Fix]:
        """Of the fixes wanted now, those wanted for the whole grace period; they are handed out once."""
        self.seen(evse_id, fixes, now)
        since = self._since[evse_id]
        ready = [fix for fix in fixes if fix_key(fix) in since and since[fix_key(fix)] + self.grace_s <= now]
        for fix in ready:
            del since[fix_key(fix)]
            self._handed_out[fix_key(fix)] = None
        while len(self._handed_out) > self._remembered:
            del self._handed_out[next(iter(self._handed_out))]
        return ready
