"""The current an EVSE may offer: the tightest of configuration, board, cable and energy limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chargepoint.iec61851 import current_for_duty_cycle, duty_cycle_for_current


@dataclass(frozen=True)
class EnergyLimit:
    """A limit from set_max_current; ``expires_at`` None means until replaced."""

    current_A: float
    phases: int | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Limits:
    max_current_A: float
    limited_by: str
    phases: int


def combine(*, config_max_A: float, config_phases: int, board_max_A: float | None, board_phases: int,
            cable_A: float | None, energy_A: float | None, energy_source: str, energy_phases: int | None) -> Limits:
    """The minimum of every known limit; ``limited_by`` names the first binding one (config first on ties)."""
    candidates: list[tuple[str, float]] = [("config", config_max_A)]
    if board_max_A is not None:
        candidates.append(("board", board_max_A))
    if cable_A is not None:
        candidates.append(("cable", cable_A))
    if energy_A is not None:
        candidates.append((energy_source, energy_A))
    lowest = min(value for _, value in candidates)
    limited_by = next(name for name, value in candidates if value == lowest)
    phases = min(config_phases, board_phases, energy_phases or config_phases)
    return Limits(max(lowest, 0.0), limited_by, phases)


def pwm_for(max_current_A: float, min_current_A: float) -> float | None:
    """The PWM duty cycle offering at most ``max_current_A``; None when that is below the minimum."""
    if max_current_A < min_current_A:
        return None
    duty = duty_cycle_for_current(max_current_A)
    return duty if duty > 0 else None


def offered_by(duty_percent: float | None, max_current_A: float) -> float:
    """Current signalled by ``duty_percent``, never above the limit it was computed from."""
    if duty_percent is None:
        return 0.0
    return min(current_for_duty_cycle(duty_percent), max_current_A)
