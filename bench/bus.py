"""Bus benchmark: framework cmd round trips against raw MQTT request/response in the same run.

Prints p50/p99 of:
- raw MQTT request/response between two plain paho clients (one process, and across two processes);
- the framework's cmd round trip between two modules in one process and across two processes;
then the manager's resident memory with 10 idle modules and the time from `chargepoint run` to
`cp/ready`. Usage: .venv/bin/python bench/bus.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargepoint.broker.launch import find_mosquitto, free_port, start_mosquitto_subprocess, stop_process  # noqa: E402
from chargepoint.bus import BusClient  # noqa: E402
from chargepoint.busprobe import BusProbe  # noqa: E402

BENCH = Path(__file__).resolve().parent
WARMUP = 200


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def raw_responder(port: int, name: str) -> BusClient:
    responder = BusClient(f"raw-responder-{name}", "127.0.0.1", port)

    def answer(topic: str, payload: bytes) -> None:
        responder.publish(f"raw/{name}/rep", payload)

    responder.subscribe(f"raw/{name}/req", answer)
    await responder.start()
    await responder.wait_connected(5)
    return responder


async def raw_round_trips(port: int, name: str, calls: int) -> list[float]:
    requester = BusClient(f"raw-requester-{name}", "127.0.0.1", port)
    waiting: list[asyncio.Future[bytes]] = []

    def received(topic: str, payload: bytes) -> None:
        if waiting and not waiting[0].done():
            waiting[0].set_result(payload)

    requester.subscribe(f"raw/{name}/rep", received)
    await requester.start()
    await requester.wait_connected(5)
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    samples = []
    for i in range(calls + WARMUP):
        waiting[:] = [loop.create_future()]
        started = time.perf_counter()
        requester.publish(f"raw/{name}/req", str(i).encode())
        await waiting[0]
        if i >= WARMUP:
            samples.append((time.perf_counter() - started) * 1e6)
    await requester.stop()
    return samples


def raw_responder_process(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, sys; sys.path.insert(0, sys.argv[2]); import bus as b\n"
        "async def main():\n"
        "    await b.raw_responder(int(sys.argv[1]), 'xp')\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(port), str(BENCH)], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


def wiring(folder: Path, port: int, modules: str, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        "settings:\n"
        f"  mqtt: {{host: 127.0.0.1, port: {port}, prefix: {name}, broker: external}}\n"
        f"  state_dir: {folder / name}\n"
        f"  module_paths: [{BENCH / 'modules'}]\n"
        f"  interface_paths: [{BENCH / 'interfaces'}]\n"
        "active_modules:\n" + modules
    )
    return path


async def framework_round_trips(path: Path, port: int, prefix: str, calls: int) -> list[float]:
    process = subprocess.Popen([sys.executable, "-m", "chargepoint", "--log-level", "WARNING", "run", str(path)],
                               cwd=ROOT)
    try:
        async with BusProbe("127.0.0.1", port, prefix) as probe:
            probe.watch(f"{prefix}/ready")
            await probe.wait_for(f"{prefix}/ready", lambda p: p == b"true", 30)
            samples = await probe.call("caller", "main", "measure", {"n": calls + WARMUP}, timeout=300)
    finally:
        process.terminate()
        process.wait(10)
    return samples[WARMUP:]


async def start_to_ready(path: Path, port: int, prefix: str, runs: int = 5) -> tuple[list[float], int]:
    """Seconds from spawning `chargepoint run` to cp/ready true, and the last run's RSS in kB."""
    seconds, rss_kb = [], 0
    for _ in range(runs):
        async with BusProbe("127.0.0.1", port, prefix) as probe:
            probe.watch(f"{prefix}/ready")
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "chargepoint", "--log-level", "WARNING", "run",
                                        str(path)], cwd=ROOT)
            try:
                await probe.wait_for(f"{prefix}/ready", lambda p: p == b"true", 30)
                seconds.append(time.perf_counter() - started)
                await asyncio.sleep(1.0)
                status = Path(f"/proc/{process.pid}/status").read_text()
                rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
            finally:
                process.terminate()
                process.wait(10)
            await asyncio.sleep(0.3)
    return seconds, rss_kb


def report(name: str, samples: list[float], baseline: list[float] | None = None) -> None:
    p50, p99 = percentiles(samples)
    line = f"{name:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us"
    if baseline is not None:
        b50, b99 = percentiles(baseline)
        line += f"   ratio p50 {p50 / b50:4.2f}x  p99 {p99 / b99:4.2f}x"
    print(line, flush=True)


async def main(calls: int) -> None:
    port = free_port()
    if find_mosquitto():
        broker = start_mosquitto_subprocess(port)
        kind = "mosquitto"
    else:
        broker = subprocess.Popen([sys.executable, "-m", "chargepoint.broker", "--port", str(port)],
                                  stdout=subprocess.PIPE)
        assert broker.stdout is not None
        broker.stdout.readline()
        kind = "embedded"
    print(f"broker: {kind} on 127.0.0.1:{port}; {calls} sequential calls each after {WARMUP} warm-up", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="chargepoint-bench-"))
    try:
        responder = await raw_responder(port, "ip")
        raw_in_process = await raw_round_trips(port, "ip", calls)
        await responder.stop()
        child = raw_responder_process(port)
        try:
            raw_cross = await raw_round_trips(port, "xp", calls)
        finally:
            child.terminate()
            child.wait(5)
        pair = ("  echo:\n    module: bench_echo\n"
                "  caller:\n    module: bench_caller\n    connections: {echo: [echo.main]}\n")
        one = wiring(folder, port, pair, "one")
        two = wiring(folder, port, pair.replace("module: bench_echo\n", "module: bench_echo\n    standalone: true\n"),
                     "two")
        framework_one = await framework_round_trips(one, port, "one", calls)
        framework_two = await framework_round_trips(two, port, "two", calls)
        report("raw MQTT request/response, one process", raw_in_process)
        report("raw MQTT request/response, two processes", raw_cross)
        report("framework cmd, two modules in one process", framework_one, raw_in_process)
        report("framework cmd, across two processes", framework_two, raw_cross)
        idle = "".join(f"  tokens_{i}:\n    module: token_manual\n" for i in range(10))
        ten = wiring(folder, port, idle, "ten")
        seconds, rss_kb = await start_to_ready(ten, port, "ten")
        print(f"manager with 10 idle modules: RSS {rss_kb / 1024:.1f} MB (goal <= 40 MB)")
        print(f"chargepoint run -> cp/ready: median {statistics.median(seconds) * 1000:.0f} ms, "
              f"max {max(seconds) * 1000:.0f} ms over {len(seconds)} starts (goal <= 1000 ms)")
    finally:
        stop_process(broker)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    asyncio.run(main(parser.parse_args().calls))
