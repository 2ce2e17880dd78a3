"""The Modbus meter simulator seen by an independent Modbus master (pymodbus) over a real pseudo-terminal,
over Modbus TCP, from its command line, and as a station module following the board simulator's EV."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from helpers import ROOT, Broker, run, running_station, subprocess_env, write_wiring
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from chargepoint import CmdError
from chargepoint.busprobe import BusProbe
from chargepoint.iec61851 import duty_cycle_for_current
from chargepoint.modbus.rtu import crc16, wire_time_s
from simulators.modbus_meter.build import MeterSpec, build_line
from simulators.modbus_meter.line import MeterLine

BAUD = 9600
FLOAT32 = AsyncModbusSerialClient.DATATYPE.FLOAT32
INT32 = AsyncModbusSerialClient.DATATYPE.INT32
UINT64 = AsyncModbusSerialClient.DATATYPE.UINT64


def three_meters(link: Path, tcp_port: int | None = None) -> MeterLine:
    """SDM630 (id 1, 7.36 kW), EM24 (id 2, 3.68 kW), ABB B23 (id 3, idle) on one 9600-baud line."""
    specs = [MeterSpec(1, "sdm630", 12_000.0, 7360.0), MeterSpec(2, "em24", 5_000.0, 3680.0),
             MeterSpec(3, "abb-b23", 800_000.0, 0.0)]
    return MeterLine(build_line(specs, BAUD, time.monotonic()), link=link, tcp_port=tcp_port)


@asynccontextmanager
async def serial_client(port: str, timeout: float = 1.0,
                        received: bytearray | None = None) -> AsyncIterator[AsyncModbusSerialClient]:
    """A pymodbus RTU master on ``port``; ``received`` collects the raw bytes it reads."""

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending and received is not None:
            received[:] = data  # pymodbus passes what it has buffered so far
        return data

    client = AsyncModbusSerialClient(port, baudrate=BAUD, timeout=timeout, retries=0, reconnect_delay=0,
                                     trace_packet=trace)
    assert await client.connect(), f"cannot open {port}"
    try:
        yield client
    finally:
        client.close()


async def sdm630_voltage(client: AsyncModbusSerialClient, device_id: int = 1) -> float:
    reply = await client.read_input_registers(0x00, count=2, device_id=device_id)
    assert not reply.isError(), reply
    return float(client.convert_from_registers(reply.registers, FLOAT32))  # type: ignore[arg-type]


def test_three_meters_on_one_line_read_by_pymodbus(tmp_path: Path) -> None:
    async def scenario() -> None:
        with three_meters(tmp_path / "ttyMeters") as line:
            async with serial_client(line.port) as client:
                sdm = await client.read_input_registers(0x00, count=0x4C, device_id=1)
                assert not sdm.isError(), sdm
                regs = sdm.registers
                assert client.convert_from_registers(regs[0x00:0x02], FLOAT32) == pytest.approx(230.0)
                assert client.convert_from_registers(regs[0x06:0x08], FLOAT32) == pytest.approx(7360 / 3 / 230)
                assert client.convert_from_registers(regs[0x34:0x36], FLOAT32) == pytest.approx(7360.0)
                energy_kWh = client.convert_from_registers(regs[0x48:0x4A], FLOAT32)
                assert 12.0 <= energy_kWh < 12.01  # kWh, rising at 7.36 kW

                em24 = await client.read_input_registers(0x00, count=2, device_id=2)
                assert client.convert_from_registers(em24.registers, INT32, word_order="little") == 2300  # 0.1 V
                em24_power = await client.read_input_registers(0x28, count=2, device_id=2)
                assert client.convert_from_registers(em24_power.registers, INT32, word_order="little") == 36800

                abb = await client.read_holding_registers(0x5000, count=4, device_id=3)
                assert client.convert_from_registers(abb.registers, UINT64) == 80_000  # 800 kWh in 0.01 kWh
                wrong_function = await client.read_input_registers(0x5000, count=4, device_id=3)
                assert wrong_function.isError() and wrong_function.exception_code == 2
                outside = await client.read_input_registers(0x200, count=2, device_id=1)
                assert outside.isError() and outside.exception_code == 2

                with pytest.raises(ModbusException):  # nobody has id 9: no reply on an RS485 line
                    await client.read_input_registers(0x00, count=2, device_id=9)
                assert await sdm630_voltage(client) == pytest.approx(230.0)

    run(scenario(), 20)


def test_reply_takes_at_least_the_wire_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        with three_meters(tmp_path / "ttyMeters") as line:
            async with serial_client(line.port) as client:
                for _ in range(3):
                    started = time.monotonic()
                    reply = await client.read_input_registers(0x00, count=0x4C, device_id=1)
                    round_trip = time.monotonic() - started
                    assert not reply.isError()
                    # 8-byte request + 5 + 2 * 76-byte reply, 11 bits each, at 9600 baud: 0.189 s
                    assert round_trip >= wire_time_s(8 + 5 + 2 * 0x4C, BAUD)

    run(scenario(), 20)


def test_injected_faults_as_a_master_sees_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        with three_meters(tmp_path / "ttyMeters") as line:
            received = bytearray()
            async with serial_client(line.port, timeout=0.6, received=received) as client:
                line.change(lambda meters, _: meters.inject_fault(1, "no_reply", 2))
                for _ in range(2):
                    with pytest.raises(ModbusException):
                        await client.read_input_registers(0x00, count=2, device_id=1)
                assert received == b"", "no_reply: not a byte came back"
                assert await sdm630_voltage(client) == pytest.approx(230.0), "the fault lasted two requests"

                received.clear()
                line.change(lambda meters, _: meters.inject_fault(1, "bad_crc", 1))
                with pytest.raises(ModbusException):
                    await client.read_input_registers(0x00, count=2, device_id=1)
                assert len(received) == 9 and received[:3] == b"\x01\x04\x04"
                assert crc16(bytes(received[:-2])) != int.from_bytes(received[-2:], "little")

                received.clear()
                line.change(lambda meters, _: meters.inject_fault(2, "wrong_slave_id", 1))
                with pytest.raises(ModbusException):
                    await client.read_input_registers(0x00, count=2, device_id=2)
                assert received[:1] == b"\x03", "meter 2 answered as id 3"
                assert crc16(bytes(received[:-2])) == int.from_bytes(received[-2:], "little")

                line.change(lambda meters, _: meters.inject_fault(1, "slow_reply", 1, 300))
                started = time.monotonic()
                assert await sdm630_voltage(client) == pytest.approx(230.0)
                assert time.monotonic() - started >= 0.3 + wire_time_s(8 + 9, BAUD)
                line.change(lambda meters, _: meters.inject_fault(1, "slow_reply", None, 1500))
                with pytest.raises(ModbusException):  # later than the master waits
                    await client.read_input_registers(0x00, count=2, device_id=1)
                line.change(lambda meters, _: meters.clear_faults())
                await asyncio.sleep(1.2)  # let the late reply of the timed-out request pass
                assert await sdm630_voltage(client) == pytest.approx(230.0)

    run(scenario(), 25)


def test_unplug_and_replug_follow_the_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyMeters"

    async def scenario() -> None:
        with three_meters(link) as line:
            async with serial_client(str(link), timeout=0.5) as client:
                assert await sdm630_voltage(client) == pytest.approx(230.0)
                line.unplug()
                assert not link.exists() and not line.plugged
                with pytest.raises(ModbusException):
                    await client.read_input_registers(0x00, count=2, device_id=1)
            line.replug()
            assert line.plugged and line.slave_path is not None and link.resolve() == Path(line.slave_path)
            async with serial_client(str(link)) as client:
                assert await sdm630_voltage(client) == pytest.approx(230.0)

    run(scenario(), 20)


def test_modbus_tcp_serves_the_same_meters(tmp_path: Path) -> None:
    async def scenario() -> None:
        with three_meters(tmp_path / "ttyMeters", tcp_port=0) as line:
            assert line.tcp_port
            client = AsyncModbusTcpClient("127.0.0.1", port=line.tcp_port, timeout=1, retries=0)
            assert await client.connect()
            try:
                reply = await client.read_input_registers(0x34, count=2, device_id=1)
                assert client.convert_from_registers(reply.registers, FLOAT32) == pytest.approx(7360.0)
                abb = await client.read_holding_registers(0x5B00, count=2, device_id=3)
                assert client.convert_from_registers(abb.registers, client.DATATYPE.UINT32) == 2300
                missing = await client.read_input_registers(0x00, count=2, device_id=42)
                assert missing.isError() and missing.exception_code == 0x0B  # gateway: target failed to respond
            finally:
                client.close()

    run(scenario(), 20)


def test_command_line_runner(tmp_path: Path) -> None:
    link = tmp_path / "ttyCli"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_meter", "--model", "sdm120", "--id", "4", "--baud", "9600",
         "--link", str(link), "--power-W", "2300"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=subprocess_env())
    try:
        assert process.stdout is not None and process.stdin is not None and process.stderr is not None
        assert process.stdout.readline().strip() == str(link)

        def command(text: str) -> str:
            process.stdin.write(text + "\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            while True:
                answer = process.stderr.readline().strip()  # type: ignore[union-attr]
                if answer == "ok" or answer.startswith("error"):
                    return answer

        async def power() -> float:
            async with serial_client(str(link)) as client:
                reply = await client.read_input_registers(0x0C, count=2, device_id=4)
                return float(client.convert_from_registers(reply.registers, FLOAT32))  # type: ignore[arg-type]

        assert run(power(), 10) == pytest.approx(2300.0)
        assert command("power 4 1150") == "ok"
        assert run(power(), 10) == pytest.approx(1150.0)
        assert command("fault 5 no_reply").startswith("error: no meter with slave id 5")
        assert command("dance").startswith("error: unknown command")
        process.stdin.write("quit\n")
        process.stdin.flush()
        assert process.wait(10) == 0
        assert not link.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


STATION = """\
  board_1:
    module: board_simulator
    config: {time_scale: 3600, meter_interval_s: 0.1}
  meters:
    module: modbus_meter
    config:
      link: ttyMeters
      time_scale: 3600
      state_interval_s: 0.2
      meters: [{slave_id: 1, model: sdm630, energy_Wh: 1000}, {slave_id: 2, model: em340, load_W: 500}]
    connections:
      load: [board_1.powermeter]
"""


def test_station_module_follows_the_simulated_ev(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, STATION)
    link = tmp_path / "state" / "meters" / "ttyMeters"

    async def energy_kWh(client: AsyncModbusSerialClient) -> float:
        reply = await client.read_input_registers(0x48, count=2, device_id=1)
        assert not reply.isError(), reply
        return float(client.convert_from_registers(reply.registers, FLOAT32))  # type: ignore[arg-type]

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            probe.watch("cp/meters/control/var/state")
            state_topic = "cp/meters/control/var/state"
            state = json.loads(await probe.wait_for(state_topic, lambda p: True))
            assert state["link"] == str(link) and state["plugged"] is True and state["baudrate"] == 9600
            assert [m["model"] for m in state["meters"]] == ["sdm630", "em340"]
            async with serial_client(str(link)) as client:
                idle_kWh = await energy_kWh(client)
                assert idle_kWh == pytest.approx(1.0, abs=0.01)

                assert await probe.call("board_1", "ev", "plug_in") is True
                await probe.call("board_1", "board", "set_pwm", {"duty_cycle_percent": duty_cycle_for_current(16)})
                assert await probe.call("board_1", "board", "allow_power_on", {"allowed": True, "phases": 3})
                charging = json.loads(await probe.wait_for(
                    state_topic, lambda p: json.loads(p)["meters"][0]["power_W"] > 10000))
                assert charging["meters"][0]["load"] == "external"
                assert charging["meters"][0]["power_W"] == pytest.approx(16 * 230 * 3)
                await asyncio.sleep(0.5)  # 11 kW at time_scale 3600: about 1.5 kWh in half a second
                assert await energy_kWh(client) > idle_kWh + 1.0

                await probe.call("meters", "control", "inject_fault", {"slave_id": 1, "kind": "no_reply", "count": 1})
                with pytest.raises(ModbusException):
                    await energy_kWh(client)
                assert await energy_kWh(client) > idle_kWh + 1.0
                await probe.call("meters", "control", "set_load", {"slave_id": 1, "power_W": 0})
                power = await client.read_input_registers(0x34, count=2, device_id=1)
                assert client.convert_from_registers(power.registers, FLOAT32) == 0.0
                with pytest.raises(CmdError, match="no meter with slave id 9"):
                    await probe.call("meters", "control", "set_load", {"slave_id": 9, "power_W": 0})

            assert await probe.call("meters", "control", "unplug") is True
            assert not link.exists()
            assert await probe.call("meters", "control", "unplug") is False
            assert await probe.call("meters", "control", "replug") is True
            await probe.wait_for(state_topic, lambda p: json.loads(p)["plugged"] is True)
            async with serial_client(str(link)) as client:
                assert await energy_kWh(client) > idle_kWh + 1.0

    run(scenario(), 40)

