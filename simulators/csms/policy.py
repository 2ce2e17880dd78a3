"""Pure decisions of the simulated central system: who may connect, boot answers, idTag checks, stop checks.

No sockets, files or clocks: the server passes the current time in and acts on what comes back.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from chargepoint.timestamps import parse_rfc3339, to_rfc3339

TAG_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
BOOT_STATUSES = ("Accepted", "Pending", "Rejected")
STEVE_PATH_PREFIX = "/steve/websocket/CentralSystemService/"
DEFAULT_INTERVAL_S = 300
STEVE_INTERVAL_S = 14400
STEVE_HOURS_TO_EXPIRE = 1
STOP_IN_FUTURE_TOLERANCE = timedelta(minutes=5)


class PolicyError(ValueError):
    """Bad tags or stations input; the message names where and why."""


@dataclass(frozen=True)
class Tag:
    id_tag: str
    status: str = "Accepted"
    parent_id_tag: str | None = None
    expiry_date: datetime | None = None


@dataclass(frozen=True)
class Station:
    station_id: str
    boot_status: str = "Accepted"
    interval: int | None = None  # None: the mode's default (300 s, SteVe 14400 s)
    password: str | None = None


@dataclass(frozen=True)
class Policy:
    """What the central system knows: stations, tags and which behaviour (plain or SteVe) to imitate."""

    stations: dict[str, Station] = field(default_factory=dict)
    tags: dict[str, Tag] = field(default_factory=dict)
    accept_unknown_stations: bool = True
    steve: bool = False
    path_prefix: str = "/"

    def station(self, station_id: str) -> Station | None:
        """The configured station (SteVe: case-insensitive), or a default one when unknown stations may connect."""
        if station_id in self.stations:
            return self.stations[station_id]
        if self.steve:
            for known_id, station in self.stations.items():
                if known_id.lower() == station_id.lower():
                    return station
        if self.accept_unknown_stations:
            return Station(station_id)
        return None


# -- connection -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admission:
    """The answer to a WebSocket upgrade: ``status`` 101 to go on, else the HTTP error to send."""

    status: int
    station_id: str = ""
    reason: str = ""


def station_id_from_path(path: str, prefix: str) -> str | None:
    """The ChargePointId: the last path segment after ``prefix``, percent-decoded; None if the path does not fit."""
    route = urlsplit(path).path
    if not route.startswith(prefix):
        return None
    rest = route[len(prefix):]
    if not rest or "/" in rest.strip("/") or rest.endswith("/"):
        return None
    station_id = unquote(rest)
    if not station_id or station_id != station_id.strip():
        return None
    return station_id


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, None when absent or malformed."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def admit(policy: Policy, path: str, authorization: str | None, subprotocols: str | None = None) -> Admission:
    """Decide a WebSocket upgrade from its path, Authorization and Sec-WebSocket-Protocol headers.

    A missing subprotocol is left to the WebSocket library (HTTP 400, as SteVe); SteVe answers 404 when
    none of the offered ones is supported.
    """
    station_id = station_id_from_path(path, policy.path_prefix)
    if station_id is None:
        reason = f"path {path!r} is not {policy.path_prefix}<ChargePointId>"
        bad_id = urlsplit(path).path.startswith(policy.path_prefix)  # SteVe: an invalid chargeBoxId is a 400
        return Admission(400 if policy.steve and bad_id else 404, reason=reason)
    station = policy.station(station_id)
    if station is None:
        return Admission(404, station_id, f"unknown station {station_id!r}")
    offered = [item.strip() for item in (subprotocols or "").split(",") if item.strip()]
    if policy.steve and offered and "ocpp1.6" not in offered:
        return Admission(404, station.station_id, f"no supported subprotocol in {', '.join(offered)}")
    if station.password is not None:
        credentials = basic_credentials(authorization)
        if credentials is None:
            return Admission(401, station.station_id, "missing or malformed Basic credentials")
        user, password = credentials
        if user.lower() != station.station_id.lower() or password != station.password:
            return Admission(401, station.station_id, "wrong Basic credentials")
    return Admission(101, station.station_id)


def boot_answer(policy: Policy, station: Station, now: datetime) -> dict[str, Any]:
    interval = station.interval
    if interval is None:
        interval = STEVE_INTERVAL_S if policy.steve else DEFAULT_INTERVAL_S
    return {"status": station.boot_status, "currentTime": to_rfc3339(now), "interval": interval}


# -- SteVe's frame checks ----------------------------------------------------------------------

STATION_ACTIONS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification", "StopTransaction",
})


def steve_call_rejection(frame: Any, seen_message_ids: set[str]) -> tuple[str, str, str] | None:
    """(messageId, errorCode, description) when SteVe would answer an incoming CALL with a CallError, else None.

    Empty or non-string messageId → FormationViolation; a messageId already used on this connection →
    ProtocolError; an action it does not handle → NotImplemented. Other frames are not judged here.
    """
    if not isinstance(frame, list) or not frame or frame[0] != 2:
        return None
    message_id = frame[1] if len(frame) > 1 else ""
    if not isinstance(message_id, str) or not message_id or len(frame) != 4:
        return str(message_id or ""), "FormationViolation", "a CALL is [2, \"<messageId>\", \"<Action>\", {...}]"
    if message_id in seen_message_ids:
        return message_id, "ProtocolError", f"messageId {message_id!r} already used on this connection"
    if frame[2] not in STATION_ACTIONS:
        return message_id, "NotImplemented", f"action {frame[2]!r} is not implemented"
    return None


# -- idTags -----------------------------------------------------------------------------------

def id_tag_info(policy: Policy, id_tag: str, now: datetime, *, has_active_tx: bool = False) -> dict[str, Any]:
    """The idTagInfo for ``id_tag``: unknown → Invalid; a past expiry → Expired; ConcurrentTx when asked for."""
    tag = policy.tags.get(id_tag)
    if tag is None:
        return {"status": "Invalid"}
    status = tag.status
    if status == "Accepted" and tag.expiry_date is not None and tag.expiry_date <= now:
        status = "Expired"
    if status == "Accepted" and has_active_tx:
        status = "ConcurrentTx"
    info: dict[str, Any] = {"status": status}
    if tag.parent_id_tag:
        info["parentIdTag"] = tag.parent_id_tag
    expiry = tag.expiry_date
    if expiry is None and policy.steve:
        expiry = now + timedelta(hours=STEVE_HOURS_TO_EXPIRE)
    if expiry is not None:
        info["expiryDate"] = to_rfc3339(expiry)
    return info


def _tag_from_fields(where: str, id_tag: Any, status: Any, parent: Any, expiry: Any) -> Tag:
    if not isinstance(id_tag, str) or not 1 <= len(id_tag) <= 20:
        raise PolicyError(f"{where}: idTag must be a string of 1 to 20 characters, got {id_tag!r}")
    status = status or "Accepted"
    if status not in TAG_STATUSES:
        raise PolicyError(f"{where}: status {status!r} is not one of {', '.join(TAG_STATUSES)}")
    if parent is not None and (not isinstance(parent, str) or len(parent) > 20):
        raise PolicyError(f"{where}: parentIdTag must be a string of at most 20 characters")
    expiry_date = None
    if expiry not in (None, ""):
        try:
            expiry_date = expiry if isinstance(expiry, datetime) else parse_rfc3339(str(expiry))
        except ValueError:
            raise PolicyError(f"{where}: expiryDate {expiry!r} is not an RFC 3339 timestamp") from None
    return Tag(id_tag, status, parent or None, expiry_date)


def parse_tags(text: str, source: str) -> dict[str, Tag]:
    """Tags from a CSV (header ``idTag,status,parentIdTag,expiryDate``) or YAML text.

    YAML: a mapping ``TAG: STATUS`` or ``TAG: {status, parentIdTag, expiryDate}``, optionally under ``tags:``,
    or a list of such mappings with an ``idTag`` key.
    """
    if source.lower().endswith(".csv"):
        tags: dict[str, Tag] = {}
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "idTag" not in reader.fieldnames:
            raise PolicyError(f"{source}: the CSV header must name an idTag column")
        for number, row in enumerate(reader, start=2):
            cells = {key: (row.get(key) or "").strip() for key in ("idTag", "status", "parentIdTag", "expiryDate")}
            tag = _tag_from_fields(f"{source}:{number}", cells["idTag"], cells["status"], cells["parentIdTag"] or None,
                                   cells["expiryDate"])
            tags[tag.id_tag] = tag
        return tags
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"tags"}:
        data = data["tags"]
    entries: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        entries = [(str(key), value) for key, value in data.items()]
    elif isinstance(data, list):
        for index, item in enumerate(data):
            if not isinstance(item, dict) or "idTag" not in item:
                raise PolicyError(f"{source}: entry {index} must be a mapping with an idTag")
            entries.append((str(item["idTag"]), item))
    elif data is not None:
        raise PolicyError(f"{source}: expected a mapping or a list of tags")
    result: dict[str, Tag] = {}
    for id_tag, value in entries:
        where = f"{source}: tag {id_tag!r}"
        if isinstance(value, str) or value is None:
            tag = _tag_from_fields(where, id_tag, value, None, None)
        elif isinstance(value, dict):
            tag = _tag_from_fields(where, id_tag, value.get("status"), value.get("parentIdTag"),
                                   value.get("expiryDate"))
        else:
            raise PolicyError(f"{where}: expected a status or a mapping")
        result[tag.id_tag] = tag
    return result


def parse_stations(text: str, source: str) -> dict[str, Station]:
    """Stations from YAML: ``ID: {boot: Accepted|Pending|Rejected, interval: s, password: ...}``.

    The mapping may sit under a ``stations:`` key.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"stations"}:
        data = data["stations"]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping of station id to settings")
    stations: dict[str, Station] = {}
    for station_id, value in data.items():
        where = f"{source}: station {station_id!r}"
        value = value or {}
        if not isinstance(value, dict):
            raise PolicyError(f"{where}: expected a mapping")
        unknown = set(value) - {"boot", "interval", "password"}
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        boot = value.get("boot", "Accepted")
        if boot not in BOOT_STATUSES:
            raise PolicyError(f"{where}: boot {boot!r} is not one of {', '.join(BOOT_STATUSES)}")
        interval = value.get("interval")
        if interval is not None and (not isinstance(interval, int) or isinstance(interval, bool) or interval < 0):
            raise PolicyError(f"{where}: interval must be a whole number of seconds >= 0")
        password = value.get("password")
        if password is not None and not isinstance(password, str):
            raise PolicyError(f"{where}: password must be a string")
        stations[str(station_id)] = Station(str(station_id), boot, interval, password)
    return stations


# -- transactions -----------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenTransaction:
    transaction_id: int
    id_tag: str
    meter_start: int
    start_time: datetime | None  # None when the station's timestamp was unreadable
    stopped: bool = False


def stop_problems(policy: Policy, tx: OpenTransaction | None, id_tag: str | None, meter_stop: int,
                  stop_time: datetime, now: datetime) -> list[str]:
    """SteVe's StopTransaction checks; a problem marks the transaction failed, the answer stays normal."""
    if tx is None:
        return ["unknown transactionId"]
    problems: list[str] = []
    if tx.stopped:
        problems.append("transaction already stopped")
    if tx.start_time is not None and stop_time < tx.start_time:
        problems.append("stop timestamp before start timestamp")
    if stop_time > now + STOP_IN_FUTURE_TOLERANCE:
        problems.append("stop timestamp more than 5 min in the future")
    if meter_stop < tx.meter_start:
        problems.append("meterStop below meterStart")
    if id_tag is not None and id_tag != tx.id_tag:
        start_parent = getattr(policy.tags.get(tx.id_tag), "parent_id_tag", None)
        stop_parent = getattr(policy.tags.get(id_tag), "parent_id_tag", None)
        if start_parent is None or start_parent != stop_parent:
            problems.append("stop idTag is neither the start idTag nor in its group")
    return problems
