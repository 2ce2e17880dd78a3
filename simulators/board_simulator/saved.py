"""What of the simulated board survives a restart: the meter registers and the car still plugged in.

It is a simulator, so ``board.json`` is written without fsync (an atomic replace survives a kill of
the process, which is what tests and labs do): at once when the EV or the power changes, the
energy registers alone at most once per ``ENERGY_SAVE_INTERVAL_S``, and on shutdown.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .core import CABLE_AMPACITIES, BoardModel, Ev

ENERGY_SAVE_INTERVAL_S = 1.0


def saved_state(model: BoardModel) -> dict[str, Any]:
    ev = model.ev
    saved_ev = None if ev is None else {
        "max_current_A": ev.max_current_A, "phases": ev.phases, "cable_ampacity_A": ev.cable_ampacity_A,
        "energy_to_full_Wh": ev.energy_to_full_Wh, "wants_ventilation": ev.wants_ventilation,
        "paused": ev.paused, "energy_Wh": ev.energy_Wh,
    }
    return {"energy_Wh": list(model.energy_Wh), "ev": saved_ev}


def without_energy(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the energy counters, which change all the time while the EV charges."""
    ev = state["ev"]
    return {"ev": None if ev is None else {key: value for key, value in ev.items() if key != "energy_Wh"}}


def save_due(saved: dict[str, Any] | None, state: dict[str, Any], power_changed: bool,
             seconds_since_save: float) -> bool:
    """Whether ``state`` should be written now, ``saved`` being what the file holds.

    At once when the EV was plugged, unplugged or changed, or the power changed (so that an idle
    register is on disk exactly); a register that only counted on waits for the interval.
    """
    if state == saved:
        return False
    if saved is None or power_changed or without_energy(state) != without_energy(saved):
        return True
    return seconds_since_save >= ENERGY_SAVE_INTERVAL_S


def write_state_file(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` atomically (old or new content, never torn), without waiting for the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
