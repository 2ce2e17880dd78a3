"""``chargepoint meter read``: read a Modbus meter once and print a table, to check wiring before configuring.

It reads through the same line code and meter models as the ``powermeter_modbus`` module (loaded from the
module search path, so it works from a checkout and from the installed wheel). Do not run it against a line
that a running station is polling: two masters on one RS485 line garble each other.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

EXIT_OK = 0
EXIT_METER = 1  # the meter did not answer properly
EXIT_USAGE = 2  # bad command line: unknown model, port that is not there, bad option
UNITS = {"energy_Wh_import": "Wh", "energy_Wh_export": "Wh", "power_W": "W", "reactive_power_VAR": "VAR",
         "voltage_V": "V", "current_A": "A", "frequency_Hz": "Hz"}
PHASE_ORDER = ("total", "L1", "L2", "L3", "N")


class MeterCliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_meter_parser(subparsers: Any) -> None:
    """Register ``meter read`` on the ``chargepoint`` command line."""
    meter = subparsers.add_parser("meter", help="read a Modbus power meter once (wiring check)",
                                  description="Talk to a Modbus power meter directly, without a station.")
    actions = meter.add_subparsers(dest="meter_command", required=True, metavar="ACTION")
    read = actions.add_parser(
        "read", help="read every quantity of the model once and print a table",
        description="Read a meter once over Modbus RTU (--port) or TCP (--host) and print quantity, phase, value "
                    "and unit. Serial settings default to the model's. Exit codes: 0 read; 1 the meter did not "
                    "answer properly (timeout, CRC error, exception reply); 2 bad command line (unknown model, "
                    "port that does not exist or cannot be opened).")
    read.add_argument("--model", required=True, help="built-in model name (e.g. sdm630) or path of a model YAML file")
    where = read.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0")
    where.add_argument("--host", help="Modbus TCP address")
    read.add_argument("--tcp-port", type=int, default=502, help="Modbus TCP port (default 502)")
    read.add_argument("--id", type=int, dest="slave_id", help="slave id (default: the model's)")
    read.add_argument("--baud", type=int, dest="baudrate", help="baud rate (default: the model's)")
    read.add_argument("--parity", choices=["N", "E", "O"], type=str.upper, help="parity (default: the model's)")
    read.add_argument("--stopbits", type=int, choices=[1, 2], help="stop bits (default: the model's)")
    read.add_argument("--timeout", type=float, default=1.0, metavar="S", help="reply timeout in s (default 1)")
    read.add_argument("--retries", type=int, default=1, help="tries more per request after a failure (default 1)")


def _powermeter_package(name: str) -> ModuleType:
    from chargepoint.registry import ModuleRegistry, load_module_class

    info = ModuleRegistry().find("powermeter_modbus")
    if info is None:
        raise MeterCliError("the powermeter_modbus module is not installed", EXIT_USAGE)
    load_module_class(info)
    return importlib.import_module(f"chargepoint_ext.powermeter_modbus.{name}")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "meter_id": None, "slave_id": args.slave_id, "port": args.port,
            "baudrate": args.baudrate, "parity": args.parity, "stopbits": args.stopbits, "host": args.host,
            "tcp_port": args.tcp_port, "timeout_s": args.timeout, "inter_request_delay_ms": 0,
            "retries": args.retries, "poll_interval_s": 1, "stale_after_s": 10, "fault_poll_interval_s": 5}


async def read_meter(args: argparse.Namespace) -> tuple[Any, dict[str, dict[str, float]], list[str]]:
    """(meter settings, reading, problems); :class:`MeterCliError` when it cannot be had."""
    from chargepoint.modbus.model import ModelError
    from chargepoint.modbus.plan import plan_reads, reading_from_replies

    settings_module = _powermeter_package("settings")
    line_module = _powermeter_package("line")
    if args.timeout <= 0 or args.retries < 0:
        raise MeterCliError("--timeout must be > 0 and --retries >= 0", EXIT_USAGE)
    try:
        meter = settings_module.meter_settings(_config(args), "meter", Path.cwd())
    except (settings_module.SettingsError, ModelError) as exc:
        raise MeterCliError(str(exc), EXIT_USAGE) from None
    if meter.line.port is not None and not Path(meter.line.port).exists():
        raise MeterCliError(f"serial port {meter.line.port} does not exist (is the adapter plugged in? "
                            "try ls /dev/ttyUSB* /dev/serial/by-id/)", EXIT_USAGE)
    line = line_module.ModbusLine(meter.line)
    replies = {}
    try:
        for request in plan_reads(meter.model):
            for attempt in range(args.retries + 1):
                try:
                    replies[request] = await line.read(meter.slave_id, request)
                    break
                except line_module.ReadError as exc:
                    failure = exc.failure
                    if failure.kind == "port" and not line.opened:
                        raise MeterCliError(failure.message, EXIT_USAGE) from None
                    if attempt == args.retries:
                        raise MeterCliError(f"{meter.model.name} slave {meter.slave_id} on {meter.line.describe()}: "
                                            f"FC{request.function_code} at 0x{request.address:04X}: "
                                            f"{failure.message}", EXIT_METER) from None
    finally:
        line.close()
    reading, problems = reading_from_replies(meter.model, replies)
    return meter, reading, problems


def format_table(reading: dict[str, dict[str, float]]) -> list[str]:
    rows = [("quantity", "phase", "value", "unit")]
    for quantity, unit in UNITS.items():
        phases = reading.get(quantity, {})
        for phase in sorted(phases, key=PHASE_ORDER.index):
            rows.append((quantity, phase, f"{phases[phase]:.3f}", unit))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [f"{q:<{widths[0]}}  {p:<{widths[1]}}  {v:>{widths[2]}}  {u}" for q, p, v, u in rows]


def run_meter(args: argparse.Namespace) -> int:
    try:
        meter, reading, problems = asyncio.run(read_meter(args))
    except MeterCliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print(f"{meter.model.name} ({meter.model.title}), slave {meter.slave_id} on {meter.line.describe()}")
    print("\n".join(format_table(reading)))
    for problem in problems:
        print(f"not available: {problem}", file=sys.stderr)
    return EXIT_OK
