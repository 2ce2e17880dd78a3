"""The running session on disk: one atomically replaced JSON file per EVSE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chargepoint.storage import atomic_write_json
from chargepoint.timestamps import parse_rfc3339

from .model import TOKEN_TYPES
from .sessions import RECORD_VERSION


class RecordError(ValueError):
    """The session file exists but cannot be used."""


_STRINGS = ("session_id", "session_started_at", "id_token", "authorized_at", "transaction_started_at", "meter_last_at")
_TIMES = ("session_started_at", "authorized_at", "transaction_started_at", "meter_last_at")


def check_record(record: Any, evse_id: int) -> dict[str, Any]:
    """``record`` if it is a usable session record of ``evse_id``; else RecordError saying why."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    if record.get("version") != RECORD_VERSION:
        raise RecordError(f"version {record.get('version')!r}, expected {RECORD_VERSION}")
    if record.get("evse_id") != evse_id:
        raise RecordError(f"evse_id {record.get('evse_id')!r} does not match this EVSE ({evse_id})")
    for key in _STRINGS:
        if not isinstance(record.get(key), str) or not record[key]:
            raise RecordError(f"{key} must be a non-empty string")
    for key in _TIMES:
        try:
            parse_rfc3339(record[key])
        except ValueError:
            raise RecordError(f"{key} {record[key]!r} is not an RFC 3339 timestamp") from None
    if record.get("token_type") not in TOKEN_TYPES:
        raise RecordError(f"token_type {record.get('token_type')!r} is unknown")
    if record.get("parent_id") is not None and not isinstance(record["parent_id"], str):
        raise RecordError("parent_id must be a string or null")
    reservation = record.get("reservation_id")
    if reservation is not None and (not isinstance(reservation, int) or isinstance(reservation, bool)):
        raise RecordError("reservation_id must be an integer or null")
    for key in ("meter_start_Wh", "meter_last_Wh"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise RecordError(f"{key} must be a non-negative number or null")
    if not isinstance(record.get("has_charged"), bool):
        raise RecordError("has_charged must be true or false")
    return record


class SessionStore:
    """``session.json`` holds the running transaction of one EVSE, or does not exist."""

    def __init__(self, folder: Path, evse_id: int) -> None:
        self.path = folder / "session.json"
        self.evse_id = evse_id

    def load(self) -> dict[str, Any] | None:
        """The persisted record, None when there is none; RecordError (file left as it is) when unusable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(f"{self.path}: cannot read: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"{self.path}: not JSON: {exc}") from None
        try:
            return check_record(data, self.evse_id)
        except RecordError as exc:
            raise RecordError(f"{self.path}: {exc}") from None

    def save(self, record: dict[str, Any] | None) -> None:
        if record is None:
            self.path.unlink(missing_ok=True)
        else:
            atomic_write_json(self.path, record)
