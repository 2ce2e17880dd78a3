"""``chargepoint csms ...``: run the small OCPP 1.6-J central system and drive it through its HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

EXIT_REFUSED = 1
EXIT_USAGE = 2
DEFAULT_API = "http://127.0.0.1:9001"
DEFAULT_DB = Path("csms.sqlite")


def add_csms_parser(subparsers: Any) -> None:
    """Register ``csms`` and its actions on the ``chargepoint`` command line."""
    csms = subparsers.add_parser("csms", help="a small OCPP 1.6-J central system for SIL and test labs",
                                 description="Run a small OCPP 1.6-J central system, or talk to a running one "
                                             "through its HTTP API. Exit codes: 0 done; 1 the station or CSMS "
                                             "refused; 2 bad input or CSMS unreachable.")
    actions = csms.add_subparsers(dest="csms_command", required=True, metavar="ACTION")

    serve = actions.add_parser("serve", help="run the central system until SIGTERM",
                               description="Serve stations on ws://HOST:PORT/<ChargePointId> (SteVe mode: "
                                           "/steve/websocket/CentralSystemService/<ChargePointId>).")
    serve.add_argument("--host", default="127.0.0.1", help="WebSocket address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9000, help="WebSocket port (default 9000; 0 = any free)")
    serve.add_argument("--api-host", default="127.0.0.1", help="HTTP API address (default 127.0.0.1)")
    serve.add_argument("--api-port", type=int, default=9001, help="HTTP API port (default 9001; 0 = any free; "
                                                                  "-1 = no API)")
    serve.add_argument("--tags", type=Path, metavar="FILE", help="idTag list, YAML or .csv (unknown tags are Invalid)")
    serve.add_argument("--tag", action="append", default=[], metavar="ID[:STATUS]",
                       help="inline idTag (status Accepted unless given); repeatable")
    serve.add_argument("--stations", type=Path, metavar="FILE",
                       help="YAML: ID: {boot: Accepted|Pending|Rejected, interval, password}")
    serve.add_argument("--known-only", action="store_true", help="refuse stations not in --stations (HTTP 404)")
    serve.add_argument("--accept-unknown", action="store_true", help="with --steve: let unknown stations in")
    serve.add_argument("--steve", action="store_true", help="behave like SteVe (path, 404 for unknown stations, "
                                                            "Basic auth, GetConfiguration on connect, ...)")
    serve.add_argument("--path-prefix", metavar="PATH", help="path before the ChargePointId (default / ; SteVe mode "
                                             "/steve/websocket/CentralSystemService/)")
    serve.add_argument("--db", type=Path, default=DEFAULT_DB, metavar="FILE",
                       help=f"SQLite database (default ./{DEFAULT_DB})")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--api", default=DEFAULT_API, help=f"the CSMS HTTP API (default {DEFAULT_API})")
        return parser

    send = client("send", "send a central-system operation to a connected station and print its answer")
    send.add_argument("station", metavar="STATION")
    send.add_argument("action", metavar="ACTION", help="e.g. RemoteStartTransaction, Reset, TriggerMessage")
    send.add_argument("payload", nargs="?", default="{}", metavar="JSON", help="the payload (default {})")
    client("stations", "list the known and connected stations")
    sessions = client("sessions", "list the transactions")
    sessions.add_argument("--station", help="only this station's")
    messages = client("messages", "print the OCPP messages exchanged with a station")
    messages.add_argument("station", metavar="STATION")
    messages.add_argument("--action", help="only this action")
    messages.add_argument("--limit", type=int, default=1000, help="the last N messages (default 1000)")


def _load_policy(args: argparse.Namespace) -> Any:
    from simulators.csms import STEVE_PATH_PREFIX, Policy, PolicyError, parse_stations, parse_tags

    tags = {}
    stations = {}
    try:
        if args.tags:
            tags.update(parse_tags(args.tags.read_text(encoding="utf-8"), str(args.tags)))
        for index, item in enumerate(args.tag):
            id_tag, _, status = item.partition(":")
            tags.update(parse_tags(json.dumps({id_tag: status or "Accepted"}), f"--tag #{index + 1} {item!r}"))
        if args.stations:
            stations = parse_stations(args.stations.read_text(encoding="utf-8"), str(args.stations))
    except OSError as exc:
        raise PolicyError(f"{exc.filename}: {exc.strerror}") from None
    prefix = args.path_prefix or (STEVE_PATH_PREFIX if args.steve else "/")
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise PolicyError(f"--path-prefix {prefix!r} must start and end with /")
    accept_unknown = args.accept_unknown if args.steve else not args.known_only
    return Policy(stations=stations, tags=tags, accept_unknown_stations=accept_unknown, steve=args.steve,
                  path_prefix=prefix)


async def _serve(args: argparse.Namespace, policy: Any) -> None:
    from simulators.csms import serve_forever

    # The ocpp package logs every frame with its payload (AuthorizationKey included); the CSMS keeps its own record.
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve_forever(policy, args.db, stop, host=args.host, port=args.port, api_host=args.api_host,
                        api_port=None if args.api_port < 0 else args.api_port)


def _serve_command(args: argparse.Namespace) -> int:
    from simulators.csms import PolicyError

    try:
        policy = _load_policy(args)
    except PolicyError as exc:
        print(f"csms: {exc}; nothing started", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_serve(args, policy))
    except OSError as exc:
        print(f"csms: cannot listen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.Error as exc:
        print(f"csms: {args.db}: cannot use the database: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("csms: stopped", flush=True)
    return 0


def _request(api: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, {"error": exc.reason}


def _client_command(args: argparse.Namespace) -> int:
    if args.csms_command == "send":
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            print(f"csms send: payload is not JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
        method, path, body = "POST", f"/stations/{quote(args.station, safe='')}/{quote(args.action)}", payload
    elif args.csms_command == "stations":
        method, path, body = "GET", "/stations", None
    elif args.csms_command == "sessions":
        method, path, body = "GET", "/transactions" + (f"?{urlencode({'station': args.station})}"
                                                       if args.station else ""), None
    else:
        query = {"limit": args.limit, **({"action": args.action} if args.action else {})}
        method, path, body = "GET", f"/stations/{quote(args.station, safe='')}/messages?{urlencode(query)}", None
    try:
        status, answer = _request(args.api, method, path, body)
    except (OSError, ValueError) as exc:
        print(f"csms: cannot reach the CSMS API at {args.api}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if status != 200:
        print(f"csms {args.csms_command}: {json.dumps(answer)}", file=sys.stderr)
        return EXIT_USAGE if status == 400 else EXIT_REFUSED
    print(json.dumps(answer, indent=2))
    return 0


def run_csms(args: argparse.Namespace) -> int:
    """Run one ``chargepoint csms ...`` action; the exit code."""
    if args.csms_command == "serve":
        return _serve_command(args)
    return _client_command(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m simulators.csms``)."""
    from chargepoint.logs import setup_logging

    parser = argparse.ArgumentParser(prog="chargepoint")
    add_csms_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["csms", *(argv if argv is not None else sys.argv[1:])])
    setup_logging("INFO", False)
    return run_csms(args)
