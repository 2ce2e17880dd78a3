"""Transfer locations and file names (pure): URL parsing, redaction, log time windows.

Everything here is a function of its arguments: no sockets, files or clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SUPPORTED_SCHEMES = ("http", "https", "ftp")
DEFAULT_FIRMWARE_NAME = "firmware.bin"
MAX_FILE_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_LEADING_STAMP = re.compile(r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")


class LocationError(ValueError):
    """A location that cannot be used; ``kind`` is ``malformed`` or ``unsupported``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Location:
    """A parsed http, https or ftp URL; credentials are kept apart from the URL used on the wire."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    user: str | None
    password: str | None

    @property
    def url(self) -> str:
        """The URL without user information (credentials travel in a header or the FTP login)."""
        return urlunsplit((self.scheme, self._netloc(), self.path or "/", self.query, ""))

    @property
    def redacted(self) -> str:
        """The URL as it may appear in logs and statuses: the password replaced by ``***``."""
        if self.user is None:
            return self.url
        userinfo = quote(self.user, safe="") + (":***" if self.password is not None else "")
        return urlunsplit((self.scheme, f"{userinfo}@{self._netloc()}", self.path or "/", self.query, ""))

    @property
    def is_directory(self) -> bool:
        return self.path == "" or self.path.endswith("/")

    @property
    def file_name(self) -> str:
        """The last path segment, decoded; empty for a directory URL."""
        return "" if self.is_directory else unquote(self.path.rsplit("/", 1)[-1])

    @property
    def ftp_path(self) -> str:
        """The decoded path as FTP commands take it (no leading slash: relative to the login folder)."""
        return unquote(self.path).lstrip("/")

    def with_file_name(self, name: str) -> Location:
        """This location, with ``name`` appended when it names a directory."""
        if not self.is_directory:
            return self
        base = self.path or "/"
        return Location(self.scheme, self.host, self.port, base + quote(name), self.query, self.user, self.password)

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_location(text: str) -> Location:
    """Parse an http, https or ftp URL; raise :class:`LocationError` saying why it cannot be used."""
    if not text or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise LocationError("malformed", f"malformed URL {redact_text(text)!r}: empty or contains whitespace")
    if "://" not in text:
        raise LocationError("malformed", f"malformed URL {redact_text(text)!r}: expected scheme://host/path")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise LocationError("malformed", f"malformed URL {redact_text(text)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise LocationError("unsupported", f"unsupported URL scheme {scheme!r} in {redact_text(text)!r}: "
                                           f"use {', '.join(SUPPORTED_SCHEMES)}")
    if not parts.hostname:
        raise LocationError("malformed", f"malformed URL {redact_text(text)!r}: no host")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Location(scheme, parts.hostname, port, parts.path, parts.query, user, password)


def redact_text(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``."""
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", text)


def safe_file_name(name: str, fallback: str) -> str:
    """A file name that cannot leave its folder: only ``A-Za-z0-9._+-``, no leading dot, bounded length."""
    cleaned = _UNSAFE.sub("_", name.rsplit("/", 1)[-1]).lstrip(".")[:MAX_FILE_NAME]
    return cleaned or fallback


def firmware_file_name(location_text: str) -> str:
    """Where a firmware image from ``location_text`` is stored (its URL's last path segment)."""
    try:
        name = parse_location(location_text).file_name
    except LocationError:
        name = ""
    return safe_file_name(name, DEFAULT_FIRMWARE_NAME)


def log_archive_name(prefix: str, log_type: str, moment: datetime, archive_format: str) -> str:
    """``<prefix>-<log_type>-20250314T092653Z.tar.gz`` (or ``.zip``)."""
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return safe_file_name(f"{prefix}-{log_type}-{stamp}.{archive_format}", f"logs.{archive_format}")


def line_timestamp(line: str) -> datetime | None:
    """The timestamp a log line starts with (RFC 3339 / ISO 8601, optionally in brackets), as UTC."""
    match = _LEADING_STAMP.match(line)
    if match is None:
        return None
    text = match.group(1).replace(" ", "T", 1).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def lines_in_window(lines: Iterable[str], oldest: datetime | None, latest: datetime | None) -> Iterator[str]:
    """The lines whose entry lies in [oldest, latest].

    A line without a leading timestamp (a traceback, a wrapped message) belongs to the entry above
    it; lines before the first timestamp are kept.
    """
    keep = True
    for line in lines:
        moment = line_timestamp(line)
        if moment is not None:
            keep = (oldest is None or moment >= oldest) and (latest is None or moment <= latest)
        if keep:
            yield line
