"""A real OCPP 1.6 central system on loopback (the ``ocpp`` package) and a simulated station wired to it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from scenario import Lab, evse_pair
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import utc_now

BLOCKED_TAGS = {"BLOCKED1"}


class RecordingSocket:
    """The websocket as ``ChargePoint`` sees it, keeping every frame from the station."""

    def __init__(self, ws: ServerConnection, frames: list[list[Any]]) -> None:
        self.ws = ws
        self.frames = frames

    async def recv(self) -> str:
        text = await self.ws.recv()
        assert isinstance(text, str)
        self.frames.append(json.loads(text))
        return text

    async def send(self, text: str) -> None:
        await self.ws.send(text)


class CentralSystem(ChargePoint):
    def __init__(self, cp_id: str, socket: RecordingSocket, csms: Csms) -> None:
        super().__init__(cp_id, socket, response_timeout=10)
        self.csms = csms

    @on(Action.boot_notification)
    def boot(self, **_: Any) -> call_result.BootNotification:
        status = self.csms.boot_answers.pop(0) if self.csms.boot_answers else RegistrationStatus.accepted
        return call_result.BootNotification(current_time=utc_now(), interval=self.csms.boot_interval, status=status)

    @on(Action.heartbeat)
    def heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=utc_now())

    @on(Action.status_notification)
    def status(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.authorize)
    def authorize(self, id_tag: str) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=self.csms.tag_info(id_tag))

    @on(Action.start_transaction)
    def start_transaction(self, id_tag: str, **_: Any) -> call_result.StartTransaction:
        info = self.csms.tag_info(id_tag)
        if id_tag in self.csms.start_overrides:
            info = IdTagInfo(status=self.csms.start_overrides[id_tag])
        return call_result.StartTransaction(transaction_id=next(self.csms.transaction_ids), id_tag_info=info)

    @on(Action.stop_transaction)
    def stop_transaction(self, id_tag: str | None = None, **_: Any) -> call_result.StopTransaction:
        return call_result.StopTransaction(id_tag_info=None if id_tag is None else self.csms.tag_info(id_tag))

    @on(Action.meter_values)
    def meter_values(self, **_: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.firmware_status_notification)
    def firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()


class Csms:
    """Accepts stations on ``ws://127.0.0.1:<port>/<id>``; ``calls(action)`` lists what the station sent."""

    def __init__(self) -> None:
        self.frames: list[list[Any]] = []
        self.boot_answers: list[RegistrationStatus] = []
        self.boot_interval = 300
        self.transaction_ids = itertools.count(4711)
        self.start_overrides: dict[str, AuthorizationStatus] = {}  # idTagInfo of StartTransaction.conf
        self.peers: list[CentralSystem] = []
        self.sockets: list[ServerConnection] = []
        self.authorization_headers: list[str | None] = []  # per connection, in order
        self.port = 0
        self.on_connect: Callable[[CentralSystem], Any] | None = None

    @staticmethod
    def tag_info(id_tag: str) -> IdTagInfo:
        status = AuthorizationStatus.blocked if id_tag in BLOCKED_TAGS else AuthorizationStatus.accepted
        return IdTagInfo(status=status, parent_id_tag="FLEET")

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        peer = CentralSystem(ws.request.path.rsplit("/", 1)[-1], RecordingSocket(ws, self.frames), self)
        self.peers.append(peer)
        self.authorization_headers.append(ws.request.headers.get("Authorization"))
        self.sockets.append(ws)
        if self.on_connect is not None:
            asyncio.get_running_loop().create_task(self.on_connect(peer))
        with contextlib.suppress(ConnectionClosed):  # the station closed or reconnected
            await peer.start()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Csms]:
        async with serve(self._serve, "127.0.0.1", self.port, subprotocols=["ocpp1.6"]) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self

    @property
    def peer(self) -> CentralSystem:
        return self.peers[-1]

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [frame[3] for frame in self.frames if frame[0] == 2 and frame[2] == action]

    def actions(self) -> list[str]:
        return [frame[2] for frame in self.frames if frame[0] == 2]

    async def wait_call(self, action: str, match: Callable[[dict[str, Any]], bool] = lambda _: True,
                        timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [payload for payload in self.calls(action) if match(payload)]
            if len(found) >= count:
                return found[count - 1]
            if loop.time() > deadline:
                raise TimeoutError(f"no {action} (x{count}) matching within {timeout} s; seen: {self.actions()}")
            await asyncio.sleep(0.02)


def ocpp_station(folder: Path, csms_port: int, *, evse_count: int = 1, with_system: bool = False,
                 with_reservation: bool = False, sample_interval_s: int = 1, aligned_interval_s: int = 0,
                 with_meters: bool = True, ocpp_extra: str = "", system_config: str = "",
                 boards_without_lock: tuple[int, ...] = (), evse_config: str = "") -> str:
    """Boards, EVSE managers, manual tokens, auth validating through ocpp16, and ocpp16 against the CSMS.

    ``system_config``: the system module's config as a YAML flow mapping (with_system only);
    ``boards_without_lock``: EVSE numbers whose simulated board has no connector lock.
    """
    initial = folder / "ocpp16-initial.yaml"
    initial.write_text(f"values:\n  MeterValueSampleInterval: {sample_interval_s}\n  RetryBackoffWaitMinimum: 0\n"
                       f"  RetryBackoffRandomRange: 0\n  ClockAlignedDataInterval: {aligned_interval_s}\n"
                       "  MeterValuesSampledData: Energy.Active.Import.Register,Current.Import,Voltage\n"
                       "  StopTxnSampledData: Energy.Active.Import.Register\n")
    evses = ", ".join(f"evse_{i}.evse" for i in range(1, evse_count + 1))
    text = "".join(evse_pair(i, evse_config=evse_config) for i in range(1, evse_count + 1))
    for i in boards_without_lock:
        text = text.replace(f"config: {{evse_id: {i}, time_scale", f"config: {{has_lock: false, evse_id: {i}, "
                            "time_scale")
    text += (
        "  tokens:\n    module: token_manual\n"
        "  auth:\n    module: auth\n    config: {connection_timeout_s: 30, token_debounce_s: 0}\n"
        "    connections:\n      token_provider: [tokens.main, ocpp.auth_provider]\n"
        f"      token_validator: [ocpp.auth_validator]\n      evse_manager: [{evses}]\n"
        "  ocpp:\n    module: ocpp16\n"
        f"    config: {{csms_url: 'ws://127.0.0.1:{csms_port}', charge_point_id: CP-1, call_timeout_s: 5,\n"
        f"              boot_retry_s: 1, ocpp_config_file: '{initial}',\n"
        f"              message_log: ocpp-messages.jsonl{ocpp_extra}}}\n"
        f"    connections:\n      evse_manager: [{evses}]\n      auth: [auth.main]\n"
    )
    if with_meters:
        text += "      powermeter: [" + ", ".join(f"board_{i}.powermeter" for i in range(1, evse_count + 1)) + "]\n"
    if with_reservation:
        text += "      reservation: [reservation.main]\n"
    if with_system:
        text += "      system: [system.main]\n"
    if with_reservation:
        text += f"  reservation:\n    module: reservation\n    connections:\n      evse_manager: [{evses}]\n"
    if with_system:
        text += "  system:\n    module: system\n"
        if system_config:
            text += f"    config: {system_config}\n"
    return text


Scenario = Callable[[Csms, Lab], Awaitable[None]]


def in_ocpp_station(broker: Broker, tmp_path: Path, scenario: Scenario, *, csms: Csms | None = None,
                    evse_count: int = 1, **station: object) -> None:
    csms = csms or Csms()

    async def main() -> None:
        async with csms.running():
            modules = ocpp_station(tmp_path, csms.port, evse_count=evse_count, **station)  # type: ignore[arg-type]
            wiring = write_wiring(tmp_path, broker.port, modules)
            async with running_station(wiring), BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/main/var/connection")
                await scenario(csms, Lab(probe, evse_count))

    run(main(), timeout=60)
