"""The OCPP 1.6-J WebSocket side: admits stations, answers their calls, records every frame, sends CSMS calls."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from ocpp.charge_point import camel_to_snake_case, remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, validate_payload
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chargepoint.logs import EventLogger
from chargepoint.timestamps import parse_rfc3339, utc_now

from .policy import (
    Policy,
    Station,
    admit,
    boot_answer,
    id_tag_info,
    station_id_from_path,
    steve_call_rejection,
    stop_problems,
)
from .store import Store

log = EventLogger("csms")

SUBPROTOCOL = "ocpp1.6"
BOOT_WAIT_FOR_GET_CONFIGURATION_S = 5.0
STEVE_PING_INTERVAL_S = 15 * 60
# Every operation a 1.6 central system initiates (Core, Firmware, LocalAuthList, Reservation, RemoteTrigger,
# SmartCharging and the security extension).
SENDABLE_ACTIONS = (
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
    "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile",
    "TriggerMessage", "UnlockConnector", "UpdateFirmware", "CertificateSigned", "DeleteCertificate",
    "ExtendedTriggerMessage", "GetInstalledCertificateIds", "GetLog", "InstallCertificate", "SignedUpdateFirmware",
)
MESSAGE_TYPES = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR"}


class CsmsError(Exception):
    """A CSMS → station call that could not be made or answered; ``status`` is the HTTP status to report."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}


@dataclass
class StationState:
    """What the central system saw of one station (kept in memory; the messages are in the store)."""

    station_id: str
    connected: bool = False
    connected_at: str | None = None
    boot_status: str | None = None
    boot: dict[str, Any] = field(default_factory=dict)
    connectors: dict[int, dict[str, Any]] = field(default_factory=dict)
    configuration: list[dict[str, Any]] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.station_id, "connected": self.connected, "connectedAt": self.connected_at,
                "bootStatus": self.boot_status, "boot": self.boot,
                "connectors": {str(k): v for k, v in sorted(self.connectors.items())},
                "configuration": self.configuration}


def _now() -> datetime:
    return datetime.now(UTC)


class StationSession(ChargePoint):
    """One WebSocket connection of one station, with the central system's answers."""

    def __init__(self, station_id: str, connection: ServerConnection, csms: CentralSystem) -> None:
        super().__init__(station_id, connection, response_timeout=csms.response_timeout)
        self.csms = csms
        self.state = csms.station_state(station_id)
        self.get_configuration_sent = asyncio.Event()
        self._actions_by_message_id: dict[str, str] = {}
        self._seen_call_ids: set[str] = set()

    # -- recording -----------------------------------------------------------------------------
    def _record(self, direction: str, raw: str) -> None:
        try:
            frame = json.loads(raw)
            kind = MESSAGE_TYPES[frame[0]]
            message_id = str(frame[1])
        except (ValueError, KeyError, IndexError, TypeError):
            self.csms.store.record_message(self.id, direction, "INVALID", None, None, raw, utc_now())
            return
        if kind == "CALL" and len(frame) >= 4:
            action, payload = frame[2], frame[3]
            self._actions_by_message_id[message_id] = action
        else:
            action = self._actions_by_message_id.pop(message_id, None)
            payload = frame[2] if kind == "CALLRESULT" and len(frame) >= 3 else {
                "errorCode": frame[2] if len(frame) > 2 else None,
                "errorDescription": frame[3] if len(frame) > 3 else None,
                "errorDetails": frame[4] if len(frame) > 4 else None}
        self.csms.store.record_message(self.id, direction, kind, message_id, action, payload, utc_now())

    async def route_message(self, raw_msg: str | bytes) -> None:
        if isinstance(raw_msg, bytes):
            self.csms.store.record_message(self.id, "in", "INVALID", None, None, raw_msg.hex(), utc_now())
            if self.csms.policy.steve:
                await self._connection.close(1003, "binary frames are not supported")
                return
            raw_msg = raw_msg.decode("utf-8", "replace")
        else:
            self._record("in", raw_msg)
        if self.csms.policy.steve:
            raw_msg = await self._steve_precheck(raw_msg)
            if not raw_msg:
                return
        await super().route_message(raw_msg)

    async def _steve_precheck(self, raw_msg: str) -> str:
        """SteVe's CallErrors for bad CALLs; a ``null`` payload is read as ``{}``. An empty result: answered."""
        try:
            frame = json.loads(raw_msg)
        except ValueError:
            return raw_msg
        rejection = steve_call_rejection(frame, self._seen_call_ids)
        if rejection is not None:
            message_id, code, description = rejection
            await self._send(json.dumps([4, message_id, code, description, {}]))
            return ""
        if isinstance(frame, list) and frame and frame[0] == 2:
            self._seen_call_ids.add(frame[1])
            if frame[3] is None:
                return json.dumps([2, frame[1], frame[2], {}])
        return raw_msg

    async def _send(self, message: str) -> None:
        self._record("out", message)
        await super()._send(message)
        if '"GetConfiguration"' in message:
            self.get_configuration_sent.set()

    # -- station → CSMS ----------------------------------------------------------------------------
    @on(Action.boot_notification)
    async def on_boot_notification(self, **request: Any) -> call_result.BootNotification:
        if self.csms.policy.steve:
            try:
                await asyncio.wait_for(self.get_configuration_sent.wait(), BOOT_WAIT_FOR_GET_CONFIGURATION_S)
            except TimeoutError:
                log.warning("GetConfiguration not sent before Boot answer", station=self.id)
        station = self.csms.policy.station(self.id) or Station(self.id, boot_status="Rejected")
        answer = boot_answer(self.csms.policy, station, _now())
        self.state.boot_status = answer["status"]
        self.state.boot = snake_to_camel_case(request)
        log.info("boot", station=self.id, status=answer["status"], vendor=request.get("charge_point_vendor"),
                 model=request.get("charge_point_model"))
        return call_result.BootNotification(current_time=answer["currentTime"], interval=answer["interval"],
                                            status=answer["status"])

    @on(Action.heartbeat)
    def on_heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=utc_now())

    @on(Action.authorize)
    def on_authorize(self, id_tag: str) -> call_result.Authorize:
        info = id_tag_info(self.csms.policy, id_tag, _now())
        log.info("authorize", station=self.id, status=info["status"])
        return call_result.Authorize(id_tag_info=info)

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                             reservation_id: int | None = None) -> call_result.StartTransaction:
        active = self.csms.store.has_active_transaction(id_tag)
        info = id_tag_info(self.csms.policy, id_tag, _now(), has_active_tx=active)
        transaction_id = self.csms.store.start_transaction(self.id, connector_id, id_tag, info["status"], meter_start,
                                                           timestamp, reservation_id)
        log.info("transaction started", station=self.id, transaction_id=transaction_id, connector=connector_id,
                 status=info["status"])
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=info)

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, id_tag: str | None = None,
                            reason: str | None = None, **_: Any) -> call_result.StopTransaction:
        now = _now()
        tx = self.csms.store.open_transaction(self.id, transaction_id)
        try:
            stop_time, problems = parse_rfc3339(timestamp), []
        except ValueError:
            stop_time, problems = now, ["stop timestamp unreadable"]
        problems += stop_problems(self.csms.policy, tx, id_tag, meter_stop, stop_time, now)
        self.csms.store.stop_transaction(self.id, transaction_id, meter_stop, timestamp, id_tag, reason, problems)
        log.info("transaction stopped", station=self.id, transaction_id=transaction_id, problems=problems or None)
        info = id_tag_info(self.csms.policy, id_tag, now) if id_tag else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str,
                               **extra: Any) -> call_result.StatusNotification:
        if connector_id >= 0:
            self.state.connectors[connector_id] = {"status": status, "errorCode": error_code,
                                                   **snake_to_camel_case(extra)}
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="Rejected" if self.csms.policy.steve else "Accepted")

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()


class CentralSystem:
    """Serves stations on ``ws://host:port<prefix><ChargePointId>`` and makes CSMS calls to connected ones."""

    def __init__(self, policy: Policy, store: Store, host: str = "127.0.0.1", port: int = 9000,
                 response_timeout: float = 30.0) -> None:
        self.policy = policy
        self.store = store
        self.host = host
        self.port = port
        self.response_timeout = response_timeout
        self.sessions: dict[str, StationSession] = {}
        self._states: dict[str, StationState] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.policy.path_prefix}"

    def station_state(self, station_id: str) -> StationState:
        return self._states.setdefault(station_id, StationState(station_id))

    def stations(self) -> list[dict[str, Any]]:
        for station_id in self.policy.stations:
            self.station_state(station_id)
        return [state.as_json() for _, state in sorted(self._states.items())]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await serve(self._handle, self.host, self.port, subprotocols=[SUBPROTOCOL],
                                   process_request=self._process_request,
                                   ping_interval=STEVE_PING_INTERVAL_S if self.policy.steve else None)
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        log.info("listening", url=self.url, steve=self.policy.steve)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        admission = admit(self.policy, request.path, request.headers.get("Authorization"),
                          request.headers.get("Sec-WebSocket-Protocol"))
        if admission.status == 101:
            return None
        log.info("connection refused", path=request.path, status=admission.status, reason=admission.reason)
        response = connection.respond(HTTPStatus(admission.status), admission.reason + "\n")
        if admission.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="OCPP"'
        return response

    async def _handle(self, connection: ServerConnection) -> None:
        request_path = connection.request.path if connection.request else ""
        admission = admit(self.policy, request_path, connection.request.headers.get("Authorization")
                          if connection.request else None)
        station_id = admission.station_id or station_id_from_path(request_path, self.policy.path_prefix) or "?"
        if connection.subprotocol != SUBPROTOCOL:
            log.warning("no ocpp1.6 subprotocol", station=station_id)
            await connection.close(1002, "subprotocol ocpp1.6 required")
            return
        session = StationSession(station_id, connection, self)
        self.sessions[station_id] = session  # like SteVe: calls go to the last connection
        state = session.state
        state.connected, state.connected_at = True, utc_now()
        log.info("station connected", station=station_id)
        if self.policy.steve:
            self._spawn(self._steve_get_configuration(session))
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            if self.sessions.get(station_id) is session:
                del self.sessions[station_id]
                state.connected = False
            log.info("station disconnected", station=station_id)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _steve_get_configuration(self, session: StationSession) -> None:
        """SteVe asks every station for all its configuration keys as soon as it connects."""
        try:
            result = await session.call(call.GetConfiguration(), suppress=False)
        except (OCPPError, TimeoutError, ConnectionClosed) as exc:
            log.info("GetConfiguration failed", station=session.id, error=type(exc).__name__)
            return
        session.state.configuration = result.configuration_key

    async def send(self, station_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Call ``action`` on a connected station; the station's answer payload, or CsmsError."""
        if action not in SENDABLE_ACTIONS:
            raise CsmsError(400, f"{action!r} is not a central-system operation of OCPP 1.6;"
                                 f" one of: {', '.join(SENDABLE_ACTIONS)}")
        if not isinstance(payload, dict):
            raise CsmsError(400, "the payload must be a JSON object")
        session = self.sessions.get(station_id)
        if session is None:
            raise CsmsError(404, f"station {station_id!r} is not connected")
        try:
            await validate_payload(Call(unique_id="check", action=action, payload=payload), "1.6")
        except OCPPError as exc:
            raise CsmsError(400, f"invalid {action} payload: {exc.description}") from None
        try:
            request = getattr(call, action)(**camel_to_snake_case(payload))
        except TypeError as exc:
            raise CsmsError(400, f"invalid {action} payload: {exc}") from None
        try:
            result = await session.call(request, suppress=False)
        except TimeoutError:
            message = f"station {station_id!r} did not answer {action} in {self.response_timeout} s"
            raise CsmsError(504, message) from None
        except ConnectionClosed:
            raise CsmsError(502, f"station {station_id!r} disconnected before answering {action}") from None
        except OCPPError as exc:
            raise CsmsError(502, f"station answered {action} with CallError {exc.code}",
                            {"errorCode": exc.code, "errorDescription": exc.description,
                             "errorDetails": exc.details}) from None
        return snake_to_camel_case(remove_nones(serialize_as_dict(result)))
