"""The small OCPP 1.6-J central system (simulators/csms) as a station and a test lab see it, over loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import ROOT, run, subprocess_env
from hypothesis import given
from hypothesis import strategies as st
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from chargepoint.csmscli import main as csms_main
from chargepoint.timestamps import parse_rfc3339, to_rfc3339, utc_now
from simulators.csms import (
    STEVE_PATH_PREFIX,
    CentralSystem,
    HttpApi,
    Policy,
    PolicyError,
    Station,
    Store,
    parse_stations,
    parse_tags,
)
from simulators.csms.policy import OpenTransaction, admit, station_id_from_path, stop_problems

TAGS_YAML = """
tags:
  GOOD: {status: Accepted, parentIdTag: FLEET}
  GOOD2: {status: Accepted, parentIdTag: FLEET}
  BLOCKED: Blocked
  OLD: {status: Accepted, expiryDate: "2020-01-01T00:00:00Z"}
"""


class LabStation(ChargePoint):
    """A minimal station: answers the central system's calls and keeps every frame it receives."""

    def __init__(self, station_id: str, connection: ClientConnection) -> None:
        super().__init__(station_id, connection, response_timeout=10)
        self.frames: list[list[Any]] = []
        self.remote_starts: list[dict[str, Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(json.loads(raw_msg))
        await super().route_message(raw_msg)

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **extra: Any) -> call_result.RemoteStartTransaction:
        self.remote_starts.append({"id_tag": id_tag, **extra})
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.get_configuration)
    def on_get_configuration(self, **_: Any) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(configuration_key=[{"key": "HeartbeatInterval", "readonly": False,
                                                                "value": "300"}])

    async def boot(self) -> call_result.BootNotification:
        return await self.call(call.BootNotification(charge_point_model="Lab", charge_point_vendor="Test"))

    async def start_tx(self, id_tag: str, meter_start: int) -> call_result.StartTransaction:
        return await self.call(call.StartTransaction(connector_id=1, id_tag=id_tag, meter_start=meter_start,
                                                     timestamp=utc_now()))

    async def stop_tx(self, transaction_id: int, meter_stop: int, id_tag: str | None = None) -> Any:
        return await self.call(call.StopTransaction(meter_stop=meter_stop, timestamp=utc_now(),
                                                    transaction_id=transaction_id, id_tag=id_tag))


@asynccontextmanager
async def running_csms(db: Path, policy: Policy) -> AsyncIterator[tuple[CentralSystem, HttpApi]]:
    store = Store(db)
    csms = CentralSystem(policy, store, port=0, response_timeout=5)
    await csms.start()
    api = HttpApi(csms, port=0)
    api.start()
    try:
        yield csms, api
    finally:
        api.close()
        await csms.close()
        store.close()


@asynccontextmanager
async def station(csms: CentralSystem, station_id: str = "CP1", password: str | None = None,
                  user: str | None = None) -> AsyncIterator[LabStation]:
    headers = {}
    if password is not None:
        token = base64.b64encode(f"{user or station_id}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    async with connect(csms.url + quote(station_id, safe=""), subprotocols=["ocpp1.6"],
                       additional_headers=headers) as connection:
        lab = LabStation(station_id, connection)
        task = asyncio.create_task(lab.start())
        try:
            yield lab
        finally:
            task.cancel()


def http(api: HttpApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def tags() -> dict[str, Any]:
    return parse_tags(TAGS_YAML, "tags.yaml")


# -- plain mode -------------------------------------------------------------------------------

def test_boot_answer_and_interval_come_from_the_station_table(tmp_path: Path) -> None:
    stations = parse_stations("CP-A: {interval: 60}\nCP-P: {boot: Pending, interval: 5}\nCP-R: {boot: Rejected}\n",
                              "stations.yaml")

    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", Policy(stations=stations, accept_unknown_stations=False)) \
                as (csms, api):
            answers = {}
            for station_id in ("CP-A", "CP-P", "CP-R"):
                async with station(csms, station_id) as lab:
                    answers[station_id] = await lab.boot()
            assert (answers["CP-A"].status, answers["CP-A"].interval) == ("Accepted", 60)
            assert (answers["CP-P"].status, answers["CP-P"].interval) == ("Pending", 5)
            assert answers["CP-R"].status == "Rejected"
            assert abs(parse_rfc3339(answers["CP-A"].current_time) - datetime.now(UTC)) < timedelta(seconds=30)
            with pytest.raises(InvalidStatus) as refused:
                async with station(csms, "STRANGER"):
                    pass
            assert refused.value.response.status_code == 404
            _, listed = await asyncio.to_thread(http, api, "GET", "/stations")
            assert {s["id"]: s["bootStatus"] for s in listed} == {"CP-A": "Accepted", "CP-P": "Pending",
                                                                  "CP-R": "Rejected"}

    run(scenario(), 20)


def test_authorize_answers_from_the_tag_list(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", Policy(tags=tags())) as (csms, _), station(csms) as lab:
            await lab.boot()
            good = await lab.call(call.Authorize(id_tag="GOOD"))
            assert good.id_tag_info["status"] == "Accepted"
            assert good.id_tag_info["parent_id_tag"] == "FLEET"
            for id_tag, status in (("BLOCKED", "Blocked"), ("OLD", "Expired"), ("NOBODY", "Invalid")):
                answer = await lab.call(call.Authorize(id_tag=id_tag))
                assert answer.id_tag_info["status"] == status, id_tag

    run(scenario(), 20)


def test_transaction_ids_increase_and_stay_unique_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "csms.sqlite"

    async def scenario() -> None:
        async with running_csms(db, Policy(tags=tags())) as (csms, api), station(csms) as lab:
            await lab.boot()
            first = await lab.start_tx("GOOD", 1000)
            second = await lab.start_tx("NOBODY", 50)
            assert first.id_tag_info["status"] == "Accepted"
            assert second.id_tag_info["status"] == "Invalid"
            assert second.transaction_id > first.transaction_id > 0
            stopped = await lab.stop_tx(first.transaction_id, 1800, "GOOD2")
            assert stopped.id_tag_info["status"] == "Accepted"
            await lab.stop_tx(second.transaction_id, 10)
            await lab.stop_tx(first.transaction_id, 1900)  # again: recorded as a problem, first values kept
            unknown = await lab.stop_tx(99999, 10, "GOOD")  # answered normally, nothing recorded
            assert unknown.id_tag_info["status"] == "Accepted"
            _, txs = await asyncio.to_thread(http, api, "GET", "/transactions")
            by_id = {tx["transactionId"]: tx for tx in txs}
            assert set(by_id) == {first.transaction_id, second.transaction_id}
            assert by_id[first.transaction_id]["meterStop"] == 1800
            assert by_id[first.transaction_id]["problems"] == ["transaction already stopped"]  # not GOOD2: same parent
            assert by_id[second.transaction_id]["problems"] == ["meterStop below meterStart"]
        async with running_csms(db, Policy(tags=tags())) as (csms, _), station(csms) as lab:
            third = await lab.start_tx("GOOD", 0)
            assert third.transaction_id > second.transaction_id

    run(scenario(), 20)


def test_remote_start_through_the_http_api_reaches_the_station(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", Policy()) as (csms, api), station(csms) as lab:
            await lab.boot()
            status, answer = await asyncio.to_thread(http, api, "POST", "/stations/CP1/RemoteStartTransaction",
                                                     {"idTag": "APP1", "connectorId": 1})
            assert (status, answer) == (200, {"status": "Accepted"})
            assert lab.remote_starts == [{"id_tag": "APP1", "connector_id": 1}]
            status, answer = await asyncio.to_thread(http, api, "POST", "/stations/CP1/Reset", {"type": "Soft"})
            assert status == 502 and answer["errorCode"] == "NotImplemented"  # the lab station has no Reset
            status, answer = await asyncio.to_thread(http, api, "POST", "/stations/CP1/Reset", {"type": "Later"})
            assert status == 400 and "Reset" in answer["error"]
            status, answer = await asyncio.to_thread(http, api, "POST", "/stations/CP1/Heartbeat", {})
            assert status == 400
            status, answer = await asyncio.to_thread(http, api, "POST", "/stations/GHOST/ClearCache", {})
            assert status == 404 and "not connected" in answer["error"]

    run(scenario(), 20)


def test_every_message_is_recorded_with_direction_action_and_utc_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", Policy()) as (csms, api), station(csms) as lab:
            await lab.boot()
            await lab.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available"))
            await lab.call(call.Heartbeat())
            _, messages = await asyncio.to_thread(http, api, "GET", "/stations/CP1/messages")
            seen = [(m["direction"], m["type"], m["action"]) for m in messages]
            assert seen == [("in", "CALL", "BootNotification"), ("out", "CALLRESULT", "BootNotification"),
                            ("in", "CALL", "StatusNotification"), ("out", "CALLRESULT", "StatusNotification"),
                            ("in", "CALL", "Heartbeat"), ("out", "CALLRESULT", "Heartbeat")]
            assert messages[0]["payload"]["chargePointVendor"] == "Test"
            assert all(m["time"].endswith("Z") for m in messages)
            _, listed = await asyncio.to_thread(http, api, "GET", "/stations")
            assert listed[0]["connectors"]["1"]["status"] == "Available"

    run(scenario(), 20)


# -- SteVe mode -------------------------------------------------------------------------------

def steve_policy() -> Policy:
    return Policy(stations={"CP1": Station("CP1", password="s3cret"), "OPEN": Station("OPEN")}, tags=tags(),
                  accept_unknown_stations=False, steve=True, path_prefix="/steve/websocket/CentralSystemService/")


def test_steve_refuses_unknown_stations_and_bad_credentials(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", steve_policy()) as (csms, _):
            assert csms.url.endswith("/steve/websocket/CentralSystemService/")
            for station_id, password, user, expected in (("NOBODY", None, None, 404), ("CP1", None, None, 401),
                                                         ("CP1", "wrong", None, 401), ("CP1", "s3cret", "X", 401)):
                with pytest.raises(InvalidStatus) as refused:
                    async with station(csms, station_id, password, user):
                        pass
                assert refused.value.response.status_code == expected, (station_id, password, user)
            async with station(csms, "cp1", "s3cret") as lab:  # SteVe matches ids case-insensitively
                assert (await lab.boot()).status == "Accepted"

    run(scenario(), 20)


def test_steve_asks_for_the_configuration_before_answering_boot(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", steve_policy()) as (csms, api), \
                station(csms, "OPEN") as lab:
            boot = await lab.boot()
            assert boot.interval == 14400
            kinds = [(frame[0], frame[2] if frame[0] == 2 else None) for frame in lab.frames]
            assert kinds[:2] == [(2, "GetConfiguration"), (3, None)]
            transfer = await lab.call(call.DataTransfer(vendor_id="org.openchargealliance.iso15118pnc"))
            assert transfer.status == "Rejected"
            authorized = await lab.call(call.Authorize(id_tag="GOOD"))
            assert "expiry_date" in authorized.id_tag_info  # SteVe: now + hoursToExpire
            for _ in range(50):
                _, listed = await asyncio.to_thread(http, api, "GET", "/stations")
                if {s["id"]: s for s in listed}["OPEN"]["configuration"]:
                    break
                await asyncio.sleep(0.05)
            assert {s["id"]: s for s in listed}["OPEN"]["configuration"][0]["key"] == "HeartbeatInterval"

    run(scenario(), 20)


def test_steve_frame_checks_duplicate_ids_unknown_actions_null_payloads_and_binary(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", steve_policy()) as (csms, _):
            with pytest.raises(InvalidStatus) as refused:
                await connect(csms.url + "OPEN", subprotocols=["ocpp1.5"])
            assert refused.value.response.status_code == 404
            async with connect(csms.url + "OPEN", subprotocols=["ocpp1.6"]) as connection:
                get_configuration = json.loads(await connection.recv())
                assert get_configuration[2] == "GetConfiguration"
                await connection.send(json.dumps([3, get_configuration[1], {"configurationKey": []}]))

                async def exchange(frame: list[Any]) -> list[Any]:
                    await connection.send(json.dumps(frame))
                    return json.loads(await asyncio.wait_for(connection.recv(), 5))

                first = await exchange([2, "m1", "Heartbeat", None])  # SteVe reads null as {}
                assert first[0] == 3 and first[2]["currentTime"].endswith("Z")
                assert (await exchange([2, "m1", "Heartbeat", {}]))[:3] == [4, "m1", "ProtocolError"]
                assert (await exchange([2, "m2", "Foo", {}]))[:3] == [4, "m2", "NotImplemented"]
                assert (await exchange([2, "", "Heartbeat", {}]))[2] == "FormationViolation"
                await connection.send(b"\x00binary")
                await connection.wait_closed()
                assert connection.close_code == 1003

    run(scenario(), 20)


def test_plain_mode_answers_data_transfer_heartbeat_and_meter_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_csms(tmp_path / "csms.sqlite", Policy()) as (csms, api), station(csms) as lab:
            await lab.boot()
            assert (await lab.call(call.DataTransfer(vendor_id="lab"))).status == "Accepted"
            beat = await lab.call(call.Heartbeat())
            assert abs(parse_rfc3339(beat.current_time) - datetime.now(UTC)) < timedelta(seconds=30)
            sample = {"timestamp": utc_now(),
                      "sampledValue": [{"value": "1234", "measurand": "Energy.Active.Import.Register"}]}
            await lab.call(call.MeterValues(connector_id=1, meter_value=[sample]))
            await lab.call(call.FirmwareStatusNotification(status="Installed"))
            _, recorded = await asyncio.to_thread(http, api, "GET", "/stations/CP1/messages?action=MeterValues")
            assert recorded[0]["payload"]["meterValue"][0]["sampledValue"][0]["value"] == "1234"
            assert [m["direction"] for m in recorded] == ["in", "out"]

    run(scenario(), 20)


# -- command line -----------------------------------------------------------------------------

def test_cli_serve_prints_where_it_listens_serves_send_and_stops_on_sigterm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    process = subprocess.Popen([sys.executable, "-m", "simulators.csms", "--port", "0", "--api-port", "0",
                                "--db", str(tmp_path / "csms.sqlite"), "--tag", "CARD1"],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        ws_line = process.stdout.readline()
        api_line = process.stdout.readline()
        assert ws_line.startswith("csms: OCPP 1.6-J on ws://127.0.0.1:"), ws_line
        assert api_line.startswith("csms: HTTP API on http://127.0.0.1:"), api_line
        ws_url = ws_line.split(" on ", 1)[1].strip().removesuffix("<ChargePointId>")
        api_url = api_line.split(" on ", 1)[1].strip()

        async def scenario() -> tuple[int, str]:
            async with connect(ws_url + "CP9", subprotocols=["ocpp1.6"]) as connection:
                lab = LabStation("CP9", connection)
                task = asyncio.create_task(lab.start())
                await lab.boot()
                started = await lab.start_tx("CARD1", 10)
                assert started.id_tag_info["status"] == "Accepted"
                code = await asyncio.to_thread(csms_main, ["send", "CP9", "RemoteStartTransaction",
                                                           '{"idTag": "CARD1"}', "--api", api_url])
                task.cancel()
                return code, capsys.readouterr().out

        code, out = run(scenario(), 20)  # type: ignore[misc]
        assert code == 0 and json.loads(out) == {"status": "Accepted"}
        assert csms_main(["sessions", "--api", api_url]) == 0
        assert json.loads(capsys.readouterr().out)[0]["idTag"] == "CARD1"
        assert csms_main(["send", "CP9", "Reset", "not json", "--api", api_url]) == 2
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
        assert process.returncode == 0 and "stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_cli_serve_rejects_a_bad_tag_file_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "tags.csv"
    bad.write_text("idTag,status\nA1,Accepted\nB2,Maybe\n")
    result = subprocess.run([sys.executable, "-m", "simulators.csms", "--port", "0", "--api-port", "-1",
                             "--tags", str(bad)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2
    assert f"{bad}:3" in result.stderr and "Maybe" in result.stderr


# -- pure policy ------------------------------------------------------------------------------

def test_tag_files_in_csv_and_yaml_agree() -> None:
    from_csv = parse_tags("idTag,status,parentIdTag,expiryDate\nGOOD,Accepted,FLEET,\nBLOCKED,Blocked,,\n", "t.csv")
    from_yaml = parse_tags("GOOD: {parentIdTag: FLEET}\nBLOCKED: Blocked\n", "t.yaml")
    assert from_csv == from_yaml
    with pytest.raises(PolicyError, match=r"t\.yaml: tag 'X'.*expiryDate"):
        parse_tags("X: {expiryDate: tomorrow}", "t.yaml")
    with pytest.raises(PolicyError, match=r"station 'A'.*boot"):
        parse_stations("A: {boot: Maybe}", "s.yaml")


station_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda text: text == text.strip())


@given(station_ids, st.sampled_from(["/", "/ocpp/", "/steve/websocket/CentralSystemService/"]))
def test_the_station_id_is_the_percent_decoded_last_segment(station_id: str, prefix: str) -> None:
    assert station_id_from_path(prefix + quote(station_id, safe="") + "?x=1", prefix) == station_id


moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


@given(moments, st.integers(0, 10**9), st.integers(0, 10**6), st.integers(0, 3600))
def test_a_stop_in_order_has_no_problem_and_a_falling_meter_always_has_one(start: datetime, meter_start: int,
                                                                           used: int, seconds: int) -> None:
    tx = OpenTransaction(1, "GOOD", meter_start, start)
    stop = start + timedelta(seconds=seconds)
    assert stop_problems(Policy(tags=tags()), tx, "GOOD", meter_start + used, stop, stop) == []
    problems = stop_problems(Policy(tags=tags()), tx, "GOOD", meter_start - used - 1, stop, stop)
    assert "meterStop below meterStart" in problems
    assert stop_problems(Policy(), tx, "OTHER", meter_start, stop, stop) == [
        "stop idTag is neither the start idTag nor in its group"]
    assert to_rfc3339(stop).endswith("Z")


@given(st.text(min_size=0, max_size=12), st.text(min_size=0, max_size=12), st.booleans())
def test_only_the_station_id_with_its_password_gets_in(user: str, password: str, steve: bool) -> None:
    prefix = STEVE_PATH_PREFIX if steve else "/"
    policy = Policy(stations={"CP1": Station("CP1", password="s3cret")}, accept_unknown_stations=False, steve=steve,
                    path_prefix=prefix)
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    admission = admit(policy, prefix + "CP1", header)
    expected = 101 if (user.lower() == "cp1" and password == "s3cret") else 401
    assert admission.status == expected
    assert admit(policy, prefix + "CP2", header).status == 404
    assert admit(policy, "/other/CP1", header).status == 404
    assert admit(policy, prefix + "%20CP1", header).status == (400 if steve else 404)
