"""The manager: starts every module of a station, supervises them and reports when the station is ready.

In-process modules run as asyncio tasks; ``standalone: true`` modules run as child processes
(``chargepoint module run``). A module that fails is restarted alone with back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from chargepoint import sdnotify
from chargepoint.broker.launch import BrokerHandle, ensure_broker
from chargepoint.bus import BusClient, Will
from chargepoint.config import StationConfig
from chargepoint.logs import EventLogger
from chargepoint.registry import ModuleRegistry, load_module_class
from chargepoint.runtime import ModuleRuntime

log = EventLogger("chargepoint.manager")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
CHILD_STOP_TIMEOUT_S = 3.0


@dataclass
class Backoff:
    """Restart delays that double on every failure and reset once a module ran long enough."""

    delay_s: float = BACKOFF_FIRST_S
    started_at: float = field(default_factory=time.monotonic)

    def next_delay(self) -> float:
        if time.monotonic() - self.started_at >= STABLE_AFTER_S:
            self.delay_s = BACKOFF_FIRST_S
        delay = self.delay_s
        self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)
        return delay

    def started(self) -> None:
        self.started_at = time.monotonic()


async def supervise_in_process(station: StationConfig, module_id: str, registry: ModuleRegistry) -> None:
    """Run one module in this process until cancelled, restarting it after every failure."""
    instance = station.modules[module_id]
    info = registry.find(instance.module)
    if info is None:
        raise LookupError(f"module {instance.module!r} not found")
    backoff = Backoff()
    while True:
        backoff.started()
        try:
            runtime = ModuleRuntime(station, module_id, info, load_module_class(info))
        except Exception as exc:
            delay = backoff.next_delay()
            log.error("module cannot be loaded", module_id=module_id, error=f"{type(exc).__name__}: {exc}",
                      restart_in_s=delay)
            await asyncio.sleep(delay)
            continue
        try:
            await runtime.run()
        except asyncio.CancelledError:
            await asyncio.shield(runtime.stop("stopped"))
            raise
        except Exception as exc:
            delay = backoff.next_delay()
            log.error("module failed", module_id=module_id, error=f"{type(exc).__name__}: {exc}",
                      restart_in_s=delay)
            await runtime.stop("failed")
            await asyncio.sleep(delay)
            log.info("module restarting", module_id=module_id)


def child_command(station: StationConfig, module_id: str, overrides: list[str]) -> list[str]:
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return [sys.executable, "-m", "chargepoint", "--log-level", str(level), "module", "run",
            "--config", str(station.path), "--id", module_id, *overrides]


class Manager:
    """Loads a validated station and keeps all of its modules running until stopped."""

    def __init__(self, station: StationConfig, *, child_overrides: list[str] | None = None) -> None:
        self.station = station
        self.prefix = station.settings.mqtt.prefix
        self.registry = ModuleRegistry(station.settings.module_paths)
        self.child_overrides = child_overrides or []
        self.states: dict[str, str] = {}
        self.station_ready = False
        self.stop_requested = asyncio.Event()
        self.restart_requested: str | None = None
        self.ready_event = asyncio.Event()
        self.started_at = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._bus: BusClient | None = None
        self._broker: BrokerHandle | None = None

    def _topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    async def run(self, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop_requested.set)
        mqtt = self.station.settings.mqtt
        self._broker = await ensure_broker(mqtt.host, mqtt.port, mqtt.broker)
        self._bus = BusClient(f"{self.prefix}-manager", mqtt.host, mqtt.port,
                              will=Will(self._topic("ready"), b"false"), log=log)
        self._bus.publish(self._topic("ready"), b"false", retain=True, qos=1)
        self._bus.subscribe(self._topic("+", "state"), self._on_state, qos=1)
        self._bus.subscribe(self._topic("manager", "restart"), self._on_restart_request, qos=1)
        await self._bus.start()
        await self._bus.wait_connected()
        for module_id in self.station.modules:
            self.states[module_id] = "starting"
            self._bus.publish(self._topic(module_id, "state"), b"starting", retain=True, qos=1,
                              replay=False)
        log.info("station starting", config=str(self.station.path), modules=len(self.station.modules),
                 broker=self._broker.kind)
        for module_id, instance in self.station.modules.items():
            if instance.standalone:
                runner = self._supervise_child(module_id)
            else:
                runner = supervise_in_process(self.station, module_id, self.registry)
            self._tasks.append(asyncio.create_task(runner, name=f"supervise-{module_id}"))
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self.stop_requested.wait()
        finally:
            watchdog.cancel()
            await self._shutdown()

    def _on_state(self, topic: str, payload: bytes) -> None:
        module_id = topic.split("/")[-2]
        if module_id not in self.station.modules or self.stop_requested.is_set():
            return
        self.states[module_id] = payload.decode(errors="replace")
        all_ready = all(state == "ready" for state in self.states.values())
        if all_ready and not self.station_ready:
            self.station_ready = True
            self._publish_ready(True)
            elapsed_ms = round((time.monotonic() - self.started_at) * 1000)
            log.info("station ready", modules=len(self.states), elapsed_ms=elapsed_ms)
            sdnotify.notify("READY=1\nSTATUS=station ready")
            self.ready_event.set()
        elif not all_ready and self.station_ready:
            self.station_ready = False
            self._publish_ready(False)
            waiting = sorted(m for m, s in self.states.items() if s != "ready")
            log.warning("station not ready", waiting_for=",".join(waiting))

    def _on_restart_request(self, topic: str, payload: bytes) -> None:
        try:
            request = json.loads(payload)
            reason = str(request.get("reason", "unspecified"))
        except (ValueError, AttributeError):
            log.warning("malformed restart request ignored", topic=topic)
            return
        log.info("station restart requested", reason=reason, by=request.get("module_id"))
        self.restart_requested = reason
        self.stop_requested.set()

    def _publish_ready(self, ready: bool) -> None:
        if self._bus is not None:
            self._bus.publish(self._topic("ready"), b"true" if ready else b"false", retain=True, qos=1)

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self._bus is not None and self._bus.connected.is_set():
                sdnotify.notify("WATCHDOG=1")

    async def _supervise_child(self, module_id: str) -> None:
        backoff = Backoff()
        command = child_command(self.station, module_id, self.child_overrides)
        while True:
            backoff.started()
            process = await asyncio.create_subprocess_exec(*command, env=dict(os.environ))
            self._children[module_id] = process
            log.info("standalone module started", module_id=module_id, pid=process.pid)
            code = await process.wait()
            if self.stop_requested.is_set():
                return
            delay = backoff.next_delay()
            log.error("standalone module exited", module_id=module_id, exit_code=code, restart_in_s=delay)
            if self._bus is not None:
                self._bus.publish(self._topic(module_id, "state"), b"failed", retain=True, qos=1,
                                  replay=False)
            await asyncio.sleep(delay)

    async def _shutdown(self) -> None:
        log.info("station stopping")
        sdnotify.notify("STOPPING=1")
        for process in self._children.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for module_id, process in self._children.items():
            try:
                await asyncio.wait_for(process.wait(), CHILD_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("standalone module killed", module_id=module_id)
                process.kill()
                await process.wait()
        if self._bus is not None:
            self._publish_ready(False)
            await self._bus.stop()
        if self._broker is not None:
            await self._broker.stop()
        log.info("station stopped")


async def run_one_module(station: StationConfig, module_id: str) -> None:
    """``chargepoint module run``: one module, supervised, until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = ModuleRegistry(station.settings.module_paths)
    task = asyncio.create_task(supervise_in_process(station, module_id, registry))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    if task in done and isinstance(results[0], Exception):
        raise results[0]
