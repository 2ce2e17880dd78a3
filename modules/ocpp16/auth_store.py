"""The Local Authorization List and the Authorization Cache, in memory and in SQLite (WAL) under the state dir.

Every change is written (synchronous=FULL) before the station acknowledges it, so the list, its version and
the cache survive a restart or a power loss. A write that fails leaves memory as it was and the CSMS gets a
refusal (SendLocalList Failed, ClearCache Rejected).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from chargepoint.storage import open_sqlite
from chargepoint.timestamps import parse_rfc3339, to_rfc3339

from .auth_cache import DEFAULT_CAPACITY, AuthCache, CacheChange, CacheEntry
from .authorization import TagInfo, TagInfoError, tag_key
from .local_list import FAILED, ListEntry, ListLimits, ListUpdate, LocalList, apply_update

SCHEMA = """
CREATE TABLE IF NOT EXISTS local_list_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS local_list (tag_key TEXT PRIMARY KEY, id_tag TEXT NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auth_cache (tag_key TEXT PRIMARY KEY, id_tag TEXT NOT NULL, info TEXT NOT NULL,
                                       last_used TEXT NOT NULL);
"""
NOT_CACHED = frozenset({"ConcurrentTx"})  # says the tag is busy, not whether it is valid


class Logger(Protocol):
    def warning(self, event: str, **fields: Any) -> None: ...


class AuthStore:
    def __init__(self, db: sqlite3.Connection, path: Path, local_list: LocalList, cache: AuthCache) -> None:
        self.db = db
        self.path = path
        self.local_list = local_list
        self.cache = cache

    @classmethod
    def open(cls, path: Path, log: Logger | None = None, cache_capacity: int = DEFAULT_CAPACITY) -> AuthStore:
        """Open (creating) the database; unreadable rows are dropped with a warning naming them."""
        db = open_sqlite(path)
        db.executescript(SCHEMA)
        problems: list[str] = []
        entries: dict[str, ListEntry] = {}
        for key, id_tag, info in db.execute("SELECT tag_key, id_tag, info FROM local_list").fetchall():
            try:
                entries[key] = ListEntry(id_tag, TagInfo.from_ocpp(json.loads(info), f"local_list[{id_tag!r}]"))
            except (TagInfoError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                db.execute("DELETE FROM local_list WHERE tag_key = ?", (key,))
        row = db.execute("SELECT version FROM local_list_version WHERE id = 1").fetchone()
        version = int(row[0]) if row and entries else 0
        cached: list[CacheEntry] = []
        rows = db.execute("SELECT tag_key, id_tag, info, last_used FROM auth_cache").fetchall()
        for key, id_tag, info, last_used in rows:
            try:
                cached.append(CacheEntry(id_tag, TagInfo.from_ocpp(json.loads(info), f"auth_cache[{id_tag!r}]"),
                                         parse_rfc3339(last_used)))
            except (TagInfoError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                db.execute("DELETE FROM auth_cache WHERE tag_key = ?", (key,))
        cache = AuthCache(cache_capacity, cached)
        if len(cache) < len(cached):  # the capacity shrank since the last run
            db.execute("DELETE FROM auth_cache")
            cls._write_cache_rows(db, cache.entries())
        for problem in problems:
            if log is not None:
                log.warning("authorization store entry dropped", problem=problem)
        return cls(db, path, LocalList(version, entries), cache)

    def close(self) -> None:
        self.db.close()

    # -- lookups ---------------------------------------------------------------------------------
    @property
    def list_version(self) -> int:
        return self.local_list.version

    def lookup(self, id_tag: str, now: datetime) -> tuple[TagInfo | None, TagInfo | None]:
        """(Local Authorization List entry, Authorization Cache entry) of ``id_tag``; marks the cache entry used."""
        cache_info, change = self.cache.lookup(id_tag, now)
        with contextlib.suppress(sqlite3.Error):  # only the last use and an expiry: never worth a refusal
            self._persist_cache(change)
        return self.local_list.lookup(id_tag), cache_info

    # -- the cache -------------------------------------------------------------------------------
    def remember(self, id_tag: str, info_payload: Any, now: datetime) -> TagInfo | None:
        """Cache an idTagInfo from Authorize.conf / StartTransaction.conf; not for tags in the local list."""
        if self.local_list.lookup(id_tag) is not None:
            return None
        info = TagInfo.from_ocpp(info_payload)
        if info.status in NOT_CACHED:
            return None
        self._persist_cache(self.cache.store(id_tag, info, now))
        return info

    def clear_cache(self) -> None:
        """Empty the cache on disk, then in memory (raises sqlite3.Error if the disk write fails)."""
        self.db.execute("DELETE FROM auth_cache")
        self.cache.clear()

    def _persist_cache(self, change: CacheChange) -> None:
        if not change:
            return
        with self._transaction():
            if change.cleared:
                self.db.execute("DELETE FROM auth_cache")
            self.db.executemany("DELETE FROM auth_cache WHERE tag_key = ?", [(key,) for key in change.removed])
            self._write_cache_rows(self.db, change.upserted)

    @staticmethod
    def _write_cache_rows(db: sqlite3.Connection, entries: Any) -> None:
        db.executemany("INSERT OR REPLACE INTO auth_cache (tag_key, id_tag, info, last_used) VALUES (?, ?, ?, ?)",
                       [(tag_key(e.id_tag), e.id_tag, json.dumps(e.info.to_ocpp()), to_rfc3339(e.last_used))
                        for e in entries])

    # -- the local list --------------------------------------------------------------------------
    def apply_list_update(self, request: Mapping[str, Any], limits: ListLimits) -> ListUpdate:
        """Apply a SendLocalList.req: on disk first, then in memory; a failed write answers Failed."""
        update = apply_update(self.local_list, request, limits)
        if not update.accepted:
            return update
        try:
            with self._transaction():
                if update.full:
                    self.db.execute("DELETE FROM local_list")
                self.db.executemany("DELETE FROM local_list WHERE tag_key = ?", [(k,) for k in update.removals])
                self.db.executemany(
                    "INSERT OR REPLACE INTO local_list (tag_key, id_tag, info) VALUES (?, ?, ?)",
                    [(tag_key(e.id_tag), e.id_tag, json.dumps(e.info.to_ocpp())) for e in update.upserts])
                self.db.execute("INSERT OR REPLACE INTO local_list_version (id, version) VALUES (1, ?)",
                                (update.result.version,))
        except sqlite3.Error as exc:
            return ListUpdate(FAILED, f"{self.path}: list not stored ({exc})", self.local_list)
        self.local_list = update.result
        return update

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
