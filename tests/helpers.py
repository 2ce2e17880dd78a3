"""Test helpers: a real MQTT broker on a free loopback port, wiring files, running stations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from chargepoint.broker.launch import find_mosquitto, free_port, start_mosquitto_subprocess, stop_process

TESTS = Path(__file__).parent
EXAMPLE = TESTS / "example"
ROOT = TESTS.parent


class Broker:
    """A broker process on 127.0.0.1: mosquitto, or the embedded broker when mosquitto is missing."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        # CHARGEPOINT_TEST_BROKER=embedded runs the suite on the embedded broker even where mosquitto exists.
        self.kind = os.environ.get("CHARGEPOINT_TEST_BROKER") or ("mosquitto" if find_mosquitto() else "embedded")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.kind == "mosquitto":
            self.process = start_mosquitto_subprocess(self.port)
            return
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chargepoint.broker", "--host", self.host, "--port", str(self.port)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        assert line.startswith("listening"), f"embedded broker did not start: {line!r}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self, down_for_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for_s)
        self.start()


def write_wiring(folder: Path, port: int, modules_yaml: str, *, prefix: str = "cp",
                 broker_mode: str = "external", name: str = "station.yaml") -> Path:
    """A wiring file using the example modules and interfaces, talking to ``port``."""
    text = (
        "settings:\n"
        f"  mqtt: {{host: 127.0.0.1, port: {port}, prefix: {prefix}, broker: {broker_mode}}}\n"
        f"  state_dir: {folder / 'state'}\n"
        f"  module_paths: [{EXAMPLE / 'modules'}]\n"
        f"  interface_paths: [{EXAMPLE / 'interfaces'}]\n"
        "active_modules:\n" + modules_yaml
    )
    path = folder / name
    path.write_text(text)
    return path


COUNTER_AND_CLIENT = """\
  counter:
    module: example_counter
    config: {limit: 100, labels: {unit: kWh}}
  client:
    module: example_client
    connections:
      counter: [counter.main]
"""


COUNTER_STANDALONE_AND_CLIENT = COUNTER_AND_CLIENT.replace(
    "    module: example_counter\n", "    module: example_counter\n    standalone: true\n")


@asynccontextmanager
async def running_station(path: Path, ready_timeout: float = 15.0) -> AsyncIterator[object]:
    """Run the station of ``path`` in this event loop until the block ends."""
    from chargepoint.config import load_station_config
    from chargepoint.manager import Manager

    manager = Manager(load_station_config(path), child_overrides=["--broker", "external"])
    task = asyncio.create_task(manager.run(install_signal_handlers=False))
    try:
        ready = asyncio.create_task(manager.ready_event.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()
            raise TimeoutError(f"station not ready within {ready_timeout} s: {manager.states}")
        yield manager
    finally:
        manager.stop_requested.set()
        await asyncio.wait_for(task, 15)


def run(coro: object, timeout: float = 60.0) -> object:
    """Run a test's coroutine with an upper bound on its duration."""

    async def bounded() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())


def chargepoint_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "chargepoint", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    return env
