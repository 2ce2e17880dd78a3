"""ChangeAvailability as the CSMS left it, kept across restarts: a connector set Inoperative stays so.

OCPP 1.6 §5.2: the availability a CSMS sets persists across a reboot. The Inoperative connector ids (0: the
station as a whole) are kept in ``availability.json`` in the module's state directory, written atomically
before the answer goes out. The EVSE managers keep enable/disable requests in memory only: the module
applies the stored Inoperative again whenever an EVSE shows no request at all (it started, or restarted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chargepoint.storage import atomic_write_json, read_json

AVAILABILITY_FILE = "availability.json"
CSMS_AVAILABILITY_PRIORITY = 5000  # the evse interface's priority for the OCPP module's requests


class AvailabilityBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        stored = read_json(path, {})
        ids = stored.get("inoperative", []) if isinstance(stored, dict) else []
        self.inoperative: set[int] = {i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 0}

    def record(self, connector_ids: Iterable[int], operative: bool) -> None:
        """Store the CSMS's choice for these connectors; raises OSError when it cannot be stored (unchanged)."""
        changed = set(self.inoperative)
        if operative:
            changed.difference_update(connector_ids)
        else:
            changed.update(connector_ids)
        if changed != self.inoperative:
            atomic_write_json(self.path, {"inoperative": sorted(changed)})
            self.inoperative = changed

    def needs_reapplying(self, evse_state: Mapping[str, Any]) -> bool:
        """The EVSE holds no enable/disable request at all although the CSMS set it Inoperative."""
        return evse_state.get("evse_id") in self.inoperative and evse_state.get("availability_source") is None
