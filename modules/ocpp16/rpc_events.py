"""Events the RPC session returns: what arrived, what finished, what went wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schemas import PayloadError


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A valid CALL from the CSMS; answer it with ``reply`` or ``reply_error``."""
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """The CSMS's CALLRESULT to our CALL; ``problem``: the payload breaks its schema (the shell decides)."""
    message_id: str
    action: str
    payload: dict[str, Any]
    problem: PayloadError | None = None


@dataclass(frozen=True, slots=True)
class CallError:
    """The CSMS's CALLERROR to our CALL; ``code`` in the 1.6 spelling, ``original_code`` as received."""
    message_id: str
    action: str
    code: str
    description: str
    details: dict[str, Any]
    original_code: str


@dataclass(frozen=True, slots=True)
class Timeout:
    """Our CALL got no answer within its timeout; the next queued CALL may go out."""
    message_id: str
    action: str


@dataclass(frozen=True, slots=True)
class Requeued:
    """The connection dropped while our CALL was outstanding; it waits at the head of the queue under a new id."""
    old_message_id: str
    message_id: str
    action: str


@dataclass(frozen=True, slots=True)
class CallAborted:
    """The connection dropped while our CALL was outstanding and the caller chose not to send it again."""
    message_id: str
    action: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A frame that was not accepted; ``answered_with``: the CALLERROR code sent back, if any."""
    reason: str
    message_id: str | None = None
    answered_with: str | None = None


Event = IncomingCall | CallResult | CallError | Timeout | Requeued | CallAborted | ProtocolError
