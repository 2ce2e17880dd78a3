"""The transactional queue and the transaction book on disk: one SQLite database (WAL, synchronous=FULL).

A message is committed before it is handed to the connection and deleted only when its delivery ended
(answered, or dropped after its attempts); transactions stay until their StopTransaction was delivered.

New messages are committed with ``synchronous=FULL`` (they survive power loss), and so is the delivery of
a StartTransaction or StopTransaction, together with what it changes in the book (the CSMS's transactionId,
the end of the transaction). Retry counts and drops are committed with ``synchronous=NORMAL``: in WAL mode
that survives a killed process but not an OS crash.

Any other answered message (MeterValues, SecurityEventNotification) is recorded in the *delivered mark*
(``<database>-delivered``, one ``pwrite`` of its sequence number, a few microseconds) and deleted from the
database in batches of ``DELETE_BATCH``, or when the queue has nothing to send. Delivery goes strictly in
sequence order, so "delivered up to N" is exact: rows at or below the mark are deleted when the store opens
and are never shown or loaded. The mark survives a killed process; after an OS crash it may be older, which
costs a second delivery of some meter values, never a lost message. It keeps the replay of a long queue from
waiting for a database commit per message.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chargepoint.storage import SequenceMark, delivered_mark_path, open_sqlite
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


DELETE_BATCH = 256
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
            self._delivered = SequenceMark(delivered_mark_path(path))
            self.db.execute("DELETE FROM messages WHERE seq <= ?", (self._delivered.value,))
        except (sqlite3.Error, OSError) as exc:
            raise QueueStoreError(f"{path}: {exc}") from None
        self._undeleted: list[int] = []

    def close(self) -> None:
        try:
            self.flush_delivered()
        finally:
            self._delivered.close()
            self.db.close()

    def delivered(self, seq: int) -> None:
        """Message ``seq`` (the lowest still queued) was answered: it must never be loaded again."""
        try:
            self._delivered.advance(seq)
        except OSError:  # no mark: delete it now, the slow way
            self.write(delete=[seq], durable=False)
            return
        self._undeleted.append(seq)
        if len(self._undeleted) >= DELETE_BATCH:
            self.flush_delivered()

    def flush_delivered(self) -> None:
        """Delete the rows of messages delivered since the last commit (they are already below the mark)."""
        if self._undeleted:
            self._commit(durable=False)

    def load_messages(self) -> list[QueuedMessage]:
        rows = self.db.execute("SELECT seq, action, payload, session_id, attempts FROM messages WHERE seq > ? "
                               "ORDER BY seq", (self._delivered.value,))
        return [QueuedMessage(seq, action, json.loads(payload), session_id, attempts, text=payload)
                for seq, action, payload, session_id, attempts in rows]

    def last_seq(self) -> int:
        """The highest sequence number ever stored (AUTOINCREMENT keeps it after deletes) or marked delivered,
        so new messages always number above the mark, even in a database made anew beside an old mark."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return max(int(row[0]) if row else 0, self._delivered.value)

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
        """One commit of everything given (and of the deletes waiting below the delivered mark); ``durable``
        flushes it to disk before returning. A session in ``forget`` leaves the transactions and is recorded
        as closed."""
        if add or delete or attempts or transactions or forget:
            self._commit(add=add, delete=delete, attempts=attempts, transactions=transactions, forget=forget,
                         durable=durable)

    def _commit(self, *, add: Sequence[tuple[QueuedMessage, str]] = (), delete: Sequence[int] = (),
                attempts: Sequence[tuple[int, int]] = (), transactions: Sequence[Transaction] = (),
                forget: Sequence[str] = (), durable: bool) -> None:
        closed_at = utc_now() if forget else ""
        statements = [(sql, rows) for sql, rows in (
            (INSERT_MESSAGE, [(m.seq, m.action, m.text or json.dumps(m.payload, separators=(",", ":")),
                               m.session_id, m.attempts, at) for m, at in add]),
            ("DELETE FROM messages WHERE seq = ?", [(seq,) for seq in [*self._undeleted, *delete]]),
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
            else:
                with self.db:
                    self.db.execute("BEGIN IMMEDIATE")
                    for sql, rows in statements:
                        self.db.executemany(sql, rows)
            self._undeleted.clear()
        except sqlite3.Error as exc:
            raise QueueStoreError(f"{self.path}: {exc}") from None

    def summary(self) -> list[dict[str, Any]]:
        """Per action: how many, the oldest and newest queued time (for ``chargepoint ocpp queue``)."""
        rows = self.db.execute("SELECT action, COUNT(*), MIN(queued_at), MAX(queued_at), MIN(seq) FROM messages "
                               "WHERE seq > ? GROUP BY action ORDER BY MIN(seq)", (self._delivered.value,))
        return [{"action": a, "count": n, "oldest": old, "newest": new} for a, n, old, new, _ in rows]
