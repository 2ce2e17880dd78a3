"""Registration with the CSMS (OCPP 1.6 ed2 §4.2, OCPP-J §5.4): when to send BootNotification, what to hold.

Pure: connection events, Boot outcomes and the time go in; actions come out for the module shell to carry
out. Rules:

- On every connection until a Boot was Accepted in this process, the session is held (only Boot goes out)
  and Boot is sent. CSMS calls are answered while Unknown or Pending (SteVe sends GetConfiguration before
  it answers Boot), not while Rejected.
- Pending or Rejected: Boot again after ``interval`` (the fallback when the CSMS gives 0). A Boot that
  fails (CALLERROR, timeout) is retried after the fallback.
- Accepted: heartbeat interval and time from the answer, the session released, the status of every
  connector sent. A reconnect after that sends no Boot, only the status snapshot.
- A Boot the CSMS triggers after Accepted changes nothing when it fails, and only the heartbeat interval
  and the time when it is Accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

REGISTRATION_STATES = ("Unknown", "Pending", "Accepted", "Rejected")


@dataclass(frozen=True)
class SendBoot:
    pass


@dataclass(frozen=True)
class HoldSession:
    """Only BootNotification may leave the station."""


@dataclass(frozen=True)
class ReleaseSession:
    """Everything queued may leave the station now."""


@dataclass(frozen=True)
class SendStatusSnapshot:
    pass


@dataclass(frozen=True)
class ApplyHeartbeatInterval:
    interval_s: int


@dataclass(frozen=True)
class ApplyCsmsTime:
    current_time: str


@dataclass(frozen=True)
class RegistrationChanged:
    status: str


BootAction = (SendBoot | HoldSession | ReleaseSession | SendStatusSnapshot | ApplyHeartbeatInterval | ApplyCsmsTime
              | RegistrationChanged)


class BootCore:
    def __init__(self, fallback_retry_s: float) -> None:
        if fallback_retry_s <= 0:
            raise ValueError(f"boot retry must be positive, got {fallback_retry_s}")
        self.fallback_retry_s = fallback_retry_s
        self.registration = "Unknown"
        self.accepted_once = False
        self.connected = False
        self.retry_at: float | None = None

    @property
    def answers_csms_calls(self) -> bool:
        return self.accepted_once or self.registration != "Rejected"

    @property
    def may_send(self) -> bool:
        """Station-initiated messages other than Boot may go out."""
        return self.connected and self.registration == "Accepted"

    def on_connected(self, now: float) -> list[BootAction]:
        self.connected = True
        self.retry_at = None
        if self.accepted_once:
            return [ReleaseSession(), SendStatusSnapshot()]
        return [HoldSession(), SendBoot()]

    def on_disconnected(self) -> list[BootAction]:
        self.connected = False
        self.retry_at = None
        return []

    def on_boot_answered(self, status: str, interval_s: int, current_time: str, now: float) -> list[BootAction]:
        if status not in REGISTRATION_STATES[1:]:
            return self.on_boot_failed(now)
        changed = [RegistrationChanged(status)] if status != self.registration else []
        self.registration = status
        if status == "Accepted":
            heartbeat = [ApplyHeartbeatInterval(interval_s)] if interval_s > 0 else []
            if self.accepted_once:  # a triggered Boot: the session already runs and the CSMS knows the statuses
                return [*heartbeat, ApplyCsmsTime(current_time)]
            self.accepted_once = True
            self.retry_at = None
            return [*changed, *heartbeat, ReleaseSession(), SendStatusSnapshot(), ApplyCsmsTime(current_time)]
        if self.accepted_once:
            self.registration = "Accepted"  # a triggered Boot cannot take back the registration
            return []
        if self.connected:
            self.retry_at = now + (interval_s if interval_s > 0 else self.fallback_retry_s)
        return changed

    def on_boot_failed(self, now: float) -> list[BootAction]:
        """The CSMS answered Boot with a CALLERROR, nothing, or nonsense."""
        if not self.accepted_once and self.connected:
            self.retry_at = now + self.fallback_retry_s
        return []

    def on_boot_aborted(self) -> list[BootAction]:
        """The connection dropped while Boot was out: it goes out again on the next connection."""
        return []

    def on_triggered(self) -> list[BootAction]:
        """TriggerMessage(BootNotification)."""
        return [SendBoot()] if self.connected else []

    def poll(self, now: float) -> list[BootAction]:
        if self.retry_at is None or now < self.retry_at or not self.connected:
            return []
        self.retry_at = None
        return [SendBoot()]
