"""``chargepoint meter read`` against the simulated meters on a real pseudo-terminal and over Modbus TCP."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import chargepoint_cmd, subprocess_env

from simulators.modbus_meter.build import MeterSpec, build_line
from simulators.modbus_meter.line import MeterLine
from simulators.modbus_meter.load import ConstantLoad


@pytest.fixture
def meters(tmp_path: Path) -> Iterator[MeterLine]:
    specs = [MeterSpec(1, "sdm630", 1_234_567.0, 0.0), MeterSpec(3, "em24", 98_700.0, 0.0)]
    line = MeterLine(build_line(specs, 19200, time.monotonic()), link=tmp_path / "ttyUSB-sim", tcp_port=0).start()
    line.change(lambda slaves, now: slaves.set_load(3, ConstantLoad(2300.0), now))
    try:
        yield line
    finally:
        line.stop()


def meter_read(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(chargepoint_cmd("meter", "read", *args), env=subprocess_env(), capture_output=True,
                          text=True, timeout=30)


def rows(stdout: str) -> dict[tuple[str, str], tuple[float, str]]:
    table = {}
    for line in stdout.splitlines()[2:]:
        quantity, phase, value, unit = line.split()
        table[(quantity, phase)] = (float(value), unit)
    return table


def test_reads_a_meter_once_and_prints_quantity_phase_value_unit(meters: MeterLine) -> None:
    result = meter_read("--model", "sdm630", "--port", str(meters.link), "--id", "1", "--baud", "19200")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sdm630 (") and "slave 1 on" in lines[0] and "19200 8N1" in lines[0]
    assert lines[1].split() == ["quantity", "phase", "value", "unit"]
    table = rows(result.stdout)
    assert table[("energy_Wh_import", "total")] == (pytest.approx(1_234_567.0, abs=0.2), "Wh")
    assert table[("voltage_V", "L1")] == (230.0, "V")
    assert table[("frequency_Hz", "L1")] == (50.0, "Hz")
    assert table[("power_W", "total")] == (0.0, "W")


def test_reads_the_second_meter_of_the_line_and_over_modbus_tcp(meters: MeterLine) -> None:
    serial = meter_read("--model", "em24", "--port", str(meters.link), "--id", "3", "--baud", "19200")
    tcp = meter_read("--model", "em24", "--host", "127.0.0.1", "--tcp-port", str(meters.tcp_port), "--id", "3")
    for result in (serial, tcp):
        assert result.returncode == 0, result.stderr
        table = rows(result.stdout)
        assert table[("power_W", "total")] == (pytest.approx(2300.0, abs=0.2), "W")
        assert table[("energy_Wh_import", "total")][0] == pytest.approx(98_700.0, abs=100)
    assert "Modbus TCP 127.0.0.1:" in tcp.stdout.splitlines()[0]


def test_clear_errors_and_exit_codes(meters: MeterLine, tmp_path: Path) -> None:
    unknown = meter_read("--model", "sdm6300", "--port", str(meters.link))
    assert unknown.returncode == 2
    assert "unknown meter model 'sdm6300'" in unknown.stderr and "sdm630, sdm72dm-v2" in unknown.stderr
    missing = meter_read("--model", "sdm630", "--port", str(tmp_path / "ttyUSB9"))
    assert missing.returncode == 2 and "ttyUSB9 does not exist" in missing.stderr
    silent = meter_read("--model", "sdm630", "--port", str(meters.link), "--id", "7", "--baud", "19200",
                        "--timeout", "0.2")
    assert silent.returncode == 1 and "no reply from slave 7 within 0.2 s" in silent.stderr
    assert silent.stdout == ""
    usage = meter_read("--model", "sdm630")
    assert usage.returncode == 2 and "--port" in usage.stderr
