"""Station figures of bench/ocpp.py: resident memory, start -> BootNotification, plug-in -> StatusNotification.

Runs a copy of config/sil.yaml as `chargepoint run` (its own process; mosquitto on a free loopback port, a
temporary state_dir) against a small timestamping CSMS in this process. The CSMS stamps every frame with
``time.perf_counter()`` as it is read off the socket — the same system-wide monotonic clock the benchmark
uses to stamp the spawn and the bus commands — so "on the wire" means "received by the CSMS".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargepoint.broker.launch import find_mosquitto, free_port, start_mosquitto_subprocess, stop_process
from chargepoint.busprobe import BusProbe

ROOT = Path(__file__).resolve().parent.parent
SIL_WIRING = ROOT / "config" / "sil.yaml"
BOOT_TIMEOUT_S = 15.0
STATUS_TIMEOUT_S = 10.0
# the first plug-in after boot runs code paths for the first time (14-18 ms against ~3 ms later): not measured
WARMUP_CYCLES = 3


@dataclass
class StationFrame:
    """One CALL the station sent, with the perf_counter time it arrived."""

    received: float
    action: str
    payload: dict[str, Any]


@dataclass
class TimestampingCsms:
    """A minimal CSMS: accepts the boot, answers the station's calls, keeps every CALL with its arrival time."""

    frames: list[StationFrame] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "StartTransaction":
            return {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        return {}

    async def handle(self, connection: ServerConnection) -> None:
        try:
            async for raw in connection:
                received = time.perf_counter()
                message = json.loads(raw)
                if message[0] != 2:
                    continue
                _, message_id, action, payload = message
                self.frames.append(StationFrame(received, action, payload))
                self.arrived.set()
                await connection.send(json.dumps([3, message_id, self.answer(action, payload)]))
        except ConnectionClosed:
            pass  # the benchmark stops each station with SIGTERM; how the socket ends is not measured here

    def clear(self) -> None:
        self.frames.clear()

    async def wait_frame(self, action: str, since: int = 0, timeout: float = STATUS_TIMEOUT_S,
                         **fields: Any) -> StationFrame:
        """The first frame at index >= ``since`` with this action and these payload fields; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames[since:]:
                if frame.action == action and all(frame.payload.get(k) == v for k, v in fields.items()):
                    return frame
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {action} {fields} from the station within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)


def write_station_copy(folder: Path, mqtt_port: int, csms_port: int) -> Path:
    """config/sil.yaml with the bus port, state_dir and csms_url rewritten; its side files copied along."""
    wiring = yaml.safe_load(SIL_WIRING.read_text())
    wiring["settings"]["mqtt"].update(port=mqtt_port, broker="external")
    wiring["settings"]["state_dir"] = str(folder / "state")
    wiring["active_modules"]["ocpp"]["config"]["csms_url"] = f"ws://127.0.0.1:{csms_port}"
    for side_file in ("allowlist.yaml", "ocpp16.yaml"):
        shutil.copy(SIL_WIRING.parent / side_file, folder / side_file)
    target = folder / "sil.yaml"
    target.write_text(yaml.safe_dump(wiring, sort_keys=False))
    return target


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a station that forks helpers would hide memory from its own VmRSS)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def spawn_station(wiring: Path, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "chargepoint", "--log-level", "WARNING", "run", str(wiring)],
                            cwd=ROOT, stderr=stderr)


def report_station_stderr(path: Path) -> None:
    """The stations' warnings, once each, after the figures (so they do not split the table)."""
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        return
    print(f"  the stations wrote {len(lines)} stderr lines; distinct ones (timestamps cut):")
    seen: set[str] = set()
    for line in lines:
        text = re.sub(r" time=\S+", "", line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line)
        if text not in seen:
            seen.add(text)
            print(f"    {text[:160]}")


def stop_station(station: subprocess.Popen[bytes]) -> None:
    station.terminate()
    try:
        station.wait(10)
    except subprocess.TimeoutExpired:
        station.kill()
        station.wait(5)


async def connector_available(csms: TimestampingCsms, since: int) -> None:
    await csms.wait_frame("StatusNotification", since, connectorId=1, status="Available")


async def plug_cycles(csms: TimestampingCsms, probe: BusProbe, cycles: int) -> tuple[list[float], list[float]]:
    """Bus cmd round trips and plug-in -> StatusNotification(Preparing) delays (after the warm-up), both in µs."""
    round_trips = []
    for _ in range(max(200, cycles * 3)):
        started = time.perf_counter()
        await probe.call("evse_1", "evse", "get_info")
        round_trips.append((time.perf_counter() - started) * 1e6)
    plug_to_preparing = []
    for cycle in range(WARMUP_CYCLES + cycles):
        since = len(csms.frames)
        sent = time.perf_counter()
        await probe.call("board_1", "ev", "plug_in")
        preparing = await csms.wait_frame("StatusNotification", since, connectorId=1, status="Preparing")
        if cycle >= WARMUP_CYCLES:
            plug_to_preparing.append((preparing.received - sent) * 1e6)
        since = len(csms.frames)
        await probe.call("board_1", "ev", "unplug")
        await connector_available(csms, since)
    return round_trips, plug_to_preparing


async def measure(wiring: Path, mqtt_port: int, csms: TimestampingCsms, starts: int, cycles: int) -> None:
    boot_delays: list[float] = []
    memory_mb = children_mb = 0.0
    round_trips: list[float] = []
    plug_to_preparing: list[float] = []
    for start in range(starts):
        csms.clear()
        spawned = time.perf_counter()
        with (wiring.parent / "station-stderr.log").open("ab") as stderr:
            station = spawn_station(wiring, stderr)
        try:
            boot = await csms.wait_frame("BootNotification", timeout=BOOT_TIMEOUT_S)
            boot_delays.append(boot.received - spawned)
            if start < starts - 1:
                continue
            async with BusProbe("127.0.0.1", mqtt_port) as probe:
                await probe.wait_station_ready(30)
                await connector_available(csms, 0)
                await asyncio.sleep(1.0)
                memory_mb = resident_mb(station.pid)
                children_mb = sum(resident_mb(child) for child in child_pids(station.pid))
                round_trips, plug_to_preparing = await plug_cycles(csms, probe, cycles)
        finally:
            stop_station(station)
    rtt50, rtt99 = percentiles(round_trips)
    p50, p99 = percentiles(plug_to_preparing)
    boot_median = statistics.median(boot_delays)
    print("station running config/sil.yaml (`chargepoint run`, mosquitto on loopback, CSMS in this process)")
    row("resident memory (VmRSS), OCPP connected and booted",
        f"{memory_mb:8.1f} MB   (goal <= 60 MB; child processes: {children_mb:.1f} MB)")
    row(f"spawn -> BootNotification on the wire, {starts} starts",
        f"median {boot_median:.3f} s   max {max(boot_delays):.3f} s   (goal <= 1 s)")
    row("bus cmd round trip (probe -> evse_1.get_info)", f"p50 {rtt50:8.0f} µs   p99 {rtt99:8.0f} µs")
    row(f"plug-in -> StatusNotification(Preparing), {cycles} cycles (+{WARMUP_CYCLES} warm-up)",
        f"p50 {p50:8.0f} µs   p99 {p99:8.0f} µs")
    row("  in bus round trips (units of the p50 round trip)", f"p50 {p50 / rtt50:8.1f}      p99 {p99 / rtt50:8.1f}")


def row(label: str, figures: str) -> None:
    print(f"  {label:<66} {figures}")


async def run_with_csms(folder: Path, mqtt_port: int, starts: int, cycles: int) -> None:
    csms = TimestampingCsms()
    async with serve(csms.handle, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
        csms_port = next(iter(server.sockets)).getsockname()[1]
        wiring = write_station_copy(folder, mqtt_port, csms_port)
        await measure(wiring, mqtt_port, csms, starts, cycles)
    report_station_stderr(folder / "station-stderr.log")


def station_figures(starts: int = 5, cycles: int = 100) -> None:
    """Starts a broker, runs the station ``starts`` times, prints the figures; leaves no process or file behind."""
    mqtt_port = free_port()
    if find_mosquitto():
        broker = start_mosquitto_subprocess(mqtt_port)
    else:
        broker = subprocess.Popen([sys.executable, "-m", "chargepoint.broker", "--port", str(mqtt_port)],
                                  stdout=subprocess.PIPE)
        assert broker.stdout is not None
        broker.stdout.readline()
    try:
        with tempfile.TemporaryDirectory(prefix="chargepoint-bench-ocpp-") as folder:
            asyncio.run(run_with_csms(Path(folder), mqtt_port, starts, cycles))
    finally:
        stop_process(broker)
