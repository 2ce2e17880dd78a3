"""The boot reason: stored before every restart the module causes, read once when the station starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargepoint.storage import atomic_write_json, read_json
from chargepoint.timestamps import utc_now

BOOT_REASONS = ("power_up", "application_reset", "firmware_update", "local_reset", "remote_reset",
                "scheduled_reset", "triggered", "watchdog", "unknown")


@dataclass(frozen=True)
class BootInfo:
    """Why the station started, and the firmware status to report after a firmware restart."""

    reason: str
    firmware_status: str | None = None
    firmware_request_id: int | None = None


def boot_info_from_record(record: Any) -> BootInfo:
    """Interpret the stored record (pure): no pending restart means the station was powered up."""
    pending = record.get("pending") if isinstance(record, dict) else None
    if not isinstance(pending, dict):
        return BootInfo("power_up")
    reason = pending.get("boot_reason")
    if reason not in BOOT_REASONS:
        reason = "unknown"
    firmware = pending.get("firmware")
    if isinstance(firmware, dict) and firmware.get("status") == "Installed":
        request_id = firmware.get("request_id")
        return BootInfo(reason, "Installed", request_id if isinstance(request_id, int) else None)
    return BootInfo(reason)


class BootRecord:
    """``boot.json`` in the module's state folder: the reason the next start will report."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "boot.json"

    def consume(self) -> BootInfo:
        """The reason of this start; the pending record is cleared so a later power cut reads power_up."""
        info = boot_info_from_record(read_json(self.path, {}))
        atomic_write_json(self.path, {"pending": None, "last_boot_reason": info.reason, "started_at": utc_now()})
        return info

    def read_pending(self) -> dict[str, Any] | None:
        record = read_json(self.path, {})
        pending = record.get("pending") if isinstance(record, dict) else None
        return pending if isinstance(pending, dict) else None

    def set_pending(self, boot_reason: str, firmware_request_id: int | None = None, *,
                    firmware_installed: bool = False) -> None:
        """Store the reason before restarting (durable when this returns)."""
        pending: dict[str, Any] = {"boot_reason": boot_reason, "stored_at": utc_now()}
        if firmware_installed:
            pending["firmware"] = {"status": "Installed", "request_id": firmware_request_id}
        atomic_write_json(self.path, {"pending": pending})

    def restore_pending(self, pending: dict[str, Any] | None) -> None:
        """Put back what was pending before a restart that did not happen."""
        atomic_write_json(self.path, {"pending": pending})
