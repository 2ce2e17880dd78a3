"""The CSMS's operations (CSMS -> station CALLs), each answered from the station's modules.

A handler returns the confirmation payload, or (payload, follow-up): the follow-up runs after the answer is
on the wire (TriggerMessage sends the requested message, Reset stops transactions and then resets).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargepoint.module import CmdError
from chargepoint.timestamps import parse_rfc3339, to_rfc3339, utc_now

from .configuration import TooManyKeys
from .rpc import IncomingCall
from .schemas import OCCURENCE_CONSTRAINT_VIOLATION

if TYPE_CHECKING:
    from . import Ocpp16

FollowUp = Callable[[], Awaitable[None]]
Answer = dict[str, Any] | tuple[dict[str, Any], FollowUp]

SMART_CHARGING_ANSWERS = {"SetChargingProfile": {"status": "NotSupported"},
                          "ClearChargingProfile": {"status": "Unknown"},
                          "GetCompositeSchedule": {"status": "Rejected"}}
SUPPORTED_ACTIONS = frozenset({
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "DataTransfer",
    "GetConfiguration", "GetDiagnostics", "GetLocalListVersion", "RemoteStartTransaction",
    "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList", "TriggerMessage", "UnlockConnector",
    "UpdateFirmware", *SMART_CHARGING_ANSWERS})
# system interface status -> OCPP 1.6 FirmwareStatus / DiagnosticsStatus
FIRMWARE_STATUS = {"Idle": "Idle", "DownloadScheduled": "Idle", "Downloading": "Downloading",
                   "DownloadPaused": "Downloading", "Downloaded": "Downloaded", "DownloadFailed": "DownloadFailed",
                   "SignatureVerified": "Downloaded", "InvalidSignature": "InstallationFailed",
                   "InstallScheduled": "Downloaded", "Installing": "Installing", "InstallRebooting": "Installing",
                   "Installed": "Installed", "InstallationFailed": "InstallationFailed",
                   "InstallVerificationFailed": "InstallationFailed"}
DIAGNOSTICS_STATUS = {"Idle": "Idle", "Uploading": "Uploading", "Uploaded": "Uploaded"}
STOP_WAIT_S = 10.0


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


class CsmsOperations:
    def __init__(self, station: Ocpp16) -> None:
        self.station = station
        self.log = station.log

    async def handle(self, call: IncomingCall) -> None:
        link = self.station.link
        try:
            if call.action in SMART_CHARGING_ANSWERS:
                answer: Answer = SMART_CHARGING_ANSWERS[call.action]
            else:
                answer = await getattr(self, "_" + _snake(call.action))(call.payload)
        except TooManyKeys as exc:
            link.reply_error(call.message_id, OCCURENCE_CONSTRAINT_VIOLATION, str(exc))
            await link.flush()
            return
        except Exception as exc:  # any failure is an InternalError to the CSMS, never a crash
            self.log.error("CSMS operation failed", action=call.action, error=f"{type(exc).__name__}: {exc}")
            link.reply_error(call.message_id, "InternalError", f"{call.action} failed on the station")
            await link.flush()
            return
        payload, follow_up = answer if isinstance(answer, tuple) else (answer, None)
        self.log.info("CSMS operation answered", action=call.action, status=payload.get("status"))
        link.reply(call.message_id, payload)
        await link.flush()
        if follow_up is not None:
            await follow_up()

    def _evse(self, connector_id: int) -> Any:
        return self.station.evse_by_id.get(connector_id)

    # -- configuration ---------------------------------------------------------------------------
    async def _get_configuration(self, payload: dict[str, Any]) -> Answer:
        return self.station.store.get(payload.get("key")).payload()

    async def _change_configuration(self, payload: dict[str, Any]) -> Answer:
        station = self.station
        result = station.store.change(payload["key"], payload["value"])
        if not result.accepted:
            return {"status": result.status}
        key = result.key

        async def apply() -> None:
            profile = station.connection.settings.security_profile
            if key == "SecurityProfile" or (key == "AuthorizationKey" and profile >= 1):
                try:
                    settings = station.connection_settings()
                except ValueError as exc:
                    self.log.error("new connection settings unusable, keeping the old ones", key=key, error=str(exc))
                    return
                self.log.info("reconnecting with new credentials", key=key, security_profile=settings.security_profile)
                await station.connection.reconnect(settings)
            elif key == "WebSocketPingInterval":
                station.connection.set_ping_interval(float(station.ocpp.int(key)))
            elif key == "MinimumStatusDuration":
                station.status.minimum_status_duration_s = float(station.ocpp.int(key))
            elif key == "HeartbeatInterval":
                station._heartbeat_changed.set()

        return {"status": result.status}, apply

    async def _clear_cache(self, payload: dict[str, Any]) -> Answer:
        return {"status": "Accepted"}  # no authorization cache yet

    async def _data_transfer(self, payload: dict[str, Any]) -> Answer:
        known = payload["vendorId"] in self.station.config["data_transfer_vendor_ids"]
        return {"status": "Accepted" if known else "UnknownVendorId"}

    async def _get_local_list_version(self, payload: dict[str, Any]) -> Answer:
        return {"listVersion": -1}  # -1: no local authorization list (yet) on this station

    async def _send_local_list(self, payload: dict[str, Any]) -> Answer:
        return {"status": "NotSupported"}

    # -- transactions ----------------------------------------------------------------------------
    async def _remote_start_transaction(self, payload: dict[str, Any]) -> Answer:
        station = self.station
        if "chargingProfile" in payload:
            self.log.warning("RemoteStartTransaction with a charging profile rejected (no smart charging yet)")
            return {"status": "Rejected"}
        connector_id = payload.get("connectorId")
        if connector_id is not None:
            state = station.states.get(connector_id)
            if state is None or state["transaction_active"] or not state["enabled"]:
                return {"status": "Rejected"}
        elif not any(s["enabled"] and not s["transaction_active"] for s in station.states.values()):
            return {"status": "Rejected"}
        token: dict[str, Any] = {
            "id_token": payload["idTag"], "token_type": "central", "source": "ocpp",
            "prevalidated": not station.ocpp.bool("AuthorizeRemoteTxRequests"), "timestamp": utc_now()}
        if connector_id is not None:
            token["connectors"] = [connector_id]
        station.provides["auth_provider"].publish("token", token)
        return {"status": "Accepted"}

    async def _remote_stop_transaction(self, payload: dict[str, Any]) -> Answer:
        tx = self.station.book.by_transaction_id(payload["transactionId"])
        evse = None if tx is None else self._evse(tx.connector_id)
        if evse is None:
            return {"status": "Rejected"}
        stopped = await evse.try_call("stop_transaction", reason="Remote")
        return {"status": "Accepted" if stopped else "Rejected"}

    async def _reset(self, payload: dict[str, Any]) -> Answer:
        station = self.station
        systems = station.requires["system"]
        if not systems:
            return {"status": "Rejected"}
        kind = payload["type"]

        async def reset() -> None:
            reason = "SoftReset" if kind == "Soft" else "HardReset"
            for evse_id, state in list(station.states.items()):
                if state["transaction_active"]:
                    await station.evse_by_id[evse_id].try_call("stop_transaction", reason=reason)
            await self._wait_for_stops()
            result = await systems[0].try_call("reset", type=kind.lower(), requested_by="csms")
            self.log.info("reset requested", type=kind, accepted=result)

        return {"status": "Accepted"}, reset

    async def _wait_for_stops(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_S
        while loop.time() < deadline and (self.station.book.running() or self.station.rpc.queued
                                          or self.station.rpc.in_flight):
            await asyncio.sleep(0.1)

    async def _unlock_connector(self, payload: dict[str, Any]) -> Answer:
        evse = self._evse(payload["connectorId"])
        if evse is None:
            return {"status": "NotSupported"}
        result = await evse.try_call("force_unlock")
        return {"status": result if result in ("Unlocked", "UnlockFailed", "NotSupported") else "UnlockFailed"}

    async def _change_availability(self, payload: dict[str, Any]) -> Answer:
        station = self.station
        connector_id, operative = payload["connectorId"], payload["type"] == "Operative"
        targets = list(station.evse_by_id.items()) if connector_id == 0 else \
            [(connector_id, self._evse(connector_id))] if self._evse(connector_id) else []
        if not targets:
            return {"status": "Rejected"}
        results = []
        for _evse_id, evse in targets:
            try:
                results.append(await evse.call("enable" if operative else "disable", source="csms", priority=5000))
            except CmdError as exc:
                self.log.warning("availability change failed", evse=evse.module_id, error=exc.message)
                results.append("Rejected")
        if connector_id == 0:
            station.send_statuses(station.status.update_station(datetime.now(UTC), available=operative))
        status = "Rejected" if "Rejected" in results else "Scheduled" if "Scheduled" in results else "Accepted"
        return {"status": status}

    # -- reservations ----------------------------------------------------------------------------
    async def _reserve_now(self, payload: dict[str, Any]) -> Answer:
        reservations = self.station.requires["reservation"]
        if not reservations:
            return {"status": "Rejected"}
        result = await reservations[0].try_call(
            "reserve_now", reservation_id=payload["reservationId"], evse_id=payload["connectorId"],
            id_token=payload["idTag"], parent_id=payload.get("parentIdTag"),
            expiry_time=to_rfc3339(parse_rfc3339(payload["expiryDate"])))
        return {"status": result or "Rejected"}

    async def _cancel_reservation(self, payload: dict[str, Any]) -> Answer:
        reservations = self.station.requires["reservation"]
        if not reservations:
            return {"status": "Rejected"}
        result = await reservations[0].try_call("cancel_reservation", reservation_id=payload["reservationId"])
        return {"status": result or "Rejected"}

    # -- firmware and diagnostics ----------------------------------------------------------------
    async def _update_firmware(self, payload: dict[str, Any]) -> Answer:
        systems = self.station.requires["system"]
        if systems:
            await systems[0].try_call(
                "update_firmware", location=payload["location"],
                retrieve_time=to_rfc3339(parse_rfc3339(payload["retrieveDate"])),
                retries=min(int(payload.get("retries", 1)), 100),
                retry_interval_s=min(int(payload.get("retryInterval", 60)), 86400))
        return {}

    async def _get_diagnostics(self, payload: dict[str, Any]) -> Answer:
        systems = self.station.requires["system"]
        if not systems:
            return {}
        args: dict[str, Any] = {"location": payload["location"], "retries": min(int(payload.get("retries", 1)), 100),
                                "retry_interval_s": min(int(payload.get("retryInterval", 60)), 86400)}
        for name, arg in (("startTime", "oldest_time"), ("stopTime", "latest_time")):
            if name in payload:
                args[arg] = to_rfc3339(parse_rfc3339(payload[name]))
        result = await systems[0].try_call("upload_logs", **args)
        name = result.get("file_name") if isinstance(result, dict) else None
        return {"fileName": name[:255]} if name else {}

    def on_system_status(self, var: str, value: dict[str, Any]) -> None:
        """Progress of a firmware update or log upload: the matching 1.6 notification when it changes."""
        previous = self.station.system_status.get(var)
        self.station.system_status[var] = value
        if previous is None or previous.get("status") == value.get("status") or value.get("status") == "Idle":
            return
        self._send_system_status(var)

    def _send_system_status(self, var: str) -> None:
        value = self.station.system_status.get(var, {})
        if var == "firmware_update_status":
            status = FIRMWARE_STATUS.get(value.get("status", "Idle"), "Idle")
            self.station.link.send("FirmwareStatusNotification", {"status": status})
        else:
            raw = value.get("status", "Idle")
            status = DIAGNOSTICS_STATUS.get(raw, "UploadFailed")
            self.station.link.send("DiagnosticsStatusNotification", {"status": status})

    # -- TriggerMessage --------------------------------------------------------------------------
    async def _trigger_message(self, payload: dict[str, Any]) -> Answer:
        station, message = self.station, payload["requestedMessage"]
        connector_id = payload.get("connectorId")
        if connector_id is not None and connector_id != 0 and connector_id not in station.evse_by_id:
            return {"status": "Rejected"}

        async def send() -> None:
            if message == "BootNotification":
                station.send_boot()
            elif message == "Heartbeat":
                station.link.send("Heartbeat", {})
            elif message == "StatusNotification":
                station.send_statuses(station.status.snapshot(datetime.now(UTC), connector_id))
            elif message == "MeterValues":
                for cid in [connector_id] if connector_id else sorted(station.evse_by_id):
                    tx = station.book.on_connector(cid)
                    station.send_meter_values(cid, "Trigger", None if tx is None else tx.transaction_id)
            elif message == "FirmwareStatusNotification":
                self._send_system_status("firmware_update_status")
            else:
                self._send_system_status("log_upload_status")

        return {"status": "Accepted"}, send
