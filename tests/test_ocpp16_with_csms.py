"""End to end: the simulated station with the ocpp16 module against our own CSMS (simulators/csms), plain and SteVe."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, run, running_station, write_wiring
from scenario import Lab, evse_pair

from chargepoint.busprobe import BusProbe
from chargepoint.logs import LineFormatter
from simulators.csms import STEVE_PATH_PREFIX, CentralSystem, HttpApi, Policy, Store, parse_stations, parse_tags

STATION_ID = "CP-E2E"
PASSWORD = "e2e-password-0123"  # not hex, so the station sends it as typed
TAGS = "CARD1: Accepted\nCARD2: Accepted\n"


@asynccontextmanager
async def csms_running(tmp_path: Path, *, steve: bool = False, stations: str = "", port: int = 0,
                       accept_unknown: bool = True) -> AsyncIterator[Csms]:
    policy = Policy(stations=parse_stations(stations, "stations.yaml") if stations else {},
                    tags=parse_tags(TAGS, "tags.yaml"), accept_unknown_stations=accept_unknown, steve=steve,
                    path_prefix=STEVE_PATH_PREFIX if steve else "/")
    store = Store(tmp_path / "csms.sqlite")
    server = CentralSystem(policy, store, port=port)
    await server.start()
    api = HttpApi(server, port=0)
    api.start()
    try:
        yield Csms(server, api)
    finally:
        api.close()
        await server.close()
        store.close()


class Csms:
    """The running CSMS, read and driven through its HTTP API as an operator would."""

    def __init__(self, server: CentralSystem, api: HttpApi) -> None:
        self.server = server
        self.api = api

    def _request(self, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async def get(self, path: str) -> Any:
        status, body = await asyncio.to_thread(self._request, path, None)
        assert status == 200, (path, status, body)
        return body

    async def send(self, action: str, payload: dict[str, Any]) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request, f"/stations/{STATION_ID}/{action}", payload)

    async def messages(self, action: str) -> list[dict[str, Any]]:
        return await self.get(f"/stations/{STATION_ID}/messages?action={action}&limit=1000")

    async def wait_message(self, action: str, match: Callable[[dict[str, Any]], bool] = lambda _: True,
                           timeout: float = 15.0) -> dict[str, Any]:
        """The first recorded frame of ``action`` (either direction) whose record satisfies ``match``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [m for m in await self.messages(action) if match(m)]
            if found:
                return found[0]
            if loop.time() > deadline:
                raise TimeoutError(f"CSMS recorded no matching {action} within {timeout} s")
            await asyncio.sleep(0.1)

    async def answer_to(self, call: dict[str, Any]) -> dict[str, Any]:
        """The CALLRESULT recorded for ``call`` (answers are recorded under the call's action)."""
        return await self.wait_message(call["action"], lambda m: m["messageId"] == call["messageId"]
                                       and m["type"] == "CALLRESULT")

    async def transactions(self) -> list[dict[str, Any]]:
        return await self.get(f"/transactions?station={STATION_ID}")


def ocpp_station(folder: Path, csms_url: str, *, ocpp_extra: str = "") -> str:
    """Board, EVSE manager, manual tokens, auth validating through ocpp16 (as config/sil.yaml), and ocpp16."""
    initial = folder / "ocpp16-initial.yaml"
    initial.write_text("values:\n  MeterValueSampleInterval: 1\n  ClockAlignedDataInterval: 0\n"
                       "  RetryBackoffWaitMinimum: 1\n  RetryBackoffRandomRange: 0\n  RetryBackoffRepeatTimes: 0\n")
    return evse_pair(1) + (
        "  tokens:\n    module: token_manual\n"
        "  auth:\n    module: auth\n    config: {connection_timeout_s: 30, token_debounce_s: 0}\n"
        "    connections:\n      token_provider: [tokens.main, ocpp.auth_provider]\n"
        "      token_validator: [ocpp.auth_validator]\n      evse_manager: [evse_1.evse]\n"
        "  ocpp:\n    module: ocpp16\n"
        f"    config: {{csms_url: '{csms_url}', charge_point_id: {STATION_ID}, call_timeout_s: 5,"
        f" boot_retry_s: 1, ocpp_config_file: '{initial}'{ocpp_extra}}}\n"
        "    connections:\n      evse_manager: [evse_1.evse]\n      auth: [auth.main]\n"
        "      powermeter: [board_1.powermeter]\n"
    )


Scenario = Callable[[Csms, Lab], Awaitable[None]]


def in_station(broker: Broker, tmp_path: Path, scenario: Scenario, *, steve: bool = False, stations: str = "",
               ocpp_extra: str = "") -> None:
    async def main() -> None:
        async with csms_running(tmp_path, steve=steve, stations=stations, accept_unknown=not steve) as csms:
            modules = ocpp_station(tmp_path, csms.server.url.rstrip("/"), ocpp_extra=ocpp_extra)
            async with running_station(write_wiring(tmp_path, broker.port, modules)), \
                    BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/main/var/connection")
                await probe.wait_for("cp/ocpp/main/var/connection",
                                     lambda p: json.loads(p)["registration"] == "Accepted", 15)
                await scenario(csms, Lab(probe))

    run(main(), timeout=60)


async def one_session(csms: Csms, lab: Lab, tag: str = "CARD1") -> dict[str, Any]:
    """Plug, swipe, charge until meter values arrive, swipe again, unplug; the CSMS's transaction record."""
    await lab.plug(1)
    await lab.wait_charger_state(1, "waiting_for_authorization")
    await lab.swipe(tag)
    await lab.wait_charger_state(1, "charging")
    start = await csms.wait_message("StartTransaction", lambda m: m["type"] == "CALLRESULT")
    transaction_id = start["payload"]["transactionId"]
    await csms.wait_message("MeterValues", lambda m: m["direction"] == "in"
                            and m["payload"].get("transactionId") == transaction_id)
    await lab.swipe(tag)
    await csms.wait_message("StopTransaction", lambda m: m["type"] == "CALLRESULT")
    await lab.unplug(1)
    await csms.wait_message("StatusNotification", lambda m: m["direction"] == "in" and m["payload"]["connectorId"] == 1
                            and m["payload"]["status"] == "Available" and m["seq"] > start["seq"])
    [record] = [t for t in await csms.transactions() if t["transactionId"] == transaction_id]
    return record


async def connector_statuses(csms: Csms) -> list[str]:
    """Connector 1's StatusNotification statuses, repeats of the same status collapsed."""
    statuses: list[str] = []
    for message in await csms.messages("StatusNotification"):
        payload = message["payload"]
        if message["direction"] == "in" and payload["connectorId"] == 1 and statuses[-1:] != [payload["status"]]:
            statuses.append(payload["status"])
    return statuses


def test_swipe_session_is_recorded_by_the_csms(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        record = await one_session(csms, lab)
        [start] = [m["payload"] for m in await csms.messages("StartTransaction") if m["direction"] == "in"]
        [stop] = [m["payload"] for m in await csms.messages("StopTransaction") if m["direction"] == "in"]
        assert stop["transactionId"] == record["transactionId"]
        assert (start["connectorId"], start["idTag"]) == (1, "CARD1")
        assert (record["idTag"], record["idTagStatus"], record["open"]) == ("CARD1", "Accepted", False)
        assert record["meterStart"] == start["meterStart"] and record["meterStop"] == stop["meterStop"]
        assert record["meterStop"] >= record["meterStart"]
        assert record["problems"] == []
        assert await connector_statuses(csms) == ["Available", "Preparing", "Charging", "Finishing", "Available"]

    in_station(broker, tmp_path, scenario)


def test_steve_profile_1_configuration_before_boot_session_and_rejected_data_transfer(
        broker: Broker, tmp_path: Path) -> None:
    stations = f"stations:\n  {STATION_ID}: {{password: {PASSWORD}}}\n"

    async def scenario(csms: Csms, lab: Lab) -> None:
        connection = json.loads(lab.probe.latest("cp/ocpp/main/var/connection") or b"{}")
        assert connection["csms_url"].endswith(f"/steve/websocket/CentralSystemService/{STATION_ID}")
        [station] = [s for s in await csms.get("/stations") if s["id"] == STATION_ID]
        assert station["bootStatus"] == "Accepted"
        assert any(key["key"] == "MeterValueSampleInterval" for key in station["configuration"])
        get_configuration = await csms.wait_message("GetConfiguration", lambda m: m["type"] == "CALL")
        boot_answer = await csms.wait_message("BootNotification", lambda m: m["type"] == "CALLRESULT")
        assert get_configuration["seq"] < boot_answer["seq"]  # asked while the station waited for its Boot answer
        assert (await csms.answer_to(get_configuration))["direction"] == "in"
        record = await one_session(csms, lab)
        assert record["problems"] == [] and record["meterStop"] >= record["meterStart"]
        answer = await lab.probe.call("ocpp", "main", "data_transfer", {"vendor_id": "com.example", "data": "hi"},
                                      timeout=15)
        assert answer["status"] == "Rejected"
        reply = await csms.wait_message("DataTransfer", lambda m: m["type"] == "CALLRESULT")
        assert reply["payload"]["status"] == "Rejected"

    in_station(broker, tmp_path, scenario, steve=True, stations=stations,
               ocpp_extra=f", security_profile: 1, authorization_key: '{PASSWORD}'")


def test_steve_unknown_station_keeps_retrying_until_registered(broker: Broker, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with csms_running(tmp_path, steve=True, accept_unknown=False) as csms:
            port = csms.server.port
            modules = ocpp_station(tmp_path, csms.server.url.rstrip("/"))
            async with running_station(write_wiring(tmp_path, broker.port, modules)) as manager, \
                    BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/main/var/connection")
                await asyncio.sleep(3.5)
                connection = probe.latest("cp/ocpp/main/var/connection")
                assert connection is None or not json.loads(connection)["connected"]
                assert await csms.messages("BootNotification") == []
                failures = [line for line in map(LineFormatter().format, caplog.records)
                            if "CSMS connection failed" in line]
                assert len(failures) >= 2 and all("404" in line for line in failures), failures
                assert manager.states and set(manager.states.values()) == {"ready"}, manager.states
                stations = f"stations:\n  {STATION_ID}: {{}}\n"
                await csms.server.close()
                async with csms_running(tmp_path, steve=True, accept_unknown=False, stations=stations,
                                        port=port) as registered:
                    await probe.wait_for("cp/ocpp/main/var/connection",
                                         lambda p: json.loads(p)["registration"] == "Accepted", 15)
                    boot = await registered.wait_message("BootNotification", lambda m: m["type"] == "CALLRESULT")
                    assert boot["payload"]["status"] == "Accepted"

    run(main(), timeout=60)


def test_remote_start_and_stop_through_the_csms_api(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: Csms, lab: Lab) -> None:
        await lab.plug(1)
        await lab.wait_charger_state(1, "waiting_for_authorization")
        status, answer = await csms.send("RemoteStartTransaction", {"idTag": "CARD2", "connectorId": 1})
        assert (status, answer) == (200, {"status": "Accepted"})
        await lab.wait_charger_state(1, "charging")
        start = await csms.wait_message("StartTransaction", lambda m: m["type"] == "CALLRESULT")
        transaction_id = start["payload"]["transactionId"]
        status, answer = await csms.send("RemoteStopTransaction", {"transactionId": transaction_id})
        assert (status, answer) == (200, {"status": "Accepted"})
        stop = await csms.wait_message("StopTransaction", lambda m: m["direction"] == "in")
        assert stop["payload"]["transactionId"] == transaction_id and stop["payload"].get("reason") == "Remote"
        await lab.wait_charger_state(1, "finishing", "waiting_for_authorization", "idle")
        [record] = await csms.transactions()
        assert (record["idTag"], record["stopReason"], record["problems"]) == ("CARD2", "Remote", [])

    in_station(broker, tmp_path, scenario)
