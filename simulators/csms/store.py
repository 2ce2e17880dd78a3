"""The central system's SQLite database: transactions (ids unique across restarts) and every OCPP message."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from chargepoint.storage import open_sqlite
from chargepoint.timestamps import parse_rfc3339

from .policy import OpenTransaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    id_tag_status TEXT NOT NULL,
    meter_start INTEGER NOT NULL,
    start_time TEXT NOT NULL,
    reservation_id INTEGER,
    meter_stop INTEGER,
    stop_time TEXT,
    stop_id_tag TEXT,
    stop_reason TEXT,
    problems TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    message_id TEXT,
    action TEXT,
    message_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_station ON messages (station_id, seq);
"""


class Store:
    """Thread-safe: the WebSocket loop writes, the HTTP API thread reads."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        if path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            self._db = open_sqlite(path)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_message(self, station_id: str, direction: str, message_type: str, message_id: str | None,
                       action: str | None, payload: Any, time: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO messages (station_id, direction, message_id, action, message_type, payload, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (station_id, direction, message_id, action, message_type, json.dumps(payload), time))

    def messages(self, station_id: str, action: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = "SELECT * FROM messages WHERE station_id = ?"
        params: list[Any] = [station_id]
        if action:
            query += " AND action = ?"
            params.append(action)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [{"seq": row["seq"], "station": row["station_id"], "direction": row["direction"],
                 "type": row["message_type"], "messageId": row["message_id"], "action": row["action"],
                 "payload": json.loads(row["payload"]), "time": row["time"]} for row in reversed(rows)]

    def start_transaction(self, station_id: str, connector_id: int, id_tag: str, id_tag_status: str,
                          meter_start: int, start_time: str, reservation_id: int | None) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO transactions (station_id, connector_id, id_tag, id_tag_status, meter_start, start_time,"
                " reservation_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (station_id, connector_id, id_tag, id_tag_status, meter_start, start_time, reservation_id))
            return int(cursor.lastrowid or 0)

    def open_transaction(self, station_id: str, transaction_id: int) -> OpenTransaction | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM transactions WHERE transaction_id = ? AND station_id = ?",
                                   (transaction_id, station_id)).fetchone()
        if row is None:
            return None
        try:
            start_time = parse_rfc3339(row["start_time"])
        except ValueError:
            start_time = None
        return OpenTransaction(row["transaction_id"], row["id_tag"], row["meter_start"], start_time,
                               row["stop_time"] is not None)

    def has_active_transaction(self, id_tag: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM transactions WHERE id_tag = ? AND stop_time IS NULL"
                                   " AND id_tag_status = 'Accepted' LIMIT 1", (id_tag,)).fetchone()
        return row is not None

    def stop_transaction(self, station_id: str, transaction_id: int, meter_stop: int, stop_time: str,
                         id_tag: str | None, reason: str | None, problems: list[str]) -> None:
        """Close the transaction; a second stop only adds its problems (the first stop's values stay)."""
        with self._lock:
            row = self._db.execute("SELECT problems FROM transactions WHERE transaction_id = ? AND station_id = ?",
                                   (transaction_id, station_id)).fetchone()
            if row is None:
                return
            problems = json.loads(row["problems"]) + problems
            self._db.execute(
                "UPDATE transactions SET meter_stop = COALESCE(meter_stop, ?), stop_time = COALESCE(stop_time, ?),"
                " stop_id_tag = COALESCE(stop_id_tag, ?), stop_reason = COALESCE(stop_reason, ?),"
                " problems = ? WHERE transaction_id = ? AND station_id = ?",
                (meter_stop, stop_time, id_tag, reason, json.dumps(problems), transaction_id, station_id))

    def transactions(self, station_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM transactions"
        params: list[Any] = []
        if station_id:
            query += " WHERE station_id = ?"
            params.append(station_id)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY transaction_id", params).fetchall()
        return [{"transactionId": row["transaction_id"], "station": row["station_id"],
                 "connectorId": row["connector_id"], "idTag": row["id_tag"], "idTagStatus": row["id_tag_status"],
                 "meterStart": row["meter_start"], "startTime": row["start_time"],
                 "reservationId": row["reservation_id"], "meterStop": row["meter_stop"],
                 "stopTime": row["stop_time"], "stopIdTag": row["stop_id_tag"], "stopReason": row["stop_reason"],
                 "problems": json.loads(row["problems"]), "open": row["stop_time"] is None} for row in rows]
