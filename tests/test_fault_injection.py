"""Fault injection: the station in its own process, a recording CSMS with faults, and a checker over what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fault_lab import (
    RecordedCall,
    RecordingCsms,
    StationProcess,
    check,
    fault_wiring,
    queued_messages,
    run_fault_iterations,
)
from helpers import Broker, run
from scenario import Lab

from chargepoint.busprobe import BusProbe

SEEDS = (11, 23, 57)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_lose_and_duplicate_no_transaction(broker: Broker, tmp_path: Path, seed: int) -> None:
    print(f"fault injection seed={seed}")
    report, driver = run(run_fault_iterations(tmp_path, broker, seed, rounds=3), timeout=110)  # type: ignore[misc]
    context = f"seed={seed} steps={driver.steps} {report.violations}"
    assert report.transactions >= 1, context
    assert report.lost == 0 and report.duplicated == 0, context
    assert report.violations == [], context


def start(tx_id: int, tag: str = "T1", at: str = "2026-01-01T10:00:00Z", meter: int = 10) -> RecordedCall:
    call = RecordedCall(0.0, "StartTransaction", {"connectorId": 1, "idTag": tag, "meterStart": meter,
                                                  "timestamp": at}, "normal")
    call.transaction_id = tx_id
    return call


def stop(tx_id: int, at: str = "2026-01-01T10:05:00Z", meter: int = 20, mode: str = "normal") -> RecordedCall:
    return RecordedCall(0.0, "StopTransaction", {"transactionId": tx_id, "meterStop": meter, "timestamp": at,
                                                 "reason": "Local"}, mode)


def meter_values(tx_id: int, at: str) -> RecordedCall:
    return RecordedCall(0.0, "MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                             "meterValue": [{"timestamp": at, "sampledValue": []}]}, "normal")


def test_checker_accepts_a_retransmitted_stop_and_finds_what_went_wrong() -> None:
    session = (1, "T1", "2026-01-01T10:00:00Z")
    clean = check([start(100), meter_values(100, "2026-01-01T10:01:00Z"), stop(100), stop(100)], {session})
    assert (clean.transactions, clean.lost, clean.duplicated, clean.violations) == (1, 0, 0, [])

    refused_stop = check([start(100), stop(100, mode="callerror")], {session})
    assert refused_stop.lost == 1, "a stop the CSMS refused is not a stop"
    assert check([], {session}).lost == 1, "a session the station started never reached the CSMS"
    twice = check([start(100), start(101, meter=11), stop(100), stop(101)], {session})
    assert twice.duplicated == 1
    assert check([start(100), stop(100), stop(100, meter=30)], {session}).duplicated == 1
    bad = check([start(100), meter_values(-1, "2026-01-01T10:01:00Z"), meter_values(100, "2026-01-01T10:02:00Z"),
                 meter_values(100, "2026-01-01T10:01:30Z"), stop(100, meter=5)], {session})
    assert any("never gave" in v for v in bad.violations)
    assert any("arrived after" in v for v in bad.violations)
    assert any("meterStop 5 < meterStart 10" in v for v in bad.violations)


async def wait_queue_state(probe: BusProbe) -> None:
    await probe.wait_for("cp/ocpp/main/var/connection",
                         lambda p: json.loads(p)["connected"] and json.loads(p)["registration"] == "Accepted", 40)


@contextlib.asynccontextmanager
async def charging_station(tmp_path: Path, broker: Broker, csms: RecordingCsms,
                           **wiring: int) -> AsyncIterator[tuple[StationProcess, Lab]]:
    """The CSMS up, the station in its own process, a transaction charging on EVSE 1; all stopped afterwards."""
    await csms.start()
    try:
        async with BusProbe("127.0.0.1", broker.port) as probe:
            station = StationProcess(fault_wiring(tmp_path, broker.port, csms.port, session_resume="power_loss",
                                                  **wiring))
            probe.watch("cp/ocpp/main/var/connection")
            lab = Lab(probe)
            station.start()
            try:
                await probe.wait_station_ready(40)
                await wait_queue_state(probe)
                await lab.plug(1)
                await lab.swipe("AA11")
                await csms.wait_call("StartTransaction")
                await lab.wait_charger_state(1, "charging")
                yield station, lab
            finally:
                station.stop()
    finally:
        await csms.stop()


def test_callerror_to_stop_is_retried_then_dropped_after_the_attempts(broker: Broker, tmp_path: Path) -> None:
    csms = RecordingCsms()

    async def main() -> None:
        async with charging_station(tmp_path, broker, csms, attempts=3, retry_interval_s=1) as (_station, lab):
            await csms.set_mode("callerror")
            await lab.swipe("AA11")
            await lab.wait_event(1, "transaction_finished")
            await csms.wait_call("StopTransaction", count=3, timeout=30)
            await asyncio.sleep(4.0)  # a 4th attempt would come 3 s after the 3rd
            stops = csms.calls_of("StopTransaction")
            assert len(stops) == 3, "TransactionMessageAttempts=3: three deliveries, then dropped"
            assert all(call.mode == "callerror" for call in stops)
            assert len({json.dumps(call.payload, sort_keys=True) for call in stops}) == 1
            gaps = [later.received - earlier.received for earlier, later in itertools.pairwise(stops)]
            assert gaps[1] > gaps[0] * 1.3, f"retry interval times the attempt number: {gaps}"
            await csms.set_mode("normal")
            await asyncio.sleep(2.0)
            assert len(csms.calls_of("StopTransaction")) == 3, "a dropped message is not sent again"

    run(main(), timeout=90)


def test_silent_csms_timeout_counts_as_failed_delivery_and_the_stop_still_arrives(
        broker: Broker, tmp_path: Path) -> None:
    csms = RecordingCsms()

    async def main() -> None:
        async with charging_station(tmp_path, broker, csms, attempts=5, retry_interval_s=1) as (_station, lab):
            await csms.set_mode("silent")
            await lab.swipe("AA11")
            await lab.wait_event(1, "transaction_finished")
            first = await csms.wait_call("StopTransaction", timeout=20)
            await csms.wait_call("StopTransaction", count=2, timeout=30)  # the 5 s call timeout, then 1 s
            await csms.set_mode("normal")
            await lab.unplug(1)
            deadline = asyncio.get_running_loop().time() + 30
            while not [c for c in csms.calls_of("StopTransaction") if c.mode == "normal"]:
                assert asyncio.get_running_loop().time() < deadline, "the stop never went again"
                await asyncio.sleep(0.2)
            stops = csms.calls_of("StopTransaction")
            assert all(c.payload == first.payload for c in stops), "retransmitted unchanged, same transactionId"
            session = (1, "AA11", csms.calls_of("StartTransaction")[0].payload["timestamp"])
            report = check(csms.calls, {session})
            assert (report.transactions, report.lost, report.duplicated, report.violations) == (1, 0, 0, [])

    run(main(), timeout=90)


def test_broker_restart_mid_transaction_loses_nothing_and_keeps_the_ocpp_connection(
        broker: Broker, tmp_path: Path) -> None:
    csms = RecordingCsms()

    async def main() -> None:
        async with charging_station(tmp_path, broker, csms) as (_station, lab):
            connections = csms.connections
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.start)
            assert lab.probe.bus is not None
            await lab.probe.bus.wait_connected(20)
            await lab.probe.wait_station_ready(20)
            await asyncio.sleep(1.5)
            await lab.swipe("AA11")
            await lab.wait_charger_state(1, "finishing", "idle", timeout=20)
            stop_call = await csms.wait_call("StopTransaction", timeout=20)
            assert stop_call.payload["transactionId"] == csms.calls_of("StartTransaction")[0].transaction_id
            assert csms.connections == connections, "the websocket to the CSMS stayed up"
            events = [e for e in lab.events[1] if e["type"] == "transaction_started"]
            session = (1, "AA11", events[0]["timestamp"])
            report = check(csms.calls, {session})
            assert (report.transactions, report.lost, report.duplicated, report.violations) == (1, 0, 0, [])

    run(main(), timeout=90)


def test_power_loss_stop_is_not_earlier_than_meter_values_already_sent(broker: Broker, tmp_path: Path) -> None:
    """kill -9 right after a sampled MeterValues reached the CSMS: the PowerLoss stop must not go back in time.

    The EVSE closes the transaction at its last *persisted* meter reading, which can be older than a sample
    ocpp16 already sent; the stop is clamped to the last queued sample of the transaction.
    """
    csms = RecordingCsms()

    async def main() -> None:
        async with charging_station(tmp_path, broker, csms) as (station, _lab):
            sample = await csms.wait_call("MeterValues", count=2, timeout=20)
            station.kill()
            station.start()
            stop_call = await csms.wait_call("StopTransaction", timeout=40)
            assert stop_call.payload["reason"] == "PowerLoss"
            sent = [c for c in csms.calls_of("MeterValues") if c.received <= sample.received]
            last = sent[-1].payload["meterValue"][-1]
            energy = next(float(v["value"]) for v in last["sampledValue"]
                          if v.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register")
            report = check(csms.calls, set())
            assert report.violations == [], report.violations
            assert stop_call.payload["meterStop"] >= int(energy), (
                f"meterStop {stop_call.payload['meterStop']} below {energy} Wh already sent at {last['timestamp']}")

    run(main(), timeout=90)


class NoIdCsms(RecordingCsms):
    """Answers the first StartTransaction without a transactionId (a broken CSMS), the later ones properly."""

    def _answer(self, call: RecordedCall) -> dict[str, Any]:
        if call.action == "StartTransaction" and len(self.calls_of("StartTransaction")) == 1:
            return {"idTagInfo": {"status": "Accepted"}}
        return super()._answer(call)


def test_a_start_answered_without_transaction_id_is_given_up_and_never_blocks_the_queue(
        broker: Broker, tmp_path: Path) -> None:
    """Nothing of that transaction can be placed at the CSMS: no made-up id, no stop, and later sessions still go."""
    csms = NoIdCsms()

    async def main() -> None:
        async with charging_station(tmp_path, broker, csms) as (station, lab):
            await asyncio.sleep(1.5)  # sampled MeterValues of the unplaceable transaction would be due
            await lab.unplug(1)
            await lab.wait_event(1, "transaction_finished")
            await asyncio.sleep(1.0)
            assert csms.calls_of("StopTransaction") == []
            assert all("transactionId" not in c.payload for c in csms.calls_of("MeterValues"))
            assert queued_messages(station.wiring) == 0, "nothing of it stays queued"
            await lab.plug(1)
            await lab.swipe("BB22")
            second = await csms.wait_call("StartTransaction", count=2)
            # the next transaction on the connector is metered and stopped as its own
            await csms.wait_call("MeterValues", count=1 + len(csms.calls_of("MeterValues")))
            sampled = [c for c in csms.calls_of("MeterValues") if c.payload.get("transactionId")]
            assert sampled and {c.payload["transactionId"] for c in sampled} == {second.transaction_id}
            await lab.unplug(1)
            stop = await csms.wait_call("StopTransaction")
            assert stop.payload["transactionId"] == second.transaction_id

    run(main(), timeout=60)
