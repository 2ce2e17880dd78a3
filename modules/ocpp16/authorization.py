"""Local authorization decisions (pure): Local Authorization List, Authorization Cache and offline rules.

OCPP 1.6 edition 2 §3.5: the Local Authorization List has priority over the Authorization Cache for the
same identifier; an entry whose expiryDate has passed counts as Expired, never Accepted. Online, a locally
Accepted identifier is answered at once only with LocalPreAuthorize, anything else asks the CSMS (Authorize).
Offline (or when the CSMS gave no answer), a locally known identifier that is not Accepted is refused with its
status; an Accepted one is accepted with LocalAuthorizeOffline; an identifier that cannot be explicitly
authorized locally is accepted with AllowOfflineTxForUnknownId; otherwise the answer is Unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ocpp.v16.enums import AuthorizationStatus

from chargepoint.timestamps import parse_rfc3339, to_rfc3339

ID_TAG_MAX_LENGTH = 20
STATUSES = frozenset(status.value for status in AuthorizationStatus)
ACCEPTED = AuthorizationStatus.accepted.value
EXPIRED = AuthorizationStatus.expired.value


class TagInfoError(ValueError):
    """An idTagInfo (or idTag) that cannot be used; the message says which field and why."""


def tag_key(id_tag: str) -> str:
    """OCPP 1.6 IdToken is a case-insensitive CiString20: one key for every spelling."""
    return id_tag.casefold()


def check_id_tag(id_tag: Any, where: str) -> str:
    if not isinstance(id_tag, str) or not id_tag:
        raise TagInfoError(f"{where}: idTag must be a non-empty string")
    if len(id_tag) > ID_TAG_MAX_LENGTH:
        raise TagInfoError(f"{where}: idTag {id_tag[:24]!r} is longer than {ID_TAG_MAX_LENGTH} characters")
    return id_tag


@dataclass(frozen=True)
class TagInfo:
    """An OCPP idTagInfo: status, optional expiry (aware UTC) and optional parent idTag."""

    status: str
    expiry: datetime | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_ocpp(cls, info: Any, where: str = "idTagInfo") -> TagInfo:
        if not isinstance(info, Mapping):
            raise TagInfoError(f"{where}: must be an object")
        status = info.get("status")
        if status not in STATUSES:
            raise TagInfoError(f"{where}.status: {status!r} is not an OCPP 1.6 AuthorizationStatus")
        expiry_text = info.get("expiryDate")
        expiry = None
        if expiry_text is not None:
            try:
                expiry = parse_rfc3339(expiry_text)
            except (TypeError, ValueError, AttributeError):
                raise TagInfoError(f"{where}.expiryDate: {expiry_text!r} is not an RFC 3339 date-time") from None
        parent = info.get("parentIdTag")
        if parent is not None:
            check_id_tag(parent, f"{where}.parentIdTag")
        return cls(status, expiry, parent)

    def to_ocpp(self) -> dict[str, Any]:
        info: dict[str, Any] = {"status": self.status}
        if self.expiry is not None:
            info["expiryDate"] = to_rfc3339(self.expiry)
        if self.parent_id_tag is not None:
            info["parentIdTag"] = self.parent_id_tag
        return info

    def effective_status(self, now: datetime) -> str:
        """The status at ``now``: an Accepted entry past its expiryDate is Expired."""
        if self.status == ACCEPTED and self.expiry is not None and self.expiry <= now:
            return EXPIRED
        return self.status


@dataclass(frozen=True)
class AuthFlags:
    """The configuration keys that steer local authorization."""

    local_list_enabled: bool = True
    cache_enabled: bool = True
    local_authorize_offline: bool = True
    local_pre_authorize: bool = False
    allow_offline_unknown: bool = False

    @classmethod
    def from_keys(cls, boolean: Callable[[str], bool]) -> AuthFlags:
        return cls(boolean("LocalAuthListEnabled"), boolean("AuthorizationCacheEnabled"),
                   boolean("LocalAuthorizeOffline"), boolean("LocalPreAuthorize"),
                   boolean("AllowOfflineTxForUnknownId"))


@dataclass(frozen=True)
class LocalAnswer:
    """An answer given without the CSMS; ``source`` says which rule gave it."""

    status: str
    source: str
    info: TagInfo | None = None

    def validator_result(self) -> dict[str, Any]:
        """The result of the token_validator cmd ``validate_token``."""
        info = self.info
        return {"status": self.status, "parent_id": None if info is None else info.parent_id_tag,
                "expiry_time": None if info is None or info.expiry is None else to_rfc3339(info.expiry),
                "reason": f"{self.source}: {self.status}"}


ASK_CSMS = None  # decide() returns None when the CSMS must be asked


def known_locally(flags: AuthFlags, list_info: TagInfo | None,
                  cache_info: TagInfo | None) -> tuple[str, TagInfo] | None:
    """The entry that counts for an identifier: the Local Authorization List before the Authorization Cache."""
    if flags.local_list_enabled and list_info is not None:
        return "LocalAuthorizationList", list_info
    if flags.cache_enabled and cache_info is not None:
        return "AuthorizationCache", cache_info
    return None


def decide(flags: AuthFlags, *, online: bool, list_info: TagInfo | None, cache_info: TagInfo | None,
           now: datetime) -> LocalAnswer | None:
    """Answer locally, or None: send Authorize.req to the CSMS (and call :func:`decide_offline` if it gives none)."""
    if not online:
        return decide_offline(flags, list_info=list_info, cache_info=cache_info, now=now)
    known = known_locally(flags, list_info, cache_info)
    if known is not None and flags.local_pre_authorize:
        source, info = known
        if info.effective_status(now) == ACCEPTED:
            return LocalAnswer(ACCEPTED, f"{source} (LocalPreAuthorize)", info)
    return ASK_CSMS


def decide_offline(flags: AuthFlags, *, list_info: TagInfo | None, cache_info: TagInfo | None,
                   now: datetime) -> LocalAnswer:
    """The answer while the CSMS cannot be asked; Unknown lets other validators decide."""
    known = known_locally(flags, list_info, cache_info)
    if known is not None:
        source, info = known
        status = info.effective_status(now)
        if status != ACCEPTED:
            return LocalAnswer(status, f"{source} (offline)", info)
        if flags.local_authorize_offline:
            return LocalAnswer(ACCEPTED, f"{source} (LocalAuthorizeOffline)", info)
    if flags.allow_offline_unknown:
        return LocalAnswer(ACCEPTED, "offline (AllowOfflineTxForUnknownId)")
    return LocalAnswer("Unknown", "offline, not authorized locally")
