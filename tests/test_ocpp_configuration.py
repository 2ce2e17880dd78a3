"""OCPP 1.6 configuration: keys, GetConfiguration/ChangeConfiguration, the initial-values file and stored changes."""

from __future__ import annotations

import json
import logging
import stat
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.v16.enums import ConfigurationKey

from chargepoint.logs import EventLogger, LineFormatter
from modules.ocpp16.config_keys import STANDARD_KEYS
from modules.ocpp16.config_store import ConfigFileError, ConfigStore, parse_initial_values
from modules.ocpp16.configuration import Configuration, TooManyKeys, markdown_key_table

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = files("ocpp") / "v16" / "schemas"
GET_RESPONSE = json.loads((SCHEMAS / "GetConfigurationResponse.json").read_text())
CHANGE_RESPONSE = json.loads((SCHEMAS / "ChangeConfigurationResponse.json").read_text())
SECRET = "s3cr3t-Basic-pass-word"  # 22 printable ASCII characters
LOG = EventLogger("test.ocpp_config")

# OCPP 1.6 ed2 chapter 9, §8 and Security Whitepaper ed3 §7, written out independently of the definitions.
READ_ONLY = {
    "ConnectorPhaseRotationMaxLength", "GetConfigurationMaxKeys", "MeterValuesAlignedDataMaxLength",
    "MeterValuesSampledDataMaxLength", "NumberOfConnectors", "StopTxnAlignedDataMaxLength",
    "StopTxnSampledDataMaxLength", "SupportedFeatureProfiles", "SupportedFeatureProfilesMaxLength",
    "LocalAuthListMaxLength", "SendLocalListMaxLength", "ReserveConnectorZeroSupported",
    "SupportedFileTransferProtocols", "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods", "ConnectorSwitch3to1PhaseSupported", "MaxChargingProfilesInstalled",
    "AdditionalRootCertificateCheck", "CertificateSignedMaxChainSize", "CertificateStoreMaxLength",
}
READ_WRITE = {
    "AllowOfflineTxForUnknownId", "AuthorizationCacheEnabled", "AuthorizeRemoteTxRequests", "BlinkRepeat",
    "ClockAlignedDataInterval", "ConnectionTimeOut", "ConnectorPhaseRotation", "HeartbeatInterval",
    "LightIntensity", "LocalAuthorizeOffline", "LocalPreAuthorize", "MaxEnergyOnInvalidId",
    "MeterValuesAlignedData", "MeterValuesSampledData", "MeterValueSampleInterval", "MinimumStatusDuration",
    "ResetRetries", "StopTransactionOnEVSideDisconnect", "StopTransactionOnInvalidId", "StopTxnAlignedData",
    "StopTxnSampledData", "TransactionMessageAttempts", "TransactionMessageRetryInterval",
    "UnlockConnectorOnEVSideDisconnect", "WebSocketPingInterval", "LocalAuthListEnabled", "CpoName",
    "SecurityProfile",
}
WRITE_ONLY = {"AuthorizationKey"}
PLUG_AND_CHARGE = {"CentralContractValidationAllowed", "CertSigningWaitMinimum", "CertSigningRepeatTimes",
                   "ContractValidationOffline", "ISO15118PnCEnabled"}


def as_map(config: Configuration | ConfigStore) -> dict[str, dict]:
    payload = config.get().payload()
    jsonschema.validate(payload, GET_RESPONSE)
    return {entry["key"]: entry for entry in payload["configurationKey"]}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def open_store(tmp_path: Path, initial: str | None = None, **kwargs) -> ConfigStore:
    initial_file = write(tmp_path / "ocpp16.yaml", initial) if initial is not None else None
    return ConfigStore.open(tmp_path / "state" / "ocpp-config.json", initial_file, LOG, **kwargs)


# --- keys and GetConfiguration ---------------------------------------------------------------------------------

def test_every_standard_key_is_present_with_its_access() -> None:
    keys = as_map(Configuration.defaults())
    standard = {name for name in keys if name in READ_ONLY | READ_WRITE | WRITE_ONLY}
    assert standard == READ_ONLY | READ_WRITE | WRITE_ONLY
    assert {k.value for k in ConfigurationKey} - PLUG_AND_CHARGE <= set(keys)
    assert all(keys[name]["readonly"] for name in READ_ONLY)
    assert not any(keys[name]["readonly"] for name in READ_WRITE | WRITE_ONLY)
    assert "value" not in keys["AuthorizationKey"]
    assert keys["SupportedFeatureProfiles"]["value"] == "Core,FirmwareManagement,LocalAuthListManagement," \
                                                       "Reservation,RemoteTrigger"


def test_every_default_is_in_canonical_form() -> None:
    config = Configuration.defaults()
    for defn in STANDARD_KEYS:
        if defn.default is not None:
            assert config.set(defn.name, defn.default) == defn.default, defn.name


def test_get_named_keys_in_any_case_once_with_unknown_names_echoed() -> None:
    result = Configuration.defaults().get(["heartbeatinterval", "HeartbeatInterval", "NoSuchKey", "AuthorizationKey"])
    assert result.configuration_key == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                                        {"key": "AuthorizationKey", "readonly": False}]
    assert result.unknown_key == ["NoSuchKey"]
    jsonschema.validate(result.payload(), GET_RESPONSE)
    assert Configuration.defaults().get([]) == Configuration.defaults().get(None)


def test_more_keys_than_get_configuration_max_keys_is_refused() -> None:
    config = Configuration.defaults(GetConfigurationMaxKeys="2")
    assert len(config.get(["HeartbeatInterval", "SecurityProfile"]).configuration_key) == 2
    with pytest.raises(TooManyKeys, match="3 keys requested, GetConfigurationMaxKeys is 2"):
        config.get(["HeartbeatInterval", "SecurityProfile", "CpoName"])
    assert len(config.get(None).configuration_key) == len(STANDARD_KEYS)  # "all keys" is not limited


# --- ChangeConfiguration ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "sent", "stored"), [
    ("heartbeatinterval", " 120 ", "120"),
    ("LocalPreAuthorize", "True", "true"),
    ("StopTransactionOnInvalidId", "FALSE", "false"),
    ("MeterValuesSampledData", "energy.active.import.register, Voltage.l1-n,,SoC, SoC",
     "Energy.Active.Import.Register,Voltage.L1-N,SoC"),
    ("StopTxnSampledData", "", ""),
    ("ConnectorPhaseRotation", "0.rst, 2.RTS", "0.RST,2.RTS"),
    ("ConnectorPhaseRotation", "NotApplicable", "NotApplicable"),
    ("CpoName", "Example CPO GmbH", "Example CPO GmbH"),
    ("WebSocketPingInterval", "0", "0"),
    ("RetryBackoffRepeatTimes", "+5", "5"),
])
def test_change_then_get_round_trips_the_canonical_value(key: str, sent: str, stored: str) -> None:
    config = Configuration.defaults()
    config.set("NumberOfConnectors", 2)
    result = config.change(key, sent)
    assert result.status == "Accepted"
    jsonschema.validate({"status": result.status}, CHANGE_RESPONSE)
    assert config.get([key]).configuration_key[0]["value"] == stored
    assert config.value(key) == stored


def test_typed_getters_follow_changes() -> None:
    config = Configuration.defaults()
    config.change("MeterValueSampleInterval", "15")
    config.change("AuthorizeRemoteTxRequests", "true")
    config.change("MeterValuesAlignedData", "Energy.Active.Import.Register,Frequency")
    assert config.int("MeterValueSampleInterval") == 15
    assert config.bool("AuthorizeRemoteTxRequests") is True
    assert config.csl("MeterValuesAlignedData") == ["Energy.Active.Import.Register", "Frequency"]
    assert config.csl("StopTxnAlignedData") == []
    assert config.str("CpoName") == ""
    with pytest.raises(TypeError):
        config.int("MeterValuesSampledData")


ELEVEN_MEASURANDS = ",".join(["Current.Export", "Current.Import", "Current.Offered", "Frequency", "Power.Factor",
                              "Power.Offered", "RPM", "SoC", "Temperature", "Voltage", "Power.Active.Import"])


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("NumberOfConnectors", "2", "read-only"),
    ("SupportedFeatureProfiles", "Core", "read-only"),
    ("HeartbeatInterval", "abc", "is not an integer"),
    ("HeartbeatInterval", "60.0", "is not an integer"),
    ("HeartbeatInterval", "-1", "outside 0..2147483647"),
    ("HeartbeatInterval", "99999999999", "outside"),
    ("WebSocketPingInterval", "-5", "outside"),
    ("LightIntensity", "101", "outside 0..100"),
    ("ConnectionTimeOut", "0", "outside 1..86400"),
    ("LocalAuthorizeOffline", "yes", "is not true or false"),
    ("MeterValuesSampledData", "Energy.Active.Import", "not a 1.6 Measurand"),
    ("MeterValuesSampledData", "Voltage.L4", "not a 1.6 Measurand"),
    ("MeterValuesSampledData", ELEVEN_MEASURANDS, "11 items, MeterValuesSampledDataMaxLength allows 10"),
    ("ConnectorPhaseRotation", "3.RST", "connector 3 does not exist"),
    ("ConnectorPhaseRotation", "1.XYZ", "rotation must be one of"),
    ("ConnectorPhaseRotation", "1.RST, 1.RTS", "connector 1 is listed twice"),
    ("CpoName", "A" * 65, "has 65 characters"),
    ("CpoName", "line\nbreak", "control characters"),
    ("AuthorizationKey", "short-key", "has 9 characters, allowed 16 to 40"),
    ("AuthorizationKey", "k" * 41, "has 41 characters"),
    ("AuthorizationKey", "sixteen-chars-plus-ü", "printable ASCII"),
    ("SecurityProfile", "4", "outside 0..3"),
])
def test_rejected_change_names_the_reason_and_keeps_the_value(key: str, value: str, reason: str) -> None:
    config = Configuration.defaults()
    config.set("NumberOfConnectors", 2)
    before = config.values()
    result = config.change(key, value)
    assert result.status == "Rejected"
    assert reason in result.reason
    assert config.values() == before


def test_unknown_key_is_not_supported() -> None:
    config = Configuration.defaults()
    result = config.change("HeartbeatIntervall", "60")
    assert (result.status, result.key) == ("NotSupported", "HeartbeatIntervall")
    assert config.int("HeartbeatInterval") == 300


def test_security_profile_only_goes_up_and_needs_a_key_for_basic_auth() -> None:
    config = Configuration.defaults()
    assert config.change("SecurityProfile", "1").reason == "security profile 1 needs an AuthorizationKey first"
    assert config.change("AuthorizationKey", SECRET).status == "Accepted"
    assert config.change("SecurityProfile", "1").status == "Accepted"
    assert "lowering the security profile from 1 to 0" in config.change("SecurityProfile", "0").reason
    assert "not supported by this station" in config.change("SecurityProfile", "2").reason
    assert config.change("SecurityProfile", "1").status == "Accepted"  # unchanged is fine
    assert Configuration.defaults(max_security_profile=3, AuthorizationKey=SECRET).change(
        "SecurityProfile", "3").status == "Accepted"
    assert config.int("SecurityProfile") == 1


def test_station_side_set_bypasses_access_but_not_validation() -> None:
    config = Configuration.defaults()
    config.set("NumberOfConnectors", 3)
    assert config.int("NumberOfConnectors") == 3
    with pytest.raises(ValueError, match="outside 1"):
        config.set("NumberOfConnectors", 0)
    assert config.int("NumberOfConnectors") == 3


KEY_NAMES = [d.name for d in STANDARD_KEYS]


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.sampled_from(KEY_NAMES), st.sampled_from(KEY_NAMES).map(str.lower), st.text(max_size=60)),
       value=st.one_of(st.text(max_size=600), st.from_regex(r"[ +-]?[0-9]{1,12} ?", fullmatch=True),
                       st.sampled_from(["true", "FALSE", "", "Voltage.L1,SoC", "0.RST", "1", "0"])))
def test_any_change_never_raises_and_a_refusal_changes_nothing(key: str, value: str) -> None:
    config = Configuration.defaults()
    before = config.get().payload()
    result = config.change(key, value)
    jsonschema.validate({"status": result.status}, CHANGE_RESPONSE)
    after = config.get().payload()
    jsonschema.validate(after, GET_RESPONSE)
    if not result.accepted:
        assert after == before
        return
    entry = next(e for e in after["configurationKey"] if e["key"] == result.key)
    if result.write_only:
        assert "value" not in entry
    else:
        assert entry["value"] == result.value
        assert config.change(result.key, result.value).value == result.value  # canonical form is stable


# --- the store: persistence, initial file, logs ----------------------------------------------------------------

def test_changes_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.change("HeartbeatInterval", "45").status == "Accepted"
    assert store.change("MeterValuesSampledData", "Voltage.L1, Current.Import").status == "Accepted"
    assert store.change("HeartbeatInterval", "nope").status == "Rejected"
    store.set("LocalAuthorizeOffline", False)
    reopened = open_store(tmp_path)
    assert reopened.config.int("HeartbeatInterval") == 45
    assert reopened.config.csl("MeterValuesSampledData") == ["Voltage.L1", "Current.Import"]
    assert reopened.config.bool("LocalAuthorizeOffline") is False
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["ocpp-config.json"]  # no temp files left


def test_a_change_that_cannot_be_stored_is_rejected(tmp_path: Path) -> None:
    store = ConfigStore.open(tmp_path / "blocked" / "config.json", None, LOG)
    (tmp_path / "blocked").write_text("a file where the state folder should be")
    result = store.change("HeartbeatInterval", "45")
    assert result.status == "Rejected"
    assert "could not store" in result.reason
    assert store.config.int("HeartbeatInterval") == 300


def test_authorization_key_is_never_returned_nor_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = open_store(tmp_path)
    assert store.change("authorizationkey", SECRET).status == "Accepted"
    assert store.change("AuthorizationKey", SECRET + "x" * 30).status == "Rejected"  # too long
    assert store.change("AuthorizationKey", SECRET[:10]).status == "Rejected"  # too short
    assert store.change("SecurityProfile", "1").status == "Accepted"
    assert SECRET not in json.dumps(store.get().payload())
    assert SECRET not in json.dumps(store.get(["AuthorizationKey"]).payload())
    assert SECRET not in repr(store.change("AuthorizationKey", SECRET))
    reopened = open_store(tmp_path)
    assert reopened.config.value("AuthorizationKey") == SECRET
    assert reopened.config.int("SecurityProfile") == 1
    assert stat.S_IMODE((tmp_path / "state" / "ocpp-config.json").stat().st_mode) == 0o600
    assert any(r.getMessage() == "configuration changed" and r.fields["key"] == "AuthorizationKey"
               for r in caplog.records)
    formatter = LineFormatter()
    for record in caplog.records:
        for text in (formatter.format(record), LineFormatter(json_lines=True).format(record), repr(record.__dict__)):
            assert SECRET[:10] not in text


def test_file_values_override_defaults_and_stored_changes_override_the_file(tmp_path: Path) -> None:
    initial = "values:\n  HeartbeatInterval: 900\n  MeterValueSampleInterval: 30\n  SecurityProfile: 0\n"
    store = open_store(tmp_path, initial, runtime={"NumberOfConnectors": 2})
    assert (store.config.int("HeartbeatInterval"), store.config.int("MeterValueSampleInterval")) == (900, 30)
    assert store.config.int("ConnectionTimeOut") == 30  # default
    assert store.config.int("NumberOfConnectors") == 2
    store.change("HeartbeatInterval", "60")
    store.change("AuthorizationKey", SECRET)
    store.change("SecurityProfile", "1")
    again = open_store(tmp_path, initial.replace("900", "1800"), runtime={"NumberOfConnectors": 2})
    assert again.config.int("HeartbeatInterval") == 60  # the CSMS's change wins over the file
    assert again.config.int("MeterValueSampleInterval") == 30
    assert again.config.int("SecurityProfile") == 1  # stored 1 beats file 0
    raised = open_store(tmp_path, initial.replace("SecurityProfile: 0", "SecurityProfile: 1"))
    assert raised.config.int("SecurityProfile") == 1


def test_security_profile_in_the_file_only_goes_up(tmp_path: Path) -> None:
    store = open_store(tmp_path, f"values:\n  AuthorizationKey: {SECRET}\n")
    assert store.change("SecurityProfile", "1").status == "Accepted"
    with pytest.raises(ConfigFileError, match="SecurityProfile: profile 3 is not supported"):
        open_store(tmp_path, f"values:\n  AuthorizationKey: {SECRET}\n  SecurityProfile: 3\n")
    assert open_store(tmp_path, f"values:\n  AuthorizationKey: {SECRET}\n  SecurityProfile: 0\n").config.int(
        "SecurityProfile") == 1


@pytest.mark.parametrize(("text", "message"), [
    ("values:\n  HeartbeatIntervall: 60\n", ":2: HeartbeatIntervall: unknown configuration key (did you mean "
                                            "HeartbeatInterval?)"),
    ("values:\n  HeartbeatInterval: 60\n  LocalAuthorizeOffline: yes\n",
     ":3: LocalAuthorizeOffline: 'yes' is not true or false"),
    ("values:\n  MeterValuesSampledDataMaxLength: 1\n",
     ":2: MeterValuesSampledData: the default 'Energy.Active.Import.Register,Power.Active.Import' does not fit"),
    ("values:\n  NumberOfConnectors: 2\n", ":2: NumberOfConnectors: set by the station at start-up"),
    ("values:\n  CpoName:\n", ":2: CpoName: no value"),
    ("values:\n  HeartbeatInterval: 60\n  heartbeatinterval: 30\n", ":3: HeartbeatInterval: given twice"),
    ("values:\n  SecurityProfile: 1\n", "SecurityProfile: profile 1 needs an AuthorizationKey"),
    ("value:\n  HeartbeatInterval: 60\n", ":1: unknown section 'value'"),
    ("values: [HeartbeatInterval]\n", ":1: 'values' must be a mapping"),
    ("values:\n  HeartbeatInterval: 60\n   bad: [\n", "not valid YAML"),
    ("vendor_keys:\n  HeartbeatInterval: {type: integer, default: 1}\n", "taken by a standard key"),
    ("vendor_keys:\n  AcmeX: {type: float, default: 1}\n", ":2: vendor key AcmeX: type must be one of"),
    ("vendor_keys:\n  AcmeX: {type: integer}\n", "a default is required"),
    ("vendor_keys:\n  AcmeX: {type: integer, default: 5, maximum: 3}\n", ":2: AcmeX: the default '5' does not fit"),
])
def test_a_bad_initial_file_names_file_line_key_and_reason_and_applies_nothing(tmp_path: Path, text: str,
                                                                               message: str) -> None:
    state = tmp_path / "state" / "ocpp-config.json"
    state.parent.mkdir()
    state.write_text('{"format": 1, "values": {"HeartbeatInterval": "45"}}')
    before = state.read_bytes()
    with pytest.raises(ConfigFileError) as failure:
        open_store(tmp_path, text)
    assert str(tmp_path / "ocpp16.yaml") in str(failure.value)
    assert message in str(failure.value)
    assert state.read_bytes() == before


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as failure:
        parse_initial_values("values:\n  Foo: 1\n  Bar: 2\n", "x.yaml")
    assert str(failure.value).splitlines() == ["x.yaml:2: Foo: unknown configuration key; declare vendor keys "
                                               "under vendor_keys", "x.yaml:3: Bar: unknown configuration key; "
                                               "declare vendor keys under vendor_keys"]


def test_stored_values_that_no_longer_fit_are_logged_and_replaced(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state" / "ocpp-config.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"format": 1, "values": {
        "HeartbeatInterval": "-5", "AcmeGone": "1", "NumberOfConnectors": "9", "MeterValueSampleInterval": "20"}}))
    caplog.set_level(logging.WARNING)
    store = open_store(tmp_path, "values:\n  HeartbeatInterval: 600\n")
    assert store.config.int("HeartbeatInterval") == 600  # the file's value
    assert store.config.int("NumberOfConnectors") == 1
    assert store.config.int("MeterValueSampleInterval") == 20
    dropped = {r.fields["key"]: r.fields["reason"] for r in caplog.records
               if r.getMessage().startswith("stored configuration value dropped")}
    assert dropped == {"HeartbeatInterval": "-5 is outside 0..2147483647", "AcmeGone": "no such key any more",
                       "NumberOfConnectors": "the key is read-only now"}


def test_an_unreadable_state_file_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state" / "ocpp-config.json"
    state.parent.mkdir()
    state.write_text("{not json")
    store = open_store(tmp_path)
    assert store.config.int("HeartbeatInterval") == 300
    assert (tmp_path / "state" / "ocpp-config.json.corrupt").read_text() == "{not json"
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert store.change("HeartbeatInterval", "30").status == "Accepted"
    assert open_store(tmp_path).config.int("HeartbeatInterval") == 30


VENDOR_FILE = """
vendor_keys:
  AcmeDisplayLanguage: {type: string, values: [en, de, fr], default: en, reboot_required: true}
  AcmeFanLimit: {type: integer, default: 80, minimum: 0, maximum: 100}
  AcmeSecret: {type: string, access: W, min_length: 8}
  AcmeModes: {type: CSL, access: R, values: [eco, boost], default: eco}
values:
  AcmeFanLimit: 70
"""


def test_vendor_keys_from_the_file_and_reboot_required(tmp_path: Path) -> None:
    store = open_store(tmp_path, VENDOR_FILE)
    keys = as_map(store)
    assert keys["AcmeFanLimit"] == {"key": "AcmeFanLimit", "readonly": False, "value": "70"}
    assert keys["AcmeModes"] == {"key": "AcmeModes", "readonly": True, "value": "eco"}
    assert keys["AcmeSecret"] == {"key": "AcmeSecret", "readonly": False}
    assert store.change("AcmeFanLimit", "101").status == "Rejected"
    assert store.change("AcmeModes", "boost").status == "Rejected"
    assert store.change("acmedisplaylanguage", "DE").status == "RebootRequired"
    assert store.get(["AcmeDisplayLanguage"]).configuration_key[0]["value"] == "de"
    assert store.config.str("AcmeDisplayLanguage") == "en"  # the running station keeps the old value
    assert open_store(tmp_path, VENDOR_FILE).config.str("AcmeDisplayLanguage") == "de"  # after the restart


def test_the_example_file_in_config_is_valid(tmp_path: Path) -> None:
    store = ConfigStore.open(tmp_path / "c.json", ROOT / "config" / "ocpp16.yaml", LOG,
                             runtime={"NumberOfConnectors": 2})
    assert store.config.int("ClockAlignedDataInterval") == 900
    assert "Current.Import" in store.config.csl("MeterValuesSampledData")


def test_the_key_reference_in_the_docs_is_current() -> None:
    docs = (ROOT / "docs" / "ocpp-configuration.md").read_text(encoding="utf-8")
    assert markdown_key_table() in docs
