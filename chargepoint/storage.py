"""Persistence helpers: atomically replaced JSON files and SQLite databases that survive power loss."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that ``path`` holds either the old or the new content, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON content of ``path``, or ``default`` when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def open_sqlite(path: Path, *, transactional: bool = True) -> sqlite3.Connection:
    """Open (creating) a database in WAL mode; ``synchronous=FULL`` for data that must survive power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={'FULL' if transactional else 'NORMAL'}")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


class SequenceMark:
    """A rising sequence number kept in a small side file, written with one ``pwrite`` and no flush.

    For a "done up to here" mark that must cost microseconds: the write reaches the kernel at once, so it
    survives a killed process, but not an OS crash or power loss, after which the mark may be older (or, torn,
    reads as 0). A CRC-32 guards the 8-byte number. Readers that may only read use :func:`read_sequence_mark`.
    """

    RECORD = struct.Struct("<QI")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.value = _decode_mark(os.pread(self._fd, self.RECORD.size, 0))

    def advance(self, value: int) -> None:
        """Raise the mark to ``value`` (a lower one is ignored); raises OSError when it cannot be written."""
        if value <= self.value:
            return
        number = value.to_bytes(8, "little")
        os.pwrite(self._fd, number + zlib.crc32(number).to_bytes(4, "little"), 0)
        self.value = value

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def delivered_mark_path(database: Path) -> Path:
    """Where the "delivered up to here" :class:`SequenceMark` of a queue database lives: beside it."""
    return database.with_name(database.name + "-delivered")


def read_sequence_mark(path: Path) -> int:
    """The value of a :class:`SequenceMark` file; 0 when it is missing, short or fails its check."""
    try:
        with path.open("rb") as handle:
            return _decode_mark(handle.read(SequenceMark.RECORD.size))
    except OSError:
        return 0


def _decode_mark(record: bytes) -> int:
    if len(record) != SequenceMark.RECORD.size:
        return 0
    value, check = SequenceMark.RECORD.unpack(record)
    return value if zlib.crc32(record[:8]) == check else 0
