"""Run simulated Modbus meters: ``python -m simulators.modbus_meter --model sdm630 --id 1 [--id 2 --model em24]
--baud 9600 --link PATH [--tcp-port N] [--power-W 7400]``.

The i-th ``--id`` gets the i-th ``--model`` (the last one given when there are fewer). Prints the serial
port (the link, or the pty's path) on the first line of stdout, then reads commands from stdin, one per
line: ``power ID W``, ``profile ID SECONDS:W,...``, ``fault ID KIND [N]``, ``slow ID MS [N]``, ``clear ID``,
``status``, ``unplug``, ``replug``, ``quit``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .build import MeterSpec, build_line, parse_profile
from .line import MeterLine
from .load import ConstantLoad
from .slave import FAULT_KINDS, SlaveLine

HELP = ("commands: power ID W | profile ID SECONDS:W,... | fault ID KIND [N] | slow ID MS [N] | clear ID | status"
        f" | unplug | replug | quit   (fault kinds: {', '.join(FAULT_KINDS)})")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r}: not a number") from None


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r}: not an integer") from None


def status_lines(meter_line: MeterLine) -> list[str]:
    def collect(line: SlaveLine, now: float) -> list[str]:
        line.advance(now)
        rows = []
        for slave_id, meter in sorted(line.meters.items()):
            values = meter.readings.values()
            rows.append(f"id {slave_id} {meter.model.name}: {values['energy_Wh_import']['total']:.3f} Wh, "
                        f"{values['power_W']['total']:.1f} W, faults {','.join(sorted(meter.faults)) or '-'}, "
                        f"requests {meter.requests}")
        return rows

    return meter_line.change(collect)


def execute(meter_line: MeterLine, text: str) -> bool:
    """Carry out one command line; False when the simulator should stop. ValueError on a bad command."""
    words = text.split()
    if not words:
        return True
    name, args = words[0].lower(), words[1:]
    if name in ("quit", "exit") and not args:
        return False
    if name in ("unplug", "replug") and not args:
        meter_line.unplug() if name == "unplug" else meter_line.replug()
    elif name == "status" and not args:
        print("\n".join(status_lines(meter_line)), flush=True)
    elif name == "power" and len(args) == 2:
        slave_id, power = _integer(args[0], "slave id"), _number(args[1], "power")
        meter_line.change(lambda line, now: line.set_load(slave_id, ConstantLoad(power), now))
    elif name == "profile" and len(args) == 2:
        slave_id = _integer(args[0], "slave id")
        meter_line.change(lambda line, now: line.set_load(slave_id, parse_profile(args[1], now), now))
    elif name == "fault" and len(args) in (2, 3):
        slave_id = _integer(args[0], "slave id")
        count = _integer(args[2], "count") if len(args) == 3 else None
        meter_line.change(lambda line, _: line.inject_fault(slave_id, args[1], count))
    elif name == "slow" and len(args) in (2, 3):
        slave_id, delay_ms = _integer(args[0], "slave id"), _number(args[1], "delay")
        count = _integer(args[2], "count") if len(args) == 3 else None
        meter_line.change(lambda line, _: line.inject_fault(slave_id, "slow_reply", count, delay_ms))
    elif name == "clear" and len(args) <= 1:
        slave_id = _integer(args[0], "slave id") if args else None
        meter_line.change(lambda line, _: line.clear_faults(slave_id))
    else:
        raise ValueError(f"unknown command {text.strip()!r}; {HELP}")
    return True


def meter_specs(ids: list[int], models: list[str], energy_Wh: float, power_W: float) -> list[MeterSpec]:
    if not ids:
        ids = [1]
    models = models or ["sdm630"]
    return [MeterSpec(slave_id, models[min(index, len(models) - 1)], energy_Wh, power_W)
            for index, slave_id in enumerate(ids)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.modbus_meter", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="meter model name or YAML path (repeatable)")
    parser.add_argument("--id", action="append", type=int, default=[], dest="ids", help="slave id (repeatable)")
    parser.add_argument("--baud", type=int, default=9600, help="baud rate whose wire time is taken (default 9600)")
    parser.add_argument("--link", help="symlink kept pointing at the current pty (needed to follow a replug)")
    parser.add_argument("--tcp-port", type=int, help="also serve Modbus TCP on 127.0.0.1:N (0 = any free port)")
    parser.add_argument("--power-W", type=float, default=0.0, help="constant load of every meter (W)")
    parser.add_argument("--energy-Wh", type=float, default=0.0, help="import energy register at start (Wh)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="energy integrates this many times faster")
    args = parser.parse_args(argv)
    try:
        line = build_line(meter_specs(args.ids, args.model, args.energy_Wh, args.power_W), args.baud,
                          time.monotonic(), args.time_scale)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with MeterLine(line, link=args.link, tcp_port=args.tcp_port) as meter_line:
        print(meter_line.port, flush=True)
        if meter_line.tcp_port is not None:
            print(f"tcp 127.0.0.1:{meter_line.tcp_port}", file=sys.stderr, flush=True)
        print(HELP, file=sys.stderr, flush=True)
        for text in sys.stdin:
            try:
                if not execute(meter_line, text):
                    break
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                continue
            print("ok", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
