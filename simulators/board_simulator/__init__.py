"""board_simulator: the asyncio shell around :mod:`.core` — serves the board, ev and powermeter cmds,
publishes what changed after every event and a meter reading every ``meter_interval_s``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from chargepoint import Module
from chargepoint.iec61851 import MIN_CURRENT_A
from chargepoint.storage import read_json
from chargepoint.timestamps import utc_now

from .core import PHASE_NAMES, BoardModel, BoardSettings, BoardView, EvView, MeterView
from .saved import ENERGY_SAVE_INTERVAL_S, restore, save_due, saved_state, write_state_file

NOT_SIGNING = {"status": "not_supported", "signed_meter_value": None}


def settings_from_config(config: dict[str, Any]) -> BoardSettings:
    return BoardSettings(
        phases=config["phases"], nominal_voltage_V=float(config["nominal_voltage_V"]),
        max_current_A=float(config["max_current_A"]), pp_ampacity_A=config["pp_ampacity_A"],
        has_lock=config["has_lock"], supports_ventilation=config["supports_ventilation"],
        time_scale=float(config["time_scale"]), ev_max_current_A=float(config["ev_max_current_A"]),
        ev_phases=config["ev_phases"],
    )


class BoardSimulator(Module):
    async def init(self) -> None:
        settings = settings_from_config(self.config)
        self.model = BoardModel(settings, time.monotonic())
        self.state_file = self.state_dir / "board.json"
        self._restore()
        self._board_seen: BoardView | None = None
        self._ev_seen: EvView | None = None
        self._currents_seen: tuple[float, ...] | None = None
        self._saved: dict[str, Any] | None = None
        self._saved_at = time.monotonic()
        self._wake = asyncio.Event()

        board = self.provides["board"]
        model = self.model
        board.serve("enable", lambda enabled: self._act("board enable", model.enable, enabled=enabled))
        board.serve("set_pwm", lambda duty_cycle_percent: self._act(
            "pwm set", model.set_pwm, duty_percent=duty_cycle_percent))
        board.serve("pwm_off", lambda: self._act("pwm off", model.pwm_off))
        board.serve("allow_power_on", lambda allowed, phases: self._act(
            "relay commanded", model.allow_power_on, allowed=allowed, phases=phases))
        board.serve("lock", lambda: self._act("lock commanded", model.set_lock, locked=True))
        board.serve("unlock", lambda: self._act("unlock commanded", model.set_lock, locked=False))
        ev = self.provides["ev"]
        ev.serve("plug_in", lambda **plug: self._act("ev plug in", model.plug_in, **plug))
        ev.serve("unplug", lambda: self._act("ev unplug", model.unplug))
        ev.serve("pause", lambda: self._act("ev pause", model.set_paused, paused=True))
        ev.serve("resume", lambda: self._act("ev resume", model.set_paused, paused=False))
        ev.serve("set_max_current", lambda current_A: self._act(
            "ev max current set", model.set_ev_max_current, current_A=current_A))
        ev.serve("fault", lambda kind: self._act_and_save("fault injected", model.inject_fault, kind=kind))
        ev.serve("clear_fault", lambda kind: self._act_and_save("fault cleared", model.clear_fault, kind=kind))
        meter = self.provides["powermeter"]
        meter.serve("start_transaction", lambda **_: NOT_SIGNING)
        meter.serve("stop_transaction", lambda **_: NOT_SIGNING)

        board.publish("capabilities", {
            "min_current_A": MIN_CURRENT_A, "max_current_A": settings.max_current_A, "max_phases": settings.phases,
            "supports_phase_switching": settings.phases > 1, "has_lock": settings.has_lock,
            "tethered_cable": settings.pp_ampacity_A is None, "has_rcd": True,
            "supports_ventilation": settings.supports_ventilation,
        })
        for error_type in board.interface.errors:  # retained errors of an earlier run would linger
            board.clear_error(error_type)
        self._sync()
        self._publish_meter()

    async def ready(self) -> None:
        self.spawn(self._meter_loop(), name=f"{self.id}-meter")

    async def shutdown(self) -> None:
        self.model.advance(time.monotonic())
        self._save(urgent=True)

    def _act(self, event: str, action: Callable[..., Any], **args: Any) -> Any:
        """Apply one event to the model now, log it, and publish whatever it changed."""
        result = action(time.monotonic(), **args)
        view = self.model.board_view()
        fields = {name: value for name, value in {**args, "result": result}.items() if value is not None}
        self.log.info(event, **fields, cp_state=view.cp_state, relay_closed=view.relay_closed)
        self._sync()
        return result

    def _act_and_save(self, event: str, action: Callable[..., Any], **args: Any) -> Any:
        """An event after which the state file is written at once, whatever changed."""
        result = self._act(event, action, **args)
        self._save(urgent=True)
        return result

    def _sync(self) -> None:
        board = self.provides["board"]
        view = self.model.board_view()
        seen = self._board_seen
        if seen is None or view.cp_state != seen.cp_state:
            board.publish("cp_state", view.cp_state)
        if seen is None or (view.relay_closed, view.relay_phases) != (seen.relay_closed, seen.relay_phases):
            board.publish("relay_state", {"closed": view.relay_closed, "phases": view.relay_phases})
        if seen is None or view.lock_state != seen.lock_state:
            board.publish("lock_state", view.lock_state)
        if seen is None or view.pp_ampacity_A != seen.pp_ampacity_A:
            board.publish("pp_ampacity_A", view.pp_ampacity_A)
        before = {} if seen is None else seen.errors
        for error_type, message in view.errors.items():
            if before.get(error_type) != message:
                board.raise_error(error_type, message)
        for error_type in before.keys() - view.errors.keys():
            board.clear_error(error_type)
        self._board_seen = view
        self._publish_ev()
        currents = self.model.meter_view().current_A
        power_changed = currents != self._currents_seen
        if power_changed:
            self._publish_meter()  # power changed: readers need not wait for the next interval
        self._save(power_changed=power_changed)
        self._wake.set()

    def _publish_ev(self) -> None:
        view = self.model.ev_view()
        if view == self._ev_seen:
            return
        self._ev_seen = view
        self.provides["ev"].publish("state", {
            "plugged": view.plugged, "cp_state": view.cp_state, "requesting_power": view.requesting_power,
            "paused": view.paused, "max_current_A": view.max_current_A, "phases": view.phases,
            "current_A": view.current_A, "energy_Wh": round(view.energy_Wh, 3), "faults": list(view.faults),
            "timestamp": utc_now(),
        })

    def _publish_meter(self) -> None:
        view: MeterView = self.model.meter_view()
        self._currents_seen = view.current_A
        names = PHASE_NAMES[:len(view.voltage_V)]

        def per_phase(values: tuple[float, ...], digits: int) -> dict[str, float]:
            return {name: round(value, digits) for name, value in zip(names, values, strict=True)}

        self.provides["powermeter"].publish("powermeter", {
            "timestamp": utc_now(),
            "meter_id": f"sim-{self.id}",
            "energy_Wh_import": {"total": round(sum(view.energy_Wh), 3), **per_phase(view.energy_Wh, 3)},
            "power_W": {"total": round(sum(view.power_W), 1), **per_phase(view.power_W, 1)},
            "voltage_V": per_phase(view.voltage_V, 1),
            "current_A": per_phase(view.current_A, 2),
            "frequency_Hz": {"L1": 50.0},
        })

    async def _meter_loop(self) -> None:
        interval = float(self.config["meter_interval_s"])
        next_reading = time.monotonic() + interval
        while True:
            now = time.monotonic()
            wake_at = min(next_reading, self.model.next_change_at() or next_reading)
            if self._saved != saved_state(self.model) or any(self._currents_seen or ()):
                wake_at = min(wake_at, self._saved_at + ENERGY_SAVE_INTERVAL_S)  # energy counted since the save
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - now))
            now = time.monotonic()
            self.model.advance(now)
            if now >= next_reading:
                next_reading = max(next_reading + interval, now)
                self._publish_meter()
            self._sync()

    def _restore(self) -> None:
        saved = read_json(self.state_file)
        if saved is None:
            return
        try:
            restore(self.model, saved)
        except ValueError as exc:
            self.log.warning("saved state ignored", file=str(self.state_file), reason=str(exc))
            return
        if self.model.ev is not None:
            self.log.info("ev still plugged in after restart", energy_Wh=round(self.model.ev.energy_Wh, 3))

    def _save(self, power_changed: bool = False, urgent: bool = False) -> None:
        """Write ``board.json`` when :func:`save_due` says so; ``urgent`` writes any change now."""
        state = saved_state(self.model)
        now = time.monotonic()
        since_save = math.inf if urgent else now - self._saved_at
        if save_due(self._saved, state, power_changed, since_save):
            write_state_file(self.state_file, state)
            self._saved, self._saved_at = state, now
