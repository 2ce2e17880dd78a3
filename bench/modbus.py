"""Modbus benchmark: poll cycle time of three meters on one simulated 9600-baud RS485 line vs the wire-time limit.

The simulator (``python -m simulators.modbus_meter``, its own process) serves an SDM630, an SDM120 and an EM24
on a pseudo-terminal and takes the wire time of every request and reply byte at the baud rate. The meters are
read the way ``powermeter_modbus`` reads them: one task per meter, each reading its model's batched requests
through the one shared line owner (pymodbus). A round is one complete poll cycle of every meter.

Printed: the mean and p90 round time, and the limit computed from the requests actually sent in the same run:
sum of (request + reply bytes) x 11 bits / baud. Goal: mean <= 1.3 x the limit.
Usage: .venv/bin/python bench/modbus.py [--rounds 20] [--baud 9600]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargepoint.modbus.model import load_model  # noqa: E402
from chargepoint.modbus.plan import plan_reads  # noqa: E402
from chargepoint.modbus.rtu import wire_time_s  # noqa: E402
from modules.powermeter_modbus.line import ModbusLine  # noqa: E402
from modules.powermeter_modbus.settings import SERIAL, LineSettings  # noqa: E402

METERS = ((1, "sdm630"), (2, "sdm120"), (3, "em24"))


def start_simulator(link: Path, baud: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "simulators.modbus_meter", "--baud", str(baud), "--link", str(link),
            "--power-W", "7400", "--energy-Wh", "1000000"]
    for slave_id, model in METERS:
        args += ["--id", str(slave_id), "--model", model]
    process = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()  # the port: the simulator is serving
    return process


async def one_round(line: ModbusLine) -> None:
    async def cycle(slave_id: int, model: str) -> None:
        for request in plan_reads(load_model(model)):
            await line.read(slave_id, request)

    await asyncio.gather(*(cycle(slave_id, model) for slave_id, model in METERS))


async def measure(link: Path, baud: int, rounds: int) -> tuple[list[float], float, int]:
    line = ModbusLine(LineSettings(SERIAL, port=str(link), baudrate=baud, timeout_s=1.0))
    try:
        await one_round(line)  # opens the port; not counted
        before = (line.stats.bytes_on_wire, line.stats.requests)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            await one_round(line)
            times.append(time.perf_counter() - started)
        wire_bytes = line.stats.bytes_on_wire - before[0]
        requests = line.stats.requests - before[1]
        assert line.stats.failures == 0, "a read failed during the benchmark"
    finally:
        line.close()
    return times, wire_time_s(wire_bytes, baud) / rounds, requests // rounds


def main(rounds: int, baud: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "meter-line"
        simulator = start_simulator(link, baud)
        try:
            times, limit_s, requests = asyncio.run(measure(link, baud, rounds))
        finally:
            assert simulator.stdin is not None
            simulator.stdin.close()
            simulator.wait(10)
    mean = statistics.mean(times)
    p90 = sorted(times)[min(len(times) - 1, int(len(times) * 0.9))]
    meters = ", ".join(model for _, model in METERS)
    print(f"three meters ({meters}) on one {baud}-baud line, {requests} requests per round, {rounds} rounds")
    print(f"wire-time limit per round   {limit_s * 1000:8.1f} ms  (request + reply bytes x 11 / baud)")
    print(f"poll round time, mean       {mean * 1000:8.1f} ms  ratio {mean / limit_s:.2f}x (goal <= 1.3x)")
    print(f"poll round time, p90        {p90 * 1000:8.1f} ms  ratio {p90 / limit_s:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--baud", type=int, default=9600)
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.baud)
