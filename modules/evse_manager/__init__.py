"""evse_manager: the asyncio shell around the EVSE core (``core.py``).

It feeds the core with board vars and errors, meter readings, cmd calls and clock ticks, and
carries out the actions the core returns: board cmds (sent at once and in order, see
``board_link.py``), publications, errors and the session file (written off the event loop; what
is published after a write waits for it, see ``outbox.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chargepoint import CmdError, Module

from .actions import (
    Action,
    ClearError,
    PersistSession,
    Publish,
    RaiseError,
    RequestEnergy,
    SetRelay,
    Unlock,
)
from .board_link import BoardLink
from .core import EvseCore
from .model import ConfigError, EvseConfig
from .outbox import Outbox
from .persistence import RecordError, SessionStore

TICK_S = 0.5
BOARD_READY_WAIT_S = 10.0


def now_utc() -> datetime:
    return datetime.now(UTC)


class EvseManager(Module):
    async def init(self) -> None:
        try:
            config = EvseConfig(**self.config, has_powermeter=len(self.requires["powermeter"]) == 1)
        except ConfigError as exc:
            raise ConfigError(f"{self.id}: config: {exc}") from None
        self.evse_config = config
        self.core = EvseCore(config)
        self.store = SessionStore(self.state_dir, config.evse_id)
        self.board_link = BoardLink(self.requires["board"].one, self.spawn, on_success=self._board_answered,
                                    on_failure=self._board_failed, ready_wait_s=BOARD_READY_WAIT_S)
        self.outbox = Outbox(self._persist, self._publish, stored=self._session_stored, spawn=self.spawn,
                             thread_name=f"{self.id}-session-file")
        self.energy_request: RequestEnergy | None = None
        self.energy_changed = asyncio.Event()
        self.has_energy = len(self.requires["energy"]) == 1
        self._serve_cmds()
        self._subscribe()
        self.execute(self.core.start(now_utc()))
        self._restore()
        self.spawn(self._run_ticks(), name=f"{self.id}-ticks")
        if self.has_energy:
            self.spawn(self._run_energy_requests(), name=f"{self.id}-energy")

    async def shutdown(self) -> None:
        await self.outbox.close(self.core.checkpoint(now_utc()))

    # -- wiring ----------------------------------------------------------------------------
    def _serve_cmds(self) -> None:
        core, evse = self.core, self.provides["evse"]
        evse.serve("get_info", self.get_info)
        evse.serve("authorize", lambda id_token, token_type, parent_id, reservation_id: self.command(
            "authorize", core.authorize, id_token, token_type, parent_id, reservation_id))
        evse.serve("withdraw_authorization", lambda: self.command("withdraw_authorization",
                                                                  core.withdraw_authorization))
        evse.serve("enable", lambda source, priority: self.command("enable", core.enable, source, priority))
        evse.serve("disable", lambda source, priority: self.command("disable", core.disable, source, priority))
        evse.serve("clear_availability", lambda source: self.command("clear_availability",
                                                                     core.clear_availability, source))
        evse.serve("pause", lambda: self.command("pause", core.pause))
        evse.serve("resume", lambda: self.command("resume", core.resume))
        evse.serve("stop_transaction", lambda reason, id_token: self.command(
            "stop_transaction", core.stop_transaction, reason, id_token))
        evse.serve("force_unlock", self.force_unlock)
        evse.serve("set_max_current", lambda current_A, phases, valid_for_s: self.command(
            "set_max_current", core.set_max_current, current_A, phases, valid_for_s))
        evse.serve("reserve", lambda reservation_id: self.command("reserve", core.reserve, reservation_id))
        evse.serve("cancel_reservation", lambda reservation_id: self.command(
            "cancel_reservation", core.cancel_reservation, reservation_id))

    def _subscribe(self) -> None:
        core, board = self.core, self.requires["board"]
        board.subscribe("cp_state", lambda value: self.feed(core.cp_state, value))
        board.subscribe("relay_state", lambda value: self.feed(core.relay_feedback, value["closed"]))
        board.subscribe("lock_state", lambda value: self.feed(core.lock_state, value))
        board.subscribe("pp_ampacity_A", lambda value: self.feed(core.pp_ampacity, value))
        board.subscribe("capabilities", lambda value: self.feed(core.capabilities, value))
        board.on_error(lambda kind, body: self.feed(core.board_error, kind, bool(body.get("active")),
                                                    str(body.get("message", ""))))
        if self.evse_config.has_powermeter:
            meter = self.requires["powermeter"]
            meter.subscribe("powermeter", self.on_meter_reading)
            meter.on_error(lambda kind, body: self.feed(core.fault, "powermeter_failure", f"powermeter:{kind}",
                                                        bool(body.get("active")),
                                                        f"powermeter {kind}: {body.get('message', '')}"))

    def _restore(self) -> None:
        try:
            record = self.store.load()
        except RecordError as exc:
            self.log.error("session file unusable, ignored", error=str(exc))
            return
        if record is not None:
            self.log.info("persisted transaction found", session_id=record["session_id"],
                          mode=self.evse_config.session_resume)
            self.execute(self.core.restore(record, now_utc()))

    # -- inputs ----------------------------------------------------------------------------
    def feed(self, method: Callable[..., list[Action]], *args: Any) -> None:
        try:
            actions = method(*args, now_utc())
        except ValueError as exc:
            self.log.warning("input rejected", input=method.__name__, error=str(exc))
            return
        self.execute(actions)

    def on_meter_reading(self, reading: dict[str, Any]) -> None:
        power = reading.get("power_W", {}).get("total")
        self.feed(self.core.meter_reading, float(reading["energy_Wh_import"]["total"]), power)

    def command(self, name: str, method: Callable[..., tuple[Any, list[Action]]], *args: Any) -> Any:
        result, actions = method(*args, now_utc())
        self.execute(actions)
        self.log.info("cmd", cmd=name, result=result, evse=self.evse_config.evse_id)
        return result

    def get_info(self) -> dict[str, Any]:
        config = self.evse_config
        return {"evse_id": config.evse_id, "connector_id": config.connector_id,
                "connector_type": config.connector_type, "max_current_A": config.max_current_A,
                "min_current_A": config.min_current_A, "phases": config.phases,
                "nominal_voltage_V": config.nominal_voltage_V, "has_powermeter": config.has_powermeter}

    async def force_unlock(self) -> str:
        supported, actions = self.core.force_unlock(now_utc())
        if not supported:
            self.log.info("cmd", cmd="force_unlock", result="NotSupported", evse=self.evse_config.evse_id)
            return "NotSupported"
        unlock = asyncio.get_running_loop().create_future()
        self.execute(actions, unlock_result=unlock)
        try:
            unlocked = await asyncio.wait_for(unlock, BOARD_READY_WAIT_S)
        except (CmdError, TimeoutError) as exc:
            self.log.warning("force unlock failed", error=str(exc))
            unlocked = False
        result = "Unlocked" if unlocked else "UnlockFailed"
        self.log.info("cmd", cmd="force_unlock", result=result, evse=self.evse_config.evse_id)
        return result

    # -- outputs ---------------------------------------------------------------------------
    def execute(self, actions: list[Action], unlock_result: asyncio.Future[Any] | None = None) -> None:
        last_unlock = max((i for i, a in enumerate(actions) if isinstance(a, Unlock)), default=None)
        for index, action in enumerate(actions):
            if isinstance(action, PersistSession):
                self.outbox.persist(action)
            elif isinstance(action, Publish | RaiseError | ClearError | RequestEnergy):
                self.outbox.publish(action)
            else:
                if isinstance(action, SetRelay):
                    self.log.info("relay close" if action.closed else "relay open", phases=action.phases,
                                  evse=self.evse_config.evse_id)
                self.board_link.send(action, unlock_result if index == last_unlock else None)

    def _publish(self, action: Action) -> None:
        evse = self.provides["evse"]
        if isinstance(action, Publish):
            evse.publish(action.var, action.value)
            if action.var == "session_event":
                event = action.value
                self.log.info("session event", type=event["type"], session_id=event["session_id"],
                              evse=self.evse_config.evse_id, reason=event.get("reason"))
        elif isinstance(action, RaiseError):
            evse.raise_error(action.error_type, action.message)
        elif isinstance(action, ClearError):
            evse.clear_error(action.error_type)
            self.log.info("error cleared", type=action.error_type)
        elif isinstance(action, RequestEnergy):
            self.energy_request = action
            self.energy_changed.set()

    def _persist(self, record: dict[str, Any] | None) -> None:
        """Runs in the outbox's writer thread."""
        try:
            self.store.save(record)
        except OSError as exc:
            self.log.error("session file not written", path=str(self.store.path), error=str(exc))

    def _session_stored(self, record: dict[str, Any] | None) -> None:
        self.feed(self.core.session_stored, record["session_id"] if record is not None else None)

    def _board_answered(self, cmd: str) -> None:
        if "shell" in self.core.faults.get("board_unavailable", {}):
            self.feed(self.core.fault, "board_unavailable", "shell", False, "")

    def _board_failed(self, cmd: str, exc: CmdError) -> None:
        self.log.warning("board cmd failed", cmd=cmd, code=exc.code, error=exc.message)
        if exc.code in ("timeout", "not_ready"):
            self.feed(self.core.fault, "board_unavailable", "shell", True, f"board {exc.code}: {exc.message}")

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.feed(self.core.tick)

    async def _run_energy_requests(self) -> None:
        energy = self.requires["energy"]
        while True:
            await self.energy_changed.wait()
            self.energy_changed.clear()
            request = self.energy_request
            if request is None:
                continue
            try:
                await energy.call("update_energy_request", evse_id=self.evse_config.evse_id,
                                  wants_energy=request.wants_energy, min_current_A=request.min_current_A,
                                  max_current_A=request.max_current_A, max_phases=request.max_phases)
            except CmdError as exc:
                self.log.warning("energy request not delivered", code=exc.code, error=exc.message)
                await asyncio.sleep(1.0)
                self.energy_changed.set()


module_class = EvseManager
