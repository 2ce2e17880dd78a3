"""powermeter_modbus in a running station, reading the simulated meters over a real pseudo-terminal."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, run, running_station, write_wiring

from chargepoint.busprobe import BusProbe
from chargepoint.modbus.model import MeterModel, builtin_model_names, load_model
from chargepoint.timestamps import parse_rfc3339
from modules.powermeter_modbus.line import LineConflictError, acquire_line, release_line
from modules.powermeter_modbus.settings import line_conflict, meter_settings
from simulators.modbus_meter.build import MeterSpec, build_line
from simulators.modbus_meter.line import MeterLine


@pytest.fixture
def meter_line(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MeterLine]:
    """Simulated meters on one pty (``link`` under tmp_path): ``request.param`` is (meter specs, baud rate)."""
    specs, baudrate = request.param
    line = MeterLine(build_line(specs, baudrate, time.monotonic()), link=tmp_path / "meter-line").start()
    try:
        yield line
    finally:
        line.stop()


def meter_module(module_id: str, model: str, slave_id: int, port: Path, **extra: Any) -> str:
    config = {"model": model, "slave_id": slave_id, "port": str(port), "poll_interval_s": 0.3, **extra}
    return f"  {module_id}:\n    module: powermeter_modbus\n    config: {json.dumps(config)}\n"


def simulated(line: MeterLine, slave_id: int) -> dict[str, dict[str, float]]:
    return line.change(lambda slaves, now: (slaves.advance(now), slaves.meter(slave_id).readings.values())[1])


def assert_matches(model: MeterModel, reading: dict[str, Any], truth: dict[str, dict[str, float]],
                   drift_Wh: float) -> None:
    """Every register of ``model`` is in ``reading`` and agrees with the simulated value within its resolution."""
    for register in model.registers:
        got = reading[register.quantity][register.phase]
        want = truth[register.quantity][register.phase]
        tolerance = abs(register.scale) * 1.01 + abs(want) * 1e-6
        if register.quantity.startswith("energy"):
            tolerance += drift_Wh
        assert got == pytest.approx(want, abs=tolerance), (model.name, register.quantity, register.phase)


@asynccontextmanager
async def station(tmp_path: Path, broker: Broker, modules: str) -> AsyncIterator[BusProbe]:
    async with running_station(write_wiring(tmp_path, broker.port, modules)), \
            BusProbe("127.0.0.1", broker.port) as probe:
        probe.watch("cp/+/powermeter/var/powermeter")
        probe.watch("cp/+/powermeter/error/+")
        yield probe


async def reading_of(probe: BusProbe, module_id: str, newer_than: str = "", timeout: float = 10) -> dict[str, Any]:
    payload = await probe.wait_for(f"cp/{module_id}/powermeter/var/powermeter",
                                   lambda p: json.loads(p)["timestamp"] > newer_than, timeout)
    return json.loads(payload)


async def error_state(probe: BusProbe, module_id: str, kind: str, active: bool, timeout: float = 10) -> dict[str, Any]:
    payload = await probe.wait_for(f"cp/{module_id}/powermeter/error/{kind}",
                                   lambda p: json.loads(p)["active"] is active, timeout)
    return json.loads(payload)


ALL_MODELS = builtin_model_names()
SETTINGS_BASE = {"meter_id": None, "slave_id": None, "host": None, "tcp_port": 502, "baudrate": None, "parity": None,
                 "stopbits": None, "timeout_s": 0.5, "inter_request_delay_ms": 0, "retries": 2, "poll_interval_s": 1,
                 "stale_after_s": 10, "fault_poll_interval_s": 5}


@pytest.mark.parametrize("meter_line", [([MeterSpec(i + 1, name, 250_000.0 * (i + 1), 1500.0 * (i + 1))
                                          for i, name in enumerate(ALL_MODELS)], 38400)], indirect=True)
def test_every_shipped_model_reads_what_the_simulated_meter_holds(broker: Broker, tmp_path: Path,
                                                                   meter_line: MeterLine) -> None:
    assert len(ALL_MODELS) >= 7
    modules = "".join(meter_module(f"m_{i + 1}", name, i + 1, meter_line.link, baudrate=38400, parity="N",
                                   stopbits=1) for i, name in enumerate(ALL_MODELS))

    async def scenario() -> None:
        async with station(tmp_path, broker, modules) as probe:
            for index, name in enumerate(ALL_MODELS):
                slave_id = index + 1
                reading = await reading_of(probe, f"m_{slave_id}")
                truth = simulated(meter_line, slave_id)
                power = 1500.0 * slave_id
                assert reading["meter_id"] == f"m_{slave_id}"
                assert reading["power_W"]["total"] == pytest.approx(power, rel=0.01), name
                assert_matches(load_model(name), reading, truth, drift_Wh=power * 10 / 3600)

    run(scenario(), timeout=40)


@pytest.mark.parametrize("meter_line", [([MeterSpec(1, "sdm630", 1e6, 11000.0), MeterSpec(2, "sdm120", 2e5, 3680.0),
                                          MeterSpec(3, "em24", 5e5, -2000.0)], 9600)], indirect=True)
def test_three_meters_on_one_9600_baud_line_share_it_and_are_each_published(broker: Broker, tmp_path: Path,
                                                                             meter_line: MeterLine) -> None:
    common = {"baudrate": 9600, "poll_interval_s": 1.0}
    modules = (meter_module("evse_meter_1", "sdm630", 1, meter_line.link, **common)
               + meter_module("evse_meter_2", "sdm120", 2, meter_line.link, **common)
               + meter_module("grid_meter", "em24", 3, meter_line.link, **common))

    async def scenario() -> None:
        async with station(tmp_path, broker, modules) as probe:
            first = {m: await reading_of(probe, m) for m in ("evse_meter_1", "evse_meter_2", "grid_meter")}
            again = {m: await reading_of(probe, m, first[m]["timestamp"]) for m in first}
        assert again["evse_meter_1"]["power_W"]["total"] == pytest.approx(11000.0, rel=1e-3)
        assert again["evse_meter_2"]["power_W"]["total"] == pytest.approx(3680.0, rel=1e-3)
        assert again["grid_meter"]["power_W"]["total"] == pytest.approx(-2000.0, rel=1e-3)
        assert again["evse_meter_2"]["voltage_V"] == {"L1": pytest.approx(230.0, rel=1e-3)}
        assert again["grid_meter"]["energy_Wh_import"]["total"] == pytest.approx(5e5, abs=100)
        for module_id in first:
            assert probe.latest(f"cp/{module_id}/powermeter/error/communication_fault") is None
        requests = meter_line.change(lambda slaves, _: {i: m.requests for i, m in slaves.meters.items()})
        assert all(count >= 2 for count in requests.values()), requests

    run(scenario(), timeout=30)


@pytest.mark.parametrize("meter_line", [([MeterSpec(1, "sdm630", 1e6, 7400.0), MeterSpec(2, "sdm120")], 38400)],
                         indirect=True)
def test_injected_faults_raise_communication_fault_after_the_retries_and_recovery_clears_it(
        broker: Broker, tmp_path: Path, meter_line: MeterLine) -> None:
    modules = meter_module("meter_1", "sdm630", 1, meter_line.link, baudrate=38400, timeout_s=0.3, retries=2,
                           poll_interval_s=0.25, stale_after_s=2.5, fault_poll_interval_s=0.25)

    def inject(kind: str, count: int | None = None, delay_ms: float = 0.0) -> None:
        meter_line.change(lambda slaves, _: slaves.inject_fault(1, kind, count, delay_ms))

    def clear() -> None:
        meter_line.change(lambda slaves, _: slaves.clear_faults(1))

    async def scenario() -> None:
        async with station(tmp_path, broker, modules) as probe:
            seen: list[dict[str, Any]] = []
            probe.watch("cp/meter_1/powermeter/error/communication_fault", lambda _t, p: seen.append(json.loads(p)))
            latest = await reading_of(probe, "meter_1")
            # a fault for fewer requests than the retries is absorbed: readings go on, no error
            inject("no_reply", count=2)
            latest = await reading_of(probe, "meter_1", latest["timestamp"])
            latest = await reading_of(probe, "meter_1", latest["timestamp"])
            inject("slow_reply", delay_ms=60)  # slower than usual but within timeout_s
            latest = await reading_of(probe, "meter_1", latest["timestamp"])
            clear()
            assert [s for s in seen if s["active"]] == []
            for kind, delay_ms, expected in (("no_reply", 0, "no reply from slave 1 within 0.3 s"),
                                             ("bad_crc", 0, "CRC error"),
                                             ("wrong_slave_id", 0, "reply from slave 2 instead of slave 1"),
                                             ("slow_reply", 600, "slave 1")):  # late replies overlap the retries
                inject(kind, delay_ms=delay_ms)
                raised = await error_state(probe, "meter_1", "communication_fault", True)
                assert expected in raised["message"] and "sdm630 slave 1" in raised["message"], raised
                assert "3 tries" in raised["message"]
                clear()
                await error_state(probe, "meter_1", "communication_fault", False)
                latest = await reading_of(probe, "meter_1", latest["timestamp"])
            # a long outage also makes the data stale; the next good reading clears both
            inject("no_reply")
            silent_since = datetime.now(UTC)
            stale = await error_state(probe, "meter_1", "stale_data", True)
            assert "no good reading for" in stale["message"]
            latest = json.loads(probe.latest("cp/meter_1/powermeter/var/powermeter") or b"{}")
            assert parse_rfc3339(latest["timestamp"]) < silent_since + timedelta(seconds=0.5)  # nothing new since
            clear()
            await error_state(probe, "meter_1", "stale_data", False)
            await error_state(probe, "meter_1", "communication_fault", False)
            after = await reading_of(probe, "meter_1", latest["timestamp"])
            assert after["energy_Wh_import"]["total"] >= latest["energy_Wh_import"]["total"]

    run(scenario(), timeout=60)


def test_meters_that_disagree_on_a_shared_line_cannot_share_it(tmp_path: Path) -> None:
    link = tmp_path / "line"
    base = SETTINGS_BASE | {"port": str(link)}
    first = meter_settings(base | {"model": "sdm630", "baudrate": 9600}, "meter_a", tmp_path)
    second = meter_settings(base | {"model": "sdm120", "slave_id": 2}, "meter_b", tmp_path)
    third = meter_settings(base | {"model": "sdm120", "slave_id": 3, "baudrate": 9600}, "meter_c", tmp_path)

    async def scenario() -> None:
        line = acquire_line(first.line, "meter_a")
        with pytest.raises(LineConflictError, match="shared with meter_a: baudrate 2400 \\(model default\\) but "
                                                    "meter_a uses 9600"):
            acquire_line(second.line, "meter_b", lambda owner: line_conflict(second, "meter_a", owner.settings))
        joined = acquire_line(third.line, "meter_c", lambda owner: line_conflict(third, "meter_a", owner.settings))
        assert joined is line
        assert line.users == {"meter_a", "meter_c"}
        release_line(line, "meter_a")
        release_line(line, "meter_c")
        assert acquire_line(second.line, "meter_b") is not line  # the last user closed it

    run(scenario(), timeout=10)


def test_start_and_stop_transaction_answer_not_supported(broker: Broker, tmp_path: Path) -> None:
    modules = meter_module("meter_1", "sdm630", 1, tmp_path / "no-such-port", stale_after_s=60)

    async def scenario() -> None:
        async with station(tmp_path, broker, modules) as probe:
            started = await probe.call("meter_1", "powermeter", "start_transaction",
                                       {"session_id": "s-1", "evse_id": 1})
            stopped = await probe.call("meter_1", "powermeter", "stop_transaction", {"session_id": "s-1"})
            fault = await error_state(probe, "meter_1", "communication_fault", True)
        assert started["status"] == stopped["status"] == "not_supported"
        assert started["signed_meter_value"] is None
        assert "does not exist" in fault["message"]

    run(scenario(), timeout=30)
