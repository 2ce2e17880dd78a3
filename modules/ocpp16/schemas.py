"""OCPP 1.6 payload validation against the OCA JSON schemas shipped in the ``ocpp`` package.

Each schema (``ocpp/v16/schemas/<Action>.json`` for a request, ``<Action>Response.json`` for a confirmation)
is compiled once, on first use, into plain Python by fastjsonschema: an order of magnitude cheaper than
interpreting it with jsonschema on every message. A failure raises ``PayloadError``, which carries the
OCPP 1.6 CALLERROR code to answer with and a message naming the field.

Payloads we produce are checked strictly against the OCA schemas: anything else is a bug in our code.
Payloads received from a CSMS are checked with these deliberate deviations, because real CSMSs send them
and the other 1.6 stacks accept them (see reference/csms-peers.md):

- ``date-time`` without a zone (``2024-01-01T00:00:00``) is accepted; mobilityhouse ``ocpp`` and
  ``ocpp-rpc`` accept it too. The caller reads such a timestamp as UTC.
- ``multipleOf: 0.1`` (charging limits in SetChargingProfile, RemoteStartTransaction and
  GetCompositeSchedule.conf) is not enforced: CSMSs send computed limits such as ``3666.67``; the
  smart-charging code rounds them.
- Confirmations (CALLRESULT payloads) may carry fields the schema does not know (``additionalProperties:
  false`` is ignored for them); CALL payloads from the CSMS with an unknown field are still refused.

The schemas' own quirks: ``additionalProperties`` on string enums is meaningless and left out before
compiling (it only slows the compiled code down); the ``unit`` enum of StopTransaction.transactionData
lacks ``Hertz`` (MeterValues has it), so a Frequency sample must not go into transactionData as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

import fastjsonschema
from fastjsonschema import JsonSchemaValueException

NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
INTERNAL_ERROR = "InternalError"
PROTOCOL_ERROR = "ProtocolError"
SECURITY_ERROR = "SecurityError"
FORMATION_VIOLATION = "FormationViolation"
PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
GENERIC_ERROR = "GenericError"

# The OCPP-J 1.6 spellings, which the errata says to keep sending (ocpp16.md §1.3).
ERROR_CODES = frozenset({
    NOT_IMPLEMENTED, NOT_SUPPORTED, INTERNAL_ERROR, PROTOCOL_ERROR, SECURITY_ERROR, FORMATION_VIOLATION,
    PROPERTY_CONSTRAINT_VIOLATION, OCCURENCE_CONSTRAINT_VIOLATION, TYPE_CONSTRAINT_VIOLATION, GENERIC_ERROR,
})

# RFC 3339 date and time with the zone optional; the date and time fields are still checked for shape.
LENIENT_DATE_TIME = r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:?\d\d)?\Z"

_OCCURRENCE_RULES = frozenset({"required", "minItems", "maxItems"})
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                    float: "number", type(None): "null"}

Validator = Callable[[Any], Any]


class PayloadError(ValueError):
    """A payload that does not fit its action: ``code`` is the CALLERROR code to answer with."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@cache
def known_actions() -> frozenset[str]:
    """Every OCPP 1.6 action with a schema (Core and the other profiles, plus the security extension)."""
    names = (entry.name.removesuffix(".json") for entry in files("ocpp.v16").joinpath("schemas").iterdir())
    return frozenset(name for name in names if not name.endswith("Response"))


def validate_request(action: str, payload: Any, *, received: bool = False) -> None:
    """Check a CALL payload; ``received``: it came from the CSMS (see the module doc for the tolerance)."""
    _check(action, payload, response=False, received=received)


def validate_response(action: str, payload: Any, *, received: bool = False) -> None:
    """Check a CALLRESULT payload; ``received``: it came from the CSMS (see the module doc for the tolerance)."""
    _check(action, payload, response=True, received=received)


def _check(action: str, payload: Any, *, response: bool, received: bool) -> None:
    validator = _validator(action, response, received)
    try:
        validator(payload)
    except JsonSchemaValueException as error:
        raise _payload_error(f"{action}.{'conf' if response else 'req'}", error) from None
    except (ArithmeticError, ValueError):  # fastjsonschema's multipleOf on an infinite or NaN float
        raise PayloadError(PROPERTY_CONSTRAINT_VIOLATION,
                           f"{action}.{'conf' if response else 'req'}: a number is not finite") from None


@cache
def _validator(action: str, response: bool, received: bool) -> Validator:
    if action not in known_actions():
        raise PayloadError(NOT_IMPLEMENTED, f"unknown OCPP 1.6 action {_excerpt(action)}")
    name = f"{action}Response" if response else action
    schema = json.loads(files("ocpp.v16").joinpath("schemas", f"{name}.json").read_text("utf-8-sig"))
    prepared = _prepare(schema, tolerant=received, extra_fields_allowed=received and response)
    return fastjsonschema.compile(prepared, formats={"date-time": LENIENT_DATE_TIME} if received else {})


def _prepare(schema: Any, *, tolerant: bool, extra_fields_allowed: bool) -> Any:
    """A copy of ``schema`` for compiling.

    Always without ``additionalProperties`` on nodes that are not objects (meaningless there, yet it costs
    a check per field in the compiled code); when ``tolerant`` also without ``multipleOf``, and when
    ``extra_fields_allowed`` without ``additionalProperties: false`` anywhere.
    """
    if not isinstance(schema, dict):
        return schema
    prepared: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "additionalProperties" and (
                (schema.get("type", "object") != "object") or (value is False and extra_fields_allowed)):
            continue
        if key == "multipleOf" and tolerant:
            continue
        if key in ("properties", "definitions"):
            prepared[key] = {name: _prepare(sub, tolerant=tolerant, extra_fields_allowed=extra_fields_allowed)
                             for name, sub in value.items()}
        elif key in ("items", "additionalItems", "additionalProperties"):
            prepared[key] = _prepare(value, tolerant=tolerant, extra_fields_allowed=extra_fields_allowed)
        else:
            prepared[key] = value
    return prepared


def _payload_error(message_name: str, error: JsonSchemaValueException) -> PayloadError:
    where = _field_path(error.name or "")
    rule = error.rule or ""
    value = error.value
    if rule == "required":
        missing = sorted(set(error.rule_definition or ()) - set(value if isinstance(value, dict) else ()))
        field = _join(where, missing[0] if missing else "?")
        return PayloadError(OCCURENCE_CONSTRAINT_VIOLATION, f"{message_name}: {field} is required but missing", field)
    if rule == "additionalProperties":
        known = (error.definition or {}).get("properties", {})
        extra = sorted(str(key) for key in (value if isinstance(value, dict) else ()) if key not in known)
        field = _join(where, extra[0] if extra else "?")
        return PayloadError(FORMATION_VIOLATION, f"{message_name}: {field} is not a field of this message", field)
    if rule == "type":
        expected = error.rule_definition
        got = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        if not where:
            return PayloadError(FORMATION_VIOLATION, f"{message_name}: the payload must be a JSON object, got {got}")
        return PayloadError(TYPE_CONSTRAINT_VIOLATION, f"{message_name}: {where} must be {expected}, got {got}", where)
    if rule in _OCCURRENCE_RULES:
        return PayloadError(OCCURENCE_CONSTRAINT_VIOLATION,
                            f"{message_name}: {where} must have {_items_bound(rule, error.rule_definition)}", where)
    return PayloadError(PROPERTY_CONSTRAINT_VIOLATION, f"{message_name}: {where} {_value_problem(error)}", where)


def _value_problem(error: JsonSchemaValueException) -> str:
    rule, bound, value = error.rule, error.rule_definition, error.value
    if rule == "enum":
        allowed = ", ".join(map(str, bound[:8])) + (", ..." if len(bound) > 8 else "")
        return f"is {_excerpt(value)}, not one of {allowed}"
    if rule == "maxLength":
        return f"is {len(value)} characters long, at most {bound} allowed"
    if rule == "minLength":
        return f"is {len(value)} characters long, at least {bound} required"
    if rule == "format":
        return f"is {_excerpt(value)}, not a valid {bound}"
    if rule == "multipleOf":
        return f"is {value!r}, not a multiple of {bound}"
    return f"is {_excerpt(value)}: {rule} {bound!r} not met"


def _items_bound(rule: str, bound: Any) -> str:
    if rule == "minItems":
        return f"at least {bound} item{'s' if bound != 1 else ''}"
    if rule == "maxItems":
        return f"at most {bound} item{'s' if bound != 1 else ''}"
    return f"{rule} {bound!r}"


def _field_path(name: str) -> str:
    """``data.meterValue[0].timestamp`` -> ``meterValue[0].timestamp``."""
    return name.removeprefix("data").removeprefix(".")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _excerpt(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
