"""The transactional queue and the transaction book on disk: one SQLite database (WAL, synchronous=FULL).

A message is committed before it is handed to the connection and deleted only when its delivery ended
(answered, or dropped after its attempts); transactions stay until their StopTransaction was delivered.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chargepoint.storage import open_sqlite

from .transactions import Transaction
from .tx_queue import QueuedMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, payload TEXT NOT NULL, session_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, queued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    session_id TEXT PRIMARY KEY, connector_id INTEGER NOT NULL, id_tag TEXT NOT NULL,
    meter_start_Wh INTEGER NOT NULL, started_at TEXT NOT NULL, transaction_id INTEGER,
    finished INTEGER NOT NULL DEFAULT 0);
"""


class QueueStoreError(RuntimeError):
    """The queue database cannot be read or written."""


class QueueStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = open_sqlite(path)
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise QueueStoreError(f"{path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def load_messages(self) -> list[QueuedMessage]:
        rows = self.db.execute("SELECT seq, action, payload, session_id, attempts FROM messages ORDER BY seq")
        return [QueuedMessage(seq, action, json.loads(payload), session_id, attempts)
                for seq, action, payload, session_id, attempts in rows]

    def last_seq(self) -> int:
        """The highest sequence number ever stored (AUTOINCREMENT keeps it after deletes)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return int(row[0]) if row else 0

    def load_transactions(self) -> list[Transaction]:
        rows = self.db.execute("SELECT session_id, connector_id, id_tag, meter_start_Wh, started_at, "
                               "transaction_id, finished FROM transactions")
        return [Transaction(s, c, tag, meter, at, tx_id, bool(done)) for s, c, tag, meter, at, tx_id, done in rows]

    def write(self, *, add: Sequence[tuple[QueuedMessage, str]] = (), delete: Sequence[int] = (),
              attempts: Sequence[tuple[int, int]] = (), transactions: Sequence[Transaction] = (),
              forget: Sequence[str] = ()) -> None:
        """One durable commit of everything given."""
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    "INSERT INTO messages (seq, action, payload, session_id, attempts, queued_at) VALUES (?,?,?,?,?,?)",
                    [(m.seq, m.action, json.dumps(m.payload, separators=(",", ":")), m.session_id, m.attempts, at)
                     for m, at in add])
                self.db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq in delete])
                self.db.executemany("UPDATE messages SET attempts = ? WHERE seq = ?",
                                    [(n, seq) for seq, n in attempts])
                self.db.executemany(
                    "INSERT OR REPLACE INTO transactions VALUES (?,?,?,?,?,?,?)",
                    [(t.session_id, t.connector_id, t.id_tag, t.meter_start_Wh, t.started_at, t.transaction_id,
                      int(t.finished)) for t in transactions])
                self.db.executemany("DELETE FROM transactions WHERE session_id = ?", [(s,) for s in forget])
        except sqlite3.Error as exc:
            raise QueueStoreError(f"{self.path}: {exc}") from None

    def summary(self) -> list[dict[str, Any]]:
        """Per action: how many, the oldest and newest queued time (for ``chargepoint ocpp queue``)."""
        rows = self.db.execute("SELECT action, COUNT(*), MIN(queued_at), MAX(queued_at), MIN(seq) FROM messages "
                               "GROUP BY action ORDER BY MIN(seq)")
        return [{"action": a, "count": n, "oldest": old, "newest": new} for a, n, old, new, _ in rows]
