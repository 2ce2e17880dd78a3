"""powermeter_modbus: feeds :class:`~.poller.MeterPoller` from a shared Modbus line; see docs/meters.md."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime
from typing import Any

from chargepoint import Module
from chargepoint.modbus.model import ModelError

from .line import LineConflictError, ModbusLine, ReadError, acquire_line, release_line
from .poller import Action, ClearError, MeterPoller, Note, Publish, RaiseError, Read
from .settings import MeterSettings, SettingsError, line_conflict, meter_settings

NOT_SUPPORTED = {"status": "not_supported", "signed_meter_value": None,
                 "message": "this meter does not sign readings (no OCMF)"}


class PowermeterModbus(Module):
    async def init(self) -> None:
        self.line: ModbusLine | None = None
        try:
            self.meter: MeterSettings = meter_settings(self.config, self.id, self.config_dir)
        except (SettingsError, ModelError) as exc:
            raise ValueError(f"{self.id}: config: {exc}") from None
        meter = self.meter
        try:
            self.line = acquire_line(meter.line, self.id, lambda line: line_conflict(
                meter, ", ".join(sorted(line.users)), line.settings))
        except LineConflictError as exc:
            raise ValueError(f"{self.id}: config: {exc}") from None
        self.where = f"{meter.model.name} slave {meter.slave_id} on {meter.line.name}"
        self.provides["powermeter"].serve("start_transaction", self.start_transaction)
        self.provides["powermeter"].serve("stop_transaction", self.stop_transaction)
        self.log.info("meter configured", meter_id=meter.meter_id, model=meter.model.name, slave_id=meter.slave_id,
                      line=meter.line.describe(), shared_with=",".join(sorted(self.line.users - {self.id})) or None)

    async def ready(self) -> None:
        self.spawn(self._run(), name=f"{self.id}-poll")

    async def shutdown(self) -> None:
        if self.line is not None:
            release_line(self.line, self.id)
            self.line = None

    def start_transaction(self, **_: Any) -> dict[str, Any]:
        return dict(NOT_SUPPORTED)

    def stop_transaction(self, **_: Any) -> dict[str, Any]:
        return dict(NOT_SUPPORTED)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        poller = MeterPoller(self.meter.model, self.meter.meter_id, self.meter.poll, loop.time())
        actions: deque[Action] = deque(poller.tick(loop.time()))
        while True:
            while actions:
                actions.extend(await self._perform(poller, actions.popleft()))
            pause = poller.deadline - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            actions.extend(poller.tick(loop.time()))

    async def _perform(self, poller: MeterPoller, action: Action) -> list[Action]:
        loop = asyncio.get_running_loop()
        if isinstance(action, Read):
            assert self.line is not None
            try:
                words = await self.line.read(self.meter.slave_id, action.request)
            except ReadError as exc:
                return poller.read_failed(loop.time(), exc.failure)
            return poller.read_done(loop.time(), datetime.now(UTC), words)
        if isinstance(action, Publish):
            self.provides["powermeter"].publish("powermeter", action.reading)
        elif isinstance(action, RaiseError):
            self.provides["powermeter"].raise_error(action.error_type, f"{self.where}: {action.message}")
        elif isinstance(action, ClearError):
            self.provides["powermeter"].clear_error(action.error_type)
            self.log.info("error cleared", error=action.error_type, meter_id=self.meter.meter_id)
        elif isinstance(action, Note):
            getattr(self.log, action.level)(action.event, meter_id=self.meter.meter_id, **action.fields)
        return []
