"""Reset Hard with a transaction running (the station a separate process that the reset command kills, as a
reboot would), every TriggerMessage, and UnlockConnector in each situation, against a real central system."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from helpers import Broker, chargepoint_cmd, run, subprocess_env, write_wiring
from ocpp.v16 import call
from ocpp16_lab import Csms, Lab, in_ocpp_station, ocpp_station

from chargepoint.busprobe import BusProbe

SETTLE_S = 0.5  # after the requested message: room for anything else a trigger would wrongly send


def start_station(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(chargepoint_cmd("run", str(path)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_hard_reset_stops_the_transaction_with_reason_hard_reset_before_the_reboot(broker: Broker,
                                                                                   tmp_path: Path) -> None:
    csms = Csms()
    reboot = json.dumps({"reset_hard_command": ["sh", "-c", "kill -9 $PPID"]})  # the station process dies at once
    processes: list[subprocess.Popen[bytes]] = []

    async def main() -> None:
        async with csms.running(), BusProbe("127.0.0.1", broker.port) as probe:
            path = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port, with_system=True,
                                                                    system_config=reboot))
            processes.append(start_station(path))
            lab = Lab(probe)
            await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1, timeout=20)
            await lab.plug(1)
            await lab.swipe("AA11")
            await csms.wait_call("StartTransaction")
            await lab.wait_charger_state(1, "charging")
            assert (await csms.peer.call(call.Reset(type="Hard"))).status == "Accepted"
            code = await asyncio.wait_for(asyncio.to_thread(processes[0].wait), 20)
            assert code == -9  # the reset command ran ...
            [stop] = csms.calls("StopTransaction")  # ... after the StopTransaction was on the wire
            assert (stop["transactionId"], stop["reason"]) == (4711, "HardReset")

            processes.append(start_station(path))  # the host is back
            await csms.wait_call("BootNotification", count=2, timeout=20)
            assert await probe.call("system", "main", "get_boot_reason", timeout=10) == "remote_reset"
            boot_at = [i for i, f in enumerate(csms.frames) if f[0] == 2 and f[2] == "BootNotification"][-1]
            await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1 and any(
                f[3] is p for f in csms.frames[boot_at:]))
            [status] = [f[3] for f in csms.frames[boot_at:] if f[0] == 2 and f[2] == "StatusNotification"
                        and f[3]["connectorId"] == 1]
            assert status["status"] == "Preparing"  # the cable is still in; no transaction came back
            assert len(csms.calls("StopTransaction")) == 1  # the transaction was closed once, before the reset

    try:
        run(main(), timeout=60)
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


async def trigger(csms: Csms, message: str, connector_id: int | None, expected: int) -> list[list[Any]]:
    """Send TriggerMessage; the CALLs the station sent after answering Accepted (waits for ``expected`` of them)."""
    before = len(csms.frames)
    answer = await csms.peer.call(call.TriggerMessage(requested_message=message, connector_id=connector_id))
    assert answer.status == "Accepted", (message, connector_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len([f for f in csms.frames[before:] if f[0] == 2]) < expected and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(SETTLE_S)
    return [f for f in csms.frames[before:] if f[0] == 2]


def test_every_trigger_message_sends_exactly_the_requested_message(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 2)
        await asyncio.sleep(SETTLE_S)

        sent = await trigger(csms, "BootNotification", None, 1)
        # the accepted Boot is followed by the status snapshot the module sends after every accepted Boot
        assert [f[2] for f in sent][:1] == ["BootNotification"] and sent[0][3]["chargePointModel"] == "SIL"
        assert {f[2] for f in sent[1:]} <= {"StatusNotification"}
        assert [f[2] for f in await trigger(csms, "Heartbeat", None, 1)] == ["Heartbeat"]
        for message in ("FirmwareStatusNotification", "DiagnosticsStatusNotification"):
            sent = await trigger(csms, message, None, 1)
            assert [(f[2], f[3]) for f in sent] == [(message, {"status": "Idle"})]  # nothing ran: not busy

        sent = await trigger(csms, "StatusNotification", 2, 1)
        assert [(f[2], f[3]["connectorId"], f[3]["status"]) for f in sent] == [("StatusNotification", 2, "Available")]
        sent = await trigger(csms, "StatusNotification", 0, 1)
        assert [(f[2], f[3]["connectorId"]) for f in sent] == [("StatusNotification", 0)]
        sent = await trigger(csms, "StatusNotification", None, 3)
        assert [(f[2], f[3]["connectorId"]) for f in sent] == [("StatusNotification", c) for c in (0, 1, 2)]

        sent = await trigger(csms, "MeterValues", 2, 1)
        assert [(f[2], f[3]["connectorId"]) for f in sent] == [("MeterValues", 2)]
        assert "transactionId" not in sent[0][3]  # no transaction runs there
        assert {v.get("context") for v in sent[0][3]["meterValue"][0]["sampledValue"]} == {"Trigger"}
        sent = await trigger(csms, "MeterValues", None, 2)
        assert [(f[2], f[3]["connectorId"]) for f in sent] == [("MeterValues", 1), ("MeterValues", 2)]

        before = len(csms.frames)
        for message in ("MeterValues", "StatusNotification"):
            refused = await csms.peer.call(call.TriggerMessage(requested_message=message, connector_id=3))
            assert refused.status == "Rejected"
        await asyncio.sleep(SETTLE_S)
        assert [f for f in csms.frames[before:] if f[0] == 2] == []

    in_ocpp_station(broker, tmp_path, scenario, evse_count=2, with_system=True)


def test_unlock_connector_idle_charging_jammed_and_without_a_lock(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 2)
        board = "cp/board_1/board/var/lock_state"
        lab.probe.watch(board)
        assert (await csms.peer.call(call.UnlockConnector(connector_id=1))).status == "Unlocked"
        assert (await csms.peer.call(call.UnlockConnector(connector_id=2))).status == "NotSupported"  # no lock

        await lab.plug(1)
        await lab.swipe("AA11")
        await csms.wait_call("StartTransaction")
        await lab.wait_charger_state(1, "charging")
        await lab.probe.wait_for(board, lambda p: json.loads(p) == "locked", 5)
        assert (await csms.peer.call(call.UnlockConnector(connector_id=1))).status == "Unlocked"
        stop = await csms.wait_call("StopTransaction")
        assert (stop["transactionId"], stop["reason"]) == (4711, "UnlockCommand")
        await lab.probe.wait_for(board, lambda p: json.loads(p) == "unlocked", 5)
        assert not lab.relay_closed(1)

        await lab.unplug(1)
        await lab.fault(1, "lock_fault")
        assert (await csms.peer.call(call.UnlockConnector(connector_id=1))).status == "UnlockFailed"
        assert len(csms.calls("StopTransaction")) == 1

    in_ocpp_station(broker, tmp_path, scenario, evse_count=2, boards_without_lock=(2,))
