"""Checking a wiring file against the module manifests and interfaces.

Every check adds a :class:`~chargepoint.config.Problem` with the line of the offending key and a
"did you mean" suggestion when a near miss exists; nothing stops at the first problem. Schemas are
checked with the compiled (fastjsonschema) validators first; ``jsonschema`` is imported only when
that fails, to list every violation with its path.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema

from chargepoint import interfaces
from chargepoint.config import (
    ConfigError,
    Connection,
    Key,
    Lines,
    Problem,
    Settings,
    format_path,
    line_of,
    load_station_config,
    one_line,
    parse_connection,
    parse_settings,
    resolve_paths,
    show,
    suggest,
)
from chargepoint.registry import Manifest, ManifestError, ModuleRegistry, Requirement

# Module ids are MQTT topic levels; `ready` and `reply` are kept for station-level topics.
MODULE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_IDS = frozenset({"ready", "reply"})
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
INSTANCE_KEYS = ("module", "config", "config_module", "connections", "standalone")

_PATHS = {"type": "array", "items": {"type": "string", "minLength": 1}}
SETTINGS_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "mqtt": {
            "type": ["object", "null"],
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "prefix": {"type": "string", "pattern": PREFIX_PATTERN.pattern},
                "broker": {"enum": ["auto", "external"]},
                "keepalive_s": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
            "additionalProperties": False,
        },
        "state_dir": {"type": "string", "minLength": 1},
        "module_paths": _PATHS,
        "interface_paths": _PATHS,
        "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "validate_payloads": {"type": "boolean"},
    },
    "additionalProperties": False,
}
TOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"settings": {}, "active_modules": {"type": "object"}},
    "required": ["active_modules"],
    "additionalProperties": False,
}

_TYPE_WORDS = {
    "object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "null",
}


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    settings: Settings | None = None  # None when settings are invalid
    registry: ModuleRegistry | None = None


def validate_station(data: Any, lines: Lines, file: str, yaml_path: Path) -> Report:
    """Check parsed wiring ``data``; ``lines`` from :class:`~chargepoint.config.LineLoader`."""
    checker = _Checker(file, lines)
    report = Report(checker.problems)
    if data is None:
        checker.add((), "the file is empty; expected 'active_modules' (and optionally 'settings')")
        return report
    if not checker.schema(TOP_SCHEMA, data, ()) and not isinstance(data, dict):
        return report
    raw_settings = data.get("settings")
    if checker.schema(SETTINGS_SCHEMA, raw_settings, ("settings",)):
        report.settings = parse_settings(raw_settings, yaml_path)
    module_paths = _path_list(raw_settings, "module_paths", yaml_path.parent)
    interface_paths = _path_list(raw_settings, "interface_paths", yaml_path.parent)
    for key, folders in (("module_paths", module_paths), ("interface_paths", interface_paths)):
        for index, folder in enumerate(folders):
            if not folder.is_dir():
                checker.add(("settings", key, index), f"settings.{key}[{index}]: no such folder {str(folder)!r}")
    if any(p not in interfaces.interface_dirs() for p in interface_paths):
        interfaces.add_interface_dirs(interface_paths)
    report.registry = checker.registry = ModuleRegistry(module_paths)
    modules = data.get("active_modules")
    if isinstance(modules, dict):
        checker.modules = modules
        for module_id, raw in modules.items():
            checker.instance(module_id, raw)
    return report


def _path_list(raw_settings: Any, key: str, base: Path) -> list[Path]:
    """The folders of ``settings.<key>`` when that entry is valid, else none."""
    value = raw_settings.get(key) if isinstance(raw_settings, dict) else None
    if isinstance(value, list) and all(isinstance(p, str) and p for p in value):
        return resolve_paths(base, value)
    return []


class _Checker:
    def __init__(self, file: str, lines: Lines) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []
        self.registry = ModuleRegistry([])
        self.modules: dict[Any, Any] = {}
        self._manifests: dict[str, tuple[Manifest | None, list[str]]] = {}

    def add(self, path: tuple[Key, ...], message: str) -> None:
        self.problems.append(Problem(self.file, line_of(self.lines, path), message))

    # -- schemas ------------------------------------------------------------------------------

    def schema(self, schema: dict[str, Any], value: Any, path: tuple[Key, ...]) -> bool:
        """Check ``value`` (found at ``path``) against ``schema``; True when valid."""
        fast_message = interfaces.check(schema, copy.deepcopy(value))
        if fast_message is None:
            return True
        from jsonschema import Draft202012Validator

        count = len(self.problems)
        for error in Draft202012Validator(schema).iter_errors(value):
            self._schema_error(error, (*path, *error.absolute_path))
        if len(self.problems) == count:  # the two validators disagree: keep the fast one's word
            self.add(path, f"{format_path(path) or 'top level'}: {fast_message}")
        return False

    def _schema_error(self, error: Any, path: tuple[Key, ...]) -> None:
        where = format_path(path)
        kind, instance, expected = error.validator, error.instance, error.validator_value
        if kind == "additionalProperties" and isinstance(instance, dict):
            known = error.schema.get("properties", {})
            patterns = error.schema.get("patternProperties", {})
            for key in instance:
                if key in known or any(re.search(p, str(key)) for p in patterns):
                    continue
                text = f"{where}: unknown key {key!r}" if where else f"unknown top-level key {key!r}"
                self.add((*path, key), text + suggest(key, known))
        elif kind == "required" and isinstance(instance, dict):
            for name in expected:
                if name not in instance:
                    self.add(path, f"{where or 'top level'}: missing required key {name!r}")
        elif kind == "type":
            types = [expected] if isinstance(expected, str) else expected
            wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in types if t != "null")
            self.add(path, f"{where or 'top level'}: expected {wanted}, got {show(instance)}")
        elif kind == "enum":
            choices = ", ".join(map(repr, expected))
            self.add(path, f"{where}: {show(instance)} is not one of {choices}{suggest(instance, expected)}")
        else:
            self.add(path, f"{where or 'top level'}: {error.message}")

    # -- module instances ---------------------------------------------------------------------

    def instance(self, module_id: Any, raw: Any) -> None:
        path: tuple[Key, ...] = ("active_modules", module_id)
        where = format_path(path)
        if not isinstance(module_id, str):
            self.add(path, f"module id {module_id!r} must be a string (quote it)")
        elif not MODULE_ID_PATTERN.fullmatch(module_id):
            self.add(path, f"invalid module id {module_id!r}: use only letters, digits, '_' and '-' "
                           "(module ids are MQTT topic levels)")
        elif module_id in RESERVED_IDS:
            self.add(path, f"module id {module_id!r} is reserved; choose another")
        if not isinstance(raw, dict):
            self.add(path, f"{where}: expected a mapping with at least 'module', got {show(raw)}")
            return
        for key in raw:
            if key not in INSTANCE_KEYS:
                self.add((*path, key), f"{where}: unknown key {key!r}{suggest(key, INSTANCE_KEYS)}")
        if "config" in raw and "config_module" in raw:
            self.add((*path, "config_module"), f"{where}: both 'config' and 'config_module' given; use one")
        if not isinstance(raw.get("standalone", False), bool):
            self.add((*path, "standalone"), f"{where}: standalone: expected true or false, "
                                             f"got {show(raw['standalone'])}")
        name = raw.get("module")
        manifest = None
        if "module" not in raw:
            self.add(path, f"{where}: missing 'module' (the module name)")
        elif not isinstance(name, str):
            self.add((*path, "module"), f"{where}: module: expected a module name, got {show(name)}")
        else:
            manifest, messages = self.manifest(name)
            for message in messages:
                self.add((*path, "module"), f"{where}: {message}")
        if manifest is not None:
            config_key = "config_module" if "config_module" in raw and "config" not in raw else "config"
            self._config(name, manifest, raw.get(config_key), (*path, config_key))
        self._connections(raw.get("connections"), (*path, "connections"), manifest)

    def manifest(self, name: str) -> tuple[Manifest | None, list[str]]:
        """The manifest of module ``name`` (None if unusable) and what is wrong with it."""
        if name not in self._manifests:
            self._manifests[name] = self._read_manifest(name)
        return self._manifests[name]

    def _read_manifest(self, name: str) -> tuple[Manifest | None, list[str]]:
        try:
            info = self.registry.find(name)
        except ManifestError as exc:
            return None, [f"module {name!r}: {one_line(exc)}"]
        except Exception as exc:  # an entry-point package that fails to import
            return None, [f"module {name!r}: cannot load: {exc!r}"]
        if info is None:
            return None, [f"unknown module {name!r}{suggest(name, self.registry.names())}"]
        manifest, messages = info.manifest, []
        used = [("provides", k, v) for k, v in manifest.provides.items()]
        used += [("requires", k, r.interface) for k, r in manifest.requires.items()]
        for section, key, interface in used:
            try:
                interfaces.load_interface(interface)
            except interfaces.InterfaceError as exc:
                known = interfaces.interface_names()
                detail = one_line(exc) if interface in known else (
                    f"unknown interface {interface!r}{suggest(interface, known)}")
                messages.append(f"module {name!r}: {section}.{key}: {detail}")
        return manifest, messages

    def _config(self, manifest_name: str, manifest: Manifest, config: Any, path: tuple[Key, ...]) -> None:
        schema = manifest.config_schema
        try:
            interfaces.validator(schema)
        except (fastjsonschema.JsonSchemaException, TypeError, ValueError) as exc:
            from jsonschema import Draft202012Validator, SchemaError

            detail = str(exc)
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:  # says where, unlike fastjsonschema
                where = ".".join(str(k) for k in error.absolute_path if k != "properties")
                detail = f"config.{where}: {error.message}" if where else error.message
            self.add((*path[:-1], "module"), f"{format_path(path[:2])}: module {manifest_name!r}: "
                                              f"invalid config schema in the manifest: {detail}")
            return
        self.schema(schema, {} if config is None else config, path)

    def _connections(self, connections: Any, path: tuple[Key, ...], manifest: Manifest | None) -> None:
        where = format_path(path)
        if connections is None:
            connections = {}
        if not isinstance(connections, dict):
            self.add(path, f"{where}: expected a mapping of requirement id to list, got {show(connections)}")
            return
        requires = manifest.requires if manifest is not None else {}
        for req_id, items in connections.items():
            req = requires.get(req_id)
            if manifest is not None and req is None:
                hint = suggest(req_id, requires) or (
                    f" (it requires: {', '.join(requires)})" if requires else " (it requires nothing)")
                self.add((*path, req_id), f"{where}: unknown requirement {req_id!r}{hint}")
            if not isinstance(items, list):
                self.add((*path, req_id), f"{where}.{req_id}: expected a list like [<module_id>.<impl_id>], "
                                          f"got {show(items)}")
                continue
            for index, item in enumerate(items):
                item_path = (*path, req_id, index)
                try:
                    connection = parse_connection(item)
                except ValueError as exc:
                    self.add(item_path, f"{format_path(item_path)}: {exc}")
                    continue
                self._target(connection, item_path, req_id, req)
        for req_id, req in requires.items():
            self._count(connections.get(req_id), (*path, req_id), req_id, req)

    def _count(self, items: Any, path: tuple[Key, ...], req_id: str, req: Requirement) -> None:
        if items is not None and not isinstance(items, list):
            return  # already reported
        count = len(items or [])
        what = f"(interface {req.interface!r})"
        if count == 0 and req.min > 0:
            self.add(path, f"{format_path(path[:2])}: missing required connection {req_id!r} {what}")
        elif count < req.min:
            self.add(path, f"{format_path(path)}: needs at least {req.min} connections {what}, got {count}")
        elif req.max is not None and count > req.max:
            allowed = f"{req.max} connection" + ("s" if req.max != 1 else "")
            self.add((*path, req.max), f"{format_path(path)}: at most {allowed} allowed {what}, got {count}")

    def _target(self, conn: Connection, path: tuple[Key, ...], req_id: str, req: Requirement | None) -> None:
        where = format_path(path)
        if conn.module_id not in self.modules:
            self.add(path, f"{where}: no module {conn.module_id!r} in active_modules"
                           f"{suggest(conn.module_id, self.modules)}")
            return
        target = self.modules[conn.module_id]
        name = target.get("module") if isinstance(target, dict) else None
        manifest = self.manifest(name)[0] if isinstance(name, str) else None
        if manifest is None:
            return  # reported at the target
        interface = manifest.provides.get(conn.impl_id)
        if interface is None:
            provides = manifest.provides
            hint = suggest(conn.impl_id, provides) or (
                f" (it provides: {', '.join(provides)})" if provides else " (it provides nothing)")
            self.add(path, f"{where}: module {conn.module_id!r} ({name}) does not provide "
                           f"{conn.impl_id!r}{hint}")
        elif req is not None and interface != req.interface:
            self.add(path, f"{where}: {conn.module_id}.{conn.impl_id} has interface {interface!r}, "
                           f"but {req_id!r} requires {req.interface!r}")


def validate_file(path: str | Path) -> list[Problem]:
    """Every problem of the wiring file at ``path``; empty when it is valid."""
    try:
        load_station_config(path)
    except ConfigError as exc:
        return exc.problems
    return []

