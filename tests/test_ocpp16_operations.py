"""CSMS operations carried out by the ocpp16 module in a running station, against a real central system."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Broker
from ocpp.v16 import call
from ocpp16_lab import Csms, Lab, in_ocpp_station

from chargepoint.broker.launch import free_port
from modules.ocpp16.availability import AvailabilityBook


async def charging(csms: Csms, lab: Lab, token: str = "AA11") -> dict[str, object]:
    await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
    await lab.plug(1)
    await lab.swipe(token)
    start = await csms.wait_call("StartTransaction")
    await lab.wait_charger_state(1, "charging")
    return start


def test_remote_start_and_remote_stop(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        refused = await csms.peer.call(call.RemoteStartTransaction(id_tag="REMOTE1", connector_id=7))
        assert refused.status == "Rejected"
        accepted = await csms.peer.call(call.RemoteStartTransaction(id_tag="REMOTE1"))
        assert accepted.status == "Accepted"
        await lab.plug(1)
        start = await csms.wait_call("StartTransaction")
        assert (start["idTag"], start["connectorId"]) == ("REMOTE1", 1)
        assert csms.calls("Authorize") == []  # AuthorizeRemoteTxRequests is false: prevalidated
        await lab.wait_charger_state(1, "charging")
        unknown = await csms.peer.call(call.RemoteStopTransaction(transaction_id=99))
        assert unknown.status == "Rejected"
        stopped = await csms.peer.call(call.RemoteStopTransaction(transaction_id=4711))
        assert stopped.status == "Accepted"
        stop = await csms.wait_call("StopTransaction")
        assert (stop["transactionId"], stop["reason"]) == (4711, "Remote")

    in_ocpp_station(broker, tmp_path, scenario)


def test_change_configuration_round_trip_survives_a_restart(broker: Broker, tmp_path: Path) -> None:
    async def change(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification")
        assert (await csms.peer.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value="7"))).status \
            == "Accepted"
        assert (await csms.peer.call(call.ChangeConfiguration(key="NumberOfConnectors", value="3"))).status \
            == "Rejected"
        assert (await csms.peer.call(call.ChangeConfiguration(key="NoSuchKey", value="1"))).status == "NotSupported"
        secret = "0123456789abcdefXYZ!"
        assert (await csms.peer.call(call.ChangeConfiguration(key="AuthorizationKey", value=secret))).status \
            == "Accepted"
        log = (tmp_path / "state" / "ocpp" / "ocpp-messages.jsonl").read_text()
        assert secret not in log

    async def read_back(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification")
        answer = await csms.peer.call(call.GetConfiguration(key=["MeterValueSampleInterval", "AuthorizationKey"]))
        assert {"key": "MeterValueSampleInterval", "readonly": False, "value": "7"} in answer.configuration_key
        assert [k for k in answer.configuration_key if k["key"] == "AuthorizationKey"] == [
            {"key": "AuthorizationKey", "readonly": False}]

    in_ocpp_station(broker, tmp_path, change)
    in_ocpp_station(broker, tmp_path, read_back)


def test_soft_reset_stops_the_transaction_with_reason_soft_reset(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await charging(csms, lab)
        assert (await csms.peer.call(call.Reset(type="Soft"))).status == "Accepted"
        stop = await csms.wait_call("StopTransaction")
        assert (stop["transactionId"], stop["reason"]) == (4711, "SoftReset")

    in_ocpp_station(broker, tmp_path, scenario, with_system=True)


def test_unlock_and_change_availability_while_charging(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await charging(csms, lab)
        scheduled = await csms.peer.call(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert scheduled.status == "Scheduled"
        unlock = await csms.peer.call(call.UnlockConnector(connector_id=1))
        assert unlock.status in ("Unlocked", "NotSupported")
        if unlock.status == "Unlocked":
            stop = await csms.wait_call("StopTransaction")
            assert stop["reason"] == "UnlockCommand"
            await csms.wait_call("StatusNotification", lambda p: p["status"] == "Unavailable", timeout=15)
        assert (await csms.peer.call(call.UnlockConnector(connector_id=9))).status == "NotSupported"

    in_ocpp_station(broker, tmp_path, scenario)


def test_change_availability_persists_across_restarts(broker: Broker, tmp_path: Path) -> None:
    """OCPP 1.6 §5.2: a connector (or the station) the CSMS set Inoperative stays so after a restart, until the
    CSMS sets it Operative again; the EVSE managers, which start afresh, are told again."""
    def status_of(csms: Csms, connector: int) -> str:
        return [p["status"] for p in csms.calls("StatusNotification") if p["connectorId"] == connector][-1]

    async def switch_off(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 2)
        assert (await csms.peer.call(call.ChangeAvailability(connector_id=2, type="Inoperative"))).status \
            == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (2, "Unavailable"))

    async def still_off_then_station_off(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (2, "Unavailable"))
        await lab.wait_charger_state(1, "idle")
        assert lab.state(2)["enabled"] is False and lab.state(1)["enabled"] is True
        assert status_of(csms, 1) == "Available"
        assert (await csms.peer.call(call.ChangeAvailability(connector_id=2, type="Operative"))).status == "Accepted"
        assert (await csms.peer.call(call.ChangeAvailability(connector_id=0, type="Inoperative"))).status \
            == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (0, "Unavailable"))

    async def station_still_off(csms: Csms, lab: Lab) -> None:
        for connector in (0, 1, 2):
            await csms.wait_call("StatusNotification",
                                 lambda p, c=connector: (p["connectorId"], p["status"]) == (c, "Unavailable"))
        assert lab.state(1)["enabled"] is False and lab.state(2)["enabled"] is False
        assert (await csms.peer.call(call.ChangeAvailability(connector_id=0, type="Operative"))).status == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (2, "Available"))
        assert json.loads((tmp_path / "state" / "ocpp" / "availability.json").read_text()) == {"inoperative": []}

    for phase in (switch_off, still_off_then_station_off, station_still_off):
        in_ocpp_station(broker, tmp_path, phase, evse_count=2)


def test_the_availability_book_keeps_the_inoperative_connectors(tmp_path: Path) -> None:
    book = AvailabilityBook(tmp_path / "availability.json")
    book.record([0, 1, 2], operative=False)
    book.record([1], operative=True)
    again = AvailabilityBook(tmp_path / "availability.json")
    assert again.inoperative == {0, 2}
    assert again.needs_reapplying({"evse_id": 2, "availability_source": None}), "the EVSE forgot it"
    assert not again.needs_reapplying({"evse_id": 2, "availability_source": "csms"})
    assert not again.needs_reapplying({"evse_id": 1, "availability_source": None})
    (tmp_path / "availability.json").write_text("[1, 2]")
    assert AvailabilityBook(tmp_path / "availability.json").inoperative == set(), "not what this module writes"


def test_trigger_status_notification_and_smart_charging_refused(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        before = len(csms.calls("StatusNotification"))
        triggered = await csms.peer.call(call.TriggerMessage(requested_message="StatusNotification", connector_id=1))
        assert triggered.status == "Accepted"
        await csms.wait_call("StatusNotification", count=before + 1)
        assert csms.calls("StatusNotification")[before]["connectorId"] == 1
        assert (await csms.peer.call(call.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
        await csms.wait_call("Heartbeat")
        composite = await csms.peer.call(call.GetCompositeSchedule(connector_id=1, duration=60))
        assert composite.status == "Rejected"
        assert (await csms.peer.call(call.DataTransfer(vendor_id="acme"))).status == "UnknownVendorId"
        assert (await csms.peer.call(call.GetLocalListVersion())).list_version == 0  # no list sent yet

    in_ocpp_station(broker, tmp_path, scenario)


def test_server_closes_then_station_reconnects_and_sends_status_again(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        await csms.sockets[-1].close()
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1, count=2)
        assert len(csms.sockets) == 2
        assert csms.actions().count("BootNotification") == 1  # no Boot again after a reconnect
        await lab.probe.wait_for("cp/ocpp/main/var/connection", lambda p: json.loads(p)["connected"])

    in_ocpp_station(broker, tmp_path, scenario)


def test_reserve_now_and_cancel_through_the_reservation_module(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        reserved = await csms.peer.call(call.ReserveNow(connector_id=1, expiry_date="2099-01-01T00:00:00Z",
                                                        id_tag="AA11", reservation_id=5))
        assert reserved.status == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: p["status"] == "Reserved")
        assert (await csms.peer.call(call.CancelReservation(reservation_id=5))).status == "Accepted"
        assert (await csms.peer.call(call.CancelReservation(reservation_id=5))).status == "Rejected"
        await csms.wait_call("StatusNotification", lambda p: p["status"] == "Available", count=3)

    in_ocpp_station(broker, tmp_path, scenario, with_reservation=True)


def test_raising_the_security_profile_reconnects_with_basic_auth(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        assert csms.authorization_headers == [None]
        key = "0123456789ABCDEFGHIJ"
        assert (await csms.peer.call(call.ChangeConfiguration(key="AuthorizationKey", value=key))).status \
            == "Accepted"
        assert (await csms.peer.call(call.ChangeConfiguration(key="SecurityProfile", value="1"))).status \
            == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1, count=2)
        assert csms.authorization_headers[-1] is not None
        assert csms.authorization_headers[-1].startswith("Basic ")
        lowered = await csms.peer.call(call.ChangeConfiguration(key="SecurityProfile", value="0"))
        assert lowered.status == "Rejected"

    in_ocpp_station(broker, tmp_path, scenario)


def test_trigger_meter_values_during_a_transaction(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await charging(csms, lab)
        before = len(csms.calls("MeterValues"))
        assert (await csms.peer.call(call.TriggerMessage(requested_message="MeterValues", connector_id=1))).status \
            == "Accepted"
        triggered = await csms.wait_call("MeterValues", lambda p: p["meterValue"][0]["sampledValue"][0].get(
            "context") == "Trigger", count=1)
        assert triggered["transactionId"] == 4711 and len(csms.calls("MeterValues")) > before
        unknown = await csms.peer.call(call.TriggerMessage(requested_message="StatusNotification", connector_id=5))
        assert unknown.status == "Rejected"
        clock = await csms.wait_call("MeterValues", lambda p: p["meterValue"][0]["sampledValue"][0].get(
            "context") == "Sample.Clock")
        assert clock["transactionId"] == 4711
        assert clock["meterValue"][0]["timestamp"].endswith(".000Z")  # on the second: clock-aligned

    # without powermeter connections the values come from the evse session var (energy register only)
    in_ocpp_station(broker, tmp_path, scenario, sample_interval_s=0, aligned_interval_s=1, with_meters=False)


def test_firmware_and_diagnostics_failures_are_notified(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        await csms.peer.call(call.UpdateFirmware(location=f"{nowhere}/fw.bin", retrieve_date="2020-01-01T00:00:00Z",
                                                 retries=0))
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "DownloadFailed")
        diagnostics = await csms.peer.call(call.GetDiagnostics(location=f"{nowhere}/upload/", retries=0))
        assert diagnostics is not None
        await csms.wait_call("DiagnosticsStatusNotification", lambda p: p["status"] == "UploadFailed")
        triggered = await csms.peer.call(call.TriggerMessage(requested_message="FirmwareStatusNotification"))
        assert triggered.status == "Accepted"
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "DownloadFailed", count=2)

    in_ocpp_station(broker, tmp_path, scenario, with_system=True)


def test_station_wide_availability_boot_trigger_and_too_many_keys(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        off = await csms.peer.call(call.ChangeAvailability(connector_id=0, type="Inoperative"))
        assert off.status == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (0, "Unavailable"))
        await csms.wait_call("StatusNotification", lambda p: (p["connectorId"], p["status"]) == (1, "Unavailable"))
        on = await csms.peer.call(call.ChangeAvailability(connector_id=0, type="Operative"))
        assert on.status == "Accepted"
        await csms.wait_call("StatusNotification", lambda p: p["status"] == "Available", count=3)
        assert (await csms.peer.call(call.TriggerMessage(requested_message="BootNotification"))).status == "Accepted"
        await csms.wait_call("BootNotification", count=2)
        too_many = await csms.peer.call(call.GetConfiguration(key=[f"K{i}" for i in range(101)]))
        assert too_many is None  # a CALLERROR (suppressed by the ocpp package)
        [error] = [f for f in csms.frames if f[0] == 4]
        assert error[2] == "OccurenceConstraintViolation"

    in_ocpp_station(broker, tmp_path, scenario)
