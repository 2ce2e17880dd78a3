"""Client module used by the runtime tests: calls a counter and records its vars and errors."""

from typing import Any

from chargepoint import CmdError, Module


class Client(Module):
    async def init(self) -> None:
        self.totals: list[int] = []
        self.errors: list[dict[str, Any]] = []
        self.ready_seen = False
        counter = self.requires["counter"]
        counter.subscribe("total", self.totals.append)
        self.added: list[dict[str, int]] = []
        counter.subscribe("added", self.added.append)
        counter.on_error(lambda kind, error: self.errors.append({"type": kind, **error}))
        main = self.provides["main"]
        main.serve("add_via_counter", self.add_via_counter)
        main.serve("seen_totals", lambda: self.totals)
        main.serve("seen_errors", lambda: self.errors)
        main.serve("ready_called", lambda: self.ready_seen)
        main.serve("call_counter", self.call_counter)
        main.serve("seen_added", lambda: self.added)

    async def ready(self) -> None:
        self.ready_seen = True

    async def add_via_counter(self, a: int) -> int:
        return await self.requires["counter"].call("add", a=a)

    async def call_counter(self, cmd: str, args: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        try:
            result = await self.requires["counter"].call(cmd, timeout=timeout_s, **args)
        except CmdError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        return {"result": result}
