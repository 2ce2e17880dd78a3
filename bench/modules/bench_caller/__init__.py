"""Times framework cmd round trips from one module to another."""

import time

from chargepoint import Module


class BenchCaller(Module):
    async def init(self) -> None:
        self.provides["main"].serve("measure", self.measure)

    async def measure(self, n: int) -> list[float]:
        echo = self.requires["echo"]
        samples = []
        for i in range(n):
            started = time.perf_counter()
            await echo.call("echo", value=i)
            samples.append((time.perf_counter() - started) * 1e6)
        return samples
