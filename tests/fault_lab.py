"""Fault injection against a recording CSMS: the peer with switchable faults, and the checker over its recording.

The CSMS speaks just enough OCPP 1.6-J (Boot, Heartbeat, Status, Authorize, Start/Stop, MeterValues) and, like
SteVe, answers a retransmitted StartTransaction (same connectorId, idTag, timestamp, meterStart) with the
transactionId it already gave. A CALL counts as processed when the CSMS did not refuse it with a CALLERROR: in
``silent`` and ``drop`` modes it was processed, only the answer never reached the station.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from helpers import Broker, chargepoint_cmd, subprocess_env, write_wiring
from ocpp16_lab import ocpp_station
from scenario import Lab
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargepoint.busprobe import BusProbe
from chargepoint.cli import main as chargepoint_main
from chargepoint.module import CmdError
from chargepoint.timestamps import utc_now

FAULT_MODES = ("normal", "down", "silent", "callerror", "drop")
StartKey = tuple[int, str, str]
"""connectorId, idTag, timestamp: one station session."""


@dataclass
class RecordedCall:
    received: float
    """time.monotonic() when the frame was read."""
    action: str
    payload: dict[str, Any]
    mode: str
    """The fault mode the CSMS was in: the CALL was processed unless it is ``callerror``."""
    transaction_id: int | None = None
    """StartTransaction only: the id this CALL got (or would have got, had the answer arrived)."""

    @property
    def processed(self) -> bool:
        return self.mode != "callerror"


@dataclass
class RecordingCsms:
    """``ws://127.0.0.1:<port>/<id>``; ``set_mode`` switches the fault mode while it runs."""

    port: int = 0
    mode: str = "normal"
    calls: list[RecordedCall] = field(default_factory=list)
    connections: int = 0
    first_transaction_id: int = 100
    _ids: dict[tuple[int, str, str, int], int] = field(default_factory=dict)
    _server: Server | None = None
    _sockets: set[ServerConnection] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._next_id = itertools.count(self.first_transaction_id)

    async def start(self) -> None:
        self._server = await serve(self._serve, "127.0.0.1", self.port, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def set_mode(self, mode: str) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown CSMS fault mode {mode!r}; one of {FAULT_MODES}")
        if mode == "down":
            await self.stop()
        elif self._server is None:
            await self.start()
        self.mode = mode

    def calls_of(self, action: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.action == action]

    async def wait_call(self, action: str, count: int = 1, timeout: float = 20.0) -> RecordedCall:
        deadline = time.monotonic() + timeout
        while len(found := self.calls_of(action)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {action} x{count} within {timeout} s; got {[c.action for c in self.calls]}")
            await asyncio.sleep(0.05)
        return found[count - 1]

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        self._sockets.add(ws)
        try:
            async for text in ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    await self._on_call(ws, frame[1], frame[2], frame[3])
        except ConnectionClosed:
            pass  # the station went away, or a fault closed it
        finally:
            self._sockets.discard(ws)

    async def _on_call(self, ws: ServerConnection, message_id: str, action: str, payload: dict[str, Any]) -> None:
        call = RecordedCall(time.monotonic(), action, payload, self.mode)
        self.calls.append(call)
        if self.mode == "callerror":
            await ws.send(json.dumps([4, message_id, "InternalError", "fault injected", {}]))
            return
        answer = self._answer(call)
        if self.mode == "silent":
            return
        if self.mode == "drop":
            ws.transport.abort()
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps([3, message_id, answer]))

    def _answer(self, call: RecordedCall) -> dict[str, Any]:
        accepted = {"status": "Accepted"}
        if call.action == "BootNotification":
            return {"status": "Accepted", "currentTime": utc_now(), "interval": 300}
        if call.action == "Heartbeat":
            return {"currentTime": utc_now()}
        if call.action == "Authorize":
            return {"idTagInfo": accepted}
        if call.action == "StartTransaction":
            p = call.payload
            key = (p["connectorId"], p["idTag"], p["timestamp"], p["meterStart"])
            if key not in self._ids:
                self._ids[key] = next(self._next_id)
            call.transaction_id = self._ids[key]
            return {"transactionId": call.transaction_id, "idTagInfo": accepted}
        if call.action == "StopTransaction":
            return {"idTagInfo": accepted}
        return {}


@dataclass
class CheckReport:
    transactions: int = 0
    lost: int = 0
    duplicated: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"transactions={self.transactions} lost={self.lost} duplicated={self.duplicated} "
                f"violations={len(self.violations)}")


def moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def check(calls: list[RecordedCall], station_sessions: set[StartKey]) -> CheckReport:
    """The CSMS's recording against the sessions the station started (seen on the bus)."""
    report = CheckReport()
    starts: dict[int, dict[str, Any]] = {}
    by_session: dict[StartKey, set[int]] = defaultdict(set)
    stops: dict[int, set[str]] = defaultdict(set)
    last_time: dict[int, str] = {}
    for call in calls:
        p = call.payload
        if call.action == "StartTransaction" and call.processed and call.transaction_id is not None:
            starts[call.transaction_id] = p
            by_session[(p["connectorId"], p["idTag"], p["timestamp"])].add(call.transaction_id)
            last_time.setdefault(call.transaction_id, p["timestamp"])
            continue
        if call.action not in ("StopTransaction", "MeterValues") or "transactionId" not in p:
            continue
        tx_id = p["transactionId"]
        if tx_id not in starts:
            report.violations.append(f"{call.action} with transactionId {tx_id} the CSMS never gave: {p}")
            continue
        times = [v["timestamp"] for v in p["meterValue"]] if call.action == "MeterValues" else [p["timestamp"]]
        for sample in p.get("transactionData", []):  # the Stop's own samples: within the transaction
            if not moment(starts[tx_id]["timestamp"]) <= moment(sample["timestamp"]) <= moment(p["timestamp"]):
                report.violations.append(f"transaction {tx_id}: transactionData at {sample['timestamp']} outside "
                                         f"{starts[tx_id]['timestamp']}..{p['timestamp']}")
        for stamp in times:
            if moment(stamp) < moment(last_time[tx_id]):
                report.violations.append(f"transaction {tx_id}: {call.action} at {stamp} arrived after "
                                         f"{last_time[tx_id]}")
            else:
                last_time[tx_id] = stamp
        if call.action == "StopTransaction" and call.processed:
            stops[tx_id].add(json.dumps({k: p[k] for k in ("meterStop", "timestamp", "reason") if k in p}))
            if p["meterStop"] < starts[tx_id]["meterStart"]:
                report.violations.append(f"transaction {tx_id}: meterStop {p['meterStop']} < meterStart "
                                         f"{starts[tx_id]['meterStart']}")
    report.transactions = len(starts)
    for tx_id in starts:
        if len(stops[tx_id]) > 1:
            report.duplicated += 1
            report.violations.append(f"transaction {tx_id}: {len(stops[tx_id])} different stops {stops[tx_id]}")
        elif not stops[tx_id]:
            report.violations.append(f"transaction {tx_id}: no StopTransaction ({starts[tx_id]})")
            report.lost += 1
    for session, ids in by_session.items():
        if len(ids) > 1:
            report.duplicated += len(ids) - 1
            report.violations.append(f"session {session}: {len(ids)} transactions {sorted(ids)}")
    for session in station_sessions - set(by_session):
        report.lost += 1
        report.violations.append(f"session {session} started on the station; no StartTransaction at the CSMS")
    return report


FAULTS = ("none", "kill", "broker", "down", "silent", "callerror", "drop")


def station_sessions(events: list[dict[str, Any]]) -> set[StartKey]:
    """Every transaction the station reported on the bus, keyed like its StartTransaction."""
    sessions: set[StartKey] = set()
    for event in events:
        started = event["timestamp"] if event["type"] == "transaction_started" else event.get("transaction_started_at")
        if event["type"] in ("transaction_started", "transaction_finished", "session_resumed") and started:
            sessions.add((event["evse_id"], event["id_token"], started))
    return sessions


def fault_wiring(folder: Path, broker_port: int, csms_port: int, *, session_resume: str, evse_count: int = 1,
                 attempts: int = 50, retry_interval_s: int = 1) -> Path:
    """The ocpp16_lab station, persisting meter values often, with the given TransactionMessage* values."""
    modules = ocpp_station(folder, csms_port, evse_count=evse_count,
                           evse_config=f", session_resume: {session_resume}, meter_persist_interval_s: 0.2")
    initial = folder / "ocpp16-initial.yaml"
    initial.write_text(initial.read_text() + f"  TransactionMessageAttempts: {attempts}\n"
                       f"  TransactionMessageRetryInterval: {retry_interval_s}\n")
    return write_wiring(folder, broker_port, modules)


def queued_messages(wiring: Path) -> int:
    """How many messages `chargepoint ocpp queue` shows (0 before the queue file exists)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        if chargepoint_main(["ocpp", "queue", "--config", str(wiring), "--json", "--all"]) != 0:
            return 0
    return len(json.loads(out.getvalue())["messages"])


class StationProcess:
    """`chargepoint run` in its own process, killed with SIGKILL and started again on demand."""

    def __init__(self, wiring: Path) -> None:
        self.wiring = wiring
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self._log: IO[bytes] = (wiring.parent / "station.log").open("ab")

    def start(self) -> None:
        self.process = subprocess.Popen(chargepoint_cmd("run", str(self.wiring)), env=subprocess_env(),
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class FaultDriver:
    """Sessions through the Lab with faults at random points; every choice comes from ``random.Random(seed)``."""

    def __init__(self, seed: int, broker: Broker, csms: RecordingCsms, station: StationProcess, lab: Lab,
                 evse_count: int = 1) -> None:
        self.rng = random.Random(seed)
        self.broker, self.csms, self.station, self.lab = broker, csms, station, lab
        self.evse_count = evse_count
        self.steps: list[str] = []
        self.tokens = itertools.count(1)

    def note(self, step: str) -> None:
        self.steps.append(step)

    async def tolerant(self, action: Any) -> None:
        """A lab action that a fault in progress may make fail; the checker judges the outcome."""
        with contextlib.suppress(CmdError, TimeoutError):
            await action

    async def online(self, timeout: float = 40.0) -> None:
        def accepted(payload: bytes) -> bool:
            value = json.loads(payload)
            return bool(value["connected"]) and value["registration"] == "Accepted"

        await self.lab.probe.wait_for("cp/ocpp/main/var/connection", accepted, timeout)

    async def restart_station(self) -> None:
        self.station.start()
        await self.lab.probe.wait_station_ready(40)

    async def end_session(self, evse: int, token: str) -> None:
        if self.rng.random() < 0.5:
            self.note(f"swipe {token} to stop")
            await self.tolerant(self.lab.swipe(token))
            await asyncio.sleep(0.3)
        self.note(f"unplug {evse}")
        await self.tolerant(self.lab.unplug(evse))

    async def round(self) -> None:
        evse = self.rng.randint(1, self.evse_count)
        token = f"T{next(self.tokens):04d}"
        await self.online()
        self.note(f"plug {evse}, swipe {token}")
        await self.tolerant(self.lab.unplug(evse))
        await self.tolerant(self.lab.wait_charger_state(evse, "idle", timeout=10))
        await self.tolerant(self.lab.plug(evse))
        await self.tolerant(self.lab.swipe(token))
        await self.tolerant(self.lab.wait_charger_state(evse, "charging", timeout=10))
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        fault = self.rng.choice(FAULTS)
        end_during_fault = fault != "kill" and self.rng.random() < 0.5
        self.note(f"fault {fault}" + (" (session ends meanwhile)" if end_during_fault else ""))
        if fault == "kill":
            self.station.kill()
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self.restart_station()
        elif fault == "broker":
            await asyncio.to_thread(self.broker.stop)
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            await asyncio.to_thread(self.broker.start)
            assert self.lab.probe.bus is not None
            await self.lab.probe.bus.wait_connected(20)
            await asyncio.sleep(1.0)  # the station's modules reconnect too
        elif fault != "none":
            await self.csms.set_mode(fault)
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        if end_during_fault:
            await self.end_session(evse, token)
        if fault in ("down", "silent", "callerror", "drop"):
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await self.csms.set_mode("normal")
        if not end_during_fault:
            await self.end_session(evse, token)

    async def drain(self, wiring: Path, timeout: float = 90.0) -> None:
        """CSMS normal, station up, everything unplugged, until the queue is empty (bounded)."""
        self.note("drain")
        await self.csms.set_mode("normal")
        await self.online()
        for evse in range(1, self.evse_count + 1):
            await self.tolerant(self.lab.unplug(evse))
            # a swipe whose answer came after the unplug leaves an authorization waiting for a plug-in:
            # it ends with auth's connection_timeout_s (30 s in the lab station)
            await self.lab.wait_charger_state(evse, "idle", timeout=45)
        deadline = time.monotonic() + timeout
        while queued_messages(wiring) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue not empty after {timeout} s; steps: {self.steps}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)


async def run_fault_iterations(folder: Path, broker: Broker, seed: int, rounds: int, *, evse_count: int = 1,
                               session_resume: str | None = None) -> tuple[CheckReport, FaultDriver]:
    """One station, ``rounds`` sessions with random faults, then the drain and the check."""
    rng = random.Random(seed)
    resume = session_resume or rng.choice(["resume", "power_loss"])
    csms = RecordingCsms()
    await csms.start()
    wiring = fault_wiring(folder, broker.port, csms.port, session_resume=resume, evse_count=evse_count)
    station = StationProcess(wiring)
    try:
        async with BusProbe("127.0.0.1", broker.port) as probe:
            probe.watch("cp/ocpp/main/var/connection")
            lab = Lab(probe, evse_count)
            driver = FaultDriver(rng.randrange(2**32), broker, csms, station, lab, evse_count)
            driver.note(f"session_resume={resume}")
            await driver.restart_station()
            for _ in range(rounds):
                await driver.round()
            await driver.drain(wiring)
            events = [event for evse_events in lab.events.values() for event in evse_events]
            return check(csms.calls, station_sessions(events)), driver
    finally:
        station.stop()
        await csms.stop()
