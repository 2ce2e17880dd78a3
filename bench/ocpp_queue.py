"""Replay of a long transactional queue after reconnect, against the one-outstanding-call limit.

OCPP-J allows one CALL in flight, so a station can deliver at most 1 / round-trip-time messages per
second. This benchmark fills the ocpp16 module's queue database with N MeterValues and a StopTransaction of
one transaction (as after a long time offline), starts config/sil.yaml as its own process against a small
CSMS in this process, and measures the delivery rate from the first queued message to the last. In the same
run it measures the round trip of the same websocket (CSMS -> station ping -> pong, the transport alone)
and of a CSMS CALL the station answers (GetConfiguration); the ratio rate / (1 / RTT) is reported against
both. Goal: >= 0.8.

    .venv/bin/python bench/ocpp_queue.py [--messages 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

BENCH = Path(__file__).resolve().parent
# bench/ocpp.py is named like the `ocpp` package: keep this folder off the path, import benches as bench.*
sys.path[:] = [str(BENCH.parent), *(entry for entry in sys.path if Path(entry or ".").resolve() != BENCH)]

from bench.ocpp_station import (  # noqa: E402
    StationFrame,
    TimestampingCsms,
    percentiles,
    spawn_station,
    stop_station,
    write_station_copy,
)
from chargepoint.broker.launch import find_mosquitto, free_port, start_mosquitto_subprocess, stop_process  # noqa: E402
from modules.ocpp16.queue_store import QueueStore  # noqa: E402
from modules.ocpp16.transactions import Transaction  # noqa: E402
from modules.ocpp16.tx_queue import TransactionQueue  # noqa: E402

SESSION = "bench-offline-session"
RTT_SAMPLES = 500


def fill_queue(path: Path, messages: int) -> None:
    store = QueueStore(path)
    queue = TransactionQueue(max_messages=messages + 10, transaction_ids={SESSION: 1})
    rows = []
    for n in range(messages):
        stamp = f"2026-11-22T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
        payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": [
            {"value": str(1000 + n), "measurand": "Energy.Active.Import.Register", "unit": "Wh",
             "context": "Sample.Periodic"},
            {"value": "7360", "measurand": "Power.Active.Import", "unit": "W", "context": "Sample.Periodic"}]}]}
        rows.append((queue.add("MeterValues", payload, SESSION)[0], stamp))
    stop = {"meterStop": 1000 + messages, "timestamp": "2026-11-23T00:00:00.000Z", "reason": "EVDisconnected"}
    rows.append((queue.add("StopTransaction", stop, SESSION)[0], stop["timestamp"]))
    tx = Transaction(SESSION, 1, "BENCH", 1000, "2026-11-22T00:00:00.000Z", transaction_id=1, finished=True)
    store.write(add=rows, transactions=[tx])
    store.close()


class RoundTrips:
    """The CSMS side of the RTT measurement: pings and CALLs over the station's own connection."""

    def __init__(self, csms: TimestampingCsms) -> None:
        self.csms = csms
        self.connection: ServerConnection | None = None
        self.answers: dict[str, asyncio.Future[float]] = {}

    async def handle(self, connection: ServerConnection) -> None:
        self.connection = connection
        with contextlib.suppress(ConnectionClosed):  # the station is stopped at the end of the run
            await self._serve(connection)

    async def _serve(self, connection: ServerConnection) -> None:
        async for raw in connection:
            received = time.perf_counter()
            message = json.loads(raw)
            if message[0] == 3 and message[1] in self.answers:
                self.answers.pop(message[1]).set_result(received)
                continue
            if message[0] != 2:
                continue
            _, message_id, action, payload = message
            self.csms.frames.append(StationFrame(received, action, payload))
            self.csms.arrived.set()
            await connection.send(json.dumps([3, message_id, self.csms.answer(action, payload)]))

    async def ping_us(self) -> list[float]:
        assert self.connection is not None
        samples = []
        for _ in range(RTT_SAMPLES):
            started = time.perf_counter()
            await (await self.connection.ping())
            samples.append((time.perf_counter() - started) * 1e6)
        return samples

    async def call_us(self) -> list[float]:
        assert self.connection is not None
        samples = []
        for n in range(RTT_SAMPLES):
            message_id = f"rtt-{n}"
            answered = asyncio.get_running_loop().create_future()
            self.answers[message_id] = answered
            started = time.perf_counter()
            await self.connection.send(json.dumps([2, message_id, "GetConfiguration", {"key": ["HeartbeatInterval"]}]))
            samples.append((await asyncio.wait_for(answered, 10) - started) * 1e6)
        return samples


async def measure(messages: int) -> None:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("mosquitto not found: run ./run-tests once (it installs it) or apt install mosquitto")
    with tempfile.TemporaryDirectory(prefix="bench-ocpp-queue-") as tmp:
        folder = Path(tmp)
        mqtt_port, csms_port = free_port(), free_port()
        broker = start_mosquitto_subprocess(mqtt_port, executable=mosquitto)
        csms = TimestampingCsms()
        trips = RoundTrips(csms)
        wiring = write_station_copy(folder, mqtt_port, csms_port)
        started = time.perf_counter()
        fill_queue(folder / "state" / "ocpp" / "ocpp-queue.sqlite3", messages)
        print(f"queue filled: {messages} MeterValues + 1 StopTransaction in {time.perf_counter() - started:.1f} s")
        try:
            async with serve(trips.handle, "127.0.0.1", csms_port, subprotocols=["ocpp1.6"]):
                with (folder / "station-stderr.log").open("ab") as stderr:
                    station = spawn_station(wiring, stderr)
                try:
                    stop = await csms.wait_frame("StopTransaction", timeout=600)
                    replayed = [f for f in csms.frames if f.action == "MeterValues" and "transactionId" in f.payload
                                and f.payload["meterValue"][0]["timestamp"].startswith("2026-11-22T")]
                    first = min(f.received for f in replayed)
                    duration = stop.received - first
                    rate = len(replayed) / duration
                    pings = percentiles(await trips.ping_us())
                    calls = percentiles(await trips.call_us())
                finally:
                    stop_station(station)
        finally:
            stop_process(broker)
    print(f"replayed {len(replayed)} MeterValues + StopTransaction in {duration:.2f} s: {rate:.0f} messages/s "
          f"({1e6 / rate:.0f} us per message)")
    print(f"websocket ping RTT p50/p99: {pings[0]:.0f}/{pings[1]:.0f} us -> limit {1e6 / pings[0]:.0f} messages/s; "
          f"ratio {rate * pings[0] / 1e6:.2f}")
    print(f"CSMS CALL RTT (GetConfiguration) p50/p99: {calls[0]:.0f}/{calls[1]:.0f} us -> limit "
          f"{1e6 / calls[0]:.0f} messages/s; ratio {rate * calls[0] / 1e6:.2f}")
    print("goal: ratio >= 0.8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    args = parser.parse_args()
    asyncio.run(measure(args.messages))


if __name__ == "__main__":
    main()
