"""What of the simulated board survives a restart: the meter registers and the car still plugged in."""

from __future__ import annotations

import math
from typing import Any

from .core import CABLE_AMPACITIES, BoardModel, Ev


def saved_state(model: BoardModel) -> dict[str, Any]:
    ev = model.ev
    saved_ev = None if ev is None else {
        "max_current_A": ev.max_current_A, "phases": ev.phases, "cable_ampacity_A": ev.cable_ampacity_A,
        "energy_to_full_Wh": ev.energy_to_full_Wh, "wants_ventilation": ev.wants_ventilation,
        "paused": ev.paused, "energy_Wh": ev.energy_Wh,
    }
    return {"energy_Wh": list(model.energy_Wh), "ev": saved_ev}


def restore(model: BoardModel, saved: Any) -> None:
    """Take back :func:`saved_state`; ValueError (and nothing changed) when it is malformed.

    After a restart the relay is open, the PWM off and injected faults are gone, as after a reboot.
    """
    if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
    energy = saved.get("energy_Wh")
    if (not isinstance(energy, list) or len(energy) != 3
            or not all(_finite_number(value) and value >= 0 for value in energy)):
        raise ValueError("energy_Wh: expected three non-negative numbers")
    ev = _restore_ev(saved.get("ev"), model.settings.pp_ampacity_A)
    model.energy_Wh = [float(value) for value in energy]
    model.ev = ev


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _restore_ev(saved: Any, station_cable: int | None) -> Ev | None:
    if saved is None:
        return None
    if not isinstance(saved, dict):
        raise ValueError("ev: not a JSON object")
    try:
        ev = Ev(**saved)
    except TypeError as exc:
        raise ValueError(f"ev: {exc}") from None
    if not (_finite_number(ev.max_current_A) and 0 <= ev.max_current_A <= 80):
        raise ValueError(f"ev.max_current_A: {ev.max_current_A!r} is not 0-80")
    if ev.phases not in (1, 2, 3) or isinstance(ev.phases, bool):
        raise ValueError(f"ev.phases: {ev.phases!r} is not 1, 2 or 3")
    if not (_finite_number(ev.energy_Wh) and ev.energy_Wh >= 0):
        raise ValueError(f"ev.energy_Wh: {ev.energy_Wh!r} is not a non-negative number")
    if ev.energy_to_full_Wh is not None and not (_finite_number(ev.energy_to_full_Wh) and ev.energy_to_full_Wh > 0):
        raise ValueError(f"ev.energy_to_full_Wh: {ev.energy_to_full_Wh!r} is not a positive number")
    if ev.cable_ampacity_A is not None and ev.cable_ampacity_A not in CABLE_AMPACITIES:
        raise ValueError(f"ev.cable_ampacity_A: {ev.cable_ampacity_A!r} is not a cable rating")
    if station_cable is None:
        ev.cable_ampacity_A = None
    ev.paused = bool(ev.paused)
    ev.wants_ventilation = bool(ev.wants_ventilation)
    return ev
