"""The ocpp16 module in a running station against a real OCPP 1.6 central system on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from helpers import Broker
from ocpp.v16 import call
from ocpp.v16.enums import AuthorizationStatus, RegistrationStatus
from ocpp16_lab import Csms, Lab, in_ocpp_station


def test_boot_accepted_then_status_of_every_connector(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 2)
        actions = csms.actions()
        assert actions[0] == "BootNotification"
        boot = csms.calls("BootNotification")[0]
        assert (boot["chargePointVendor"], boot["chargePointModel"]) == ("chargepoint", "SIL")
        statuses = {p["connectorId"]: p["status"] for p in csms.calls("StatusNotification")}
        assert statuses == {0: "Available", 1: "Available", 2: "Available"}
        connection = json.loads(await lab.probe.wait_for(
            "cp/ocpp/main/var/connection", lambda p: json.loads(p)["registration"] == "Accepted"))
        assert connection["connected"] and connection["csms_url"].endswith("/CP-1")

    in_ocpp_station(broker, tmp_path, scenario, evse_count=2)


def test_boot_pending_answers_csms_calls_sends_nothing_then_accepted(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.boot_answers = [RegistrationStatus.pending]
    csms.boot_interval = 1
    answers: list[object] = []

    async def get_configuration_at_once(peer: object) -> None:  # SteVe asks before Boot is answered
        answers.append(await peer.call(call.GetConfiguration(key=["HeartbeatInterval"])))  # type: ignore[attr-defined]

    csms.on_connect = get_configuration_at_once

    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("BootNotification", count=2)
        assert csms.actions()[:2] == ["BootNotification", "BootNotification"]  # nothing else while Pending
        await csms.wait_call("StatusNotification")
        assert answers and answers[0].configuration_key == [  # type: ignore[attr-defined]
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]

    in_ocpp_station(broker, tmp_path, scenario, csms=csms)


def test_local_session_authorize_start_meter_values_stop(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        await lab.plug(1)
        await lab.swipe("AA11")
        assert (await csms.wait_call("Authorize"))["idTag"] == "AA11"
        start = await csms.wait_call("StartTransaction")
        assert (start["connectorId"], start["idTag"]) == (1, "AA11")
        await lab.wait_charger_state(1, "charging")
        sample = await csms.wait_call("MeterValues", timeout=10)
        assert sample["transactionId"] == 4711
        values = sample["meterValue"][0]["sampledValue"]
        measured = {(v.get("measurand", "Energy.Active.Import.Register"), v.get("phase")) for v in values}
        assert {("Energy.Active.Import.Register", None), ("Current.Import", "L1"), ("Voltage", "L1-N")} <= measured
        await lab.swipe("AA11")
        stop = await csms.wait_call("StopTransaction")
        assert stop["transactionId"] == 4711
        assert stop["meterStop"] >= start["meterStart"]
        assert stop.get("reason", "Local") == "Local"
        contexts = [v["sampledValue"][0]["context"] for v in stop["transactionData"]]
        assert contexts == ["Transaction.Begin", "Transaction.End"]
        await csms.wait_call("StatusNotification", lambda p: p["status"] == "Finishing")
        await lab.unplug(1)
        await csms.wait_call("StatusNotification", lambda p: p["status"] == "Available", count=2)
        log = (tmp_path / "state" / "ocpp" / "ocpp-messages.jsonl").read_text().splitlines()
        assert {json.loads(line)["direction"] for line in log} == {"in", "out"}

    in_ocpp_station(broker, tmp_path, scenario)


def test_unknown_action_gets_not_implemented_and_binary_is_ignored(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification")
        await csms.sockets[-1].send('[2,"x-1","FooBar",{}]')
        await csms.sockets[-1].send(b"\x00\x01")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not any(f[0] == 4 and f[1] == "x-1" for f in csms.frames) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        [error] = [f for f in csms.frames if f[0] == 4 and f[1] == "x-1"]
        assert error[2] == "NotImplemented"
        result = await csms.peer.call(call.ClearCache())
        assert result.status == "Accepted"  # still connected and answering

    in_ocpp_station(broker, tmp_path, scenario)


def test_boot_rejected_answers_nothing_then_boots_again(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.boot_answers = [RegistrationStatus.rejected]
    csms.boot_interval = 2
    unanswered: list[bool] = []

    async def ask_while_rejected(peer: object) -> None:
        await asyncio.sleep(0.5)  # after the Rejected answer
        try:
            await asyncio.wait_for(peer.call(call.GetConfiguration()), 1)  # type: ignore[attr-defined]
        except TimeoutError:
            unanswered.append(True)

    csms.on_connect = ask_while_rejected

    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification")
        assert csms.actions()[:2] == ["BootNotification", "BootNotification"]
        assert unanswered == [True]

    in_ocpp_station(broker, tmp_path, scenario, csms=csms)


def test_blocked_tag_is_refused_and_invalid_start_is_deauthorized(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.start_overrides = {"CC33": AuthorizationStatus.invalid}

    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        await lab.plug(1)
        await lab.swipe("BLOCKED1")
        assert (await csms.wait_call("Authorize"))["idTag"] == "BLOCKED1"
        await asyncio.sleep(0.5)
        assert csms.calls("StartTransaction") == []
        await lab.swipe("CC33")
        start = await csms.wait_call("StartTransaction")
        stop = await csms.wait_call("StopTransaction")
        assert (start["idTag"], stop["transactionId"], stop["reason"]) == ("CC33", 4711, "DeAuthorized")

    in_ocpp_station(broker, tmp_path, scenario, csms=csms)


def test_fault_status_carries_the_error_text_in_info(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        await lab.fault(1, "rcd")
        faulted = await csms.wait_call("StatusNotification", lambda p: p["status"] == "Faulted")
        assert faulted["connectorId"] == 1
        assert faulted["errorCode"] == "GroundFailure"
        assert "rcd" in faulted.get("info", "").lower(), faulted

    in_ocpp_station(broker, tmp_path, scenario)
