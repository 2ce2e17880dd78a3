"""OCPP 1.6 payload validation: valid payloads pass, each kind of mistake maps to its 1.6 CALLERROR code.

Payloads synthesized from every OCA schema are cross-checked with jsonschema (what the ``ocpp`` package uses),
so a wrong synthesizer cannot make these tests pass on its own.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from decimal import Decimal
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.ocpp16 import schemas
from modules.ocpp16.schemas import PayloadError, known_actions, validate_request, validate_response

NOW = "2026-03-01T10:15:30.123Z"
STATUSES = ["Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing", "Reserved",
            "Unavailable", "Faulted"]


def sampled_values(count: int) -> list[dict[str, Any]]:
    rows = [
        {"value": "12345.6", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Sample.Periodic",
         "location": "Outlet", "format": "Raw"},
        {"value": "7360", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
        {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "16.0", "measurand": "Current.Offered", "unit": "A"},
        {"value": "50.0", "measurand": "Frequency", "unit": "Hertz"},
        {"value": "41", "measurand": "Temperature", "unit": "Celsius", "location": "Body"},
        {"value": "80", "measurand": "SoC", "unit": "Percent", "location": "EV"},
        {"value": "0.99", "measurand": "Power.Factor"},
        {"value": "3.2", "measurand": "Energy.Active.Import.Interval", "unit": "kWh", "context": "Sample.Clock"},
    ]
    return [rows[i % len(rows)] for i in range(count)]


STATION_REQUESTS: dict[str, dict[str, Any]] = {
    "BootNotification": {"chargePointVendor": "chargepoint", "chargePointModel": "SIL-2", "chargePointSerialNumber":
                         "SN-0001", "chargeBoxSerialNumber": "CB-1", "firmwareVersion": "0.4.0", "iccid": "8949",
                         "imsi": "26201", "meterType": "sim", "meterSerialNumber": "M-1"},
    "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": NOW,
                           "info": "cable locked", "vendorId": "chargepoint", "vendorErrorCode": "E0"},
    "MeterValues": {"connectorId": 1, "transactionId": 42,
                    "meterValue": [{"timestamp": NOW, "sampledValue": sampled_values(10)}]},
    "StartTransaction": {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 12345, "timestamp": NOW,
                         "reservationId": 7},
    "StopTransaction": {"transactionId": 42, "idTag": "04A2B3C4D5E6F7", "meterStop": 19876, "timestamp": NOW,
                        "reason": "EVDisconnected",
                        "transactionData": [{"timestamp": NOW, "sampledValue": [
                            {"value": "19876", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
                             "context": "Transaction.End"}]}]},
    "Authorize": {"idTag": "04A2B3C4D5E6F7"},
    "Heartbeat": {},
    "DataTransfer": {"vendorId": "org.openchargealliance.iso15118pnc", "messageId": "Authorize", "data": "{}"},
    "DiagnosticsStatusNotification": {"status": "Uploaded"},
    "FirmwareStatusNotification": {"status": "Installed"},
}
CSMS_RESPONSES: dict[str, dict[str, Any]] = {
    "BootNotification": {"status": "Accepted", "currentTime": NOW, "interval": 300},
    "StatusNotification": {},
    "MeterValues": {},
    "StartTransaction": {"transactionId": 42, "idTagInfo": {"status": "Accepted", "expiryDate": NOW,
                                                            "parentIdTag": "FLEET-1"}},
    "StopTransaction": {"idTagInfo": {"status": "Accepted"}},
    "Authorize": {"idTagInfo": {"status": "Blocked"}},
    "Heartbeat": {"currentTime": "2026-03-01T11:15:30+01:00"},
    "DataTransfer": {"status": "Rejected"},
    "DiagnosticsStatusNotification": {},
    "FirmwareStatusNotification": {},
}
CSMS_REQUESTS: dict[str, dict[str, Any]] = {
    "GetConfiguration": {"key": ["HeartbeatInterval", "MeterValueSampleInterval"]},
    "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "300"},
    "RemoteStartTransaction": {"connectorId": 1, "idTag": "REMOTE-1", "chargingProfile": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative", "chargingSchedule": {
            "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7.7, "numberPhases": 1}]}}},
    "RemoteStopTransaction": {"transactionId": 42},
    "Reset": {"type": "Soft"},
    "TriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
    "ReserveNow": {"connectorId": 0, "expiryDate": NOW, "idTag": "RES-1", "reservationId": 3},
    "SendLocalList": {"listVersion": 5, "updateType": "Differential", "localAuthorizationList": [
        {"idTag": "A1", "idTagInfo": {"status": "Accepted"}}, {"idTag": "B2"}]},
    "UpdateFirmware": {"location": "ftp://user:pass@127.0.0.1/fw.bin", "retrieveDate": NOW, "retries": 3},
    "GetDiagnostics": {"location": "http://127.0.0.1:8080/upload"},
    "UnlockConnector": {"connectorId": 1},
}
STATION_RESPONSES: dict[str, dict[str, Any]] = {
    "GetConfiguration": {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
                         "unknownKey": ["Foo"]},
    "ChangeConfiguration": {"status": "RebootRequired"},
    "RemoteStartTransaction": {"status": "Accepted"},
    "TriggerMessage": {"status": "Accepted"},
    "GetDiagnostics": {"fileName": "diagnostics-2026-03-01.tar.gz"},
    "GetCompositeSchedule": {"status": "Accepted", "connectorId": 1, "scheduleStart": NOW, "chargingSchedule": {
        "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.4}]}},
}


# -- payloads synthesized from the schemas, cross-checked with jsonschema -------------------------------
def load_schema(action: str, response: bool) -> dict[str, Any]:
    name = f"{action}Response" if response else action
    return json.loads(files("ocpp.v16").joinpath("schemas", f"{name}.json").read_text("utf-8-sig"))


def synthesize(node: dict[str, Any], root: dict[str, Any], *, complete: bool) -> Any:
    """A valid value for ``node``: required fields only, or every field when ``complete``."""
    if "$ref" in node:
        return synthesize(root["definitions"][node["$ref"].rsplit("/", 1)[1]], root, complete=complete)
    if "enum" in node:
        return node["enum"][-1]
    kind = node.get("type")
    if kind == "object":
        names = node.get("properties", {}) if complete else node.get("required", [])
        return {name: synthesize(node["properties"][name], root, complete=complete) for name in names}
    if kind == "array":
        return [synthesize(node["items"], root, complete=complete)]
    if kind == "string":
        return {"date-time": NOW, "uri": "https://example.com/a"}.get(node.get("format", ""), "x")
    return {"integer": 3, "number": 2.5, "boolean": True}[kind]


def reference_accepts(schema: dict[str, Any], payload: Any, *, received: bool = False) -> bool:
    """jsonschema's verdict, decimals parsed as Decimal (as the ocpp package does) and date-times checked."""
    dates = jsonschema.FormatChecker(formats=())

    @dates.checks("date-time", raises=ValueError)
    def is_date_time(text: object) -> bool:
        return not isinstance(text, str) or received or datetime.fromisoformat(text).tzinfo is not None

    exact = json.loads(json.dumps(schema), parse_float=Decimal)
    checker = jsonschema.validators.validator_for(exact)(exact, format_checker=dates)
    return checker.is_valid(json.loads(json.dumps(payload), parse_float=Decimal))


ALL_SCHEMAS = [(action, response) for action in sorted(known_actions()) for response in (False, True)]


def validate(action: str, response: bool, payload: Any, *, received: bool = False) -> None:
    (validate_response if response else validate_request)(action, payload, received=received)


def error_of(action: str, response: bool, payload: Any, *, received: bool = False) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        validate(action, response, payload, received=received)
    return caught.value


def test_the_ocpp_package_ships_every_16_action_including_the_security_extension() -> None:
    assert len(known_actions()) == 39
    assert {"BootNotification", "MeterValues", "SendLocalList", "SignCertificate", "GetLog"} <= known_actions()
    assert not any(action.endswith("Response") for action in known_actions())


@pytest.mark.parametrize(("action", "response"), ALL_SCHEMAS)
def test_payloads_synthesized_from_every_schema_pass_strictly(action: str, response: bool) -> None:
    schema = load_schema(action, response)
    for complete in (False, True):
        payload = synthesize(schema, schema, complete=complete)
        assert reference_accepts(schema, payload)
        validate(action, response, payload)


@pytest.mark.parametrize(("action", "response"), ALL_SCHEMAS)
def test_every_missing_required_field_is_an_occurence_constraint_violation(action: str, response: bool) -> None:
    schema = load_schema(action, response)
    payload = synthesize(schema, schema, complete=True)
    for name in schema.get("required", []):
        broken = {key: value for key, value in payload.items() if key != name}
        error = error_of(action, response, broken)
        assert (error.code, error.field) == ("OccurenceConstraintViolation", name)
        assert name in str(error)


@pytest.mark.parametrize(
    ("messages", "response"),
    [(STATION_REQUESTS, False), (CSMS_RESPONSES, True), (CSMS_REQUESTS, False), (STATION_RESPONSES, True)],
    ids=["station requests", "CSMS responses", "CSMS requests", "station responses"],
)
def test_realistic_payloads_of_the_main_actions_pass(messages: dict[str, dict[str, Any]], response: bool) -> None:
    for action, payload in messages.items():
        assert reference_accepts(load_schema(action, response), payload), action
        validate(action, response, payload)
        validate(action, response, payload, received=True)


@pytest.mark.parametrize(
    ("action", "payload", "code", "field"),
    [
        ("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0}, "OccurenceConstraintViolation",
         "timestamp"),
        ("StartTransaction", {"connectorId": "1", "idTag": "A", "meterStart": 0, "timestamp": NOW},
         "TypeConstraintViolation", "connectorId"),
        ("StartTransaction", {"connectorId": 1, "idTag": "A" * 21, "meterStart": 0, "timestamp": NOW},
         "PropertyConstraintViolation", "idTag"),
        ("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "yesterday"},
         "PropertyConstraintViolation", "timestamp"),
        ("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": NOW, "soc": 80},
         "FormationViolation", "soc"),
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging "},
         "PropertyConstraintViolation", "status"),
        ("MeterValues", {"connectorId": 1, "meterValue": []}, "OccurenceConstraintViolation", "meterValue"),
        ("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": 5}]}]},
         "TypeConstraintViolation", "meterValue[0].sampledValue[0].value"),
        ("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"unit": "Wh"}]}]},
         "OccurenceConstraintViolation", "meterValue[0].sampledValue[0].value"),
        ("StopTransaction", {"transactionId": 1, "meterStop": 5, "timestamp": NOW, "transactionData": [
            {"timestamp": NOW, "sampledValue": [{"value": "50", "measurand": "Frequency", "unit": "Hertz"}]}]},
         "PropertyConstraintViolation", "transactionData[0].sampledValue[0].unit"),
        ("Heartbeat", [], "FormationViolation", ""),
        ("Heartbeat", None, "FormationViolation", ""),
        ("Heartbeat", {"now": NOW}, "FormationViolation", "now"),
    ],
)
def test_each_kind_of_mistake_maps_to_its_16_error_code_and_names_the_field(
        action: str, payload: Any, code: str, field: str) -> None:
    error = error_of(action, False, payload)
    assert (error.code, error.field) == (code, field)
    assert str(error).startswith(f"{action}.req: {field}" if field else f"{action}.req: the payload")


def test_an_unknown_action_is_not_implemented() -> None:
    error = error_of("FetchCoffee", False, {})
    assert error.code == "NotImplemented"
    assert "FetchCoffee" in str(error)
    assert error_of("BootNotificationResponse", False, {}).code == "NotImplemented"


def test_a_zone_less_timestamp_from_the_csms_is_tolerated_but_never_sent() -> None:
    boot = {"status": "Accepted", "currentTime": "2026-03-01T10:15:30", "interval": 300}
    validate_response("BootNotification", boot, received=True)
    validate_request("ReserveNow", {"connectorId": 1, "expiryDate": "2026-03-01T10:15:30.5", "idTag": "A",
                                    "reservationId": 1}, received=True)
    assert error_of("BootNotification", True, boot).code == "PropertyConstraintViolation"
    assert error_of("BootNotification", True, {**boot, "currentTime": "01.03.2026"}, received=True).field == \
        "currentTime"


def test_extra_fields_are_tolerated_in_csms_confirmations_but_not_in_csms_calls() -> None:
    validate_response("StartTransaction", {"transactionId": 1, "idTagInfo": {"status": "Accepted", "note": "x"},
                                           "vendorExtension": {"a": 1}}, received=True)
    error = error_of("RemoteStopTransaction", False, {"transactionId": 1, "force": True}, received=True)
    assert (error.code, error.field) == ("FormationViolation", "force")
    assert error_of("StartTransaction", True, {"transactionId": 1, "idTagInfo": {"status": "Accepted"},
                                               "x": 1}).code == "FormationViolation"


def test_charging_limits_with_one_decimal_pass_exactly_and_computed_ones_only_when_received() -> None:
    def profile(limit: float) -> dict[str, Any]:
        return {"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "W", "startSchedule": NOW,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}}

    for limit in (7.7, 21.4, 0.3, 32, 11000.1):
        validate_request("SetChargingProfile", profile(limit))
    for limit in (11000 / 3, 0.1 + 0.2, 16.05):
        error = error_of("SetChargingProfile", False, profile(limit))
        assert (error.code, error.field) == ("PropertyConstraintViolation",
                                             "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit")
        validate_request("SetChargingProfile", profile(limit), received=True)


def test_the_csms_sloppiness_tolerated_still_leaves_wrong_types_and_values_refused() -> None:
    assert error_of("StartTransaction", True, {"transactionId": "1", "idTagInfo": {"status": "Accepted"}},
                    received=True).code == "TypeConstraintViolation"
    assert error_of("Authorize", True, {"idTagInfo": {"status": "OK"}}, received=True).code == \
        "PropertyConstraintViolation"
    assert error_of("Authorize", True, {}, received=True).code == "OccurenceConstraintViolation"


# -- agreement with jsonschema on near-valid payloads ---------------------------------------------------
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "x", NOW, "L1", "Wh"]),
                   st.sampled_from(STATUSES), st.lists(st.integers(0, 2), max_size=2), st.just({}))
FIELDS = st.sampled_from(["connectorId", "errorCode", "status", "timestamp", "info", "vendorId", "extra"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, VALUES, max_size=7), st.booleans())
def test_verdicts_agree_with_jsonschema_on_status_notifications(payload: dict[str, Any], received: bool) -> None:
    schema = load_schema("StatusNotification", False)
    ours = True
    try:
        validate_request("StatusNotification", payload, received=received)
    except PayloadError:
        ours = False
    assert ours == reference_accepts(schema, payload, received=received)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 9), st.sampled_from(["value", "unit", "phase", "measurand", "context", "bogus"]), VALUES)
def test_verdicts_agree_with_jsonschema_on_meter_values(index: int, name: str, value: Any) -> None:
    payload = copy.deepcopy(STATION_REQUESTS["MeterValues"])
    payload["meterValue"][0]["sampledValue"][index][name] = value
    ours = True
    try:
        validate_request("MeterValues", payload)
    except PayloadError as error:
        ours = False
        assert error.field.startswith(f"meterValue[0].sampledValue[{index}]")
    assert ours == reference_accepts(load_schema("MeterValues", False), payload)


def test_validators_are_compiled_once_per_action_and_direction() -> None:
    validate_request("Heartbeat", {})
    before = schemas._validator.cache_info().currsize
    for _ in range(3):
        validate_request("Heartbeat", {})
    assert schemas._validator.cache_info().currsize == before
