"""OCPP 1.6 StatusNotification state machine (pure: states and time in, notifications out).

Per connector (= EVSE id) it turns the evse ``state`` var into a ChargePointStatus with an errorCode, and
connector 0 (the station as a whole) into Available / Unavailable / Faulted. It says which
StatusNotification.req to send now:

- only on a change of (status, errorCode, vendorErrorCode); a changed message text alone is no change;
- Faulted iff a fatal error is active (or the EVSE itself says ``faulted``); a non-fatal error such as
  ``powermeter_failure`` goes out with the current status, as OCPP 1.6 §4.9 allows ("status is not Faulted:
  a warning, charging is still possible");
- every newly raised error gets its own notification, most severe last, so the CSMS hears of each and
  its latest notification names the most severe one;
- with MinimumStatusDuration > 0 a plain status change is held until it has lasted that long (a status
  that lasted less is never sent, §4.9); error changes and Faulted go out at once. The shell calls
  ``tick(now)`` at ``next_due()``.

``snapshot()`` reports every connector's current status (TriggerMessage, BootNotification accepted,
reconnect) and counts as sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ocpp.v16.enums import ChargePointErrorCode, ChargePointStatus

from chargepoint.timestamps import to_rfc3339

STATUSES = frozenset(status.value for status in ChargePointStatus)
ERROR_CODES = frozenset(code.value for code in ChargePointErrorCode)

CHARGER_STATE_STATUS = {
    "idle": "Available",
    "waiting_for_authorization": "Preparing",
    "preparing": "Preparing",
    "charging": "Charging",
    "suspended_ev": "SuspendedEV",
    "suspended_evse": "SuspendedEVSE",
    "finishing": "Finishing",
    "faulted": "Faulted",
    "unavailable": "Unavailable",
    "reserved": "Reserved",
}

# error type -> ChargePointErrorCode, most severe first; types not listed become OtherError with vendorErrorCode.
ERROR_CODE_OF = {
    "ground_failure": "GroundFailure",
    "over_current": "OverCurrentFailure",
    "power_switch_failure": "PowerSwitchFailure",
    "over_voltage": "OverVoltage",
    "under_voltage": "UnderVoltage",
    "high_temperature": "HighTemperature",
    "ev_communication_error": "EVCommunicationError",
    "connector_lock_failure": "ConnectorLockFailure",
    "internal_error": "InternalError",
    "powermeter_failure": "PowerMeterFailure",
    "reader_failure": "ReaderFailure",
    "reset_failure": "ResetFailure",
    "local_list_conflict": "LocalListConflict",
    "weak_signal": "WeakSignal",
}
_SEVERITY_RANK = {error_type: rank for rank, error_type in enumerate(ERROR_CODE_OF)}
# charging goes on with these (evse_manager's non-blocking errors); every other error, also an unknown one, is fatal
NON_FATAL_ERRORS = frozenset({"powermeter_failure", "reader_failure", "reset_failure", "local_list_conflict",
                              "weak_signal"})
INFO_MAX, VENDOR_ERROR_CODE_MAX, VENDOR_ID_MAX = 50, 50, 255


class StatusInputError(ValueError):
    """A state given to the machine is malformed; the machine is unchanged."""


@dataclass(frozen=True)
class ActiveError:
    type: str
    message: str = ""
    fatal: bool | None = None
    """None: fatal unless the type is in NON_FATAL_ERRORS."""

    @property
    def is_fatal(self) -> bool:
        return self.fatal if self.fatal is not None else self.type not in NON_FATAL_ERRORS

    @property
    def error_code(self) -> str:
        return ERROR_CODE_OF.get(self.type, "OtherError")

    def severity_key(self) -> tuple[bool, int, str]:
        return (not self.is_fatal, _SEVERITY_RANK.get(self.type, len(_SEVERITY_RANK)), self.type)


@dataclass(frozen=True)
class StatusNotice:
    """One StatusNotification.req to send."""

    connector_id: int
    status: str
    error_code: str
    timestamp: datetime
    info: str | None = None
    vendor_id: str | None = None
    vendor_error_code: str | None = None

    def payload(self) -> dict[str, Any]:
        """The request payload as OCPP-J sends it (valid against StatusNotification.json)."""
        body: dict[str, Any] = {"connectorId": self.connector_id, "errorCode": self.error_code,
                                "status": self.status, "timestamp": to_rfc3339(self.timestamp)}
        for key, value in (("info", self.info), ("vendorId", self.vendor_id),
                           ("vendorErrorCode", self.vendor_error_code)):
            if value:
                body[key] = value
        return body


@dataclass(frozen=True)
class _View:
    """What a connector shows now: its status and its active errors, most severe first."""

    status: str
    errors: tuple[ActiveError, ...] = ()
    fault_without_error: bool = False

    @property
    def primary(self) -> ActiveError | None:
        return self.errors[0] if self.errors else None

    @property
    def key(self) -> tuple[str, str, str | None]:
        primary = self.primary
        if primary is None:
            return (self.status, "InternalError" if self.fault_without_error else "NoError", None)
        return (self.status, primary.error_code, primary.type if primary.error_code == "OtherError" else None)

    @property
    def error_types(self) -> frozenset[str]:
        return frozenset(error.type for error in self.errors)


@dataclass
class _Track:
    current: _View
    since: datetime
    reported: _View | None = None
    reported_errors: frozenset[str] = field(default_factory=frozenset)


class StatusMachine:
    def __init__(self, minimum_status_duration_s: float = 0.0, vendor_id: str = "chargepoint") -> None:
        if not vendor_id or len(vendor_id) > VENDOR_ID_MAX:
            raise ValueError(f"vendor_id must be 1 to {VENDOR_ID_MAX} characters, got {vendor_id!r}")
        self.vendor_id = vendor_id
        self.minimum_status_duration_s = minimum_status_duration_s
        self._tracks: dict[int, _Track] = {}
        self._station_available = True
        self._station_errors: tuple[ActiveError, ...] = ()

    @property
    def minimum_status_duration_s(self) -> float:
        return self._minimum_s

    @minimum_status_duration_s.setter
    def minimum_status_duration_s(self, seconds: float) -> None:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds < 86400 * 365:
            raise ValueError(f"MinimumStatusDuration must be a number of seconds >= 0, got {seconds!r}")
        self._minimum_s = float(seconds)

    @property
    def connector_ids(self) -> tuple[int, ...]:
        """Connector 0 and every EVSE seen so far."""
        return (0, *sorted(cid for cid in self._tracks if cid != 0))

    def status_of(self, connector_id: int) -> str | None:
        """The status shown now (sent or still held back), None for a connector never seen."""
        if connector_id == 0:
            return self._station_view().status
        track = self._tracks.get(connector_id)
        return track.current.status if track else None

    def update_evse(self, state: Mapping[str, Any], now: datetime,
                    error_messages: Mapping[str, str] | None = None) -> list[StatusNotice]:
        """Feeds one evse ``state`` var; ``error_messages`` (error type -> message) fills ``info``."""
        _check_time(now)
        connector_id, view = _evse_view(state, error_messages or {})
        return self._advance(connector_id, view, now)

    def update_station(self, now: datetime, *, available: bool | None = None,
                       errors: Iterable[ActiveError] | None = None) -> list[StatusNotice]:
        """Connector 0: station-wide availability (ChangeAvailability 0) and station-wide errors."""
        _check_time(now)
        if available is not None and not isinstance(available, bool):
            raise StatusInputError(f"station availability must be true or false, got {available!r}")
        if errors is not None:
            self._station_errors = _sorted_errors(errors, "station errors")
        if available is not None:
            self._station_available = available
        return self._advance(0, self._station_view(), now)

    def tick(self, now: datetime) -> list[StatusNotice]:
        """Notifications whose MinimumStatusDuration has passed."""
        _check_time(now)
        notices: list[StatusNotice] = []
        for connector_id in sorted(self._tracks):
            notices += self._due(connector_id, self._tracks[connector_id], now)
        return notices

    def next_due(self) -> datetime | None:
        """When ``tick`` has something to send; None when nothing is held back."""
        held = [track.since for track in self._tracks.values()
                if track.reported is not None and track.current.key != track.reported.key]
        return min(held) + timedelta(seconds=self._minimum_s) if held else None

    def snapshot(self, now: datetime, connector_id: int | None = None) -> list[StatusNotice]:
        """The current status of one connector or of all (connector 0 first); counts as sent."""
        _check_time(now)
        if connector_id is None:
            wanted = list(self.connector_ids)
        elif connector_id == 0 or connector_id in self._tracks:
            wanted = [connector_id]
        else:
            raise StatusInputError(f"connector {connector_id} is unknown (known: {list(self.connector_ids)})")
        if 0 not in self._tracks:
            self._tracks[0] = _Track(self._station_view(), now)
        notices = []
        for cid in wanted:
            track = self._tracks[cid]
            notices.append(self._notice(cid, track.current, track.current.primary, now))
            track.reported, track.reported_errors = track.current, track.current.error_types
        return notices

    # -- internals ------------------------------------------------------------------------------
    def _station_view(self) -> _View:
        errors = self._station_errors
        if any(error.is_fatal for error in errors):
            return _View("Faulted", errors)
        return _View("Available" if self._station_available else "Unavailable", errors)

    def _advance(self, connector_id: int, view: _View, now: datetime) -> list[StatusNotice]:
        track = self._tracks.get(connector_id)
        if track is None:
            track = self._tracks[connector_id] = _Track(view, now)
        elif view.key != track.current.key:
            track.current, track.since = view, now
        else:
            track.current = view  # same status and code: newer messages, maybe other lesser errors
        return self._due(connector_id, track, now)

    def _due(self, connector_id: int, track: _Track, now: datetime) -> list[StatusNotice]:
        current, reported = track.current, track.reported
        raised = [error for error in current.errors if error.type not in track.reported_errors]
        changed = reported is None or current.key != reported.key
        if not raised and not changed:
            track.reported_errors &= current.error_types  # a cleared lesser error is reported again if it returns
            return []
        urgent = raised or reported is None or current.status == "Faulted" or current.key[1:] != reported.key[1:]
        if not urgent and now - track.since < timedelta(seconds=self._minimum_s):
            return []
        primary = current.primary
        notices = [self._notice(connector_id, current, error, now)
                   for error in reversed(raised) if error is not primary]
        notices.append(self._notice(connector_id, current, primary, track.since if changed else now))
        track.reported, track.reported_errors = current, current.error_types
        return notices

    def _notice(self, connector_id: int, view: _View, error: ActiveError | None, at: datetime) -> StatusNotice:
        if error is None:
            if view.fault_without_error:
                return StatusNotice(connector_id, view.status, "InternalError", at,
                                    info="faulted without a reported error")
            return StatusNotice(connector_id, view.status, "NoError", at)
        code = error.error_code
        notice = StatusNotice(connector_id, view.status, code, at, info=error.message[:INFO_MAX] or None)
        if code == "OtherError":
            notice = replace(notice, vendor_id=self.vendor_id, vendor_error_code=error.type[:VENDOR_ERROR_CODE_MAX])
        return notice


def _evse_view(state: Mapping[str, Any], error_messages: Mapping[str, str]) -> tuple[int, _View]:
    if not isinstance(state, Mapping):
        raise StatusInputError(f"evse state must be an object, got {type(state).__name__}")
    evse_id = state.get("evse_id")
    if not isinstance(evse_id, int) or isinstance(evse_id, bool) or evse_id < 1:
        raise StatusInputError(f"evse state: evse_id must be an integer >= 1, got {evse_id!r}")
    charger_state = state.get("charger_state")
    if charger_state not in CHARGER_STATE_STATUS:
        raise StatusInputError(f"evse state {evse_id}: charger_state {charger_state!r} is not one of "
                               f"{', '.join(CHARGER_STATE_STATUS)}")
    active = state.get("active_errors", [])
    if not isinstance(active, list) or not all(isinstance(item, str) and item for item in active):
        raise StatusInputError(f"evse state {evse_id}: active_errors must be a list of error type names")
    errors = _sorted_errors((ActiveError(kind, str(error_messages.get(kind, ""))) for kind in active),
                            f"evse state {evse_id}")
    faulted_by_evse = charger_state == "faulted"
    if faulted_by_evse or any(error.is_fatal for error in errors):
        return evse_id, _View("Faulted", errors, fault_without_error=not errors)
    return evse_id, _View(CHARGER_STATE_STATUS[charger_state], errors)


def _sorted_errors(errors: Iterable[ActiveError], where: str) -> tuple[ActiveError, ...]:
    unique: dict[str, ActiveError] = {}
    for error in errors:
        if not isinstance(error, ActiveError) or not error.type:
            raise StatusInputError(f"{where}: {error!r} is not an error with a type name")
        unique.setdefault(error.type, error)
    return tuple(sorted(unique.values(), key=ActiveError.severity_key))


def _check_time(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise StatusInputError(f"time must be a timezone-aware datetime, got {now!r}")
