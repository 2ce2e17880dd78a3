"""Replay of a long transactional queue after reconnect, against the one-outstanding-call limit.

OCPP-J allows one CALL in flight, so a station can deliver at most 1 / round-trip-time messages per
second. This benchmark fills the ocpp16 module's queue database with N MeterValues and a StopTransaction of
one transaction (as after a long time offline), starts config/sil.yaml as its own process against a small
CSMS in this process, and measures the delivery rate from the first queued message to the last. On the same
websocket it measures the round trip of a CSMS CALL the station answers (GetConfiguration: the one-
outstanding-call limit of this link with both ends' OCPP processing) and of a bare ping (the transport
alone), half while the CSMS holds the queue with Boot Pending, half after the replay. The ratio
rate / (1 / RTT) is reported against both, per round and as the median of the rounds. Goal: >= 0.8.

    .venv/bin/python bench/ocpp_queue.py [--messages 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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
        self.stopped: asyncio.Future[StationFrame] = asyncio.get_running_loop().create_future()
        self.pending = asyncio.get_running_loop().create_future()  # the station was told Pending: link is up
        self.accept = False  # BootNotification answered Pending (queue held) until this is set

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
            frame = StationFrame(received, action, payload)
            self.csms.frames.append(frame)
            if action == "StopTransaction" and not self.stopped.done():
                # a future, not a scan of every frame on every arrival: the CSMS side must cost the same
                # per message here as in the round-trip measurement below
                self.stopped.set_result(frame)
            answer = self.csms.answer(action, payload)
            if action == "BootNotification" and not self.accept:
                answer = {**answer, "status": "Pending", "interval": 1}
                if not self.pending.done():
                    self.pending.set_result(None)
            await connection.send(json.dumps([3, message_id, answer]))

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


@dataclass
class Round:
    rate: float  # messages per second
    ping_us: tuple[float, float]  # p50, p99 of the samples before and after the replay
    call_us: tuple[float, float]


async def replay_round(messages: int, mqtt_port: int, folder: Path) -> Round:
    """One station, started on a queue of ``messages``; the replay, then the round trips of the same link."""
    csms_port = free_port()
    csms = TimestampingCsms()
    trips = RoundTrips(csms)
    wiring = write_station_copy(folder, mqtt_port, csms_port)
    fill_queue(folder / "state" / "ocpp" / "ocpp-queue.sqlite3", messages)
    async with serve(trips.handle, "127.0.0.1", csms_port, subprotocols=["ocpp1.6"]):
        with (folder / "station-stderr.log").open("ab") as stderr:
            station = spawn_station(wiring, stderr)
        try:
            # Boot Pending holds the queue while the round trips are measured; Accepted releases it; then
            # they are measured again, so machine drift during a round shows in both
            await asyncio.wait_for(trips.pending, 60)
            pings, calls = await trips.ping_us(), await trips.call_us()
            trips.accept = True
            stop = await asyncio.wait_for(trips.stopped, 600)
            replayed = [f for f in csms.frames if f.action == "MeterValues" and "transactionId" in f.payload
                        and f.payload["meterValue"][0]["timestamp"].startswith("2026-11-22T")]
            if len(replayed) != messages:
                raise SystemExit(f"only {len(replayed)} of {messages} queued MeterValues arrived")
            rate = len(replayed) / (stop.received - min(f.received for f in replayed))
            pings += await trips.ping_us()
            calls += await trips.call_us()
            return Round(rate, percentiles(pings), percentiles(calls))
        finally:
            stop_station(station)


async def measure(messages: int, rounds: int) -> None:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("mosquitto not found: run ./run-tests once (it installs it) or apt install mosquitto")
    mqtt_port = free_port()
    broker = start_mosquitto_subprocess(mqtt_port, executable=mosquitto)
    results: list[Round] = []
    try:
        for number in range(1, rounds + 1):
            with tempfile.TemporaryDirectory(prefix="bench-ocpp-queue-") as tmp:
                result = await replay_round(messages, mqtt_port, Path(tmp))
            results.append(result)
            print(f"round {number}: {messages} MeterValues + StopTransaction replayed at {result.rate:.0f} messages/s "
                  f"({1e6 / result.rate:.0f} us each); CALL RTT p50/p99 {result.call_us[0]:.0f}/"
                  f"{result.call_us[1]:.0f} us -> ratio {result.rate * result.call_us[0] / 1e6:.2f}; "
                  f"ping RTT p50 {result.ping_us[0]:.0f} us -> ratio {result.rate * result.ping_us[0] / 1e6:.2f}",
                  flush=True)
    finally:
        stop_process(broker)
    call_ratio = statistics.median(r.rate * r.call_us[0] / 1e6 for r in results)
    ping_ratio = statistics.median(r.rate * r.ping_us[0] / 1e6 for r in results)
    print(f"median over {rounds} rounds: replay / (1 / CSMS CALL RTT) = {call_ratio:.2f} (goal >= 0.8); "
          f"replay / (1 / websocket ping RTT) = {ping_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="stations started on a full queue (median reported)")
    args = parser.parse_args()
    asyncio.run(measure(args.messages, args.rounds))


if __name__ == "__main__":
    main()
