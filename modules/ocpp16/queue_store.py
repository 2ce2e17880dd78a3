"""The transactional queue and the transaction book on disk: one SQLite database (WAL, synchronous=FULL).

A message is committed before it is handed to the connection and deleted only when its delivery ended
(answered, or dropped after its attempts); transactions stay until their StopTransaction was delivered.

New messages are committed with ``synchronous=FULL`` (they survive power loss). What follows a delivery
(the delete, the transactionId from StartTransaction.conf) is committed with ``synchronous=NORMAL``: in WAL
mode that survives a killed process but not an OS crash, where it can cost a second delivery of the same
message (the CSMS sees a retransmission), never a lost one. It keeps the replay of a long queue from
waiting for a disk flush per message.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chargepoint.storage import open_sqlite
from chargepoint.timestamps import utc_now

from .transactions import CLOSED_SESSIONS_KEPT, Transaction
from .tx_queue import QueuedMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, payload TEXT NOT NULL, session_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, queued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    session_id TEXT PRIMARY KEY, connector_id INTEGER NOT NULL, id_tag TEXT NOT NULL,
    meter_start_Wh INTEGER NOT NULL, started_at TEXT NOT NULL, transaction_id INTEGER,
    finished INTEGER NOT NULL DEFAULT 0, last_meter_Wh INTEGER, last_meter_at TEXT);
CREATE TABLE IF NOT EXISTS closed_sessions (session_id TEXT PRIMARY KEY, closed_at TEXT);
"""


INSERT_MESSAGE = ("INSERT INTO messages (seq, action, payload, session_id, attempts, queued_at) "
                  "VALUES (?,?,?,?,?,?)")
# Newest by rowid, not by closed_at: a clock set back (by the CSMS) must not make a fresh closing the oldest.
# INSERT OR REPLACE gives a session closed again a new, higher rowid.
TRIM_CLOSED = ("DELETE FROM closed_sessions WHERE rowid NOT IN "
               f"(SELECT rowid FROM closed_sessions ORDER BY rowid DESC LIMIT {CLOSED_SESSIONS_KEPT})")


class QueueStoreError(RuntimeError):
    """The queue database cannot be read or written."""


class QueueStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = open_sqlite(path)
            self.db.executescript(SCHEMA)
            self._durable = True
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
                               "transaction_id, finished, last_meter_Wh, last_meter_at FROM transactions")
        return [Transaction(s, c, tag, meter, at, tx_id, bool(done), last_Wh, last_at)
                for s, c, tag, meter, at, tx_id, done, last_Wh, last_at in rows]

    def load_closed_sessions(self) -> list[str]:
        """Ids of closed sessions, oldest first."""
        rows = self.db.execute("SELECT session_id FROM closed_sessions ORDER BY rowid")
        return [session_id for (session_id,) in rows]

    def write(self, *, add: Sequence[tuple[QueuedMessage, str]] = (), delete: Sequence[int] = (),
              attempts: Sequence[tuple[int, int]] = (), transactions: Sequence[Transaction] = (),
              forget: Sequence[str] = (), durable: bool = True) -> None:
        """One commit of everything given; ``durable`` flushes it to disk before returning. A session in
        ``forget`` leaves the transactions and is recorded as closed."""
        closed_at = utc_now() if forget else ""
        statements = [(sql, rows) for sql, rows in (
            (INSERT_MESSAGE, [(m.seq, m.action, json.dumps(m.payload, separators=(",", ":")), m.session_id,
                               m.attempts, at) for m, at in add]),
            ("DELETE FROM messages WHERE seq = ?", [(seq,) for seq in delete]),
            ("UPDATE messages SET attempts = ? WHERE seq = ?", [(n, seq) for seq, n in attempts]),
            ("INSERT OR REPLACE INTO transactions VALUES (?,?,?,?,?,?,?,?,?)",
             [(t.session_id, t.connector_id, t.id_tag, t.meter_start_Wh, t.started_at, t.transaction_id,
               int(t.finished), t.last_meter_Wh, t.last_meter_at) for t in transactions]),
            ("DELETE FROM transactions WHERE session_id = ?", [(s,) for s in forget]),
            ("INSERT OR REPLACE INTO closed_sessions VALUES (?,?)", [(s, closed_at) for s in forget]),
            (TRIM_CLOSED, [()] if forget else [])) if rows]
        if not statements:
            return
        try:
            if durable != self._durable:
                self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            if len(statements) == 1 and len(statements[0][1]) == 1:
                self.db.execute(statements[0][0], statements[0][1][0])  # autocommit: one statement, one commit
                return
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    self.db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise QueueStoreError(f"{self.path}: {exc}") from None

    def summary(self) -> list[dict[str, Any]]:
        """Per action: how many, the oldest and newest queued time (for ``chargepoint ocpp queue``)."""
        rows = self.db.execute("SELECT action, COUNT(*), MIN(queued_at), MAX(queued_at), MIN(seq) FROM messages "
                               "GROUP BY action ORDER BY MIN(seq)")
        return [{"action": a, "count": n, "oldest": old, "newest": new} for a, n, old, new, _ in rows]
