"""The CSMS's operations (CSMS -> station CALLs), each answered from the station's modules.

A handler returns the confirmation payload, or (payload, follow-up): the follow-up runs after the answer is
on the wire (TriggerMessage sends the requested message, Reset stops transactions and then resets).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargepoint.module import CmdError
from chargepoint.storage import atomic_write_json, read_json
from chargepoint.timestamps import parse_rfc3339, to_rfc3339, utc_now

from .availability import CSMS_AVAILABILITY_PRIORITY
from .configuration import TooManyKeys
from .link import when_done
from .local_list import ListLimits
from .rpc import CallResult, IncomingCall
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
INSTALL_WAIT_POLL_S = 0.5
INSTALLED_NOTIFIED_FILE = "firmware-installed-notified.json"  # the Installed the CSMS acknowledged last
# system firmware statuses between a downloaded image and the restart into it
INSTALL_PHASE = ("Downloaded", "SignatureVerified", "InstallScheduled", "Installing", "InstallRebooting")
STOP_WAIT_S = 10.0


def _ocpp_system_status(var: str, raw: str) -> str:
    """A system-interface status as 1.6 FirmwareStatus (firmware_update_status) or DiagnosticsStatus."""
    if var == "firmware_update_status":
        return FIRMWARE_STATUS.get(raw, "Idle")
    return DIAGNOSTICS_STATUS.get(raw, "UploadFailed")


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


class CsmsOperations:
    def __init__(self, station: Ocpp16) -> None:
        self.station = station
        self.log = station.log
        self._deferred: set[str] = set()  # system status vars waiting for an accepted Boot to be notified
        self._holding_for_firmware = False  # connectors disabled while an install waits for transactions

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
        if not self.station.ocpp.bool("AuthorizationCacheEnabled"):
            return {"status": "Rejected"}
        try:
            self.station.local_auth.clear_cache()
        except sqlite3.Error as exc:
            self.log.error("authorization cache not cleared", error=str(exc))
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    async def _data_transfer(self, payload: dict[str, Any]) -> Answer:
        known = payload["vendorId"] in self.station.config["data_transfer_vendor_ids"]
        return {"status": "Accepted" if known else "UnknownVendorId"}

    async def _get_local_list_version(self, payload: dict[str, Any]) -> Answer:
        return {"listVersion": self.station.local_auth.list_version}  # 0: the list is empty

    async def _send_local_list(self, payload: dict[str, Any]) -> Answer:
        ocpp = self.station.ocpp
        limits = ListLimits(ocpp.bool("LocalAuthListEnabled"), ocpp.int("LocalAuthListMaxLength"),
                            ocpp.int("SendLocalListMaxLength"))
        update = self.station.local_auth.apply_list_update(payload, limits)
        log = self.log.info if update.accepted else self.log.warning
        log("SendLocalList handled", status=update.status, update_type=payload.get("updateType"),
            list_version=payload.get("listVersion"), reason=update.reason)
        return {"status": update.status}

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
        while loop.time() < deadline and (self.station.book.running() or self.station.sender.queue.messages
                                          or self.station.rpc.queued or self.station.rpc.in_flight):
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
        try:  # kept before anything changes: a restart must find what the CSMS was told
            station.availability.record([0, *station.evse_by_id] if connector_id == 0 else [connector_id], operative)
        except OSError as exc:
            self.log.error("availability not stored, ChangeAvailability refused", error=str(exc))
            return {"status": "Rejected"}
        results = []
        for _evse_id, evse in targets:
            try:
                results.append(await evse.call("enable" if operative else "disable", source="csms",
                                               priority=CSMS_AVAILABILITY_PRIORITY))
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
        """Progress of a firmware update or log upload: the matching 1.6 notification when it changes.

        Idle goes out only on a TriggerMessage (1.6 FirmwareStatus/DiagnosticsStatus). A downloaded image is
        installed once no transaction runs (1.6 §5.19: the station waits for running transactions to end).
        The first value seen is the state before this process started: only an Installed (the station
        restarted into the new firmware) is news, and it goes out once Boot is accepted.
        """
        station = self.station
        previous = station.system_status.get(var)
        station.system_status[var] = value
        raw = value.get("status", "Idle")
        if var == "firmware_update_status" and raw == "Downloaded":
            station.spawn(self._install_when_no_transaction(value), name=f"{station.id}-firmware-install")
        elif var == "firmware_update_status" and raw not in INSTALL_PHASE and self._holding_for_firmware:
            station.spawn(self._hold_for_firmware(False), name=f"{station.id}-firmware-release")
        if previous is None:  # news only if it is an Installed the CSMS was not told of before this module restarted
            if var != "firmware_update_status" or raw != "Installed" or self._installed_notified(value):
                return
        else:
            status = _ocpp_system_status(var, raw)
            if status == "Idle" or status == _ocpp_system_status(var, previous.get("status", "Idle")):
                return
        if station.accepted:
            self._send_system_status(var)
        elif var not in self._deferred:  # offline or before Boot: the latest status once Boot is accepted
            self._deferred.add(var)
            station.spawn(self._send_when_accepted(var), name=f"{station.id}-{var}")

    async def _install_when_no_transaction(self, downloaded: dict[str, Any]) -> None:
        station = self.station
        if any(state["transaction_active"] for state in station.states.values()):
            await self._hold_for_firmware(True)
        while any(state["transaction_active"] for state in station.states.values()):
            await asyncio.sleep(INSTALL_WAIT_POLL_S)
        if station.system_status.get("firmware_update_status") is not downloaded or not station.requires["system"]:
            return  # replaced by a newer update (or already installing) meanwhile
        allowed = await station.requires["system"][0].try_call("allow_firmware_installation")
        self.log.info("firmware installation allowed", accepted=allowed)
        if not allowed:
            await self._hold_for_firmware(False)

    async def _hold_for_firmware(self, hold: bool) -> None:
        """While a downloaded image waits for running transactions to end, the connectors not in use are
        Unavailable (as OCPP recommends), so that no new session delays the install; the busy ones follow when
        their transaction ends. Released when the install does not go ahead; a restart forgets it anyway."""
        if hold == self._holding_for_firmware:
            return
        self._holding_for_firmware = hold
        self.log.info("connectors held for the firmware install" if hold else "connectors released after firmware")
        for evse in self.station.evse_by_id.values():
            if hold:
                await evse.try_call("disable", source="firmware_update", priority=CSMS_AVAILABILITY_PRIORITY)
            else:
                await evse.try_call("clear_availability", source="firmware_update")

    async def _send_when_accepted(self, var: str) -> None:
        while not self.station.accepted:
            await asyncio.sleep(INSTALL_WAIT_POLL_S)
        self._deferred.discard(var)
        if _ocpp_system_status(var, self.station.system_status.get(var, {}).get("status", "Idle")) != "Idle":
            self._send_system_status(var)

    def _send_system_status(self, var: str) -> None:
        value = self.station.system_status.get(var, {})
        status = _ocpp_system_status(var, value.get("status", "Idle"))
        action = "FirmwareStatusNotification" if var == "firmware_update_status" else "DiagnosticsStatusNotification"
        sent = self.station.link.send(action, {"status": status})
        if action == "FirmwareStatusNotification" and status == "Installed":
            when_done(sent, lambda outcome: self._remember_installed(value) if isinstance(outcome, CallResult)
                      else None)

    def _installed_notified(self, value: dict[str, Any]) -> bool:
        """This very Installed (same update, same time) was acknowledged by the CSMS already."""
        return read_json(self.station.state_dir / INSTALLED_NOTIFIED_FILE) == _installed_identity(value)

    def _remember_installed(self, value: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.station.state_dir / INSTALLED_NOTIFIED_FILE, _installed_identity(value))
        except OSError as exc:  # at worst the CSMS hears of it again after a restart of this module
            self.log.warning("acknowledged firmware status not stored", error=str(exc))

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
                    station.send_meter_values(cid, "Trigger", tx, queued=False)
            elif message == "FirmwareStatusNotification":
                self._send_system_status("firmware_update_status")
            else:
                self._send_system_status("log_upload_status")

        return {"status": "Accepted"}, send


def _installed_identity(value: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": value.get("request_id"), "timestamp": value.get("timestamp")}
