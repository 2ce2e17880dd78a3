"""``chargepoint ocpp queue``: what the OCPP module still has to deliver to the CSMS, oldest first.

Reads the module's queue database in the station's state directory (read-only; works while the station
runs, since the database is in WAL mode).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from chargepoint.storage import delivered_mark_path, read_sequence_mark

QUEUE_FILE = "ocpp-queue.sqlite3"
EXIT_USAGE = 2


def add_ocpp_parser(subparsers: Any) -> None:
    ocpp = subparsers.add_parser("ocpp", help="look into the station's OCPP module")
    actions = ocpp.add_subparsers(dest="ocpp_command", required=True, metavar="ACTION")
    queue = actions.add_parser(
        "queue", help="transaction-related messages waiting for the CSMS, per type, oldest first",
        description="Show the persistent queue of the ocpp16 module: per message type how many wait, the "
                    "oldest and newest; --all lists every message. Exit codes: 0 shown; 2 bad input.")
    queue.add_argument("--config", type=Path, help="station wiring YAML (default $CHARGEPOINT_CONFIG or "
                                                   "/etc/chargepoint/station.yaml)")
    queue.add_argument("--state-dir", type=Path, help="state directory, when it differs from the wiring's")
    queue.add_argument("--module", help="id of the ocpp16 module (default: the only one in the wiring)")
    queue.add_argument("--all", action="store_true", help="list every queued message")
    queue.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _queue_file(args: argparse.Namespace) -> Path:
    from chargepoint.config import ConfigError, load_station_config

    path = args.config or Path(os.environ.get("CHARGEPOINT_CONFIG", "/etc/chargepoint/station.yaml"))
    try:
        station = load_station_config(path)
    except ConfigError as exc:
        raise ValueError(f"{path}: " + "; ".join(exc.problems)) from None
    ids = [m.id for m in station.modules.values() if m.module == "ocpp16"]
    if args.module:
        if args.module not in ids:
            raise ValueError(f"{path}: no ocpp16 module with id {args.module!r} (ocpp16 modules: {ids or 'none'})")
        ids = [args.module]
    if len(ids) != 1:
        raise ValueError(f"{path}: {len(ids)} ocpp16 modules ({', '.join(ids) or 'none'}); name one with --module")
    state_dir = args.state_dir.resolve() if args.state_dir else station.settings.state_dir
    return state_dir / ids[0] / QUEUE_FILE


def _read(queue_file: Path, everything: bool) -> dict[str, Any]:
    if not queue_file.exists():
        return {"file": str(queue_file), "types": [], "messages": []}
    delivered = read_sequence_mark(delivered_mark_path(queue_file))  # rows at or below it were answered
    db = sqlite3.connect(f"file:{queue_file}?mode=ro", uri=True)
    try:
        types = [{"action": a, "count": n, "oldest": old, "newest": new} for a, n, old, new in db.execute(
            "SELECT action, COUNT(*), MIN(queued_at), MAX(queued_at) FROM messages WHERE seq > ? GROUP BY action "
            "ORDER BY MIN(seq)", (delivered,))]
        messages = [{"seq": seq, "action": action, "session_id": session, "attempts": attempts, "queued_at": at,
                     "payload": json.loads(payload)} for seq, action, session, attempts, at, payload in db.execute(
            "SELECT seq, action, session_id, attempts, queued_at, payload FROM messages WHERE seq > ? ORDER BY seq",
            (delivered,))] if everything else []
    finally:
        db.close()
    return {"file": str(queue_file), "types": types, "messages": messages}


def run_ocpp(args: argparse.Namespace) -> int:
    try:
        report = _read(_queue_file(args), args.all)
    except (ValueError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    total = sum(t["count"] for t in report["types"])
    print(f"{total} message(s) queued in {report['file']}")
    if report["types"]:
        print(f"{'type':<28}{'count':>7}  {'oldest':<26}newest")
        for t in report["types"]:
            print(f"{t['action']:<28}{t['count']:>7}  {t['oldest']:<26}{t['newest']}")
    for m in report["messages"]:
        print(f"#{m['seq']} {m['queued_at']} {m['action']} session={m['session_id']} attempts={m['attempts']} "
              f"{json.dumps(m['payload'], separators=(',', ':'))}")
    return 0
