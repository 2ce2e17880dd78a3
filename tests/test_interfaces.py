"""The built-in interface files: well-formed, documented, precise, and in sync with the docs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest
import yaml

from chargepoint.docgen import interfaces_markdown, load_builtin_interfaces, type_summary
from chargepoint.interfaces import INTERFACE_DIR, Interface, check, parse_interface, validator

ROOT = Path(__file__).resolve().parents[1]
INTERFACE_FILES = sorted(INTERFACE_DIR.glob("*.yaml"))
INTERFACES = {interface.name: interface for interface in load_builtin_interfaces()}

EXPECTED = {"auth", "board", "energy", "ev", "evse", "kvs", "powermeter", "reservation", "system",
            "token_provider", "token_validator"}
OCPP_AUTHORIZATION_STATUSES = {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}
OCPP_STOP_REASONS = {"EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss", "Reboot",
                     "Remote", "SoftReset", "UnlockCommand", "DeAuthorized"}
# Keywords the interface files may use. An unknown key is almost always a YAML slip: in a flow
# mapping `{description: a, b}` silently turns " b" into a key of the schema.
KNOWN_KEYWORDS = {
    "type", "enum", "const", "description", "default", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "format", "items", "minItems", "maxItems",
    "uniqueItems", "properties", "required", "additionalProperties", "minProperties", "allOf", "anyOf",
    "oneOf", "if", "then", "else",
}
# snake_case, with unit suffixes in their usual spelling (current_A, energy_Wh_import, power_W)
NAME = re.compile(r"^[a-z][a-z0-9]*(_([a-z0-9]+|A|V|W|Wh|Hz|VAR))*$")
PHASE_KEYS = {"L1", "L2", "L3", "N"}
UTC_PATTERN = "(Z|\\+00:00)$"
TS = "2025-03-14T09:26:53Z"


def all_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, schema) for every top-level schema: argument objects, arguments, results, vars."""
    for interface in INTERFACES.values():
        for cmd in interface.cmds.values():
            where = f"{interface.name}.{cmd.name}"
            yield f"{where} (arguments)", cmd.args_schema
            for arg, schema in cmd.arguments.items():
                yield f"{where}({arg})", schema
            yield f"{where} (result)", cmd.result_schema
        for var in interface.vars.values():
            yield f"{interface.name}.{var.name}", var.schema


def subschemas(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) ``schema``."""
    if not isinstance(schema, dict):
        return
    yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from subschemas(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from subschemas(schema["items"], f"{where}[]")
    for key in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(key, [])):
            yield from subschemas(sub, f"{where}.{key}[{index}]")
    for key in ("if", "then", "else"):
        yield from subschemas(schema.get(key), f"{where}.{key}")


def in_conditions(where: str) -> bool:
    return any(part in where for part in (".if", ".then", ".else", ".allOf", ".anyOf", ".oneOf"))


# -- loading and schema validity ------------------------------------------------------------

def test_expected_interfaces_exist() -> None:
    assert {path.stem for path in INTERFACE_FILES} >= EXPECTED


@pytest.mark.parametrize("path", INTERFACE_FILES, ids=lambda p: p.stem)
def test_interface_file_parses(path: Path) -> None:
    interface = parse_interface(path.stem, yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    assert interface.description.strip()
    assert interface.cmds or interface.vars
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 260, "keep interface files readable"


@pytest.mark.parametrize(("where", "schema"), list(all_schemas()), ids=lambda v: v if isinstance(v, str) else "")
def test_schema_is_valid_and_compiles(where: str, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    fastjsonschema.compile(schema)
    unknown = [(node_where, sorted(set(node) - KNOWN_KEYWORDS))
               for node_where, node in subschemas(schema, where) if set(node) - KNOWN_KEYWORDS]
    assert not unknown, f"unknown schema keys (quote descriptions with commas in flow mappings): {unknown}"


def test_defaults_satisfy_their_schemas() -> None:
    for where, schema in all_schemas():
        for node_where, node in subschemas(schema, where):
            if "default" in node:
                assert check({k: v for k, v in node.items() if k != "default"}, node["default"]) is None, node_where


# -- naming and documentation ---------------------------------------------------------------

@pytest.mark.parametrize("interface", INTERFACES.values(), ids=lambda i: i.name)
def test_every_part_is_described(interface: Interface) -> None:
    for cmd in interface.cmds.values():
        assert cmd.description.strip(), f"{interface.name}.{cmd.name}"
        for arg, schema in cmd.arguments.items():
            assert str(schema.get("description", "")).strip(), f"{interface.name}.{cmd.name}({arg})"
        if cmd.result is not None:
            assert str(cmd.result.get("description", "")).strip() or "properties" in cmd.result, cmd.name
    for var in interface.vars.values():
        assert var.description.strip(), f"{interface.name}.{var.name}"
    for error, text in interface.errors.items():
        assert text.strip(), f"{interface.name} error {error}"


def test_every_field_is_described_and_named_consistently() -> None:
    for where, schema in all_schemas():
        for node_where, node in subschemas(schema, where):
            for name, sub in node.get("properties", {}).items():
                if in_conditions(node_where):
                    continue
                assert name in PHASE_KEYS or NAME.match(name), f"{node_where}.{name}: not snake_case"
                assert str(sub.get("description", "")).strip(), f"{node_where}.{name}: no description"


@pytest.mark.parametrize("interface", INTERFACES.values(), ids=lambda i: i.name)
def test_names_are_snake_case(interface: Interface) -> None:
    names = [*interface.cmds, *interface.vars, *interface.errors]
    names += [arg for cmd in interface.cmds.values() for arg in cmd.arguments]
    assert [name for name in names if not NAME.match(name)] == []


def test_timestamps_are_utc_rfc3339() -> None:
    time_like = re.compile(r"(^timestamp$|_time$|_at$|^valid_until$|^start$|^time$)")
    for where, schema in all_schemas():
        for node_where, node in subschemas(schema, where):
            for name, sub in node.get("properties", {}).items():
                if time_like.search(name) and not in_conditions(node_where):
                    assert sub.get("format") == "date-time", f"{node_where}.{name}"
                    assert sub.get("pattern") == UTC_PATTERN, f"{node_where}.{name}"
    time_schema = INTERFACES["powermeter"].vars["powermeter"].schema["properties"]["timestamp"]
    assert check(time_schema, "2025-03-14T09:26:53.250Z") is None
    assert check(time_schema, "2025-03-14T09:26:53+00:00") is None
    assert check(time_schema, "2025-03-14T10:26:53+01:00") is not None
    assert check(time_schema, "2025-03-14 09:26:53") is not None


# -- generated documentation ----------------------------------------------------------------

def test_interfaces_md_is_current() -> None:
    committed = (ROOT / "docs" / "interfaces.md").read_text(encoding="utf-8")
    assert committed == interfaces_markdown(), (
        "docs/interfaces.md is out of date: run `python -m chargepoint.docgen > docs/interfaces.md`"
    )


def test_markdown_is_deterministic_and_complete() -> None:
    text = interfaces_markdown()
    assert text == interfaces_markdown()
    assert "`chargepoint interfaces --markdown`" in text.splitlines()[2]
    for interface in INTERFACES.values():
        assert f"## `{interface.name}`" in text
        for cmd in interface.cmds:
            assert f"#### `{interface.name}.{cmd}`" in text
        for var in interface.vars:
            assert f"#### `{interface.name}.{var}` (" in text
        for error in interface.errors:
            assert f"| `{error}` |" in text


@pytest.mark.parametrize(("schema", "summary"), [
    ({"type": "integer", "minimum": 1, "maximum": 3}, "integer 1\u20133"),
    ({"type": ["number", "null"], "exclusiveMinimum": 0}, "number > 0 or null"),
    ({"type": "string", "enum": ["a", "b"]}, "one of `a`, `b`"),
    ({"type": ["integer", "null"], "enum": [13, 20, None]}, "one of `13`, `20` or null"),
    ({"type": "string", "format": "date-time"}, "UTC timestamp"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 1}, "array of string (≥ 1 items)"),
    ({"description": "anything"}, "any JSON value"),
])
def test_type_summary(schema: dict[str, Any], summary: str) -> None:
    assert type_summary(schema) == summary


# -- the schemas mean what they say ---------------------------------------------------------

def evse_state(**changes: Any) -> dict[str, Any]:
    state = {
        "evse_id": 1, "connector_id": 1, "charger_state": "charging", "cp_state": "C", "plugged": True,
        "enabled": True, "availability_source": None, "authorized": True, "relay_closed": True,
        "session_id": "s-1", "transaction_active": True, "reservation_id": None, "active_errors": [],
        "timestamp": TS,
    }
    return {**state, **changes}


def test_evse_state() -> None:
    schema = INTERFACES["evse"].vars["state"].schema
    assert check(schema, evse_state()) is None
    assert check(schema, evse_state(charger_state="suspended_evse", cp_state="B")) is None
    assert check(schema, evse_state(charger_state="boiling")) is not None
    assert check(schema, evse_state(cp_state="G")) is not None
    assert check(schema, evse_state(surprise=1)) is not None
    incomplete = evse_state()
    del incomplete["session_id"]
    assert check(schema, incomplete) is not None
    states = set(schema["properties"]["charger_state"]["enum"])
    assert states == {"idle", "waiting_for_authorization", "preparing", "charging", "suspended_ev",
                      "suspended_evse", "finishing", "faulted", "unavailable", "reserved"}


def test_evse_set_max_current() -> None:
    args = INTERFACES["evse"].cmds["set_max_current"].args_schema
    assert validator(args)({"current_A": 16}) == {"current_A": 16, "phases": None, "valid_for_s": None}
    assert check(args, {"current_A": -1}) is not None
    assert check(args, {"current_A": 16, "phases": 4}) is not None
    assert check(args, {}) is not None
    assert check(args, {"current_A": 16, "amps": 16}) is not None


def test_evse_session_event_rules() -> None:
    schema = INTERFACES["evse"].vars["session_event"].schema
    base = {"session_id": "s-1", "timestamp": TS, "evse_id": 1, "connector_id": 1}
    finished = {**base, "type": "transaction_finished", "reason": "EVDisconnected", "meter_Wh": 1234.5}
    assert check(schema, finished) is None
    assert check(schema, {**finished, "reason": None}) is not None
    assert check(schema, {k: v for k, v in finished.items() if k != "reason"}) is not None
    assert check(schema, {**finished, "reason": "Bored"}) is not None
    assert check(schema, {**base, "type": "transaction_started", "id_token": "AB12", "meter_Wh": None}) is None
    assert check(schema, {**base, "type": "transaction_started", "meter_Wh": 0}) is not None
    assert check(schema, {**base, "type": "charging_paused", "paused_by": "ev"}) is None
    assert check(schema, {**base, "type": "charging_paused"}) is not None
    assert check(schema, {**base, "type": "session_started"}) is None
    assert check(schema, {**base, "type": "session_exploded"}) is not None
    assert set(INTERFACES["evse"].cmds["stop_transaction"].arguments["reason"]["enum"]) == OCPP_STOP_REASONS


def test_powermeter_reading() -> None:
    schema = INTERFACES["powermeter"].vars["powermeter"].schema
    reading = {"timestamp": TS, "meter_id": "sdm630-1", "energy_Wh_import": {"total": 1000.0, "L1": 400.0},
               "power_W": {"total": -50.0}, "voltage_V": {"L1": 230.0}, "frequency_Hz": {"L1": 50.0}}
    assert check(schema, reading) is None
    assert check(schema, {k: v for k, v in reading.items() if k != "timestamp"}) is not None
    assert check(schema, {**reading, "energy_Wh_import": {"L1": 400.0}}) is not None
    assert check(schema, {**reading, "energy_Wh_import": {"total": -1}}) is not None
    assert check(schema, {**reading, "voltage_V": {}}) is not None
    assert check(schema, {**reading, "energy_kWh_import": {"total": 1}}) is not None
    result = INTERFACES["powermeter"].cmds["start_transaction"].result_schema
    assert check(result, {"status": "not_supported", "signed_meter_value": None}) is None


def test_token_validator_statuses() -> None:
    result = INTERFACES["token_validator"].cmds["validate_token"].result_schema
    assert set(result["properties"]["status"]["enum"]) >= OCPP_AUTHORIZATION_STATUSES
    assert check(result, {"status": "Accepted", "parent_id": "GROUP", "expiry_time": TS}) is None
    assert check(result, {"status": "Unknown", "parent_id": None, "expiry_time": None}) is None
    assert check(result, {"status": "accepted", "parent_id": None, "expiry_time": None}) is not None


def test_token_provider_token() -> None:
    schema = INTERFACES["token_provider"].vars["token"].schema
    token = {"id_token": "04A2B3C4D5E6F7", "token_type": "rfid", "source": "rfid_1", "timestamp": TS}
    assert check(schema, token) is None
    assert check(schema, {**token, "connectors": [1, 2]}) is None
    assert check(schema, {**token, "connectors": []}) is not None
    assert check(schema, {**token, "id_token": ""}) is not None
    assert check(schema, {**token, "token_type": "magic"}) is not None


def test_energy_schedule_needs_a_limit() -> None:
    args = INTERFACES["energy"].cmds["set_external_limit"].args_schema
    call = {"evse_id": 0, "source": "ocpp", "schedule": [{"start": TS, "current_A": 16}]}
    assert check(args, call) is None
    assert check(args, {**call, "schedule": [{"start": TS, "power_W": 11000, "phases": 3}]}) is None
    assert check(args, {**call, "schedule": [{"start": TS}]}) is not None
    assert check(args, {**call, "schedule": []}) is not None
    assert check(args, {**call, "source": "OCPP smart charging"}) is not None


def test_reservation_and_system_use_ocpp_statuses() -> None:
    reserve = INTERFACES["reservation"].cmds["reserve_now"].result_schema
    assert set(reserve["enum"]) == {"Accepted", "Faulted", "Occupied", "Rejected", "Unavailable"}
    args = INTERFACES["reservation"].cmds["reserve_now"].args_schema
    assert check(args, {"reservation_id": 7, "evse_id": 0, "id_token": "AB12", "expiry_time": TS}) is None
    assert check(args, {"reservation_id": 7, "evse_id": -1, "id_token": "AB12", "expiry_time": TS}) is not None
    reset = INTERFACES["system"].cmds["reset"].args_schema
    assert validator(reset)({"type": "soft"}) == {"type": "soft", "requested_by": "local"}
    assert check(reset, {"type": "medium"}) is not None
    status = INTERFACES["system"].vars["firmware_update_status"].schema
    assert check(status, {"status": "Downloading", "request_id": None, "progress_percent": 40, "timestamp": TS}) is None
    assert check(status, {"status": "Downloading", "request_id": None, "progress_percent": 140,
                          "timestamp": TS}) is not None


def test_kvs_keys() -> None:
    args = INTERFACES["kvs"].cmds["store"].args_schema
    assert check(args, {"key": "evse_1.session", "value": {"any": ["json", 1, None]}}) is None
    assert check(args, {"key": "evse_1.session", "value": None}) is None
    assert check(args, {"key": "a/b", "value": 1}) is not None
    assert check(args, {"key": "", "value": 1}) is not None


# -- docs/bus.md examples match the interfaces ------------------------------------------------

# (module_id, impl_id) of the example wiring in docs/bus.md -> interface name
BUS_EXAMPLE_WIRING = {
    ("evse_1", "evse"): "evse", ("board_1", "board"): "board", ("board_1", "powermeter"): "powermeter",
    ("board_1", "ev"): "ev", ("auth", "main"): "auth", ("reservation", "main"): "reservation",
    ("system", "main"): "system", ("energy_manager", "main"): "energy", ("cli_tokens", "main"): "token_provider",
    ("ocpp", "auth_validator"): "token_validator",
}


def bus_examples() -> list[tuple[str, str]]:
    """(topic, payload) of every example block in docs/bus.md: first line a topic, then the payload."""
    text = (ROOT / "docs" / "bus.md").read_text(encoding="utf-8")
    examples = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.DOTALL):
        topic, _, payload = block.partition("\n")
        if re.fullmatch(r"cp/\S+", topic):
            examples.append((topic, payload.strip()))
    return examples


def test_bus_md_examples_match_the_interfaces() -> None:
    examples = bus_examples()
    kinds = set()
    for topic, payload in examples:
        parts = topic.split("/")
        if len(parts) == 5 and parts[3] in ("var", "cmd", "error"):
            _, module_id, impl_id, kind, name = parts
            interface = INTERFACES[BUS_EXAMPLE_WIRING[(module_id, impl_id)]]
            body = json.loads(payload)
            kinds.add(kind)
            if kind == "var":
                assert check(interface.vars[name].schema, body) is None, topic
            elif kind == "cmd":
                assert set(body) == {"id", "args", "reply_to"}, topic
                assert check(interface.cmds[name].args_schema, body["args"]) is None, topic
            else:
                assert name in interface.errors, topic
                assert set(body) == {"active", "message", "severity", "timestamp"}, topic
        elif parts[-1] == "reply":
            body = json.loads(payload)
            kinds.add("reply")
            assert set(body) in ({"id", "result"}, {"id", "error"}), topic
        elif parts[-1] == "ready":
            kinds.add("ready")
            assert payload == "true"
        else:
            kinds.add("state")
            assert payload in ("starting", "ready", "failed", "stopped", "offline")
    assert kinds == {"var", "cmd", "reply", "error", "state", "ready"}
