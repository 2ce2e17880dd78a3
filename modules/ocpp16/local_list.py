"""The Local Authorization List (pure): a versioned set of idTag -> idTagInfo that the CSMS keeps in sync.

OCPP 1.6 edition 2 §5.15 (SendLocalList) and §5.9 (GetLocalListVersion):
- Full replaces the whole list (no entries = empty the list); every entry needs an idTagInfo.
- Differential adds or updates entries that carry an idTagInfo and removes those without one; its listVersion
  must be newer than the station's, else VersionMismatch and nothing changes.
- Failed for a request the station cannot apply (too many entries in the request or in the resulting list, an
  idTag twice in one request, an unusable entry); NotSupported while LocalAuthListEnabled is false.
- Version 0 means "empty list": an empty list always reports 0, and a non-empty list needs a version >= 1.
An update either applies completely or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ocpp.v16.enums import UpdateStatus, UpdateType

from .authorization import TagInfo, TagInfoError, check_id_tag, tag_key

ACCEPTED = UpdateStatus.accepted.value
FAILED = UpdateStatus.failed.value
NOT_SUPPORTED = UpdateStatus.not_supported.value
VERSION_MISMATCH = UpdateStatus.version_mismatch.value
FULL, DIFFERENTIAL = UpdateType.full.value, UpdateType.differential.value


@dataclass(frozen=True)
class ListEntry:
    id_tag: str  # as the CSMS spelled it
    info: TagInfo


@dataclass(frozen=True)
class LocalList:
    """The list and its version; never changed in place (an update gives a new one)."""

    version: int = 0
    entries: Mapping[str, ListEntry] = field(default_factory=dict)  # tag_key -> entry

    def lookup(self, id_tag: str) -> TagInfo | None:
        entry = self.entries.get(tag_key(id_tag))
        return None if entry is None else entry.info

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class ListUpdate:
    """The outcome of a SendLocalList.req: the status to answer and, when Accepted, the new list and the change."""

    status: str
    reason: str
    result: LocalList
    full: bool = False
    upserts: tuple[ListEntry, ...] = ()
    removals: tuple[str, ...] = ()  # tag keys

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


@dataclass(frozen=True)
class ListLimits:
    enabled: bool = True
    max_list_length: int = 10000  # LocalAuthListMaxLength
    max_request_length: int = 500  # SendLocalListMaxLength


def _refused(status: str, reason: str, current: LocalList) -> ListUpdate:
    return ListUpdate(status, reason, current)


def _parse_entries(raw: Any, *, full: bool) -> tuple[list[ListEntry], list[str]]:
    """(entries to add or update, idTags to remove); raises TagInfoError naming the bad entry."""
    if not isinstance(raw, list):
        raise TagInfoError("localAuthorizationList must be an array")
    upserts: list[ListEntry] = []
    removals: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"localAuthorizationList[{index}]"
        if not isinstance(item, Mapping):
            raise TagInfoError(f"{where}: must be an object")
        id_tag = check_id_tag(item.get("idTag"), where)
        key = tag_key(id_tag)
        if key in seen:
            raise TagInfoError(f"{where}: idTag {id_tag!r} appears more than once in the request")
        seen.add(key)
        if item.get("idTagInfo") is None:
            if full:
                raise TagInfoError(f"{where}: a Full update needs an idTagInfo for idTag {id_tag!r}")
            removals.append(key)
        else:
            upserts.append(ListEntry(id_tag, TagInfo.from_ocpp(item["idTagInfo"], f"{where}.idTagInfo")))
    return upserts, removals


def apply_update(current: LocalList, request: Mapping[str, Any], limits: ListLimits) -> ListUpdate:
    """Apply a SendLocalList.req payload to ``current`` (the payload is schema-valid or refused here)."""
    if not limits.enabled:
        return _refused(NOT_SUPPORTED, "LocalAuthListEnabled is false", current)
    version, kind = request.get("listVersion"), request.get("updateType")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        return _refused(FAILED, f"listVersion {version!r} is not a non-negative integer", current)
    if kind not in (FULL, DIFFERENTIAL):
        return _refused(FAILED, f"updateType {kind!r} is neither Full nor Differential", current)
    raw = request.get("localAuthorizationList") or []
    if isinstance(raw, list) and len(raw) > limits.max_request_length:
        return _refused(FAILED, f"{len(raw)} entries in one request, SendLocalListMaxLength is "
                                f"{limits.max_request_length}", current)
    full = kind == FULL
    if not full and version <= current.version:
        return _refused(VERSION_MISMATCH, f"Differential listVersion {version} is not newer than the "
                                          f"station's {current.version}", current)
    try:
        upserts, removals = _parse_entries(raw, full=full)
    except TagInfoError as exc:
        return _refused(FAILED, str(exc), current)
    entries = {} if full else dict(current.entries)
    for key in removals:
        entries.pop(key, None)
    for entry in upserts:
        entries[tag_key(entry.id_tag)] = entry
    if len(entries) > limits.max_list_length:
        return _refused(FAILED, f"the list would hold {len(entries)} idTags, LocalAuthListMaxLength is "
                                f"{limits.max_list_length}", current)
    if entries and version == 0:
        return _refused(FAILED, "listVersion 0 means an empty list, but the request leaves idTags in it", current)
    result = LocalList(version if entries else 0, entries)
    return ListUpdate(ACCEPTED, f"{kind} update to version {result.version}, {len(entries)} idTags", result,
                      full=full, upserts=tuple(upserts), removals=tuple(removals))
