"""The Authorization Cache (pure): the idTagInfo the CSMS last gave for each identifier presented.

OCPP 1.6 edition 2 §3.5.1: entries come from Authorize.conf and StartTransaction.conf; an entry whose
expiryDate has passed is changed to Expired; when the cache is full, entries that are no longer valid go
first, then the least recently used valid ones; ClearCache empties it. Identifiers in the Local Authorization
List are not cached (§3.5.3), which the caller checks. Every change is returned as a :class:`CacheChange`
so that the shell can persist exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from .authorization import ACCEPTED, EXPIRED, TagInfo, tag_key

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True)
class CacheEntry:
    id_tag: str
    info: TagInfo
    last_used: datetime


@dataclass(frozen=True)
class CacheChange:
    upserted: tuple[CacheEntry, ...] = ()
    removed: tuple[str, ...] = ()  # tag keys
    cleared: bool = False

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed or self.cleared)


class AuthCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, entries: Iterable[CacheEntry] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"authorization cache capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._entries: dict[str, CacheEntry] = {tag_key(e.id_tag): e for e in entries}
        self._shrink_to(capacity, now=None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_tag: str) -> bool:
        return tag_key(id_tag) in self._entries

    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def lookup(self, id_tag: str, now: datetime) -> tuple[TagInfo | None, CacheChange]:
        """The cached idTagInfo (Expired once its expiryDate passed); marks the entry as used at ``now``."""
        entry = self._entries.get(tag_key(id_tag))
        if entry is None:
            return None, CacheChange()
        info = entry.info
        if info.effective_status(now) != info.status:
            info = replace(info, status=EXPIRED)
        used = CacheEntry(entry.id_tag, info, max(now, entry.last_used))
        self._entries[tag_key(id_tag)] = used
        return info, CacheChange(upserted=(used,))

    def store(self, id_tag: str, info: TagInfo, now: datetime) -> CacheChange:
        """Remember what the CSMS answered for ``id_tag``, evicting entries when the cache is full."""
        key = tag_key(id_tag)
        entry = CacheEntry(id_tag, info, now)
        removed: tuple[str, ...] = ()
        if key not in self._entries and len(self._entries) >= self.capacity:
            removed = self._shrink_to(self.capacity - 1, now)
        self._entries[key] = entry
        return CacheChange(upserted=(entry,), removed=removed)

    def clear(self) -> CacheChange:
        self._entries.clear()
        return CacheChange(cleared=True)

    def _shrink_to(self, size: int, now: datetime | None) -> tuple[str, ...]:
        """Evict down to ``size`` entries: not valid (at ``now``) first, then least recently used."""
        excess = len(self._entries) - size
        if excess <= 0:
            return ()

        def eviction_order(item: tuple[str, CacheEntry]) -> tuple[bool, datetime]:
            entry = item[1]
            status = entry.info.status if now is None else entry.info.effective_status(now)
            return status == ACCEPTED, entry.last_used

        victims = [key for key, _ in sorted(self._entries.items(), key=eviction_order)[:excess]]
        for key in victims:
            del self._entries[key]
        return tuple(victims)
