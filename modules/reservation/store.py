"""Reservations on disk: one SQLite table (WAL, synchronous=FULL), written before a change is acknowledged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chargepoint.storage import open_sqlite
from chargepoint.timestamps import to_rfc3339

from .core import Reservation

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id INTEGER PRIMARY KEY,
    evse_id INTEGER NOT NULL,
    id_token TEXT NOT NULL,
    parent_id TEXT,
    expiry_time TEXT NOT NULL
)
"""


class StorageError(Exception):
    """The database cannot be opened, read or written; the message names the file and the cause."""


class ReservationStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.connection = open_sqlite(self.path)
            self.connection.execute(SCHEMA)
        except sqlite3.Error as exc:
            self.connection = None
            raise StorageError(f"{self.path}: {exc}") from exc

    def load(self) -> tuple[list[Reservation], list[str]]:
        """All stored reservations, and a problem message for each row that could not be read."""
        rows = self._run("SELECT reservation_id, evse_id, id_token, parent_id, expiry_time FROM reservations")
        reservations, problems = [], []
        for reservation_id, evse_id, id_token, parent_id, expiry_time in rows:
            try:
                reservations.append(Reservation.from_dict({
                    "reservation_id": reservation_id, "evse_id": evse_id, "id_token": id_token,
                    "parent_id": parent_id, "expiry_time": expiry_time}))
            except (TypeError, ValueError) as exc:
                problems.append(f"{self.path}: reservation {reservation_id!r}: {exc}")
        return reservations, problems

    def put(self, reservation: Reservation) -> None:
        self._run("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?)",
                  (reservation.reservation_id, reservation.evse_id, reservation.id_token, reservation.parent_id,
                   to_rfc3339(reservation.expiry_time)))

    def delete(self, reservation_id: int) -> None:
        self._run("DELETE FROM reservations WHERE reservation_id = ?", (reservation_id,))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self.connection is None:
            raise StorageError(f"{self.path}: not open")
        try:
            return self.connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
