"""Enable/disable requests from several sources; the best priority decides (0 is the highest)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

SOURCES = ("unspecified", "local_api", "local_key_lock", "service_technician", "remote_key_lock", "mobile_app",
           "firmware_update", "csms")


@dataclass(frozen=True)
class AvailabilityRequest:
    enable: bool
    priority: int
    sequence: int


class AvailabilityRequests:
    """One request per source. Among equal priorities the latest request decides."""

    def __init__(self) -> None:
        self._requests: dict[str, AvailabilityRequest] = {}
        self._sequence = count()

    def set(self, source: str, enable: bool, priority: int) -> None:
        if source not in SOURCES:
            raise ValueError(f"availability source {source!r} is not one of {', '.join(SOURCES)}")
        if not 0 <= priority <= 10000:
            raise ValueError(f"availability priority {priority} is outside 0..10000")
        self._requests[source] = AvailabilityRequest(enable, priority, next(self._sequence))

    def clear(self, source: str) -> bool:
        return self._requests.pop(source, None) is not None

    def decision(self) -> tuple[bool, str | None]:
        """(enabled, deciding source); enabled with no source when nobody asked."""
        if not self._requests:
            return True, None
        source, request = min(self._requests.items(), key=lambda item: (item[1].priority, -item[1].sequence))
        return request.enable, source
