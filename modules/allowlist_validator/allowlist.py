"""The allow-list file (YAML or CSV) and the answer it gives for a token. Pure: text and time in, values out.

YAML::

    tokens:
      - 04A1B2C3                        # just the token: accepted, no parent, no expiry
      - {id_token: 04A2B3C4D5E6F7, parent_id: FLEET-7, expiry: 2026-12-31T23:59:59Z}
      - {id_token: DEADBEEF, blocked: true}

CSV: a header row naming the columns (``id_token`` required; ``parent_id``, ``expiry``, ``blocked``
optional), then one token per row; empty cells mean "not set", rows starting with ``#`` are comments.

Tokens match case-insensitively (OCPP idTags are CiString). ``expiry`` is an RFC 3339 time with a zone
(``Z`` or ``+hh:mm``), or a bare date meaning "valid through that day, UTC".
"""

from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml

from chargepoint.timestamps import to_rfc3339

FIELDS = ("id_token", "parent_id", "expiry", "blocked")
MAX_ID_LENGTH = 36
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off", "")
YAML_NULL = "tag:yaml.org,2002:null"


class AllowListError(ValueError):
    """The file cannot be used; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Entry:
    id_token: str
    parent_id: str | None = None
    expiry: datetime | None = None  # aware, UTC
    blocked: bool = False
    line: int = 0


@dataclass(frozen=True)
class AllowList:
    source: str
    entries: dict[str, Entry]  # by casefolded id_token

    def decide(self, id_token: str, now: datetime, unlisted_status: str = "Invalid") -> dict[str, Any]:
        """The token_validator answer for ``id_token`` at ``now`` (aware)."""
        entry = self.entries.get(id_token.casefold())
        if entry is None:
            return {"status": unlisted_status, "parent_id": None, "expiry_time": None,
                    "reason": f"not in the allow-list {self.source}"}
        where = f"allow-list {self.source}:{entry.line}"
        if entry.blocked:
            status, reason = "Blocked", f"{where}: blocked"
        elif entry.expiry is not None and now >= entry.expiry:
            status, reason = "Expired", f"{where}: expired at {to_rfc3339(entry.expiry)}"
        else:
            status, reason = "Accepted", where
        expiry_time = to_rfc3339(entry.expiry) if status == "Accepted" and entry.expiry is not None else None
        return {"status": status, "parent_id": entry.parent_id, "expiry_time": expiry_time, "reason": reason}


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".csv":
        return "csv"
    raise AllowListError(f"{path}: unknown allow-list format {suffix!r}; use .yaml, .yml or .csv")


def parse_allowlist(text: str, fmt: str, source: str) -> AllowList:
    """Parse the whole file; raise :class:`AllowListError` at the first problem (nothing half-loaded)."""
    rows = _yaml_rows(text, source) if fmt == "yaml" else _csv_rows(text, source)
    entries: dict[str, Entry] = {}
    for line, fields in rows:
        entry = _entry(fields, f"{source}:{line}", line)
        key = entry.id_token.casefold()
        if key in entries:
            raise AllowListError(f"{source}:{line}: token {entry.id_token!r} already listed on line "
                                 f"{entries[key].line}")
        entries[key] = entry
    return AllowList(source, entries)


def _unknown_field(name: str, where: str) -> AllowListError:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(FIELDS)}"
    return AllowListError(f"{where}: unknown field {name!r}{hint}")


def _yaml_rows(text: str, source: str) -> list[tuple[int, dict[str, str | None]]]:
    """Rows of raw field texts with their lines. Scalars are kept as written, so a token like
    ``00012345`` or ``1E10`` is not turned into a number.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AllowListError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if root is None:
        raise AllowListError(f"{source}: the file is empty; write `tokens: []` for an empty list")
    if not isinstance(root, yaml.MappingNode):
        raise AllowListError(f"{source}:{root.start_mark.line + 1}: expected a mapping with the key 'tokens'")
    tokens: yaml.Node | None = None
    for key, value in root.value:
        if key.value != "tokens":
            raise AllowListError(f"{source}:{key.start_mark.line + 1}: unknown key {key.value!r}; "
                                 "the file holds only 'tokens'")
        tokens = value
    if tokens is None or not isinstance(tokens, yaml.SequenceNode):
        line = root.start_mark.line + 1 if tokens is None else tokens.start_mark.line + 1
        raise AllowListError(f"{source}:{line}: 'tokens' must be a list")
    rows = []
    for item in tokens.value:
        line = item.start_mark.line + 1
        if isinstance(item, yaml.ScalarNode):
            rows.append((line, {"id_token": _scalar(item)}))
            continue
        if not isinstance(item, yaml.MappingNode):
            raise AllowListError(f"{source}:{line}: a token is a string or a mapping with id_token")
        fields: dict[str, str | None] = {}
        for key, value in item.value:
            where = f"{source}:{key.start_mark.line + 1}"
            if key.value not in FIELDS:
                raise _unknown_field(str(key.value), where)
            if key.value in fields:
                raise AllowListError(f"{where}: {key.value!r} given twice")
            if not isinstance(value, yaml.ScalarNode):
                raise AllowListError(f"{where}: {key.value!r} must be a single value")
            fields[key.value] = _scalar(value)
        rows.append((line, fields))
    return rows


def _scalar(node: yaml.ScalarNode) -> str | None:
    return None if node.tag == YAML_NULL else str(node.value)


def _csv_rows(text: str, source: str) -> list[tuple[int, dict[str, str | None]]]:
    if not text.strip():
        raise AllowListError(f"{source}: the file is empty; write the header row `id_token` for an empty list")
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in cells]
                for name in header:
                    if name not in FIELDS:
                        raise _unknown_field(name, f"{source}:{line}: header")
                if "id_token" not in header:
                    raise AllowListError(f"{source}:{line}: the header row must name the column id_token")
                if len(set(header)) != len(header):
                    raise AllowListError(f"{source}:{line}: a column is named twice in the header")
                continue
            if len(cells) > len(header):
                raise AllowListError(f"{source}:{line}: {len(cells)} cells, the header names {len(header)}")
            rows.append((line, {name: cell.strip() or None for name, cell in zip(header, cells, strict=False)}))
    except csv.Error as exc:
        raise AllowListError(f"{source}:{reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        raise AllowListError(f"{source}: no header row; the first row names the columns (id_token, ...)")
    return rows


def _entry(fields: dict[str, str | None], where: str, line: int) -> Entry:
    id_token = (fields.get("id_token") or "").strip()
    if not 1 <= len(id_token) <= MAX_ID_LENGTH:
        raise AllowListError(f"{where}: id_token must have 1 to {MAX_ID_LENGTH} characters, got {id_token!r}")
    parent_id = (fields.get("parent_id") or "").strip() or None
    if parent_id is not None and len(parent_id) > MAX_ID_LENGTH:
        raise AllowListError(f"{where}: parent_id longer than {MAX_ID_LENGTH} characters")
    blocked_text = (fields.get("blocked") or "").strip().lower()
    if blocked_text not in TRUE_WORDS + FALSE_WORDS:
        raise AllowListError(f"{where}: blocked must be true or false, got {fields.get('blocked')!r}")
    expiry_text = (fields.get("expiry") or "").strip()
    expiry = parse_expiry(expiry_text, where) if expiry_text else None
    return Entry(id_token, parent_id, expiry, blocked_text in TRUE_WORDS, line)


def parse_expiry(text: str, where: str) -> datetime:
    """RFC 3339 with a zone, or a bare date (valid through that day, UTC)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text) + timedelta(days=1), time(), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise AllowListError(f"{where}: expiry {text!r} is not an RFC 3339 time (2026-12-31T23:59:59Z) "
                             "or a date (2026-12-31)") from None
    if moment.tzinfo is None:
        raise AllowListError(f"{where}: expiry {text!r} needs a time zone (Z or +hh:mm)")
    return moment.astimezone(UTC)
