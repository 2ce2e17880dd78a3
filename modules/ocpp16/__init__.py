"""ocpp16: the OCPP 1.6-J client module (the asyncio shell around the pure parts of this package).

Registration (when Boot goes out, what is held until Accepted) is decided by :mod:`.boot`; transactions by
:mod:`.transactions`; status notifications by :mod:`.status`; CSMS operations live in :mod:`.operations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargepoint import Module
from chargepoint.module import RequiredConnection
from chargepoint.timestamps import to_rfc3339, utc_now

from .auth_store import AuthStore
from .authorization import AuthFlags, decide, decide_offline
from .availability import AVAILABILITY_FILE, CSMS_AVAILABILITY_PRIORITY, AvailabilityBook
from .backoff import BackoffPolicy
from .boot import (
    ApplyCsmsTime,
    ApplyHeartbeatInterval,
    BootAction,
    BootCore,
    HoldSession,
    RegistrationChanged,
    ReleaseSession,
    SendBoot,
    SendStatusSnapshot,
)
from .config_store import ConfigStore
from .connection import OcppConnection
from .endpoint import ConnectionSettings
from .link import OcppLink, Outcome, when_done
from .message_log import MessageLog
from .metering import Metering
from .operations import SUPPORTED_ACTIONS, CsmsOperations
from .queue_store import QueueStore
from .reconcile import GracePeriods
from .rpc import CallAborted, CallResult, IncomingCall, RpcSession
from .status import StatusMachine, StatusNotice
from .tokens import authorize_answer, unknown_answer
from .transacting import Transacting
from .transactions import TransactionBook
from .tx_sender import TransactionalSender

REAPPLY_WAIT_S = 30.0  # how long an EVSE manager that is starting may take to become ready


class Ocpp16(Transacting, Metering, Module):
    async def init(self) -> None:
        cfg = self.config
        self.evse_connections: list[RequiredConnection] = list(self.requires["evse_manager"])
        initial = cfg["ocpp_config_file"]
        initial_path = None if initial is None else self._path(initial, self.config_dir)
        self.store = ConfigStore.open(self.state_dir / "ocpp-configuration.json", initial_path, self.log,
                                      runtime={"NumberOfConnectors": len(self.evse_connections)})
        self.ocpp = self.store.config
        self.rpc = RpcSession(call_timeout_s=float(cfg["call_timeout_s"]), supported_actions=SUPPORTED_ACTIONS)
        self.connection = OcppConnection(self.connection_settings(), log=self.log)
        log_path = None if cfg["message_log"] is None else self._path(cfg["message_log"], self.state_dir)
        self.link = OcppLink(self.rpc, self.connection, self.log, self._incoming, self._connected,
                             self._disconnected, MessageLog(log_path) if log_path else None)
        self.status = StatusMachine(float(self.ocpp.int("MinimumStatusDuration")), cfg["charge_point_vendor"])
        self.availability = AvailabilityBook(self.state_dir / AVAILABILITY_FILE)
        if 0 in self.availability.inoperative:
            self.status.update_station(datetime.now(UTC), available=False)
        self._reapplying: set[int] = set()  # evse ids with an Inoperative being applied again
        self.queue_store = QueueStore(self.state_dir / "ocpp-queue.sqlite3")
        self.book = TransactionBook(self.queue_store.load_transactions(), self.queue_store.load_closed_sessions())
        self.sender = TransactionalSender(
            self.queue_store, self.link, self.book, self.log, may_send=lambda: self.accepted,
            attempts=lambda: self.ocpp.int("TransactionMessageAttempts"),
            retry_interval_s=lambda: float(self.ocpp.int("TransactionMessageRetryInterval")),
            on_start_answered=self._start_answered,
            on_stop_id_tag_info=lambda tag, info: self._cache_id_tag_info(tag, info, "StopTransaction.conf"),
            max_messages=int(cfg["queue_max_messages"]))
        self.operations = CsmsOperations(self)
        self.local_auth = AuthStore.open(self.state_dir / "authorization.sqlite3", self.log)
        self.boot = BootCore(float(cfg["boot_retry_s"]))
        self._boot_changed = asyncio.Event()
        self.evse_by_id: dict[int, RequiredConnection] = {}
        self.states: dict[int, dict[str, Any]] = {}
        self.sessions: dict[int, dict[str, Any]] = {}
        self.grace = GracePeriods()  # session vars that disagree with the book (see reconcile.py)
        self.reconciling: set[int] = set()  # evse ids with a reconciliation check waiting
        self.error_messages: dict[int, dict[str, str]] = {}  # evse_manager index -> error type -> message
        self.readings: dict[int, dict[str, Any]] = {}  # powermeter index (= evse_manager index) -> last reading
        self.meter_index: dict[int, int] = {}  # evse_id -> index of its evse_manager connection
        self.begin_readings: dict[str, dict[str, Any]] = {}  # session id -> reading at transaction start
        meters = self.requires["powermeter"]
        if meters and len(meters) != len(self.evse_connections):
            raise ValueError(f"{self.id}: wire one powermeter per evse_manager, in the same order "
                             f"({len(meters)} powermeters for {len(self.evse_connections)} EVSEs)")
        for index, meter in enumerate(meters):
            meter.subscribe("powermeter", lambda value, i=index: self.readings.__setitem__(i, value))
        self.system_status: dict[str, dict[str, Any]] = {}
        self._heartbeat_changed = asyncio.Event()
        for connection in self.evse_connections:
            connection.subscribe("state", lambda value, c=connection: self._on_state(c, value))
            connection.subscribe("session", self._on_session)
            connection.subscribe("session_event", lambda value, c=connection: self._on_session_event(c, value))
            connection.on_error(lambda kind, body, c=connection: self._on_evse_error(c, kind, body))
        for system in self.requires["system"]:
            for var in ("firmware_update_status", "log_upload_status"):
                system.subscribe(var, lambda value, var=var: self.operations.on_system_status(var, value))
        self.provides["auth_validator"].serve("validate_token", self.validate_token)
        self.provides["main"].serve("data_transfer", self.data_transfer)
        self._publish_connection()

    @staticmethod
    def _path(text: str, base: Path) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path

    def connection_settings(self) -> ConnectionSettings:
        cfg, ocpp = self.config, self.ocpp
        profile = max(int(cfg["security_profile"]), ocpp.int("SecurityProfile"))
        key = ocpp.value("AuthorizationKey") or cfg["authorization_key"]
        return ConnectionSettings(
            cfg["csms_url"], cfg["charge_point_id"], security_profile=profile, authorization_key=key,
            authorization_key_format=cfg["authorization_key_format"],
            ping_interval_s=float(ocpp.int("WebSocketPingInterval")),
            backoff=BackoffPolicy(float(ocpp.int("RetryBackoffWaitMinimum")),
                                  float(ocpp.int("RetryBackoffRandomRange")), ocpp.int("RetryBackoffRepeatTimes")))

    async def ready(self) -> None:
        self.spawn(self.connection.run(), name=f"{self.id}-connection")
        self.spawn(self.link.run_events(), name=f"{self.id}-events")
        self.spawn(self.link.run_timers(), name=f"{self.id}-timers")
        self.spawn(self._heartbeats(), name=f"{self.id}-heartbeat")
        self.spawn(self._meter_values(), name=f"{self.id}-meter-values")
        self.spawn(self._aligned_meter_values(), name=f"{self.id}-aligned-meter-values")
        self.spawn(self._status_ticks(), name=f"{self.id}-status")
        self.spawn(self._boot_retries(), name=f"{self.id}-boot")
        self.spawn(self.sender.run(), name=f"{self.id}-transactional-queue")

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 3)
        self.local_auth.close()
        self.queue_store.close()
        if self.link.message_log is not None:
            self.link.message_log.close()

    # -- connection and boot ------------------------------------------------------------------
    @property
    def accepted(self) -> bool:
        return self.boot.may_send and self.link.connected

    @property
    def registration(self) -> str:
        return self.boot.registration

    def _publish_connection(self) -> None:
        self.provides["main"].publish("connection", {
            "connected": self.link.connected, "registration": self.registration,
            "csms_url": self.connection.settings.url, "timestamp": utc_now()})

    def _connected(self, number: int) -> None:
        self._publish_connection()
        self._carry_out(self.boot.on_connected(self._now()))

    def _disconnected(self) -> None:
        self._carry_out(self.boot.on_disconnected())
        self._publish_connection()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def send_boot(self) -> None:
        cfg = self.config
        payload = {"chargePointVendor": cfg["charge_point_vendor"], "chargePointModel": cfg["charge_point_model"]}
        if cfg["charge_point_serial"]:
            payload["chargePointSerialNumber"] = cfg["charge_point_serial"]
        if cfg["firmware_version"]:
            payload["firmwareVersion"] = cfg["firmware_version"]
        when_done(self.link.send("BootNotification", payload, urgent=True), self._boot_answered)

    def _boot_answered(self, outcome: Outcome) -> None:
        if isinstance(outcome, CallAborted):
            self._carry_out(self.boot.on_boot_aborted())
        elif isinstance(outcome, CallResult) and outcome.problem is None:
            status, interval = outcome.payload["status"], int(outcome.payload["interval"])
            self.log.info("BootNotification answered", status=status, interval=interval)
            self._carry_out(self.boot.on_boot_answered(status, interval, outcome.payload["currentTime"], self._now()))
        else:
            self._carry_out(self.boot.on_boot_failed(self._now()))
        self._boot_changed.set()

    def _carry_out(self, actions: list[BootAction]) -> None:
        for action in actions:
            if isinstance(action, SendBoot):
                self.send_boot()
            elif isinstance(action, HoldSession):
                self.rpc.hold()
            elif isinstance(action, ReleaseSession):
                self.rpc.release()
                self.sender.wake.set()
            elif isinstance(action, SendStatusSnapshot):
                self.send_statuses(self.status.snapshot(datetime.now(UTC)))
            elif isinstance(action, ApplyHeartbeatInterval):
                self._set_config("HeartbeatInterval", action.interval_s)
            elif isinstance(action, ApplyCsmsTime):
                if self.requires["system"]:
                    self.spawn(self.requires["system"][0].try_call("set_system_time",
                                                                   time=self._utc(action.current_time)))
            elif isinstance(action, RegistrationChanged):
                self._publish_connection()

    async def _boot_retries(self) -> None:
        while True:
            retry_at = self.boot.retry_at
            timeout = None if retry_at is None else max(0.0, retry_at - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._boot_changed.wait(), timeout)
            self._boot_changed.clear()
            self._carry_out(self.boot.poll(self._now()))

    @staticmethod
    def _utc(text: str) -> str:
        from chargepoint.timestamps import parse_rfc3339
        return to_rfc3339(parse_rfc3339(text))

    def _set_config(self, key: str, value: int) -> None:
        try:
            self.store.set(key, value)
        except (ValueError, OSError) as exc:
            self.log.warning("configuration value not set", key=key, error=str(exc))
        self._heartbeat_changed.set()

    def _incoming(self, call: IncomingCall) -> None:
        if not self.boot.answers_csms_calls:
            self.log.info("CSMS call not answered: BootNotification was rejected", action=call.action)
            return
        self.spawn(self.operations.handle(call), name=f"{self.id}-{call.action}")

    # -- station -> CSMS ----------------------------------------------------------------------
    def send_statuses(self, notices: list[StatusNotice]) -> None:
        if not self.accepted:
            return
        for notice in notices:
            self.link.send("StatusNotification", notice.payload())

    async def _heartbeats(self) -> None:
        while True:
            interval = self.ocpp.int("HeartbeatInterval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_changed.wait(), interval if interval > 0 else None)
                self._heartbeat_changed.clear()
                continue
            if self.accepted:
                self.link.send("Heartbeat", {})

    async def _status_ticks(self) -> None:
        while True:
            due = self.status.next_due()
            await asyncio.sleep(0.5 if due is None else max(0.05, (due - datetime.now(UTC)).total_seconds()))
            self.send_statuses(self.status.tick(datetime.now(UTC)))

    # -- the EVSEs --------------------------------------------------------------------------------
    def _on_state(self, connection: RequiredConnection, state: dict[str, Any]) -> None:
        self.evse_by_id[state["evse_id"]] = connection
        self.meter_index[state["evse_id"]] = self.evse_connections.index(connection)
        self.states[state["evse_id"]] = state
        messages = self.error_messages.get(self.evse_connections.index(connection), {})
        self.send_statuses(self.status.update_evse(state, datetime.now(UTC), messages))
        if self.availability.needs_reapplying(state) and state["evse_id"] not in self._reapplying:
            self._reapplying.add(state["evse_id"])
            self.spawn(self._reapply_inoperative(state["evse_id"], connection), name=f"{self.id}-availability")

    async def _reapply_inoperative(self, evse_id: int, connection: RequiredConnection) -> None:
        """The EVSE (re)started without the CSMS's Inoperative: set it again, as the CSMS left it (its state
        var comes while it is still starting, so this waits until it is ready)."""
        try:
            await connection.wait_ready(REAPPLY_WAIT_S)
            result = await connection.try_call("disable", source="csms", priority=CSMS_AVAILABILITY_PRIORITY)
            if result is not None:
                self.log.info("CSMS availability applied again", evse_id=evse_id, type="Inoperative", result=result)
        finally:
            self._reapplying.discard(evse_id)

    def _on_evse_error(self, connection: RequiredConnection, kind: str, body: Any) -> None:
        """Error texts arrive before the state that lists the error; they go out as StatusNotification info."""
        messages = self.error_messages.setdefault(self.evse_connections.index(connection), {})
        if isinstance(body, dict) and body.get("active") and isinstance(body.get("message"), str):
            messages[kind] = body["message"]
        else:
            messages.pop(kind, None)

    def _on_session(self, session: dict[str, Any]) -> None:
        self.sessions[session["evse_id"]] = session
        self._check_session_var(session)

    # -- served cmds -------------------------------------------------------------------------------
    async def validate_token(self, id_token: str, token_type: str) -> dict[str, Any]:
        """Local list and cache first (OCPP 1.6 §3.5, see authorization.py), else Authorize.req."""
        if len(id_token) > 20:
            return unknown_answer("longer than an OCPP 1.6 idTag (20 characters)")
        flags = AuthFlags.from_keys(self.ocpp.bool)
        list_info, cache_info = self.local_auth.lookup(id_token, datetime.now(UTC))
        local = decide(flags, online=self.accepted, list_info=list_info, cache_info=cache_info,
                       now=datetime.now(UTC))
        if local is None:
            future = self.link.send("Authorize", {"idTag": id_token})
            try:  # the answer must come within the validator's own cmd timeout, even behind queued CALLs
                outcome = await asyncio.wait_for(asyncio.shield(future), float(self.config["call_timeout_s"]))
            except TimeoutError:
                outcome = None
            answer = authorize_answer(outcome)
            if isinstance(outcome, CallResult) and answer["status"] != "Unknown":
                self._cache_id_tag_info(id_token, outcome.payload.get("idTagInfo"), "Authorize.conf")
                return answer
            local = decide_offline(flags, list_info=list_info, cache_info=cache_info, now=datetime.now(UTC))
        self.log.info("token decided locally", status=local.status, source=local.source)
        return local.validator_result()

    def _cache_id_tag_info(self, id_tag: str, info: Any, source: str) -> None:
        """An idTagInfo from the CSMS goes into the Authorization Cache (when enabled)."""
        if not self.ocpp.bool("AuthorizationCacheEnabled") or info is None:
            return
        try:
            self.local_auth.remember(id_tag, info, datetime.now(UTC))
        except (ValueError, sqlite3.Error) as exc:
            self.log.warning("idTagInfo not cached", source=source, error=str(exc))

    async def data_transfer(self, vendor_id: str, message_id: str | None, data: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        if not self.accepted:
            return {"status": "Offline", "data": None}
        outcome = await self.link.send("DataTransfer", payload)
        if not isinstance(outcome, CallResult) or "status" not in outcome.payload:
            return {"status": "Offline", "data": None}
        data_out = outcome.payload.get("data")
        return {"status": outcome.payload["status"], "data": data_out if isinstance(data_out, str) else None}


module_class = Ocpp16
