"""Never lose a transaction: the CSMS goes away, the station is killed, and every message still arrives once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, chargepoint_cmd, run, running_station, subprocess_env, write_wiring
from ocpp16_lab import Csms, ocpp_station
from scenario import Lab

from chargepoint.busprobe import BusProbe
from chargepoint.cli import main as chargepoint_main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def queue_report(wiring: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert chargepoint_main(["ocpp", "queue", "--config", str(wiring), "--json", "--all"]) == 0
    return json.loads(capsys.readouterr().out)


def test_messages_queued_while_offline_arrive_in_order_with_the_csms_id(
        broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csms = Csms()
    csms.port = free_port()

    async def main() -> None:
        wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port))
        async with running_station(wiring), BusProbe("127.0.0.1", broker.port) as probe:
            lab = Lab(probe)
            async with csms.running():
                await csms.wait_call("StatusNotification")
                await lab.plug(1)
                await lab.swipe("AA11")
                start = await csms.wait_call("StartTransaction")
                await lab.wait_charger_state(1, "charging")
                await csms.wait_call("MeterValues", lambda p: p.get("transactionId") == 4711)
            await asyncio.sleep(2.5)  # offline: sampled MeterValues pile up
            await lab.swipe("AA11")
            await lab.wait_event(1, "transaction_finished")
            await asyncio.sleep(0.3)
            report = queue_report(wiring, capsys)
            waiting = [t["action"] for t in report["types"]]
            assert waiting[-1] == "StopTransaction" and "MeterValues" in waiting, report
            assert all("transactionId" not in m["payload"] for m in report["messages"])
            seen = len(csms.frames)
            async with csms.running():
                stop = await csms.wait_call("StopTransaction", timeout=20)
                later = [f for f in csms.frames[seen:] if f[0] == 2 and f[2] in ("MeterValues", "StopTransaction")]
                assert [f[2] for f in later][-1] == "StopTransaction" and len(later) >= 3
                assert all(f[3]["transactionId"] == 4711 for f in later)
                times = [f[3]["meterValue"][0]["timestamp"] for f in later if f[2] == "MeterValues"]
                assert times == sorted(times), "queued meter values arrive in the order they were taken"
                assert stop["meterStop"] >= start["meterStart"] and stop["reason"] == "Local"
                await asyncio.sleep(0.5)
                assert queue_report(wiring, capsys)["types"] == []
                assert len(csms.calls("StopTransaction")) == 1

    run(main(), timeout=90)


def start_station(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(chargepoint_cmd("run", str(path)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_while_offline_then_the_power_loss_stop_arrives_once(broker: Broker, tmp_path: Path) -> None:
    """Offline mid-transaction, kill -9, restart with the CSMS back: one Start, one PowerLoss Stop, the right id."""
    csms = Csms()
    csms.port = free_port()
    wiring = write_wiring(tmp_path, broker.port, ocpp_station(
        tmp_path, csms.port, evse_config=", session_resume: power_loss, meter_persist_interval_s: 0.2"))
    processes = [start_station(wiring)]

    async def main() -> None:
        async with BusProbe("127.0.0.1", broker.port) as probe:
            lab = Lab(probe)
            async with csms.running():
                await probe.wait_station_ready(20)
                await csms.wait_call("StatusNotification", timeout=20)
                await lab.plug(1)
                await lab.swipe("AA11")
                start = await csms.wait_call("StartTransaction")
                await lab.wait_charger_state(1, "charging")
                # the station has the transactionId (a Start whose answer is lost on the way is rightly sent again)
                await csms.wait_call("MeterValues", lambda p: p.get("transactionId") == 4711)
            await asyncio.sleep(1.5)
            os.kill(processes[0].pid, signal.SIGKILL)
            processes[0].wait(5)
            async with csms.running():
                processes.append(start_station(wiring))
                stop = await csms.wait_call("StopTransaction", timeout=30)
                await asyncio.sleep(1.5)
                assert len(csms.calls("StartTransaction")) == 1, "no second start for the same session"
                assert len(csms.calls("StopTransaction")) == 1
                assert stop["transactionId"] == 4711 and stop["reason"] == "PowerLoss"
                assert stop["meterStop"] >= start["meterStart"]

    try:
        run(main(), timeout=90)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_a_stored_message_the_schema_refuses_is_dropped_and_the_rest_still_goes(broker: Broker,
                                                                               tmp_path: Path) -> None:
    """A queue database with one bad payload (edited by hand, or written by an older version) must not stop
    the queue: the bad message is dropped with an error line, the ones after it are delivered in order."""
    from modules.ocpp16.queue_store import QueueStore
    from modules.ocpp16.transactions import Transaction
    from modules.ocpp16.tx_queue import QueuedMessage, TransactionQueue

    session = "stored-session"
    (tmp_path / "state" / "ocpp").mkdir(parents=True)
    store = QueueStore(tmp_path / "state" / "ocpp" / "ocpp-queue.sqlite3")
    queue = TransactionQueue(max_messages=10, transaction_ids={session: 77})
    good = {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-22T10:00:00.000Z",
                                              "sampledValue": [{"value": "1500", "unit": "Wh"}]}]}
    bad = {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-22T10:01:00.000Z",
                                             "sampledValue": [{"value": 1600}]}]}  # value must be a string
    stop = {"meterStop": 1700, "timestamp": "2026-11-22T10:02:00.000Z", "reason": "Local"}
    first = queue.add("MeterValues", good, session)[0]
    refused = QueuedMessage(first.seq + 1, "MeterValues", bad, session)  # the queue itself would refuse it
    rows = [(message, "2026-11-22T10:00:00.000Z") for message in (first, refused)]
    queue = TransactionQueue.restore([], {session: 77}, 10, refused.seq)
    rows.append((queue.add("StopTransaction", stop, session)[0], "2026-11-22T10:00:00.000Z"))
    store.write(add=rows, transactions=[Transaction(session, 1, "AA11", 1000, "2026-11-22T09:00:00.000Z", 77,
                                                    finished=True)])
    store.close()
    csms = Csms()

    async def main() -> None:
        async with csms.running():
            wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port))
            async with running_station(wiring):
                stopped = await csms.wait_call("StopTransaction", timeout=20)
                assert stopped["transactionId"] == 77 and stopped["meterStop"] == 1700
                replayed = [p for p in csms.calls("MeterValues") if p.get("transactionId") == 77]
                assert [p["meterValue"][0]["timestamp"] for p in replayed] == ["2026-11-22T10:00:00.000Z"]
                assert csms.actions().index("StopTransaction") > csms.actions().index("MeterValues")

    run(main(), timeout=40)
