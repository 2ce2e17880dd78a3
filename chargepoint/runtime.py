"""Runs one module instance: its MQTT connection, cmd serving and calling, vars, errors, lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from itertools import count
from typing import TYPE_CHECKING, Any

import fastjsonschema

from chargepoint.bus import BusClient, Will
from chargepoint.interfaces import CmdSpec, load_interface
from chargepoint.logs import EventLogger
from chargepoint.module import (
    CmdError,
    ErrorCallback,
    Module,
    ProvidedImpl,
    RequiredConnection,
    RequiredList,
    VarCallback,
)
from chargepoint.timestamps import utc_now

if TYPE_CHECKING:
    from chargepoint.config import StationConfig
    from chargepoint.registry import ModuleInfo

SHUTDOWN_TIMEOUT_S = 3.0


class ModuleCrashed(Exception):
    """A module's background task or hook raised; the supervisor restarts the module."""


class ModuleRuntime:
    """Everything one running module instance needs; ``run()`` returns only by raising."""

    def __init__(self, station: StationConfig, module_id: str, info: ModuleInfo,
                 module_class: type[Module]) -> None:
        self.station = station
        self.settings = station.settings
        self.module_id = module_id
        self.instance = station.modules[module_id]
        self.prefix = self.settings.mqtt.prefix
        self.validate = self.settings.validate_payloads
        self.module_class = module_class
        self.log = EventLogger(f"chargepoint.{module_id}")
        self.module_states: dict[str, str] = {}
        self._ready_events: dict[str, asyncio.Event] = {}  # module id -> set while it is ready (for wait_ready)
        self.provides = {
            impl_id: ProvidedImpl(self, impl_id, load_interface(name))
            for impl_id, name in info.manifest.provides.items()
        }
        self.requires = {
            req_id: RequiredList(req_id, [
                RequiredConnection(self, c.module_id, c.impl_id, load_interface(requirement.interface))
                for c in self.instance.connections.get(req_id, [])
            ])
            for req_id, requirement in info.manifest.requires.items()
        }
        self.module: Module | None = None
        self.bus: BusClient | None = None
        self._var_callbacks: dict[str, list[tuple[RequiredConnection, str, VarCallback]]] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = count(1)
        self._id_prefix = f"{os.getpid():x}.{id(self) & 0xFFFFFF:x}."
        self._reply_topic = f"{self.prefix}/{module_id}/reply"
        self._held: list[tuple[str, bytes]] = []
        self._station_ready_seen = False
        self._initialized = False
        self._ready_called = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._crash: asyncio.Future[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def _topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def _publish_state(self, state: str) -> None:
        if self.bus is not None:
            self.bus.publish(self._topic(self.module_id, "state"), state.encode(), retain=True, qos=1)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._crash = loop.create_future()
        mqtt = self.settings.mqtt
        self.bus = BusClient(
            f"{self.prefix}-{self.module_id}", mqtt.host, mqtt.port, keepalive_s=mqtt.keepalive_s,
            will=Will(self._topic(self.module_id, "state"), b"offline"), log=self.log,
        )
        self.bus.subscribe(self._reply_topic, self._on_reply)
        self.bus.subscribe(self._topic("ready"), self._on_station_ready, qos=1)
        for module_id in {c.module_id for conns in self.requires.values() for c in conns}:
            self.bus.subscribe(self._topic(module_id, "state"), self._on_module_state, qos=1)
        for impl in self.provides.values():
            self.bus.subscribe(self._topic(self.module_id, impl.impl_id, "cmd", "+"), self._cmd_dispatcher(impl))
        self._publish_state("starting")
        await self.bus.start()
        await self.bus.wait_connected()
        self.module = self.module_class(self)
        await self.module.init()
        self._initialized = True
        self._publish_state("ready")
        self.log.info("module ready", module=self.instance.module)
        if self._station_ready_seen:
            self._start_ready_hook()
        await self._crash

    async def stop(self, state: str = "stopped") -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SHUTDOWN_TIMEOUT_S)
        if self.module is not None and self._initialized:
            try:
                await asyncio.wait_for(self.module.shutdown(), SHUTDOWN_TIMEOUT_S)
            except Exception as exc:
                self.log.warning("shutdown hook failed", error=f"{type(exc).__name__}: {exc}")
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        if self.bus is not None:
            self._publish_state(state)
            await self.bus.stop()

    def request_station_restart(self, reason: str) -> None:
        """Ask the manager to stop every module and start the station again (a soft reset)."""
        body = {"reason": reason, "module_id": self.module_id, "timestamp": utc_now()}
        if self.bus is not None:
            self.bus.publish(self._topic("manager", "restart"), json.dumps(body).encode(), qos=1)

    def spawn(self, coro: Coroutine[Any, Any, Any] | Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._crash is not None and not self._crash.done():
            self._crash.set_exception(ModuleCrashed(f"{type(exc).__name__}: {exc}"))

    def _on_station_ready(self, topic: str, payload: bytes) -> None:
        if payload.strip() != b"true":
            return
        self._station_ready_seen = True
        if self._initialized:
            self._start_ready_hook()

    def _start_ready_hook(self) -> None:
        if self._ready_called or self.module is None or self.bus is None:
            return
        self._ready_called = True
        for topic, payload in self._held:
            self.bus.publish(topic, payload)
        self._held.clear()
        self.spawn(self.module.ready(), name=f"{self.module_id}-ready")

    def _on_module_state(self, topic: str, payload: bytes) -> None:
        module_id, state = topic.split("/")[-2], payload.decode(errors="replace")
        self.module_states[module_id] = state
        event = self._ready_events.get(module_id)
        if event is not None and state == "ready":
            event.set()
        elif event is not None:
            event.clear()

    async def wait_ready(self, module_id: str, timeout: float) -> bool:
        """Whether ``module_id`` is ready, waiting up to ``timeout`` seconds for it to become so."""
        event = self._ready_events.setdefault(module_id, asyncio.Event())
        if self.module_states.get(module_id) == "ready":
            event.set()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- vars and errors ------------------------------------------------------------------
    def publish_var(self, impl: ProvidedImpl, var: str, value: Any) -> None:
        spec = impl.interface.vars.get(var)
        if spec is None:
            raise ValueError(f"interface {impl.interface.name!r} has no var {var!r}")
        if self.validate:
            try:
                spec.validate(value)
            except fastjsonschema.JsonSchemaException as exc:
                raise ValueError(f"var {impl.impl_id}/{var}: {exc.message}") from None
        topic = self._topic(self.module_id, impl.impl_id, "var", var)
        payload = json.dumps(value, separators=(",", ":")).encode()
        if self.bus is None:
            raise RuntimeError("publish before the module runs")
        if spec.retain:
            self.bus.publish(topic, payload, retain=True, qos=1)
        elif self._ready_called:
            self.bus.publish(topic, payload)
        else:
            self._held.append((topic, payload))

    def publish_error(self, impl: ProvidedImpl, error_type: str, active: bool, message: str,
                      severity: str) -> None:
        if error_type not in impl.interface.errors:
            raise ValueError(f"interface {impl.interface.name!r} has no error {error_type!r}")
        body = {"active": active, "message": message, "severity": severity, "timestamp": utc_now()}
        if self.bus is None:
            raise RuntimeError("error raised before the module runs")
        if active:
            self.log.warning("error raised", impl=impl.impl_id, type=error_type, message=message)
        self.bus.publish(self._topic(self.module_id, impl.impl_id, "error", error_type),
                         json.dumps(body).encode(), retain=True, qos=1)

    def subscribe_var(self, conn: RequiredConnection, var: str, callback: VarCallback) -> None:
        spec = conn.interface.vars.get(var)
        if spec is None:
            raise ValueError(f"interface {conn.interface.name!r} has no var {var!r}")
        topic = self._topic(conn.module_id, conn.impl_id, "var", var)
        callbacks = self._var_callbacks.setdefault(topic, [])
        callbacks.append((conn, var, callback))
        if len(callbacks) == 1 and self.bus is not None:
            self.bus.subscribe(topic, self._on_var, qos=1 if spec.retain else 0)

    def _on_var(self, topic: str, payload: bytes) -> None:
        callbacks = self._var_callbacks.get(topic, [])
        if not callbacks:
            return
        conn, var, _ = callbacks[0]
        try:
            value = json.loads(payload)
            if self.validate:
                conn.interface.vars[var].validate(value)
        except (ValueError, fastjsonschema.JsonSchemaException) as exc:
            self.log.warning("invalid var payload dropped", topic=topic, error=str(exc))
            return
        for _, _, callback in callbacks:
            self._run_callback(callback, value, topic=topic)

    def _run_callback(self, callback: Callable[..., Any], *args: Any, topic: str) -> None:
        try:
            result = callback(*args)
        except Exception as exc:
            self.log.error("subscriber callback raised", topic=topic, error=f"{type(exc).__name__}: {exc}")
            return
        if inspect.isawaitable(result):
            self.spawn(self._guarded(result, topic))

    async def _guarded(self, pending: Awaitable[Any], topic: str) -> None:
        try:
            await pending
        except Exception as exc:
            self.log.error("subscriber callback raised", topic=topic, error=f"{type(exc).__name__}: {exc}")

    def subscribe_errors(self, conn: RequiredConnection, callback: ErrorCallback) -> None:
        def deliver(topic: str, payload: bytes) -> None:
            try:
                body = json.loads(payload)
            except ValueError:
                return
            self._run_callback(callback, topic.rsplit("/", 1)[1], body, topic=topic)

        if self.bus is not None:
            self.bus.subscribe(self._topic(conn.module_id, conn.impl_id, "error", "+"), deliver, qos=1)

    # -- cmds: calling --------------------------------------------------------------------
    async def call(self, conn: RequiredConnection, cmd: str, args: dict[str, Any], timeout: float | None) -> Any:
        spec = conn.interface.cmds.get(cmd)
        if spec is None:
            raise CmdError("unknown_cmd", f"interface {conn.interface.name!r} has no cmd {cmd!r}")
        if self.validate:
            try:
                args = spec.validate_args(args)
            except fastjsonschema.JsonSchemaException as exc:
                raise CmdError("invalid_args", f"{cmd}: {exc.message}") from None
        state = self.module_states.get(conn.module_id)
        if state != "ready":
            raise CmdError("not_ready", f"{conn.module_id} is {state or 'not running'}")
        if self.bus is None or not self.bus.connected.is_set():
            raise CmdError("not_ready", "not connected to the broker")
        call_id = f"{self._id_prefix}{next(self._ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[call_id] = future
        seconds = spec.timeout_s if timeout is None else timeout
        timer = loop.call_later(seconds, _expire, future, f"{conn.module_id}.{conn.impl_id} did not answer "
                                f"{cmd} within {seconds:g} s")
        body = {"id": call_id, "args": args, "reply_to": self._reply_topic}
        self.bus.publish(self._topic(conn.module_id, conn.impl_id, "cmd", cmd),
                         json.dumps(body, separators=(",", ":")).encode())
        try:
            reply = await future
        finally:
            timer.cancel()
            self._pending.pop(call_id, None)
        error = reply.get("error")
        if error is not None:
            raise CmdError(str(error.get("code", "handler_error")), str(error.get("message", "")))
        return reply.get("result")

    def _on_reply(self, topic: str, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
            future = self._pending.get(reply["id"])
        except (ValueError, KeyError, TypeError):
            self.log.warning("malformed reply dropped", topic=topic)
            return
        if future is not None and not future.done():
            future.set_result(reply)

    # -- cmds: serving --------------------------------------------------------------------
    def _cmd_dispatcher(self, impl: ProvidedImpl) -> Callable[[str, bytes], None]:
        def dispatch(topic: str, payload: bytes) -> None:
            self._serve(impl, topic.rsplit("/", 1)[1], payload)

        return dispatch

    def _serve(self, impl: ProvidedImpl, cmd: str, payload: bytes) -> None:
        try:
            request = json.loads(payload)
            call_id, reply_to = request["id"], request["reply_to"]
            args = request.get("args") or {}
        except (ValueError, KeyError, TypeError):
            self.log.warning("malformed cmd call dropped", impl=impl.impl_id, cmd=cmd)
            return
        spec = impl.interface.cmds.get(cmd)
        if spec is None:
            return self._reply_error(reply_to, call_id, "unknown_cmd", f"{impl.interface.name} has no cmd {cmd!r}")
        handler = impl.handlers.get(cmd)
        if handler is None:
            if not self._initialized:
                return self._reply_error(reply_to, call_id, "not_ready", f"{self.module_id} is starting")
            return self._reply_error(reply_to, call_id, "unknown_cmd", f"{self.module_id} serves no {cmd!r}")
        if not isinstance(args, dict):
            return self._reply_error(reply_to, call_id, "invalid_args", "args must be an object")
        if self.validate:
            try:
                args = spec.validate_args(args)
            except fastjsonschema.JsonSchemaException as exc:
                return self._reply_error(reply_to, call_id, "invalid_args", f"{cmd}: {exc.message}")
        else:
            args = {**spec.defaults, **args}
        try:
            result = handler(**args)
        except Exception as exc:
            return self._handler_failed(reply_to, call_id, cmd, exc)
        if inspect.isawaitable(result):
            # The handler's coroutine runs as its own task: cancelled at shutdown before it started,
            # it is closed cleanly, and its failure is a reply, never a module crash.
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._handler_done(done, reply_to, call_id, spec))
        else:
            self._reply_result(reply_to, call_id, spec, result)

    def _handler_done(self, task: asyncio.Future[Any], reply_to: str, call_id: str, spec: CmdSpec) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Exception):
            self._handler_failed(reply_to, call_id, spec.name, exc)
        elif exc is None:
            self._reply_result(reply_to, call_id, spec, task.result())

    def _handler_failed(self, reply_to: str, call_id: str, cmd: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.log.warning("cmd handler raised", cmd=cmd, error=message)
        self._reply_error(reply_to, call_id, "handler_error", message)

    def _reply_result(self, reply_to: str, call_id: str, spec: CmdSpec, result: Any) -> None:
        cmd = spec.name
        if self.validate:
            try:
                spec.validate_result(result)
            except fastjsonschema.JsonSchemaException as exc:
                self.log.warning("cmd result rejected", cmd=cmd, error=exc.message)
                return self._reply_error(reply_to, call_id, "invalid_result", f"{cmd}: {exc.message}")
        try:
            payload = json.dumps({"id": call_id, "result": result}, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            return self._reply_error(reply_to, call_id, "invalid_result", f"{cmd}: {exc}")
        if self.bus is not None:
            self.bus.publish(reply_to, payload)

    def _reply_error(self, reply_to: str, call_id: str, code: str, message: str) -> None:
        if self.bus is not None:
            body = {"id": call_id, "error": {"code": code, "message": message}}
            self.bus.publish(reply_to, json.dumps(body).encode())


def _expire(future: asyncio.Future[dict[str, Any]], message: str) -> None:
    if not future.done():
        future.set_result({"error": {"code": "timeout", "message": message}})
