"""Answers ``echo`` at once, so the benchmark measures the bus and the framework only."""

from chargepoint import Module


class BenchEcho(Module):
    async def init(self) -> None:
        self.provides["main"].serve("echo", self.echo)

    async def echo(self, value: int) -> int:
        return value
