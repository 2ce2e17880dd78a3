"""The OCPP 1.6 configuration keys the station supports (type, access, limits, default) and how values are read.

Pure. Sources: OCPP 1.6 edition 2 chapter 9 (Core, LocalAuthListManagement, Reservation, SmartCharging)
and §8 (SupportedFileTransferProtocols), Security Whitepaper ed3 §7 (security keys), and the back-off keys
libocpp keeps in its "Internal" profile (the issue asks for RetryBackoff* by those names). Defaults are
stored in the canonical text form GetConfiguration returns (booleans ``true``/``false``, decimal integers, CSLs
comma-separated without spaces); :func:`parse_value` turns what a CSMS or the initial file sends into that form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ocpp.v16.enums import Measurand, Phase

INT32_MAX = 2**31 - 1
VALUE_MAX_LENGTH = 500  # ChangeConfiguration.value / KeyValue.value (CiString500)
KEY_MAX_LENGTH = 50  # ChangeConfiguration.key / KeyValue.key (CiString50)

MEASURANDS = tuple(m.value for m in Measurand)
PHASES = tuple(p.value for p in Phase)
PHASE_ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
FEATURE_PROFILES = ("Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging",
                    "RemoteTrigger")
CHARGING_RATE_UNITS = ("Current", "Power")
FILE_TRANSFER_PROTOCOLS = ("FTP", "FTPS", "HTTP", "HTTPS")
INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,12}")
_MEASURAND_BY_FOLD = {m.casefold(): m for m in MEASURANDS}
_PHASE_BY_FOLD = {p.casefold(): p for p in PHASES}


class ValueType(StrEnum):
    BOOLEAN = "boolean"
    INTEGER = "integer"
    STRING = "string"
    CSL = "CSL"


class Access(StrEnum):
    READ = "R"
    READ_WRITE = "RW"
    WRITE = "W"  # write-only: the value is never returned by GetConfiguration nor logged


class Items(StrEnum):
    """What the items of a CSL key may be."""

    MEASURAND = "measurand"  # a 1.6 Measurand, optionally followed by "." and a Phase: Voltage.L1-N
    PHASE_ROTATION = "phase_rotation"  # connector.rotation: 0.RST, 1.RTS
    CHOICE = "choice"  # one of KeyDef.choices
    TEXT = "text"  # any printable text without a comma


@dataclass(frozen=True)
class KeyDef:
    name: str
    profile: str
    type: ValueType
    access: Access
    default: str | None  # canonical text; None = no value (GetConfiguration omits `value`)
    description: str
    required: bool = True  # required by the specification for the profile (else optional)
    unit: str = ""
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()  # allowed values of a string, allowed items of a CSL
    items: Items | None = None  # CSL only
    max_items_key: str | None = None  # CSL only: the [KeyName]MaxLength key bounding the number of items
    min_length: int = 0  # string only, in characters
    max_length: int = VALUE_MAX_LENGTH  # string only, in characters
    ascii_only: bool = False  # string only: printable ASCII (0x20-0x7E)
    reboot_required: bool = False  # ChangeConfiguration answers RebootRequired; the new value applies after restart
    derived: bool = False  # set by the station at start-up (not by the initial file, not by the CSMS)
    standard: bool = True  # defined by OCPP 1.6 or its Security Whitepaper (False: station/vendor key)

    @property
    def readonly(self) -> bool:
        return self.access is Access.READ

    @property
    def write_only(self) -> bool:
        return self.access is Access.WRITE


class InvalidValue(ValueError):
    """A value does not fit its key; ``reason`` says why and never contains a write-only value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _shown(defn: KeyDef, text: str) -> str:
    return "the value" if defn.write_only else repr(text)


def parse_value(defn: KeyDef, text: str, values: Mapping[str, str | None]) -> str:
    """The canonical text of ``text`` for ``defn``; ``values`` (canonical) supplies the *MaxLength keys and
    NumberOfConnectors. Raises :class:`InvalidValue`.
    """
    if not isinstance(text, str):
        raise InvalidValue(f"expected a text, got {type(text).__name__}")
    if len(text) > VALUE_MAX_LENGTH:
        raise InvalidValue(f"longer than {VALUE_MAX_LENGTH} characters")
    if defn.type is ValueType.BOOLEAN:
        word = text.strip().lower()
        if word not in ("true", "false"):
            raise InvalidValue(f"{_shown(defn, text)} is not true or false")
        return word
    if defn.type is ValueType.INTEGER:
        return str(_parse_integer(defn, text))
    if defn.type is ValueType.STRING:
        return _parse_string(defn, text)
    try:
        return _parse_csl(defn, text, values)
    except InvalidValue as exc:
        if defn.write_only:  # item reasons quote the item
            raise InvalidValue("an item is not allowed") from None
        raise exc


def _parse_integer(defn: KeyDef, text: str) -> int:
    stripped = text.strip()
    if not INTEGER_TEXT.fullmatch(stripped):
        raise InvalidValue(f"{_shown(defn, text)} is not an integer")
    number = int(stripped)
    low = defn.minimum if defn.minimum is not None else -INT32_MAX - 1
    high = defn.maximum if defn.maximum is not None else INT32_MAX
    if not low <= number <= high:
        raise InvalidValue(f"{'the value' if defn.write_only else number} is outside {low}..{high}")
    return number


def _parse_string(defn: KeyDef, text: str) -> str:
    if not text.isprintable():
        raise InvalidValue("contains control characters")
    if defn.ascii_only and not all(" " <= char <= "~" for char in text):
        raise InvalidValue("only printable ASCII characters are allowed")
    if not defn.min_length <= len(text) <= defn.max_length:
        raise InvalidValue(f"has {len(text)} characters, allowed {defn.min_length} to {defn.max_length}")
    if defn.choices:
        match = {choice.casefold(): choice for choice in defn.choices}.get(text.strip().casefold())
        if match is None:
            raise InvalidValue(f"{_shown(defn, text)} is not one of {', '.join(defn.choices)}")
        return match
    return text


def _parse_csl(defn: KeyDef, text: str, values: Mapping[str, str | None]) -> str:
    items: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        canonical = _parse_item(defn, item, values)
        if canonical not in items:
            items.append(canonical)
    if defn.items is Items.PHASE_ROTATION:
        connectors = [item.split(".", 1)[0] for item in items if "." in item]
        repeated = sorted({c for c in connectors if connectors.count(c) > 1}, key=int)
        if repeated:
            raise InvalidValue(f"connector {repeated[0]} is listed twice")
    limit_text = values.get(defn.max_items_key) if defn.max_items_key else None
    if limit_text is not None and len(items) > int(limit_text):
        raise InvalidValue(f"{len(items)} items, {defn.max_items_key} allows {limit_text}")
    return ",".join(items)


def _parse_item(defn: KeyDef, item: str, values: Mapping[str, str | None]) -> str:
    if defn.items is Items.MEASURAND:
        measurand = _MEASURAND_BY_FOLD.get(item.casefold())
        if measurand is not None:
            return measurand
        head, _, tail = item.rpartition(".")
        measurand, phase = _MEASURAND_BY_FOLD.get(head.casefold()), _PHASE_BY_FOLD.get(tail.casefold())
        if measurand is None or phase is None:
            raise InvalidValue(f"{item!r} is not a 1.6 Measurand (optionally followed by .<phase>, e.g. Voltage.L1)")
        return f"{measurand}.{phase}"
    if defn.items is Items.PHASE_ROTATION:
        connector, dot, rotation = item.partition(".")
        if not dot:
            connector, rotation = "", item
        match = {choice.casefold(): choice for choice in defn.choices}.get(rotation.strip().casefold())
        if match is None:
            raise InvalidValue(f"{item!r}: the rotation must be one of {', '.join(defn.choices)}")
        if not dot:
            return match
        if not connector.strip().isdigit() or not connector.strip().isascii():
            raise InvalidValue(f"{item!r}: expected <connector number>.<rotation>, e.g. 1.RST")
        number = int(connector)
        connectors = int(values.get("NumberOfConnectors") or 0)
        if number > connectors:
            raise InvalidValue(f"{item!r}: connector {number} does not exist (NumberOfConnectors is {connectors})")
        return f"{number}.{match}"
    if defn.items is Items.CHOICE:
        match = {choice.casefold(): choice for choice in defn.choices}.get(item.casefold())
        if match is None:
            raise InvalidValue(f"{item!r} is not one of {', '.join(defn.choices)}")
        return match
    if not item.isprintable():
        raise InvalidValue("an item contains control characters")
    return item


def _bool(name: str, profile: str, access: Access, default: bool, description: str, *,
          required: bool = True) -> KeyDef:
    return KeyDef(name, profile, ValueType.BOOLEAN, access, "true" if default else "false", description,
                  required=required)


def _int(name: str, profile: str, access: Access, default: int, description: str, *, unit: str = "",
         minimum: int = 0, maximum: int = INT32_MAX, required: bool = True, derived: bool = False,
         standard: bool = True) -> KeyDef:
    return KeyDef(name, profile, ValueType.INTEGER, access, str(default), description, required=required,
                  unit=unit, minimum=minimum, maximum=maximum, derived=derived, standard=standard)


def _csl(name: str, profile: str, access: Access, default: tuple[str, ...], description: str, items: Items, *,
         choices: tuple[str, ...] = (), max_items_key: str | None = None, required: bool = True) -> KeyDef:
    return KeyDef(name, profile, ValueType.CSL, access, ",".join(default), description, required=required,
                  items=items, choices=choices, max_items_key=max_items_key)


def _max_length(of: str, profile: str, default: int) -> KeyDef:
    return _int(f"{of}MaxLength", profile, R, default, f"Maximum number of items in {of}.", minimum=1,
                required=False)


R, RW, W = Access.READ, Access.READ_WRITE, Access.WRITE
CORE, LOCAL_LIST, RESERVATION, FIRMWARE = "Core", "LocalAuthListManagement", "Reservation", "FirmwareManagement"
SMART, SECURITY, INTERNAL = "SmartCharging", "Security", "Internal"
ENERGY_REGISTER = Measurand.energy_active_import_register.value

STANDARD_KEYS: tuple[KeyDef, ...] = (
    # Core (OCPP 1.6 ed2 §9.1)
    _bool("AllowOfflineTxForUnknownId", CORE, RW, False,
          "Start transactions offline for identifiers the station does not know.", required=False),
    _bool("AuthorizationCacheEnabled", CORE, RW, True, "Keep an Authorization Cache of identifiers the CSMS "
          "answered.", required=False),
    _bool("AuthorizeRemoteTxRequests", CORE, RW, False,
          "Authorize the idTag of a RemoteStartTransaction like a local start before starting."),
    _int("BlinkRepeat", CORE, RW, 0, "Times to blink the station lighting when signalling.", unit="times",
         required=False),
    _int("ClockAlignedDataInterval", CORE, RW, 0, "Clock-aligned meter value interval from midnight; 0 = none.",
         unit="s"),
    _int("ConnectionTimeOut", CORE, RW, 30, "Time from Preparing until a start without plug-in is cancelled.",
         unit="s", minimum=1, maximum=86400),
    _csl("ConnectorPhaseRotation", CORE, RW, ("0.Unknown",),
         "Phase rotation per connector, 0 = grid connection: 0.RST,1.RTS.", Items.PHASE_ROTATION,
         choices=PHASE_ROTATIONS, max_items_key="ConnectorPhaseRotationMaxLength"),
    _max_length("ConnectorPhaseRotation", CORE, 10),
    _int("GetConfigurationMaxKeys", CORE, R, 100, "Maximum number of keys in one GetConfiguration.req.",
         minimum=1),
    _int("HeartbeatInterval", CORE, RW, 300, "Idle time after which a Heartbeat is sent; BootNotification.conf "
         "sets it too.", unit="s"),
    _int("LightIntensity", CORE, RW, 100, "Station lighting intensity.", unit="%", maximum=100, required=False),
    _bool("LocalAuthorizeOffline", CORE, RW, True, "Start transactions offline for locally authorized "
          "identifiers."),
    _bool("LocalPreAuthorize", CORE, RW, False, "Start transactions online for locally authorized identifiers "
          "without waiting for Authorize.conf."),
    _int("MaxEnergyOnInvalidId", CORE, RW, 0, "Energy delivered after the CSMS invalidates the identifier of a "
         "running transaction.", unit="Wh", required=False),
    _csl("MeterValuesAlignedData", CORE, RW, (ENERGY_REGISTER,), "Measurands sent every ClockAlignedDataInterval.",
         Items.MEASURAND, max_items_key="MeterValuesAlignedDataMaxLength"),
    _max_length("MeterValuesAlignedData", CORE, 10),
    _csl("MeterValuesSampledData", CORE, RW, (ENERGY_REGISTER, Measurand.power_active_import.value),
         "Measurands sent every MeterValueSampleInterval during a transaction.", Items.MEASURAND,
         max_items_key="MeterValuesSampledDataMaxLength"),
    _max_length("MeterValuesSampledData", CORE, 10),
    _int("MeterValueSampleInterval", CORE, RW, 60, "Sampled meter value interval during a transaction; 0 = none.",
         unit="s"),
    _int("MinimumStatusDuration", CORE, RW, 0, "Time a status must be stable before StatusNotification is sent.",
         unit="s", required=False),
    _int("NumberOfConnectors", CORE, R, 1, "Number of connectors: one per evse_manager wired to the ocpp16 "
         "module (derived at start-up).", minimum=1, derived=True),
    _int("ResetRetries", CORE, RW, 1, "Times to retry an unsuccessful reset.", unit="times"),
    _bool("StopTransactionOnEVSideDisconnect", CORE, RW, True, "Stop the transaction when the cable is unplugged "
          "from the EV."),
    _bool("StopTransactionOnInvalidId", CORE, RW, True, "Stop the transaction when StartTransaction.conf does "
          "not accept its idTag."),
    _csl("StopTxnAlignedData", CORE, RW, (), "Clock-aligned measurands in StopTransaction.transactionData.",
         Items.MEASURAND, max_items_key="StopTxnAlignedDataMaxLength"),
    _max_length("StopTxnAlignedData", CORE, 10),
    _csl("StopTxnSampledData", CORE, RW, (), "Sampled measurands in StopTransaction.transactionData.",
         Items.MEASURAND, max_items_key="StopTxnSampledDataMaxLength"),
    _max_length("StopTxnSampledData", CORE, 10),
    _csl("SupportedFeatureProfiles", CORE, R, ("Core", FIRMWARE, LOCAL_LIST, RESERVATION, "RemoteTrigger"),
         "Feature profiles the station implements.", Items.CHOICE, choices=FEATURE_PROFILES,
         max_items_key="SupportedFeatureProfilesMaxLength"),
    _max_length("SupportedFeatureProfiles", CORE, len(FEATURE_PROFILES)),
    _int("TransactionMessageAttempts", CORE, RW, 3, "Times to try a transaction-related message the CSMS failed "
         "to process.", unit="times"),
    _int("TransactionMessageRetryInterval", CORE, RW, 30, "Wait before resubmitting a transaction-related "
         "message (multiplied by the attempt number).", unit="s"),
    _bool("UnlockConnectorOnEVSideDisconnect", CORE, RW, True, "Unlock the station-side cable when it is "
          "unplugged at the EV."),
    _int("WebSocketPingInterval", CORE, RW, 60, "WebSocket ping interval; 0 = no pings from the station.",
         unit="s", required=False),
    # Local Auth List Management (§9.2)
    _bool("LocalAuthListEnabled", LOCAL_LIST, RW, True, "Use the Local Authorization List."),
    _int("LocalAuthListMaxLength", LOCAL_LIST, R, 10000, "Maximum number of identifiers in the Local "
         "Authorization List.", minimum=1),
    _int("SendLocalListMaxLength", LOCAL_LIST, R, 500, "Maximum number of identifiers in one SendLocalList.req.",
         minimum=1),
    # Reservation (§9.3)
    _bool("ReserveConnectorZeroSupported", RESERVATION, R, True, "Reservations of connector 0 (any connector) "
          "are supported.", required=False),
    # Firmware Management (§8)
    _csl("SupportedFileTransferProtocols", FIRMWARE, R, ("FTP", "HTTP", "HTTPS"), "Protocols for firmware "
         "download and diagnostics upload.", Items.CHOICE, choices=FILE_TRANSFER_PROTOCOLS, required=False),
    # Smart Charging (§9.4): the keys exist before the feature does
    _int("ChargeProfileMaxStackLevel", SMART, R, 8, "Highest stackLevel of a charging profile."),
    _csl("ChargingScheduleAllowedChargingRateUnit", SMART, R, CHARGING_RATE_UNITS, "Units allowed in a "
         "charging schedule.", Items.CHOICE, choices=CHARGING_RATE_UNITS),
    _int("ChargingScheduleMaxPeriods", SMART, R, 96, "Maximum number of periods in a charging schedule.",
         minimum=1),
    _bool("ConnectorSwitch3to1PhaseSupported", SMART, R, False, "Switching from 3 to 1 phase during a "
          "transaction is supported.", required=False),
    _int("MaxChargingProfilesInstalled", SMART, R, 32, "Maximum number of installed charging profiles.",
         minimum=1),
    # Security Whitepaper ed3 §7 (profiles 0-3)
    _bool("AdditionalRootCertificateCheck", SECURITY, R, False, "Only one CentralSystemRootCertificate "
          "(plus a temporary fallback) may be installed.", required=False),
    KeyDef("AuthorizationKey", SECURITY, ValueType.STRING, W, None, "HTTP Basic password (profiles 1 and 2): "
           "16-40 printable ASCII characters (the 16-20 byte key of OCPP-J 1.6 §6.2 as 32-40 hex digits fits).",
           required=False, min_length=16, max_length=40, ascii_only=True),
    _int("CertificateSignedMaxChainSize", SECURITY, R, 10000, "Maximum size of CertificateSigned."
         "certificateChain.", unit="characters", minimum=1, maximum=10000, required=False),
    _int("CertificateStoreMaxLength", SECURITY, R, 20, "Maximum number of installed root certificates.",
         minimum=1, required=False),
    KeyDef("CpoName", SECURITY, ValueType.STRING, RW, "", "Organization (O) of the station certificate.",
           required=False, max_length=64),
    _int("SecurityProfile", SECURITY, RW, 0, "Security profile in use; may only be raised over OCPP.",
         maximum=3),
    # Station keys (libocpp "Internal" names): connection back-off
    _int("RetryBackoffWaitMinimum", INTERNAL, RW, 3, "First reconnect wait (then doubled "
         "RetryBackoffRepeatTimes times).", unit="s", required=False, standard=False),
    _int("RetryBackoffRandomRange", INTERNAL, RW, 10, "Random extra reconnect wait, 0 to this.", unit="s",
         required=False, standard=False),
    _int("RetryBackoffRepeatTimes", INTERNAL, RW, 3, "Times the reconnect wait is doubled.", unit="times",
         maximum=30, required=False, standard=False),
)
