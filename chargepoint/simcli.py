"""``chargepoint sim ...``: drive a simulated station the way a test lab does — plug, swipe, faults, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chargepoint.busprobe import BusProbe
    from chargepoint.config import StationConfig

EXIT_STATION_ERROR = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = Path("config/sil.yaml")
CALL_TIMEOUT_S = 5.0
FAULT_KINDS = ("diode_fault", "ventilation_required", "rcd", "overcurrent", "cp_short", "lock_fault", "relay_welded")
FAULT_ALIASES = {"diode": "diode_fault", "ventilation": "ventilation_required", "lock": "lock_fault",
                 "welded": "relay_welded"}


class SimError(Exception):
    """Ends the command with ``message`` on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Evse:
    evse_id: int
    board_id: str | None  # the board_simulator module behind it, if the board is simulated
    manager_id: str | None  # the evse_manager module, if one is wired
    board_note: str = ""  # why board_id is None


@dataclass(frozen=True)
class Topology:
    path: Path
    host: str
    port: int
    prefix: str
    evses: dict[int, Evse]
    readers: list[str]


# -- parser -----------------------------------------------------------------------------------

def _add_station_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", type=Path, default=default,
                        help=f"wiring YAML (default $CHARGEPOINT_CONFIG, else {DEFAULT_CONFIG})")
    parser.add_argument("--mqtt-host", default=default, help="broker address (overrides settings.mqtt.host)")
    parser.add_argument("--mqtt-port", type=int, default=default, help="broker port (overrides settings.mqtt.port)")
    parser.add_argument("--prefix", default=default, help="topic prefix (overrides settings.mqtt.prefix)")


def add_sim_parser(subparsers: Any) -> None:
    """Register ``sim`` and its actions on the ``chargepoint`` command line."""
    sim = subparsers.add_parser("sim", help="drive the simulated EVs, token readers and faults of a station",
                                description="Act on a running simulated station over MQTT. EVSE is the EVSE "
                                            "id of the wiring file. Exit codes: 0 done; 1 the station refused "
                                            "or did not answer; 2 bad command, unknown EVSE/reader/fault or "
                                            "broker unreachable.")
    _add_station_options(sim, None)
    actions = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, evse: bool = True) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        if evse:
            parser.add_argument("evse", type=int, metavar="EVSE", help="EVSE id")
        _add_station_options(parser, argparse.SUPPRESS)
        return parser

    plug = action("plug", "plug a simulated EV in")
    plug.add_argument("--max-current", type=float, metavar="A", help="most the EV draws per phase")
    plug.add_argument("--phases", type=int, choices=[1, 2, 3], help="phases the EV charges on")
    plug.add_argument("--cable", type=int, choices=[13, 20, 32, 63, 70], metavar="A",
                      help="ampacity of the EV's cable (PP coding)")
    plug.add_argument("--full-after", type=float, metavar="WH", help="the EV stops drawing after this energy")
    plug.add_argument("--ventilation", action="store_true", help="the EV asks for ventilation (CP state D)")
    action("unplug", "unplug the EV")
    action("ev-pause", "the EV stops requesting power (CP state B)")
    action("ev-resume", "the EV requests power again")
    swipe = action("swipe", "present a token on a token_manual reader", evse=False)
    swipe.add_argument("token", metavar="TOKEN", help="the token, e.g. an RFID UID in hex")
    swipe.add_argument("--reader", metavar="ID", help="token_manual module id (default: the first in the file)")
    swipe.add_argument("--type", default="rfid", dest="token_type",
                       choices=["rfid", "central", "local", "key_code", "mac_address", "emaid", "bank_card",
                                "no_authorization"], help="token type (default rfid)")
    swipe.add_argument("--evse", type=int, action="append", dest="connectors", metavar="EVSE",
                       help="EVSE the token is meant for (repeatable; default any)")
    kinds = ", ".join([*FAULT_ALIASES, *FAULT_KINDS])
    fault = action("fault", "inject a board/EV fault")
    fault.add_argument("kind", metavar="KIND", help=f"one of {kinds}")
    clear = action("clear-fault", "clear one injected fault, or all")
    clear.add_argument("kind", metavar="KIND", nargs="?", help="the fault to clear (default: all)")
    action("status", "print every EVSE's state, power, session energy and token", evse=False)


# -- topology ---------------------------------------------------------------------------------

def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("CHARGEPOINT_CONFIG") or DEFAULT_CONFIG)


def load_topology(args: argparse.Namespace) -> Topology:
    from chargepoint.config import ConfigError, load_station_config

    path = _config_path(args)
    if not path.is_file():
        raise SimError(f"{path}: no such wiring file (give --config FILE or set CHARGEPOINT_CONFIG)", EXIT_USAGE)
    try:
        station = load_station_config(path, prefix_override=args.prefix)
    except ConfigError as exc:
        problems = "\n".join(str(problem) for problem in exc.problems)
        raise SimError(f"{problems}\n{path}: {len(exc.problems)} problem(s)", EXIT_USAGE) from None
    mqtt = station.settings.mqtt
    return Topology(path, args.mqtt_host or mqtt.host, args.mqtt_port or mqtt.port, mqtt.prefix,
                    evses_of(station), [m.id for m in station.modules.values() if m.module == "token_manual"])


def evses_of(station: StationConfig) -> dict[int, Evse]:
    """EVSE id -> modules: through the evse_manager instances, else a board_simulator's own evse_id."""
    modules = station.modules
    evses: dict[int, Evse] = {}
    wired_boards: set[str] = set()
    for instance in modules.values():
        if instance.module != "evse_manager":
            continue
        evse_id = int(instance.config.get("evse_id", 1))
        boards = instance.connections.get("board", [])
        board = modules.get(boards[0].module_id) if boards else None
        if board is not None and board.module == "board_simulator":
            evses[evse_id] = Evse(evse_id, board.id, instance.id)
            wired_boards.add(board.id)
        else:
            note = f"its board {board.id!r} is a {board.module}, not a board_simulator" if board else "no board"
            evses[evse_id] = Evse(evse_id, None, instance.id, note)
    for instance in modules.values():
        if instance.module == "board_simulator" and instance.id not in wired_boards:
            evse_id = int(instance.config["evse_id"])
            evses.setdefault(evse_id, Evse(evse_id, instance.id, None))
    return evses


def _evse(topology: Topology, evse_id: int) -> Evse:
    evse = topology.evses.get(evse_id)
    if evse is None:
        known = ", ".join(str(key) for key in sorted(topology.evses)) or "none"
        raise SimError(f"unknown EVSE {evse_id}: {topology.path} has EVSE {known}", EXIT_USAGE)
    return evse


def _board(topology: Topology, evse_id: int) -> str:
    evse = _evse(topology, evse_id)
    if evse.board_id is None:
        raise SimError(f"EVSE {evse_id} has no simulated board ({evse.board_note}): there is no EV to drive",
                       EXIT_USAGE)
    return evse.board_id


def _reader(topology: Topology, reader: str | None) -> str:
    if not topology.readers:
        raise SimError(f"{topology.path} has no token_manual module to swipe on", EXIT_USAGE)
    if reader is None:
        return topology.readers[0]
    if reader not in topology.readers:
        raise SimError(f"unknown reader {reader!r}: token_manual modules in {topology.path}: "
                       f"{', '.join(topology.readers)}", EXIT_USAGE)
    return reader


def fault_kind(text: str) -> str:
    kind = text.strip().lower().replace("-", "_")
    kind = FAULT_ALIASES.get(kind, kind)
    if kind not in FAULT_KINDS:
        raise SimError(f"unknown fault {text!r}: expected one of {', '.join([*FAULT_ALIASES, *FAULT_KINDS])}",
                       EXIT_USAGE)
    return kind


# -- running ----------------------------------------------------------------------------------

def run_sim(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args)
        if getattr(args, "kind", None) is not None:
            args.kind = fault_kind(args.kind)
        if args.sim_command == "swipe":
            args.reader = _reader(topology, args.reader)
        elif args.sim_command != "status":
            _board(topology, args.evse)
        _check_broker(topology)
        message = asyncio.run(_run(topology, args))
    except SimError as exc:
        print(f"chargepoint sim: {exc}", file=sys.stderr)
        return exc.exit_code
    print(message)
    return 0


def _check_broker(topology: Topology) -> None:
    try:
        socket.create_connection((topology.host, topology.port), timeout=2.0).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise SimError(f"cannot reach the MQTT broker at {topology.host}:{topology.port}: {reason}",
                       EXIT_USAGE) from None


async def _run(topology: Topology, args: argparse.Namespace) -> str:
    from chargepoint.busprobe import BusProbe

    try:
        probe = BusProbe(topology.host, topology.port, topology.prefix, name="sim")
        await asyncio.wait_for(probe.__aenter__(), 5)
    except (OSError, TimeoutError):
        raise SimError(f"cannot connect to the MQTT broker at {topology.host}:{topology.port}", EXIT_USAGE) from None
    try:
        if args.sim_command == "status":
            return await status_table(probe, topology)
        if args.sim_command == "swipe":
            args_ = {"id_token": args.token, "token_type": args.token_type, "connectors": args.connectors}
            result = await _call(probe, args.reader, "input", "present_token", args_)
            return f"token {result['id_token']} presented on {args.reader}"
        return await _ev_action(probe, topology, args)
    finally:
        await probe.__aexit__(None, None, None)


async def _ev_action(probe: BusProbe, topology: Topology, args: argparse.Namespace) -> str:
    board = _board(topology, args.evse)
    where = f"EVSE {args.evse} ({board})"
    command = args.sim_command
    if command == "plug":
        plug_args = {"max_current_A": args.max_current, "phases": args.phases, "cable_ampacity_A": args.cable,
                     "energy_to_full_Wh": args.full_after, "ventilation": args.ventilation}
        done = await _call(probe, board, "ev", "plug_in", {k: v for k, v in plug_args.items() if v is not None})
        return _outcome(done, f"{where}: EV plugged in", f"{where}: an EV is already plugged in")
    if command == "unplug":
        return _outcome(await _call(probe, board, "ev", "unplug"), f"{where}: EV unplugged",
                        f"{where}: no EV plugged in")
    if command in ("ev-pause", "ev-resume"):
        cmd = "pause" if command == "ev-pause" else "resume"
        return _outcome(await _call(probe, board, "ev", cmd), f"{where}: EV {cmd}d", f"{where}: no EV plugged in")
    if command == "fault":
        await _call(probe, board, "ev", "fault", {"kind": args.kind})
        return f"{where}: fault {args.kind} injected"
    await _call(probe, board, "ev", "clear_fault", {"kind": args.kind})
    return f"{where}: {'fault ' + args.kind if args.kind else 'all faults'} cleared"


def _outcome(done: Any, success: str, refusal: str) -> str:
    if done is not True:
        raise SimError(refusal, EXIT_STATION_ERROR)
    return success


async def _call(probe: BusProbe, module_id: str, impl_id: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
    from chargepoint.module import CmdError

    try:
        return await probe.call(module_id, impl_id, cmd, args or {}, timeout=CALL_TIMEOUT_S)
    except CmdError as exc:
        if exc.code == "timeout":
            state = await read_retained(probe, [f"{probe.prefix}/{module_id}/state"])
            seen = state.get(f"{probe.prefix}/{module_id}/state")
            raise SimError(f"{module_id}.{impl_id}.{cmd}: no reply within {CALL_TIMEOUT_S:g} s (module state: "
                           f"{seen or 'never seen'}); is the station running?", EXIT_STATION_ERROR) from None
        raise SimError(f"{module_id}.{impl_id}.{cmd}: {exc.code}: {exc.message}", EXIT_STATION_ERROR) from None


async def read_retained(probe: BusProbe, topics: list[str], timeout: float = 3.0) -> dict[str, Any]:
    """The retained values of ``topics`` (JSON, or text when not JSON); missing topics are left out.

    A message the probe sends itself after subscribing marks the end: the broker delivers the
    retained values of earlier subscriptions before it.
    """
    assert probe.bus is not None
    marker = f"{probe.prefix}/{probe.caller_id}/sync"
    for topic in topics:
        probe.watch(topic)
    probe.watch(marker)
    probe.bus.publish(marker, b"done", qos=1)
    try:
        await probe.wait_for(marker, lambda payload: True, timeout)
    except TimeoutError:
        raise SimError(f"the broker at {probe.host}:{probe.port} did not echo a message within {timeout:g} s",
                       EXIT_STATION_ERROR) from None
    values: dict[str, Any] = {}
    for topic in topics:
        payload = probe.latest(topic)
        if payload is None:
            continue
        try:
            values[topic] = json.loads(payload)
        except ValueError:
            values[topic] = payload.decode(errors="replace")
    return values


# -- status -----------------------------------------------------------------------------------

COLUMNS = ("EVSE", "STATE", "CP", "RELAY", "POWER_W", "ENERGY_WH", "TOKEN")


async def status_table(probe: BusProbe, topology: Topology) -> str:
    """One row per EVSE from the retained vars: the EVSE manager's view, else the board's."""
    prefix = topology.prefix
    wanted: list[str] = []
    for evse in topology.evses.values():
        if evse.manager_id:
            wanted += [f"{prefix}/{evse.manager_id}/evse/var/{var}" for var in ("state", "session")]
        if evse.board_id:
            wanted += [f"{prefix}/{evse.board_id}/{name}" for name in
                       ("board/var/cp_state", "board/var/relay_state", "powermeter/var/powermeter", "ev/var/state")]
    values = await read_retained(probe, wanted)

    def var(module_id: str | None, impl_var: str) -> Any:
        return values.get(f"{prefix}/{module_id}/{impl_var}") if module_id else None

    rows: list[tuple[str, ...]] = [COLUMNS]
    notes: list[str] = []
    for evse_id in sorted(topology.evses):
        evse = topology.evses[evse_id]
        meter = var(evse.board_id, "powermeter/var/powermeter") or {}
        power = meter.get("power_W", {}).get("total")
        token = None
        if evse.manager_id:
            state = var(evse.manager_id, "evse/var/state") or {}
            session = var(evse.manager_id, "evse/var/session") or {}
            if not state:
                notes.append(f"EVSE {evse_id}: {evse.manager_id} has published no state (is it running?)")
            charger, cp, relay = state.get("charger_state"), state.get("cp_state"), state.get("relay_closed")
            energy = session.get("energy_Wh")
            if session.get("power_W") is not None:
                power = session["power_W"]
            if session.get("active"):
                token = session.get("id_token")
        else:
            ev = var(evse.board_id, "ev/var/state") or {}
            if not ev:
                notes.append(f"EVSE {evse_id}: {evse.board_id} has published no state (is it running?)")
            charger = _board_level_state(ev) if ev else None
            cp = var(evse.board_id, "board/var/cp_state")
            relay = (var(evse.board_id, "board/var/relay_state") or {}).get("closed")
            energy = ev.get("energy_Wh") if ev.get("plugged") else None
        rows.append((str(evse_id), _text(charger), _text(cp), _text(None if relay is None else
                                                                      "closed" if relay else "open"),
                     _number(power, 0), _number(energy, 1), _text(token)))
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    numeric = {COLUMNS.index("POWER_W"), COLUMNS.index("ENERGY_WH")}
    lines = ["  ".join(cell.rjust(width) if index in numeric else cell.ljust(width)
                       for index, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join(lines + notes)


def _board_level_state(ev: dict[str, Any]) -> str:
    """Without an EVSE manager: the EV as the board sees it."""
    if not ev.get("plugged"):
        return "ev_unplugged"
    if ev.get("current_A"):
        return "ev_charging"
    return "ev_paused" if ev.get("paused") else "ev_plugged"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"
