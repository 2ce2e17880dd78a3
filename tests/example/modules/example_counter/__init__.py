"""Counter module used by the runtime tests and the bus benchmark."""

import asyncio
from datetime import UTC, datetime
from typing import Any

from chargepoint import Module


class Counter(Module):
    async def init(self) -> None:
        if self.config["fail_init"]:
            raise RuntimeError("configured to fail in init")
        self.total: int = self.config["start"]
        self.crash_requested = asyncio.Event()
        main = self.provides["main"]
        main.serve("add", self.add)
        main.serve("echo", lambda value: value)
        main.serve("fail", self.fail)
        main.serve("bad_result", lambda: "not an integer")
        main.serve("slow", self.slow)
        main.serve("crash", self.crash_requested.set)
        main.publish("total", self.total)
        main.publish("started_at", datetime.now(UTC).isoformat())
        self.spawn(self.watch_for_crash())
        if self.config["announce"]:
            main.publish("added", {"a": 0, "b": 0})

    async def add(self, a: int, b: int) -> int:
        self.total += a + b
        main = self.provides["main"]
        main.publish("total", self.total)
        main.publish("added", {"a": a, "b": b})
        if self.total > self.config["limit"]:
            main.raise_error("overflow", f"total {self.total} above {self.config['limit']}")
        else:
            main.clear_error("overflow")
        return self.total

    async def fail(self, message: str) -> Any:
        raise RuntimeError(message)

    async def slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def watch_for_crash(self) -> None:
        await self.crash_requested.wait()
        raise RuntimeError("crash requested")
