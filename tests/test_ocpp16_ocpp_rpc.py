"""The station with the ocpp16 module against a second, independent CSMS: the strict npm ``ocpp-rpc`` server.

``tests/peers/ocpp-rpc/server.js`` validates every frame both ways against the OCPP 1.6 schemas and reports each
call it receives and each strict-mode failure as one JSON line; ``tools/bootstrap.sh test`` installs its packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import TESTS, Broker, run, running_station, write_wiring
from scenario import Lab, evse_pair

from chargepoint.busprobe import BusProbe

PEER = TESTS / "peers" / "ocpp-rpc"
NODE = shutil.which("node")
KNOWN_TAG = "CARD1"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (needed for the ocpp-rpc test peer)"),
    pytest.mark.skipif(not (PEER / "node_modules" / "ocpp-rpc").is_dir(),
                       reason="ocpp-rpc not installed: run tools/bootstrap.sh test (npm ci in tests/peers/ocpp-rpc)"),
]


class StrictCsms:
    """The node process: what it reported so far, and a way to make it call the station."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.records: list[dict[str, Any]] = []

    async def read_reports(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.records.append(json.loads(line))

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r["params"] for r in self.records if r["event"] == "call" and r["method"] == method]

    def validation_errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == "validation"]

    async def wait(self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0,
                   after: int = 0) -> dict[str, Any]:
        """The first report from position ``after`` on that satisfies ``match``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            found = [r for r in self.records[after:] if match(r)]
            if found:
                return found[0]
            await asyncio.sleep(0.02)
        raise TimeoutError(f"ocpp-rpc server reported no {what} within {timeout} s; reports: {self.records[-10:]}")

    async def wait_call(self, method: str, match: Callable[[dict[str, Any]], bool] = lambda _: True,
                        timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        record = await self.wait(lambda r: r["event"] == "call" and r["method"] == method and match(r["params"]),
                                 f"{method} call", timeout, after)
        return record["params"]

    async def call_station(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send ``method`` to the station; the server's report of the answer (event ``result`` or ``error``)."""
        assert self.process.stdin is not None
        already = len(self.records)
        self.process.stdin.write(json.dumps({"method": method, "params": params}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.wait(lambda r: r.get("method") == method and r["event"] in ("result", "error"),
                               f"answer to {method}", after=already)


@asynccontextmanager
async def strict_csms_running() -> AsyncIterator[StrictCsms]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(NODE, str(PEER / "server.js"), "0", KNOWN_TAG, cwd=PEER,
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    reader: asyncio.Task[None] | None = None
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert first.startswith("listening "), f"ocpp-rpc server did not start: {first!r}"
        csms = StrictCsms(process, int(first.split()[1]))
        reader = asyncio.get_running_loop().create_task(csms.read_reports())
        yield csms
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def ocpp_station(folder: Path, csms_port: int) -> str:
    initial = folder / "ocpp16-initial.yaml"
    initial.write_text("values:\n  MeterValueSampleInterval: 1\n  ClockAlignedDataInterval: 0\n"
                       "  RetryBackoffWaitMinimum: 1\n  RetryBackoffRandomRange: 0\n"
                       "  MeterValuesSampledData: Energy.Active.Import.Register,Current.Import,Voltage\n")
    return evse_pair(1) + (
        "  tokens:\n    module: token_manual\n"
        "  auth:\n    module: auth\n    config: {connection_timeout_s: 30, token_debounce_s: 0}\n"
        "    connections:\n      token_provider: [tokens.main, ocpp.auth_provider]\n"
        "      token_validator: [ocpp.auth_validator]\n      evse_manager: [evse_1.evse]\n"
        "  ocpp:\n    module: ocpp16\n"
        f"    config: {{csms_url: 'ws://127.0.0.1:{csms_port}', charge_point_id: CP-STRICT, call_timeout_s: 5,"
        f" boot_retry_s: 1, ocpp_config_file: '{initial}'}}\n"
        "    connections:\n      evse_manager: [evse_1.evse]\n      auth: [auth.main]\n"
        "      powermeter: [board_1.powermeter]\n"
    )


def in_station(broker: Broker, tmp_path: Path, scenario: Callable[[StrictCsms, Lab], Any]) -> None:
    async def main() -> None:
        async with strict_csms_running() as csms:
            wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port))
            async with running_station(wiring), BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/main/var/connection")
                await probe.wait_for("cp/ocpp/main/var/connection",
                                     lambda p: json.loads(p)["registration"] == "Accepted", 15)
                await scenario(csms, Lab(probe))
            assert csms.validation_errors() == []

    run(main(), timeout=60)


def test_station_boots_against_the_strict_server(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: StrictCsms, lab: Lab) -> None:
        connected = await csms.wait(lambda r: r["event"] == "connected", "connection")
        assert (connected["identity"], connected["protocol"]) == ("CP-STRICT", "ocpp1.6")
        [boot] = csms.calls("BootNotification")
        assert boot["chargePointVendor"] and boot["chargePointModel"]
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available")
        assert csms.validation_errors() == []

    in_station(broker, tmp_path, scenario)


def test_local_session_passes_strict_validation(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: StrictCsms, lab: Lab) -> None:
        await lab.plug(1)
        await lab.wait_charger_state(1, "waiting_for_authorization")
        await lab.swipe(KNOWN_TAG)
        await lab.wait_charger_state(1, "charging")
        start = await csms.wait_call("StartTransaction")
        assert (start["connectorId"], start["idTag"]) == (1, KNOWN_TAG)
        transaction_id = 1001  # the server's first id
        await csms.wait_call("MeterValues", lambda p: p.get("transactionId") == transaction_id)
        await lab.swipe(KNOWN_TAG)
        stop = await csms.wait_call("StopTransaction")
        assert stop["transactionId"] == transaction_id
        assert stop["meterStop"] >= start["meterStart"]
        reports_at_stop = len(csms.records)
        await lab.unplug(1)
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available",
                             after=reports_at_stop)
        assert [call["idTag"] for call in csms.calls("Authorize")] == [KNOWN_TAG]
        assert csms.validation_errors() == []

    in_station(broker, tmp_path, scenario)


def test_remote_start_and_stop_answers_are_schema_valid(broker: Broker, tmp_path: Path) -> None:
    async def scenario(csms: StrictCsms, lab: Lab) -> None:
        await lab.plug(1)
        await lab.wait_charger_state(1, "waiting_for_authorization")
        answer = await csms.call_station("RemoteStartTransaction", {"connectorId": 1, "idTag": KNOWN_TAG})
        assert answer == {"event": "result", "method": "RemoteStartTransaction", "result": {"status": "Accepted"}}
        start = await csms.wait_call("StartTransaction")
        assert start["idTag"] == KNOWN_TAG
        await lab.wait_charger_state(1, "charging")
        answer = await csms.call_station("RemoteStopTransaction", {"transactionId": 1001})
        assert answer == {"event": "result", "method": "RemoteStopTransaction", "result": {"status": "Accepted"}}
        stop = await csms.wait_call("StopTransaction")
        assert (stop["transactionId"], stop.get("reason")) == (1001, "Remote")
        unknown = await csms.call_station("RemoteStopTransaction", {"transactionId": 999999})
        assert unknown["result"] == {"status": "Rejected"}
        assert csms.validation_errors() == []

    in_station(broker, tmp_path, scenario)
