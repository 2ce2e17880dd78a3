"""The ``chargepoint`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from chargepoint import __version__
from chargepoint.csmscli import add_csms_parser, run_csms
from chargepoint.logs import EventLogger, setup_logging
from chargepoint.metercli import add_meter_parser, run_meter
from chargepoint.queuecli import add_ocpp_parser, run_ocpp
from chargepoint.simcli import add_sim_parser, run_sim

EXIT_INVALID_CONFIG = 2
DEFAULT_CONFIG_ENV = "CHARGEPOINT_CONFIG"
log = EventLogger("chargepoint.cli")


def _add_station_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-host", help="broker address (overrides settings.mqtt.host)")
    parser.add_argument("--mqtt-port", type=int, help="broker port (overrides settings.mqtt.port)")
    parser.add_argument("--prefix", help="topic prefix (overrides settings.mqtt.prefix)")
    parser.add_argument("--broker", choices=["auto", "external"], help="overrides settings.mqtt.broker")
    parser.add_argument("--state-dir", type=Path, help="overrides settings.state_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargepoint", description="Charging-station controller.")
    parser.add_argument("--log-level", default=os.environ.get("CHARGEPOINT_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="log level (default INFO, or $CHARGEPOINT_LOG_LEVEL)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a station from its wiring file",
                         description="Validate the wiring file, start the broker if needed and run "
                                     "every module until SIGTERM.")
    run.add_argument("config", nargs="?", type=Path,
                     help=f"wiring YAML (default ${DEFAULT_CONFIG_ENV} or /etc/chargepoint/station.yaml)")
    _add_station_options(run)

    validate = sub.add_parser("validate", help="check a wiring file and report every problem",
                              description="Exit code 0: valid; 2: problems (printed as FILE:LINE: message).")
    validate.add_argument("config", type=Path)

    modules = sub.add_parser("modules", help="list the modules found, with provides, requires and config")
    modules.add_argument("name", nargs="?", help="show only this module")
    modules.add_argument("--path", type=Path, action="append", default=[],
                         help="extra module folder to search (like settings.module_paths)")

    module = sub.add_parser("module", help="run a single module of a station (standalone)")
    module_sub = module.add_subparsers(dest="module_command", required=True, metavar="ACTION")
    module_run = module_sub.add_parser("run", help="run one module; works by hand on another host",
                                       description="Run the module with id ID from the wiring file "
                                                   "against the configured broker until SIGTERM.")
    module_run.add_argument("--config", type=Path, required=True, help="wiring YAML")
    module_run.add_argument("--id", required=True, dest="module_id", help="module id in active_modules")
    _add_station_options(module_run)

    interfaces = sub.add_parser("interfaces", help="list interfaces or print their Markdown reference")
    interfaces.add_argument("--markdown", action="store_true", help="print the generated reference")

    sub.add_parser("version", help="print the version")
    add_sim_parser(sub)
    add_csms_parser(sub)
    add_ocpp_parser(sub)
    add_meter_parser(sub)
    return parser


def _default_config() -> Path:
    return Path(os.environ.get(DEFAULT_CONFIG_ENV, "/etc/chargepoint/station.yaml"))


def _load_station(path: Path, args: argparse.Namespace):
    from chargepoint.config import ConfigError, load_station_config

    try:
        station = load_station_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); nothing started", file=sys.stderr)
        return None
    mqtt = station.settings.mqtt
    mqtt = dataclasses.replace(
        mqtt,
        host=args.mqtt_host or mqtt.host,
        port=args.mqtt_port or mqtt.port,
        prefix=args.prefix or mqtt.prefix,
        broker=args.broker or mqtt.broker,
    )
    settings = dataclasses.replace(station.settings, mqtt=mqtt,
                                   state_dir=args.state_dir.resolve() if args.state_dir else station.settings.state_dir)
    return dataclasses.replace(station, settings=settings)


def _overrides(args: argparse.Namespace) -> list[str]:
    result: list[str] = []
    for flag, value in (("--mqtt-host", args.mqtt_host), ("--mqtt-port", args.mqtt_port),
                        ("--prefix", args.prefix), ("--state-dir", args.state_dir)):
        if value is not None:
            result += [flag, str(value)]
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from chargepoint.manager import Manager

    path = args.config or _default_config()
    station = _load_station(path, args)
    if station is None:
        return EXIT_INVALID_CONFIG
    manager = Manager(station, child_overrides=[*_overrides(args), "--broker", "external"])
    asyncio.run(manager.run())
    if manager.restart_requested is not None:
        log.info("station restarting", reason=manager.restart_requested)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "chargepoint", *sys.argv[1:]])
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from chargepoint.validate import validate_file

    problems = validate_file(args.config)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        return EXIT_INVALID_CONFIG
    print(f"{args.config}: valid")
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    from chargepoint.registry import ManifestError, ModuleRegistry

    registry = ModuleRegistry([p.resolve() for p in args.path])
    names = [args.name] if args.name else registry.names()
    status = 0
    for name in names:
        try:
            info = registry.find(name)
        except ManifestError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        if info is None:
            print(f"{name}: no such module", file=sys.stderr)
            status = 1
            continue
        manifest = info.manifest
        print(f"{name}  ({info.origin}: {info.folder})")
        if manifest.description:
            print(f"  {manifest.description.strip()}")
        for impl_id, interface in manifest.provides.items():
            print(f"  provides {impl_id}: {interface}")
        for req_id, req in manifest.requires.items():
            count = f"{req.min}..{'n' if req.max is None else req.max}"
            print(f"  requires {req_id}: {req.interface} [{count}]")
        for key, schema in manifest.config.items():
            default = f" = {schema['default']!r}" if "default" in schema else " (required)"
            kind = schema.get("type", "any")
            print(f"  config {key}: {kind}{default}  {schema.get('description', '')}".rstrip())
    return status


def cmd_module_run(args: argparse.Namespace) -> int:
    from chargepoint.manager import run_one_module

    station = _load_station(args.config, args)
    if station is None:
        return EXIT_INVALID_CONFIG
    if args.module_id not in station.modules:
        print(f"{args.config}: no module with id {args.module_id!r} in active_modules", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    asyncio.run(run_one_module(station, args.module_id))
    return 0


def cmd_interfaces(args: argparse.Namespace) -> int:
    from chargepoint.interfaces import interface_names, load_interface

    if args.markdown:
        from chargepoint.docgen import interfaces_markdown

        sys.stdout.write(interfaces_markdown())
        return 0
    for name in interface_names():
        print(f"{name}: {load_interface(name).description.strip()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_json)
    if args.command == "version":
        print(f"chargepoint {__version__}")
        return 0
    handlers = {"run": cmd_run, "validate": cmd_validate, "modules": cmd_modules,
                "interfaces": cmd_interfaces}
    if args.command == "module":
        return cmd_module_run(args)
    if args.command == "sim":
        return run_sim(args)
    if args.command == "csms":
        return run_csms(args)
    if args.command == "ocpp":
        return run_ocpp(args)
    if args.command == "meter":
        return run_meter(args)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
