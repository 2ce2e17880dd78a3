"""IEC 61851-1 control pilot arithmetic: PWM duty cycle <-> offered current (pure functions)."""

from __future__ import annotations

import math

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0
DIGITAL_COMMUNICATION_DUTY = 5.0


def duty_cycle_for_current(current_A: float) -> float:
    """The PWM duty cycle (percent) that offers ``current_A``; 0 for less than 6 A (no charging)."""
    if current_A < MIN_CURRENT_A:
        return 0.0
    current_A = min(current_A, MAX_CURRENT_A)
    if current_A <= 51.0:
        return _floor2(current_A / 0.6)
    if current_A <= 52.5:
        return 85.0  # 51-52.5 A has no duty cycle of its own: offer 51 A rather than more than asked
    return _floor2(current_A / 2.5 + 64.0)


def _floor2(duty_percent: float) -> float:
    """Round down to 0.01 %, so rounding never offers more current than asked."""
    return math.floor(duty_percent * 100 + 1e-9) / 100


def current_for_duty_cycle(duty_percent: float) -> float:
    """The current (A) an EV may draw at ``duty_percent``; 0 where the duty cycle allows no charging."""
    if 8.0 <= duty_percent < 10.0:
        return MIN_CURRENT_A
    if 10.0 <= duty_percent <= 85.0:
        return round(duty_percent * 0.6, 2)
    if 85.0 < duty_percent <= 96.0:
        return round((duty_percent - 64.0) * 2.5, 2)
    if 96.0 < duty_percent <= 97.0:
        return MAX_CURRENT_A
    return 0.0
