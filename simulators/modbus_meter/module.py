"""modbus_meter: the station module around :class:`~.line.MeterLine` — serves the control cmds, makes the
n-th meter follow the n-th wired ``load`` powermeter, and publishes the line's state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from chargepoint import Module
from chargepoint.module import RequiredConnection
from chargepoint.timestamps import utc_now

from .build import MeterSpec, build_line
from .line import MeterLine
from .load import ConstantLoad, ExternalLoad, Load, ProfileLoad
from .slave import SlaveLine

PHASE_KEYS = ("L1", "L2", "L3")


def load_from_reading(reading: dict[str, Any]) -> ExternalLoad:
    """The per-phase power of a powermeter reading (its total when it has no phases)."""
    power = reading.get("power_W") or {}
    phases = tuple(float(power[key]) for key in PHASE_KEYS if key in power)
    return ExternalLoad(phases or (float(power.get("total", 0.0)),))


def load_kind(load: Load) -> str:
    if isinstance(load, ProfileLoad):
        return "profile"
    return "external" if isinstance(load, ExternalLoad) else "constant"


class ModbusMeterSimulator(Module):
    async def init(self) -> None:
        config = self.config
        link = Path(config["link"]).expanduser()
        self.link = link if link.is_absolute() else self.state_dir / link
        specs = [MeterSpec(slave_id=item["slave_id"], model=item.get("model", "sdm630"),
                           energy_Wh=float(item.get("energy_Wh", 0)), load_W=float(item.get("load_W", 0)))
                 for item in config["meters"]]
        line = build_line(specs, config["baudrate"], time.monotonic(), float(config["time_scale"]), self.config_dir)
        self.slave_ids = [spec.slave_id for spec in specs]
        self.configured_load = {spec.slave_id: ConstantLoad(spec.load_W) for spec in specs}
        self.following: dict[int, ExternalLoad | None] = {}  # slave id -> latest wired load (None: none yet)
        self.overridden: set[int] = set()  # meters whose load set_load fixed
        tcp_port = config["tcp_port"] or None
        self.meter_line = MeterLine(line, link=self.link, tcp_port=tcp_port).start()
        self.log.info("line started", port=self.meter_line.slave_path, link=str(self.link),
                      baudrate=config["baudrate"], tcp_port=self.meter_line.tcp_port,
                      meters=",".join(f"{spec.slave_id}:{spec.model}" for spec in specs))

        connections: list[RequiredConnection] = list(self.requires["load"]) if "load" in self.requires else []
        if len(connections) > len(specs):
            self.log.warning("more load connections than meters; extra ones ignored",
                             connections=len(connections), meters=len(specs))
        for connection, slave_id in zip(connections, self.slave_ids, strict=False):
            self.following[slave_id] = None
            connection.subscribe("powermeter", lambda reading, sid=slave_id: self._follow(sid, reading))

        control = self.provides["control"]
        control.serve("inject_fault", self.inject_fault)
        control.serve("clear_faults", self.clear_faults)
        control.serve("set_load", self.set_load)
        control.serve("unplug", self.unplug)
        control.serve("replug", self.replug)
        self._publish_state()

    async def ready(self) -> None:
        self.spawn(self._state_loop(), name=f"{self.id}-state")

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.meter_line.stop)

    # -- cmds -------------------------------------------------------------------------------------------------
    def inject_fault(self, slave_id: int, kind: str, count: int | None, delay_ms: float) -> None:
        self.meter_line.change(lambda line, _: line.inject_fault(slave_id, kind, count, delay_ms))
        self.log.info("fault injected", slave_id=slave_id, kind=kind, count=count,
                      delay_ms=delay_ms if kind == "slow_reply" else None)
        self._publish_state()

    def clear_faults(self, slave_id: int | None) -> None:
        self.meter_line.change(lambda line, _: line.clear_faults(slave_id))
        self.log.info("faults cleared", slave_id=slave_id)
        self._publish_state()

    def set_load(self, slave_id: int, power_W: float | None, profile: list[dict[str, float]] | None) -> None:
        if power_W is not None and profile is not None:
            raise ValueError("set_load: give power_W or profile, not both")

        def apply(line: SlaveLine, now: float) -> None:
            line.meter(slave_id)  # unknown id: error before anything changes
            if profile is not None:
                load: Load = ProfileLoad(tuple((step["duration_s"], step["power_W"]) for step in profile), now)
            elif power_W is not None:
                load = ConstantLoad(power_W)
            else:
                load = self.following.get(slave_id) or self.configured_load[slave_id]
            line.set_load(slave_id, load, now)

        self.meter_line.change(apply)
        if power_W is None and profile is None:
            self.overridden.discard(slave_id)
        else:
            self.overridden.add(slave_id)
        self.log.info("load set", slave_id=slave_id, power_W=power_W,
                      profile_steps=None if profile is None else len(profile))
        self._publish_state()

    async def unplug(self) -> bool:
        if not self.meter_line.plugged:
            return False
        await asyncio.to_thread(self.meter_line.unplug)
        self.log.info("line unplugged", link=str(self.link))
        self._publish_state()
        return True

    async def replug(self) -> bool:
        if self.meter_line.plugged:
            return False
        await asyncio.to_thread(self.meter_line.replug)
        self.log.info("line replugged", port=self.meter_line.slave_path)
        self._publish_state()
        return True

    # -- load and state -----------------------------------------------------------------------------------------
    def _follow(self, slave_id: int, reading: Any) -> None:
        try:
            load = load_from_reading(reading)
        except (TypeError, ValueError, AttributeError) as exc:
            self.log.warning("load reading ignored", slave_id=slave_id, reason=str(exc))
            return
        self.following[slave_id] = load
        if slave_id not in self.overridden:
            self.meter_line.change(lambda line, now: line.set_load(slave_id, load, now))

    def _state(self, line: SlaveLine, now: float) -> dict[str, Any]:
        line.advance(now)
        meters = []
        for slave_id in self.slave_ids:
            meter = line.meters[slave_id]
            values = meter.readings.values()
            meters.append({
                "slave_id": slave_id, "model": meter.model.name,
                "energy_Wh_import": round(values["energy_Wh_import"]["total"], 3),
                "energy_Wh_export": round(values["energy_Wh_export"]["total"], 3),
                "power_W": round(values["power_W"]["total"], 3), "load": load_kind(meter.readings.load),
                "faults": sorted(meter.faults), "requests": meter.requests,
            })
        return {"plugged": self.meter_line.plugged, "port": self.meter_line.slave_path, "link": str(self.link),
                "tcp_port": self.meter_line.tcp_port, "baudrate": line.baudrate, "meters": meters,
                "timestamp": utc_now()}

    def _publish_state(self) -> None:
        self.provides["control"].publish("state", self.meter_line.change(self._state))

    async def _state_loop(self) -> None:
        interval = float(self.config["state_interval_s"])
        while True:
            await asyncio.sleep(interval)
            self._publish_state()
