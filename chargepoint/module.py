"""The module API: the base class module authors subclass, and the handles it gives them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.interfaces import Interface
from chargepoint.logs import EventLogger

if TYPE_CHECKING:
    from chargepoint.runtime import ModuleRuntime

Handler = Callable[..., Any]
VarCallback = Callable[..., Any]
ErrorCallback = Callable[[str, dict[str, Any]], Any]


class CmdError(Exception):
    """A cmd call failed; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProvidedImpl:
    """An implementation this module provides: serve its cmds, publish its vars, raise its errors."""

    def __init__(self, runtime: ModuleRuntime, impl_id: str, interface: Interface) -> None:
        self._runtime = runtime
        self.impl_id = impl_id
        self.interface = interface
        self.handlers: dict[str, Handler] = {}

    def serve(self, cmd: str, handler: Handler) -> None:
        if cmd not in self.interface.cmds:
            raise ValueError(f"interface {self.interface.name!r} has no cmd {cmd!r}")
        self.handlers[cmd] = handler

    def publish(self, var: str, value: Any) -> None:
        self._runtime.publish_var(self, var, value)

    def raise_error(self, error_type: str, message: str = "", severity: str = "high") -> None:
        self._runtime.publish_error(self, error_type, True, message, severity)

    def clear_error(self, error_type: str) -> None:
        self._runtime.publish_error(self, error_type, False, "", "")


class RequiredConnection:
    """One wired implementation of another module that this module requires."""

    def __init__(self, runtime: ModuleRuntime, module_id: str, impl_id: str, interface: Interface) -> None:
        self._runtime = runtime
        self.module_id = module_id
        self.impl_id = impl_id
        self.interface = interface

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        return await self._runtime.call(self, cmd, args, timeout)

    async def try_call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        """Like ``call``, but a failed call is logged and gives None: for best-effort commands."""
        try:
            return await self.call(cmd, timeout, **args)
        except CmdError as exc:
            self._runtime.log.warning("cmd failed", target=f"{self.module_id}.{self.impl_id}", cmd=cmd,
                                      code=exc.code, error=exc.message)
            return None

    def subscribe(self, var: str, callback: VarCallback) -> None:
        self._runtime.subscribe_var(self, var, callback)

    def on_error(self, callback: ErrorCallback) -> None:
        self._runtime.subscribe_errors(self, callback)

    @property
    def ready(self) -> bool:
        return self._runtime.module_states.get(self.module_id) == "ready"

    async def wait_ready(self, timeout: float) -> bool:
        """Whether the providing module is ready, waiting up to ``timeout`` seconds for it (False: it is not)."""
        return await self._runtime.wait_ready(self.module_id, timeout)

    def __repr__(self) -> str:
        return f"<{self.interface.name} {self.module_id}.{self.impl_id}>"


class RequiredList(list[RequiredConnection]):
    """All connections of one requirement; forwards to the single one when there is exactly one."""

    def __init__(self, req_id: str, connections: list[RequiredConnection]) -> None:
        super().__init__(connections)
        self.req_id = req_id

    @property
    def one(self) -> RequiredConnection:
        if len(self) != 1:
            raise LookupError(f"requirement {self.req_id!r} has {len(self)} connections, not exactly one")
        return self[0]

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        return await self.one.call(cmd, timeout, **args)

    def subscribe(self, var: str, callback: VarCallback) -> None:
        """With one connection ``callback(value)``; with several ``callback(connection, value)``."""
        if len(self) == 1:
            self[0].subscribe(var, callback)
            return
        for connection in self:
            connection.subscribe(var, _bind_first(callback, connection))

    def on_error(self, callback: ErrorCallback) -> None:
        for connection in self:
            connection.on_error(callback)


def _bind_first(callback: VarCallback, connection: RequiredConnection) -> VarCallback:
    def bound(value: Any) -> Any:
        return callback(connection, value)

    return bound


class Module:
    """Base class of every module. Override the hooks you need; see docs/modules.md."""

    def __init__(self, runtime: ModuleRuntime) -> None:
        self._runtime = runtime
        self.id: str = runtime.module_id
        self.config: dict[str, Any] = runtime.instance.config
        self.log: EventLogger = EventLogger(f"chargepoint.{runtime.module_id}")
        self.provides: dict[str, ProvidedImpl] = runtime.provides
        self.requires: dict[str, RequiredList] = runtime.requires

    @property
    def state_dir(self) -> Path:
        """A folder of this module's own under the station's state directory (created on first use)."""
        folder = self._runtime.settings.state_dir / self.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def config_dir(self) -> Path:
        """The folder of the wiring file: relative paths in a module's config are relative to it."""
        return self._runtime.station.path.parent

    def spawn(self, coro: Coroutine[Any, Any, Any] | Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; if it raises, the module is restarted."""
        return self._runtime.spawn(coro, name)

    def request_station_restart(self, reason: str) -> None:
        """Soft reset: the manager stops every module cleanly and starts the whole station again."""
        self._runtime.request_station_restart(reason)

    async def init(self) -> None:
        """Register handlers and subscriptions; the module reports ready when this returns."""

    async def ready(self) -> None:
        """The whole station is ready: start working."""

    async def shutdown(self) -> None:
        """Release resources; called on stop, bounded to a few seconds."""
