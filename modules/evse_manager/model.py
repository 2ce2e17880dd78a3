"""Data the EVSE core keeps: configuration, board facts, authorization, session and transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

CP_STATES = ("A", "B", "C", "D", "E", "F")
PLUGGED_CP_STATES = ("B", "C", "D")
CONNECTOR_TYPES = ("type1_cable", "type2_cable", "type2_socket", "other")
RESUME_MODES = ("resume", "power_loss")
TOKEN_TYPES = ("rfid", "central", "local", "key_code", "mac_address", "emaid", "bank_card", "no_authorization")
STOP_REASONS = ("EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss", "Reboot", "Remote",
                "SoftReset", "UnlockCommand", "DeAuthorized")

# board error -> evse error (what the OCPP module reports as StatusNotification errorCode)
BOARD_ERRORS = {
    "diode_fault": "ev_communication_error",
    "cp_short": "ev_communication_error",
    "ventilation_required": "ventilation_required",
    "rcd": "ground_failure",
    "overcurrent": "over_current",
    "lock_fault": "connector_lock_failure",
    "relay_welded": "power_switch_failure",
    "communication_fault": "board_unavailable",
}
EVSE_ERRORS = ("ev_communication_error", "ground_failure", "over_current", "connector_lock_failure",
               "power_switch_failure", "powermeter_failure", "ventilation_required", "board_unavailable",
               "internal_error")
# errors that are reported but do not stop charging
NON_BLOCKING_ERRORS = frozenset({"powermeter_failure"})


class ConfigError(ValueError):
    """The module configuration is inconsistent."""


@dataclass(frozen=True)
class EvseConfig:
    evse_id: int = 1
    connector_id: int = 1
    connector_type: str = "type2_socket"
    max_current_A: float = 32.0
    min_current_A: float = 6.0
    phases: int = 3
    nominal_voltage_V: float = 230.0
    plugin_timeout_s: float | None = None
    session_resume: str = "resume"
    meter_persist_interval_s: float = 30.0
    energy_fallback_current_A: float | None = None
    restore_wait_s: float = 10.0
    meter_wait_s: float = 10.0
    has_powermeter: bool = False

    def __post_init__(self) -> None:
        if self.min_current_A > self.max_current_A:
            raise ConfigError(f"min_current_A ({self.min_current_A:g}) is above max_current_A ({self.max_current_A:g})")
        if self.session_resume not in RESUME_MODES:
            raise ConfigError(f"session_resume {self.session_resume!r} is not one of {', '.join(RESUME_MODES)}")
        if self.connector_type not in CONNECTOR_TYPES:
            raise ConfigError(f"connector_type {self.connector_type!r} is not one of {', '.join(CONNECTOR_TYPES)}")
        if not 1 <= self.phases <= 3:
            raise ConfigError(f"phases {self.phases} is outside 1..3")
        if self.meter_persist_interval_s <= 0:
            raise ConfigError("meter_persist_interval_s must be above 0")
        if self.meter_wait_s < 0:
            raise ConfigError("meter_wait_s must be 0 or above")


@dataclass
class BoardFacts:
    """What the board reported; capabilities default to a conservative board until it says otherwise."""

    cp_state: str | None = None
    pp_ampacity_A: int | None = None
    relay_closed: bool = False
    lock_state: str = "unknown"
    min_current_A: float = 6.0
    max_current_A: float | None = None
    max_phases: int = 3
    has_lock: bool = False
    tethered_cable: bool = True
    supports_ventilation: bool = False

    @property
    def plugged(self) -> bool:
        return self.cp_state in PLUGGED_CP_STATES

    @property
    def needs_lock(self) -> bool:
        return self.has_lock and not self.tethered_cable


@dataclass
class MeterReading:
    energy_Wh: float | None = None
    power_W: float | None = None


@dataclass(frozen=True)
class Authorization:
    id_token: str
    token_type: str
    parent_id: str | None
    reservation_id: int | None
    at: datetime


@dataclass
class Transaction:
    authorization: Authorization
    started_at: datetime
    meter_start_Wh: float | None
    has_charged: bool = False
    stored: bool = True  # its record is on disk (the shell confirmed the write); the relay waits for this
    persisted_at: datetime | None = None
    persisted_meter_Wh: float | None = None


@dataclass
class Session:
    session_id: str
    started_at: datetime
    plugged_in: bool = False  # session_started was emitted (the EV was plugged in)
    transaction: Transaction | None = None
    finished_transaction: Transaction | None = None
    meter_stop_Wh: float | None = None
