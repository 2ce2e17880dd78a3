"""Structured logging: one line per event, UTC timestamps, ``key=value`` fields, secrets masked."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

SECRET_MARKERS = ("password", "authorization_key", "authorizationkey", "private_key", "secret", "token_secret")
MASK = "***"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class LineFormatter(logging.Formatter):
    """``2026-11-22T04:21:22.123Z INFO evse_1: relay closed evse=1``."""

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        fields: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
        for name in fields:
            if _is_secret(name):
                fields[name] = MASK
        source = record.name.removeprefix("chargepoint.")
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            fields["exception"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if self.json_lines:
            return json.dumps(
                {"ts": stamp, "level": record.levelname, "source": source, "event": message, **fields},
                default=str,
            )
        text = f"{stamp} {record.levelname:<7} {source}: {message}"
        if fields:
            text += " " + " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())
        return text.replace("\n", "\\n")


class EventLogger:
    """A logger whose calls take the event text and keyword fields: ``log.info("ready", ms=12)``."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name if name.startswith("chargepoint") else f"chargepoint.{name}")

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, exc_info=exc_info, extra={"fields": fields}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
