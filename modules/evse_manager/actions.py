"""What the EVSE core asks its shell to do: board commands, bus publications, persistence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SetPwm:
    """Start or change the control pilot PWM."""

    duty_cycle_percent: float


@dataclass(frozen=True)
class PwmOff:
    """Stop the PWM (the EV sees "not ready to charge")."""


@dataclass(frozen=True)
class SetRelay:
    """Close (with ``phases``) or open the power relay."""

    closed: bool
    phases: int


@dataclass(frozen=True)
class Lock:
    """Lock the connector."""


@dataclass(frozen=True)
class Unlock:
    """Unlock the connector."""


@dataclass(frozen=True)
class Publish:
    """Publish a var of the ``evse`` interface (state, limits, session, session_event)."""

    var: str
    value: dict[str, Any]


@dataclass(frozen=True)
class RaiseError:
    error_type: str
    message: str


@dataclass(frozen=True)
class ClearError:
    error_type: str


@dataclass(frozen=True)
class PersistSession:
    """Store the running session (``record``) durably, or forget it (``None``)."""

    record: dict[str, Any] | None


@dataclass(frozen=True)
class RequestEnergy:
    """Tell the energy side what this EVSE could draw now."""

    wants_energy: bool
    min_current_A: float
    max_current_A: float
    max_phases: int


BoardAction = SetPwm | PwmOff | SetRelay | Lock | Unlock
Action = BoardAction | Publish | RaiseError | ClearError | PersistSession | RequestEnergy
