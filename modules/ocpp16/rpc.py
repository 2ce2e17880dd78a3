"""The OCPP-J 1.6 RPC session as a sans-I/O state machine, in the style of the ``websockets`` protocol objects.

Text frames and time go in (``receive``, ``poll``), events come out, and the frames to put on the wire are
collected with ``frames_to_send``. No socket, clock or task lives here; ``now`` is any monotonic time in
seconds chosen by the caller. The rules (reference/ocpp16.md §1):

- One outstanding CALL per connection: the next queued CALL goes out only when the previous one got a
  CALLRESULT, a CALLERROR or timed out. CALLs from the CSMS are answered meanwhile (crossing calls).
- Message ids are never reused: a random per-process prefix and a counter; a CALL put back into the queue
  after a dropped connection gets a fresh id (SteVe answers a repeated id with ProtocolError).
- Every payload we send is valid against the OCA schemas: ``send_call`` and ``reply`` raise ``PayloadError``
  (or ``ValueError`` for NaN and the like) in the caller, so an invalid frame never reaches the wire.
- Incoming CALLs that are malformed, unknown, unsupported or invalid are answered with the right CALLERROR
  (1.6 spellings) when their message id can be read (even from a frame that is not valid JSON) and give a
  ``ProtocolError`` event, never an ``IncomingCall``; a ``null`` payload is read as ``{}`` (as SteVe does).
  A frame with an unknown MessageTypeId is ignored, as OCPP-J 1.6 says (ocpp16.md §1.2). Responses are never
  answered: a CALLRESULT or CALLERROR that is malformed or matches no outstanding CALL gives a
  ``ProtocolError`` event and is dropped (a malformed reply to our CALL lets that CALL time out).
- CALLERRORs are parsed tolerantly: both spellings of FormationViolation/FormatViolation and
  OccurenceConstraintViolation/OccurrenceConstraintViolation, any other code as GenericError with the
  original kept. A CALLRESULT payload that breaks its schema is still delivered, with ``problem`` set.

Binary frames are the shell's concern: OCPP-J has none, so the shell answers nothing and logs them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import secrets
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .rpc_events import (  # re-exported: callers import the events from here
    CallAborted,
    CallError,
    CallResult,
    Event,
    IncomingCall,
    ProtocolError,
    Requeued,
    Timeout,
)
from .schemas import (
    ERROR_CODES,
    FORMATION_VIOLATION,
    GENERIC_ERROR,
    NOT_SUPPORTED,
    OCCURENCE_CONSTRAINT_VIOLATION,
    PayloadError,
    known_actions,
    validate_request,
    validate_response,
)

CALL, CALLRESULT, CALLERROR = 2, 3, 4
DEFAULT_CALL_TIMEOUT_S = 30.0
MAX_DESCRIPTION_LENGTH = 255  # 2.0.1's limit; 1.6 has none, so staying below suits both
RECENTLY_FINISHED = 64  # ids remembered to explain a late reply

_RECEIVED_CODES = {code.lower(): code for code in ERROR_CODES} | {
    "formatviolation": FORMATION_VIOLATION,
    "occurrenceconstraintviolation": OCCURENCE_CONSTRAINT_VIOLATION,
}
# the message id of a CALL that is not valid JSON, so that it can still be answered
_BROKEN_CALL_ID = re.compile(r'\s*\[\s*2\s*,\s*"((?:[^"\\]|\\.){0,64})"')




class MessageIds:
    """Message ids unique for the life of the process: a random prefix and a counter (at most 36 characters)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or secrets.token_hex(6)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"


PROCESS_MESSAGE_IDS = MessageIds()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(value: Any) -> str:
    """Compact JSON; NaN and infinities are refused (they are not JSON)."""
    return _ENCODER.encode(value)


class CheckedPayload(str):
    """The compact JSON text of a CALL payload that was already checked against its action's schema: the
    session sends it as it is. Made by :func:`checked_request` (or by a caller that validated it itself)."""

    __slots__ = ()


def checked_request(action: str, payload: dict[str, Any]) -> CheckedPayload:
    """Validate and encode a CALL payload once, for a caller that keeps it to send later (or again)."""
    validate_request(action, payload)
    return CheckedPayload(encode(payload))


def encode_call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    """A CALL frame, its payload checked against the action's schema first."""
    validate_request(action, payload)
    return encode([CALL, message_id, action, payload])


@dataclass(slots=True)
class _OutgoingCall:
    message_id: str
    action: str
    payload_json: str
    timeout_s: float
    urgent: bool
    deadline: float = field(default=0.0)

    def frame(self) -> str:
        return f"[{CALL},{encode(self.message_id)},{encode(self.action)},{self.payload_json}]"


class RpcSession:
    """One OCPP-J RPC session; it outlives connections (see ``reset_connection``).

    ``supported_actions``: the CSMS-initiated actions the station handles; a known 1.6 action outside it is
    answered NotSupported, an unknown one NotImplemented. ``None`` hands every known action to the caller.
    """

    def __init__(self, *, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 supported_actions: Collection[str] | None = None,
                 message_ids: MessageIds = PROCESS_MESSAGE_IDS) -> None:
        if call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be positive, got {call_timeout_s}")
        self.call_timeout_s = call_timeout_s
        self.supported_actions = None if supported_actions is None else frozenset(supported_actions)
        self._new_id = message_ids
        self._urgent: deque[_OutgoingCall] = deque()
        self._normal: deque[_OutgoingCall] = deque()
        self._in_flight: _OutgoingCall | None = None
        self._awaiting_reply: dict[str, str] = {}  # incoming CALL id -> action
        self._outbox: list[str] = []
        self._finished: deque[str] = deque(maxlen=RECENTLY_FINISHED)
        self.held = False

    # -- our CALLs ------------------------------------------------------------------------------
    def send_call(self, action: str, payload: dict[str, Any] | CheckedPayload, *, timeout_s: float | None = None,
                  urgent: bool = False) -> str:
        """Queue a CALL and return its message id.

        ``urgent`` calls go ahead of the others and out even while the queue is held (BootNotification
        before it was accepted). Raises ``PayloadError``/``ValueError`` when the payload is not valid; a
        ``CheckedPayload`` was checked by whoever made it and goes as it is.
        """
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        text = payload if isinstance(payload, CheckedPayload) else checked_request(action, payload)
        call = _OutgoingCall(self._new_id(), action, text, timeout_s or self.call_timeout_s, urgent)
        (self._urgent if urgent else self._normal).append(call)
        return call.message_id

    def hold(self) -> None:
        """Send only urgent CALLs until ``release`` (no station-initiated messages before Boot is accepted)."""
        self.held = True

    def release(self) -> None:
        self.held = False

    def cancel(self, message_id: str) -> bool:
        """Drop a queued CALL that is not on the wire yet; False when there is no such queued CALL."""
        for queue in (self._urgent, self._normal):
            for call in queue:
                if call.message_id == message_id:
                    queue.remove(call)
                    return True
        return False

    @property
    def in_flight(self) -> tuple[str, str] | None:
        """(message id, action) of our outstanding CALL."""
        return None if self._in_flight is None else (self._in_flight.message_id, self._in_flight.action)

    @property
    def queued(self) -> int:
        return len(self._urgent) + len(self._normal)

    def next_deadline(self) -> float | None:
        """When ``poll`` must be called next to time out the outstanding CALL."""
        return None if self._in_flight is None else self._in_flight.deadline

    def frames_to_send(self, now: float) -> list[str]:
        """The frames to write now, in order: pending answers, then the next CALL if none is outstanding."""
        frames, self._outbox = self._outbox, []
        if self._in_flight is None:
            queue = self._urgent or (None if self.held else self._normal)
            if queue:
                call = queue.popleft()
                call.deadline = now + call.timeout_s
                self._in_flight = call
                frames.append(call.frame())
        return frames

    def poll(self, now: float) -> list[Event]:
        """Time out the outstanding CALL when its deadline has passed."""
        call = self._in_flight
        if call is None or now < call.deadline:
            return []
        self._finish(call.message_id)
        return [Timeout(call.message_id, call.action)]

    def reset_connection(self, *, requeue: bool) -> list[Event]:
        """The connection dropped: forget answers not yet sent and CALLs from the CSMS awaiting ours.

        The outstanding CALL is put back at the head of its queue under a new id (``requeue``) or dropped.
        """
        self._outbox.clear()
        self._awaiting_reply.clear()
        call = self._in_flight
        if call is None:
            return []
        self._finish(call.message_id)
        if not requeue:
            return [CallAborted(call.message_id, call.action)]
        old_id, call.message_id = call.message_id, self._new_id()
        (self._urgent if call.urgent else self._normal).appendleft(call)
        return [Requeued(old_id, call.message_id, call.action)]

    def _finish(self, message_id: str) -> None:
        self._in_flight = None
        self._finished.append(message_id)

    # -- the CSMS's CALLs -----------------------------------------------------------------------
    def reply(self, message_id: str, payload: dict[str, Any]) -> bool:
        """Answer an ``IncomingCall``; False when it is no longer awaiting an answer (connection reset).

        Raises ``PayloadError``/``ValueError`` when the payload is not a valid confirmation of the action.
        """
        action = self._awaiting_reply.get(message_id)
        if action is None:
            return False
        validate_response(action, payload)
        frame = f"[{CALLRESULT},{encode(message_id)},{encode(payload)}]"
        del self._awaiting_reply[message_id]
        self._outbox.append(frame)
        return True

    def reply_error(self, message_id: str, code: str, description: str = "",
                    details: dict[str, Any] | None = None) -> bool:
        """Answer an ``IncomingCall`` with a CALLERROR; False when it is no longer awaiting an answer."""
        if code not in ERROR_CODES:
            raise ValueError(f"{code!r} is not an OCPP 1.6 error code; use one of {', '.join(sorted(ERROR_CODES))}")
        if message_id not in self._awaiting_reply:
            return False
        frame = _error_frame(message_id, code, description, details or {})
        del self._awaiting_reply[message_id]
        self._outbox.append(frame)
        return True

    @property
    def awaiting_reply(self) -> int:
        """How many CALLs from the CSMS wait for our answer."""
        return len(self._awaiting_reply)

    # -- frames in ------------------------------------------------------------------------------
    def receive(self, text: str, now: float) -> list[Event]:
        """Take one text frame; a reply arriving after its CALL's deadline counts as late."""
        events = self.poll(now)
        try:
            frame = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            events.append(self._not_json(text))
            return events
        if not isinstance(frame, list) or not frame:
            events.append(ProtocolError(f"frame is not a non-empty JSON array: {_excerpt(text)}"))
        elif type(frame[0]) is not int or frame[0] not in (CALL, CALLRESULT, CALLERROR):
            events.append(ProtocolError(f"unknown MessageTypeId {_excerpt(frame[0])}, frame ignored"))
        elif len(frame) < 2 or not isinstance(frame[1], str):
            events.append(ProtocolError(f"frame without a string message id: {_excerpt(text)}"))
        elif frame[0] == CALL:
            events.append(self._on_call(frame))
        elif frame[0] == CALLRESULT:
            events.append(self._on_result(frame))
        else:
            events.append(self._on_error(frame))
        return events

    def _not_json(self, text: str) -> ProtocolError:
        match = _BROKEN_CALL_ID.match(text)
        message_id = _unescape(match.group(1)) if match else None
        if message_id is None or message_id in self._awaiting_reply:
            return ProtocolError(f"frame is not valid JSON: {_excerpt(text)}", message_id)
        return self._refuse(message_id, FORMATION_VIOLATION, "the frame is not valid JSON")

    def _on_call(self, frame: list[Any]) -> Event:
        message_id = frame[1]
        if message_id in self._awaiting_reply:
            return ProtocolError("CALL repeats the id of a CALL we have not answered yet; ignored", message_id)
        if len(frame) != 4:
            return self._refuse(message_id, FORMATION_VIOLATION, f"a CALL has 4 elements, this one {len(frame)}")
        action, payload = frame[2], frame[3]
        if not isinstance(action, str):
            return self._refuse(message_id, FORMATION_VIOLATION, "the action must be a string")
        if payload is None:
            payload = {}  # SteVe's tolerance for a missing payload (csms-peers.md §2)
        if action not in known_actions():
            return self._refuse(message_id, "NotImplemented", f"unknown action {_excerpt(action)}")
        if self.supported_actions is not None and action not in self.supported_actions:
            return self._refuse(message_id, NOT_SUPPORTED, f"{action} is not supported by this charge point")
        try:
            validate_request(action, payload, received=True)
        except PayloadError as error:
            return self._refuse(message_id, error.code, error.message)
        self._awaiting_reply[message_id] = action
        return IncomingCall(message_id, action, payload)

    def _refuse(self, message_id: str, code: str, description: str) -> ProtocolError:
        self._outbox.append(_error_frame(message_id, code, description, {}))
        return ProtocolError(description, message_id, code)

    def _matching_call(self, message_id: str, kind: str) -> _OutgoingCall | ProtocolError:
        call = self._in_flight
        if call is not None and call.message_id == message_id:
            return call
        if message_id in self._finished:
            return ProtocolError(f"{kind} for a CALL that already timed out or was dropped; ignored", message_id)
        return ProtocolError(f"{kind} matches no outstanding CALL; ignored", message_id)

    def _on_result(self, frame: list[Any]) -> Event:
        call = self._matching_call(frame[1], "CALLRESULT")
        if isinstance(call, ProtocolError):
            return call
        if len(frame) != 3:
            return ProtocolError(f"a CALLRESULT has 3 elements, this one {len(frame)}; ignored", call.message_id)
        payload, problem = frame[2], None
        if payload is None:
            payload = {}
        if isinstance(payload, dict):
            try:
                validate_response(call.action, payload, received=True)
            except PayloadError as error:
                problem = error
        else:
            problem = PayloadError(FORMATION_VIOLATION, f"{call.action}.conf: the payload is not a JSON object")
            payload = {}
        self._finish(call.message_id)
        return CallResult(call.message_id, call.action, payload, problem)

    def _on_error(self, frame: list[Any]) -> Event:
        call = self._matching_call(frame[1], "CALLERROR")
        if isinstance(call, ProtocolError):
            return call
        if len(frame) < 3:
            return ProtocolError("a CALLERROR without an error code; ignored", call.message_id)
        original = frame[2] if isinstance(frame[2], str) else encode(frame[2])
        description = frame[3] if len(frame) > 3 else ""
        details = frame[4] if len(frame) > 4 else {}
        self._finish(call.message_id)
        return CallError(
            call.message_id, call.action, _RECEIVED_CODES.get(original.lower(), GENERIC_ERROR),
            description if isinstance(description, str) else encode(description),
            details if isinstance(details, dict) else ({} if details is None else {"value": details}),
            original,
        )


def _error_frame(message_id: str, code: str, description: str, details: dict[str, Any]) -> str:
    return encode([CALLERROR, message_id, code, description[:MAX_DESCRIPTION_LENGTH], details])


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def _unescape(quoted: str) -> str | None:
    try:
        value = json.loads(f'"{quoted}"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _excerpt(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

