"""Session benchmark: how fast a simulated station reacts to a plug-in and a swipe.

Runs a station (board_simulator, evse_manager, token_manual, allowlist_validator, auth) as
`chargepoint run` in its own process and drives many sessions over the bus, the way
`chargepoint sim plug` and `chargepoint sim swipe` do. Prints p50/p99 of
- plug-in command sent -> session_started event received,
- swipe command sent (car plugged) -> relay closed (board relay_state var),
each also as a multiple of the bus cmd round trip (probe -> evse_manager get_info) measured in
the same run. Usage: .venv/bin/python bench/session.py [--sessions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargepoint.broker.launch import find_mosquitto, free_port, start_mosquitto_subprocess, stop_process  # noqa: E402
from chargepoint.busprobe import BusProbe  # noqa: E402

WIRING = """\
settings:
  mqtt: {{host: 127.0.0.1, port: {port}, prefix: cp, broker: external}}
  state_dir: {folder}/state
active_modules:
  board_1:
    module: board_simulator
    config: {{evse_id: 1, time_scale: 60, meter_interval_s: 1}}
  evse_1:
    module: evse_manager
    config: {{evse_id: 1}}
    connections: {{board: [board_1.board], powermeter: [board_1.powermeter]}}
  tokens:
    module: token_manual
  allowlist:
    module: allowlist_validator
    config: {{file: {folder}/allowlist.yaml}}
  auth:
    module: auth
    config: {{token_debounce_s: 0}}
    connections:
      token_provider: [tokens.main]
      token_validator: [allowlist.main]
      evse_manager: [evse_1.evse]
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Watcher:
    """Timestamps of the events the benchmark waits for, taken in the probe's callbacks."""

    def __init__(self, probe: BusProbe) -> None:
        self.session_started = asyncio.Event()
        self.relay_closed = asyncio.Event()
        self.charger_state = ""
        self.stamp: dict[str, float] = {}
        probe.watch("cp/evse_1/evse/var/session_event", self._on_event)
        probe.watch("cp/board_1/board/var/relay_state", self._on_relay)
        probe.watch("cp/evse_1/evse/var/state", self._on_state)

    def _on_event(self, topic: str, payload: bytes) -> None:
        if json.loads(payload)["type"] == "session_started":
            self.stamp["session_started"] = time.perf_counter()
            self.session_started.set()

    def _on_relay(self, topic: str, payload: bytes) -> None:
        if json.loads(payload)["closed"]:
            self.stamp["relay_closed"] = time.perf_counter()
            self.relay_closed.set()

    def _on_state(self, topic: str, payload: bytes) -> None:
        self.charger_state = json.loads(payload)["charger_state"]


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("station did not reach the expected state")
        await asyncio.sleep(0.002)


async def measure(port: int, sessions: int) -> None:
    async with BusProbe("127.0.0.1", port) as probe:
        await probe.wait_station_ready(30)
        watcher = Watcher(probe)
        await asyncio.sleep(0.5)
        round_trips = []
        for _ in range(sessions * 5):
            started = time.perf_counter()
            await probe.call("evse_1", "evse", "get_info")
            round_trips.append((time.perf_counter() - started) * 1e6)
        plug_to_session, swipe_to_relay = [], []
        for index in range(sessions):
            watcher.session_started.clear()
            watcher.relay_closed.clear()
            sent = time.perf_counter()
            await probe.call("board_1", "ev", "plug_in")
            await asyncio.wait_for(watcher.session_started.wait(), 10)
            plug_to_session.append((watcher.stamp["session_started"] - sent) * 1e6)
            await until(lambda: watcher.charger_state == "waiting_for_authorization")
            sent = time.perf_counter()
            await probe.call("tokens", "input", "present_token", {"id_token": "BENCH1"})
            await asyncio.wait_for(watcher.relay_closed.wait(), 10)
            swipe_to_relay.append((watcher.stamp["relay_closed"] - sent) * 1e6)
            await probe.call("evse_1", "evse", "stop_transaction", {"reason": "Local"})
            await probe.call("board_1", "ev", "unplug")
            await until(lambda: watcher.charger_state == "idle")
            if (index + 1) % 50 == 0:
                print(f"  {index + 1}/{sessions} sessions", flush=True)
    rtt50, rtt99 = percentiles(round_trips)
    print(f"bus cmd round trip (probe -> evse_1.get_info)  p50 {rtt50:8.0f} us  p99 {rtt99:8.0f} us")
    for name, samples in (("plug -> session_started", plug_to_session), ("swipe -> relay closed", swipe_to_relay)):
        p50, p99 = percentiles(samples)
        print(f"{name:<44} p50 {p50:8.0f} us  p99 {p99:8.0f} us   = {p50 / rtt50:4.1f} / {p99 / rtt50:4.1f} "
              "bus round trips (p50 / p99, in units of the p50 round trip)")
    print("goal: swipe -> relay p99 <= 5 bus round trips")


def main(sessions: int) -> None:
    port = free_port()
    if find_mosquitto():
        broker = start_mosquitto_subprocess(port)
    else:
        broker = subprocess.Popen([sys.executable, "-m", "chargepoint.broker", "--port", str(port)],
                                  stdout=subprocess.PIPE)
        assert broker.stdout is not None
        broker.stdout.readline()
    with tempfile.TemporaryDirectory(prefix="chargepoint-bench-") as folder:
        (Path(folder) / "allowlist.yaml").write_text("tokens:\n  - BENCH1\n")
        wiring = Path(folder) / "station.yaml"
        wiring.write_text(WIRING.format(port=port, folder=folder))
        station = subprocess.Popen([sys.executable, "-m", "chargepoint", "--log-level", "WARNING", "run",
                                    str(wiring)], cwd=ROOT)
        try:
            print(f"{sessions} sessions on a simulated station (one process, mosquitto on loopback)", flush=True)
            asyncio.run(measure(port, sessions))
        finally:
            station.terminate()
            station.wait(10)
            stop_process(broker)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    main(parser.parse_args().sessions)
