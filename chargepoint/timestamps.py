"""UTC timestamps as the bus and OCPP carry them: RFC 3339 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    return to_rfc3339(datetime.now(UTC))


def to_rfc3339(moment: datetime) -> str:
    """``2026-11-22T04:21:22.123Z``; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
