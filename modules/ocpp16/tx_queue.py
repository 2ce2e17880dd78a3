"""The transactional message queue (OCPP 1.6 ed2 §4.10, §3.x "transaction-related messages"). Pure.

StartTransaction, StopTransaction, MeterValues of a transaction and SecurityEventNotification are kept here
(and, by the shell, in SQLite) from the moment they exist until the CSMS answered them. Rules:

- strictly in order: one message out at a time, the next only when the previous one ended;
- a message of a transaction carries no transactionId while queued: it is filled in when the message goes
  out, from the StartTransaction.conf of that transaction (so nothing ever carries -1, 0 or a made-up id);
- a payload is checked against its action's schema once, when it is queued or restored (a stored one the
  schema refuses is set apart in ``refused``), and kept as JSON text: a replay only fills in the id;
- a CALLERROR or a timeout while connected is a failed delivery: tried again after
  ``retry_interval_s * attempts`` with a fresh message id, up to ``attempts`` deliveries, then dropped;
  a connection that drops while the message is out costs no attempt;
- a StartTransaction that is dropped takes its transaction's later messages with it (they cannot be
  identified to the CSMS);
- a size bound: when full, intermediate MeterValues are thinned first (every other one of the oldest
  transaction), never a StartTransaction or StopTransaction; a queue of only those grows beyond the bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .rpc import CheckedPayload, encode
from .schemas import validate_request

TRANSACTIONAL_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues", "SecurityEventNotification")
NEVER_THINNED = ("StartTransaction", "StopTransaction", "SecurityEventNotification")


class OrphanMessageError(ValueError):
    """A message of a transaction whose StartTransaction was dropped: the CSMS could not place it."""


@dataclass
class QueuedMessage:
    seq: int
    action: str
    payload: dict[str, Any]
    """For messages of a transaction: without transactionId (filled in when sent)."""
    session_id: str | None = None
    attempts: int = 0
    """Failed deliveries so far."""
    not_before: float = 0.0
    """Monotonic time before which it must not be sent again (after a failed delivery)."""
    text: str = ""
    """``payload`` as compact JSON, valid against the schema once the transactionId is in (set by the queue)."""


@dataclass(frozen=True)
class Delivered:
    message: QueuedMessage
    transaction_id: int | None = None
    """From StartTransaction.conf."""


@dataclass(frozen=True)
class Retrying:
    message: QueuedMessage


@dataclass(frozen=True)
class Dropped:
    messages: tuple[QueuedMessage, ...]
    reason: str


QueueEffect = Delivered | Retrying | Dropped


@dataclass
class TransactionQueue:
    max_messages: int = 1000
    messages: list[QueuedMessage] = field(default_factory=list)
    transaction_ids: dict[str, int] = field(default_factory=dict)
    """session id -> the CSMS's transactionId, once StartTransaction.conf arrived."""
    in_flight: int | None = None
    refused: list[tuple[QueuedMessage, str]] = field(default_factory=list)
    """Restored messages whose payload the schema refuses, with why: never sent (the shell deletes them)."""
    _next_seq: int = 1

    @classmethod
    def restore(cls, messages: Iterable[QueuedMessage], transaction_ids: Mapping[str, int],
                max_messages: int = 1000, last_seq: int = 0) -> TransactionQueue:
        """The queue as stored; ``last_seq`` is the highest number ever given, so numbers are never reused."""
        ordered = sorted(messages, key=lambda m: m.seq)
        queue = cls(max_messages, [], dict(transaction_ids))
        unstartable: set[str | None] = set()  # sessions whose StartTransaction was refused
        for message in ordered:
            if message.session_id in unstartable:
                queue.refused.append((message, "its StartTransaction was refused"))
                continue
            try:
                message.text = _checked_text(message.action, message.payload, message.session_id, message.text)
            except ValueError as exc:  # PayloadError too
                queue.refused.append((message, str(exc)))
                if message.action == "StartTransaction" and message.session_id is not None:
                    unstartable.add(message.session_id)
                continue
            queue.messages.append(message)
        queue._next_seq = max([last_seq, *(m.seq for m in ordered)]) + 1
        return queue

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, action: str, payload: dict[str, Any], session_id: str | None = None) -> tuple[QueuedMessage,
                                                                                               Dropped | None]:
        """Queue one message; also what the size bound pushed out to make room (to delete from storage).

        Raises ``PayloadError``/``ValueError`` for a payload the action's schema refuses (nothing queued)."""
        if action not in TRANSACTIONAL_ACTIONS:
            raise ValueError(f"{action} is not a transaction-related message")
        if "transactionId" in payload and session_id is not None:
            raise ValueError("messages of a session get their transactionId when sent, not when queued")
        if (session_id is not None and action != "StartTransaction" and session_id not in self.transaction_ids
                and not any(m.session_id == session_id and m.action == "StartTransaction" for m in self.messages)):
            raise OrphanMessageError(f"{action} of session {session_id}: its StartTransaction was neither "
                                     "answered nor is it queued (dropped after its attempts)")
        message = QueuedMessage(self._next_seq, action, dict(payload), session_id,
                                text=_checked_text(action, payload, session_id))
        self._next_seq += 1
        thinned = self._make_room() if len(self.messages) >= self.max_messages else None
        self.messages.append(message)
        return message, thinned

    def _make_room(self) -> Dropped | None:
        candidates = [m for m in self.messages if m.action not in NEVER_THINNED and m.seq != self.in_flight]
        if not candidates:
            return None
        oldest_session = candidates[0].session_id
        same = [m for m in candidates if m.session_id == oldest_session]
        drop = same[1::2] or same[:1]  # every other one keeps the curve's shape; a lone one goes itself
        dropped = {m.seq for m in drop}
        self.messages = [m for m in self.messages if m.seq not in dropped]
        return Dropped(tuple(drop), "queue full: intermediate meter values thinned")

    def next_to_send(self, now: float) -> QueuedMessage | None:
        """The head, when nothing is out and its retry time has come."""
        if self.in_flight is not None or not self.messages:
            return None
        head = self.messages[0]
        return head if head.not_before <= now else None

    def next_time(self) -> float | None:
        """When the head may go (after a failed delivery); None when it may go now or nothing waits."""
        if self.in_flight is not None or not self.messages:
            return None
        return self.messages[0].not_before

    def outgoing_payload(self, message: QueuedMessage) -> CheckedPayload:
        """The payload as sent (JSON text): with the transactionId of its transaction filled in."""
        if message.session_id is None or message.action == "StartTransaction":
            return CheckedPayload(message.text)
        transaction_id = self.transaction_ids.get(message.session_id)
        if transaction_id is None:
            raise LookupError(f"{message.action} of session {message.session_id} before its StartTransaction "
                              "was answered")
        rest = message.text[1:]  # the object's members after its "{", or only "}"
        return CheckedPayload(f'{{"transactionId":{transaction_id}{"" if rest == "}" else ","}{rest}')

    def sent(self, message: QueuedMessage) -> None:
        self.in_flight = message.seq

    def delivered(self, answer: Mapping[str, Any]) -> list[QueueEffect]:
        message = self._take_in_flight()
        if message is None:
            return []
        self.messages.remove(message)
        transaction_id = None
        if message.action == "StartTransaction" and message.session_id is not None:
            raw = answer.get("transactionId")
            if isinstance(raw, int) and not isinstance(raw, bool):
                transaction_id = raw
                self.transaction_ids[message.session_id] = raw
            else:
                return [Delivered(message), self._drop_session(message.session_id,
                                                               "StartTransaction.conf without a transactionId")]
        if message.action == "StopTransaction" and message.session_id is not None:
            self.transaction_ids.pop(message.session_id, None)
        return [Delivered(message, transaction_id)]

    def failed(self, now: float, max_attempts: int, retry_interval_s: float) -> list[QueueEffect]:
        """The CSMS answered with a CALLERROR, or not at all while connected."""
        message = self._take_in_flight()
        if message is None:
            return []
        message.attempts += 1
        if message.attempts < max(1, max_attempts):
            message.not_before = now + retry_interval_s * message.attempts
            return [Retrying(message)]
        self.messages.remove(message)
        effects: list[QueueEffect] = [Dropped((message,), f"not delivered after {message.attempts} attempts")]
        if message.action == "StartTransaction" and message.session_id is not None:
            effects.append(self._drop_session(message.session_id, "its StartTransaction was dropped"))
        return effects

    def aborted(self) -> None:
        """The connection dropped while the message was out: it goes again, without costing an attempt."""
        self.in_flight = None

    def _take_in_flight(self) -> QueuedMessage | None:
        seq, self.in_flight = self.in_flight, None
        return next((m for m in self.messages if m.seq == seq), None)

    def _drop_session(self, session_id: str, reason: str) -> Dropped:
        gone = tuple(m for m in self.messages if m.session_id == session_id)
        self.messages = [m for m in self.messages if m.session_id != session_id]
        return Dropped(gone, reason)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self.messages:
            counts[message.action] = counts.get(message.action, 0) + 1
        return counts


def _checked_text(action: str, payload: dict[str, Any], session_id: str | None, stored: str = "") -> str:
    """The payload's JSON, checked as it will be sent: a message of a transaction gets its transactionId
    (an integer, all the schema asks of it) only then, so it is checked with a stand-in. ``stored``: the
    text ``payload`` was read from, kept when a member can be put in front of its first one."""
    if session_id is not None and action != "StartTransaction":
        if "transactionId" in payload:
            raise ValueError(f"{action} of a session carries a transactionId while queued")
        validate_request(action, {**payload, "transactionId": 0})
    else:
        validate_request(action, payload)
    return stored if stored == "{}" or stored.startswith('{"') else encode(payload)  # the id goes in after "{"
