"""Interface definitions: the cmds, vars and errors that modules exchange over MQTT.

Interfaces are YAML files in ``chargepoint/interfaces/``. This module loads them, turns argument
lists into JSON schemas and hands out compiled validators, so checking a payload stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml

INTERFACE_DIR = Path(__file__).parent / "interfaces"
DEFAULT_CMD_TIMEOUT_S = 5.0

Schema = dict[str, Any]
Validator = Callable[[Any], Any]


class InterfaceError(Exception):
    """An interface file is missing or malformed."""


@dataclass(frozen=True)
class CmdSpec:
    name: str
    description: str
    arguments: dict[str, Schema]
    result: Schema | None
    timeout_s: float

    @cached_property
    def args_schema(self) -> Schema:
        required = [name for name, schema in self.arguments.items() if "default" not in schema]
        return {
            "type": "object",
            "properties": self.arguments,
            "required": required,
            "additionalProperties": False,
        }

    @cached_property
    def defaults(self) -> dict[str, Any]:
        return {name: schema["default"] for name, schema in self.arguments.items() if "default" in schema}

    @cached_property
    def result_schema(self) -> Schema:
        return self.result if self.result is not None else {"type": "null"}

    @cached_property
    def validate_args(self) -> Validator:
        """Compiled check of a call's arguments; returns them with defaults filled in."""
        return validator(self.args_schema)

    @cached_property
    def validate_result(self) -> Validator:
        return validator(self.result_schema)


@dataclass(frozen=True)
class VarSpec:
    name: str
    description: str
    schema: Schema
    retain: bool

    @cached_property
    def validate(self) -> Validator:
        return validator(self.schema)


@dataclass(frozen=True)
class Interface:
    name: str
    description: str
    cmds: dict[str, CmdSpec] = field(default_factory=dict)
    vars: dict[str, VarSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _require_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InterfaceError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def parse_interface(name: str, data: Any, source: str) -> Interface:
    """Build an :class:`Interface` from the parsed YAML of one interface file."""
    data = _require_mapping(data, source)
    unknown = set(data) - {"description", "cmds", "vars", "errors"}
    if unknown:
        raise InterfaceError(f"{source}: unknown keys {sorted(unknown)}")
    cmds: dict[str, CmdSpec] = {}
    for cmd_name, cmd in _require_mapping(data.get("cmds"), f"{source}: cmds").items():
        cmd = _require_mapping(cmd, f"{source}: cmds.{cmd_name}")
        unknown = set(cmd) - {"description", "arguments", "result", "timeout_s"}
        if unknown:
            raise InterfaceError(f"{source}: cmds.{cmd_name}: unknown keys {sorted(unknown)}")
        arguments = _require_mapping(cmd.get("arguments"), f"{source}: cmds.{cmd_name}.arguments")
        cmds[cmd_name] = CmdSpec(
            name=cmd_name,
            description=str(cmd.get("description", "")),
            arguments=arguments,
            result=cmd.get("result"),
            timeout_s=float(cmd.get("timeout_s", DEFAULT_CMD_TIMEOUT_S)),
        )
    variables: dict[str, VarSpec] = {}
    for var_name, var in _require_mapping(data.get("vars"), f"{source}: vars").items():
        var = _require_mapping(var, f"{source}: vars.{var_name}")
        unknown = set(var) - {"description", "schema", "retain"}
        if unknown:
            raise InterfaceError(f"{source}: vars.{var_name}: unknown keys {sorted(unknown)}")
        if "schema" not in var:
            raise InterfaceError(f"{source}: vars.{var_name}: missing 'schema'")
        variables[var_name] = VarSpec(
            name=var_name,
            description=str(var.get("description", "")),
            schema=var["schema"],
            retain=bool(var.get("retain", False)),
        )
    errors = {str(k): str(v) for k, v in _require_mapping(data.get("errors"), f"{source}: errors").items()}
    return Interface(name, str(data.get("description", "")), cmds, variables, errors)


_extra_dirs: list[Path] = []


def add_interface_dirs(dirs: list[Path]) -> None:
    """Search these folders (``settings.interface_paths``) before the built-in interfaces."""
    for folder in dirs:
        folder = Path(folder).resolve()
        if folder not in _extra_dirs:
            _extra_dirs.insert(0, folder)
    load_interface.cache_clear()


def interface_dirs() -> list[Path]:
    return [*_extra_dirs, INTERFACE_DIR]


def interface_names() -> list[str]:
    return sorted({p.stem for folder in interface_dirs() for p in folder.glob("*.yaml")})


@cache
def load_interface(name: str) -> Interface:
    candidates = [folder / f"{name}.yaml" for folder in interface_dirs()]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise InterfaceError(f"unknown interface {name!r}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InterfaceError(f"{path}: not valid YAML: {exc}") from exc
    return parse_interface(name, data, str(path))


@cache
def _compile(schema_key: str) -> Validator:
    import json

    return fastjsonschema.compile(json.loads(schema_key))


def validator(schema: Schema) -> Validator:
    """A compiled validator for ``schema``; raises ``fastjsonschema.JsonSchemaException``."""
    import json

    return _compile(json.dumps(schema, sort_keys=True))


def check(schema: Schema, value: Any) -> str | None:
    """Validate ``value`` and fill in defaults; return a message on failure, None when valid."""
    try:
        validator(schema)(value)
    except fastjsonschema.JsonSchemaException as exc:  # also an invalid schema: it has no .message
        return str(getattr(exc, "message", exc))
    return None
