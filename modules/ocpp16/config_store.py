"""OCPP configuration on disk: initial values from a YAML file, CSMS changes in an atomically replaced JSON file.

Precedence: station-derived values (NumberOfConnectors) > stored changes > the initial-values file > the built-in
defaults; SecurityProfile takes the highest of the stored and the file value (it can only be raised). A change is
on disk (fsync'd, atomically replaced) before ChangeConfiguration is answered. The state file holds the
AuthorizationKey, so it is created readable by its owner only. Format of the initial file: docs/ocpp-configuration.md.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from chargepoint.logs import EventLogger
from chargepoint.storage import atomic_write_json

from .config_keys import (
    KEY_MAX_LENGTH,
    STANDARD_KEYS,
    VALUE_MAX_LENGTH,
    Access,
    InvalidValue,
    Items,
    KeyDef,
    ValueType,
    parse_value,
)
from .configuration import REJECTED, ChangeResult, Configuration, GetResult, consistency_problems, resolve_values

STATE_FORMAT = 1
SECTIONS = ("values", "vendor_keys")
VENDOR_FIELDS = ("type", "access", "default", "minimum", "maximum", "values", "min_length", "max_length",
                 "reboot_required", "description")
VENDOR_NAME = re.compile(rf"[A-Za-z][A-Za-z0-9_.-]{{0,{KEY_MAX_LENGTH - 1}}}")
YAML_NULL = "tag:yaml.org,2002:null"


class ConfigFileError(ValueError):
    """The initial-values file (or the combination with stored values) cannot be used; names file, key, reason."""


class ConfigStorageError(OSError):
    """The state file cannot be read; names the file and the cause."""


@dataclass(frozen=True)
class InitialValues:
    source: str
    values: dict[str, str]  # canonical key name -> text as written (CSL lists joined with ",")
    lines: dict[str, int]  # key name -> line in the file
    vendor_keys: tuple[KeyDef, ...] = ()

    @property
    def definitions(self) -> tuple[KeyDef, ...]:
        return STANDARD_KEYS + self.vendor_keys

    def where(self, *keys: str | None) -> str:
        """``file:line`` of the first of ``keys`` the file sets (a default that no longer fits points at the
        limit that was lowered), else the file alone.
        """
        line = next((self.lines[key] for key in keys if key in self.lines), None)
        return f"{self.source}:{line}" if line else self.source


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_initial_values(text: str, source: str) -> InitialValues:
    """Parse the whole file; raise :class:`ConfigFileError` listing every problem (nothing is half-loaded)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if root is None:
        return InitialValues(source, {}, {})
    if not isinstance(root, yaml.MappingNode):
        raise ConfigFileError(f"{source}:{_line(root)}: expected a mapping with the sections {', '.join(SECTIONS)}")
    problems: list[str] = []
    sections: dict[str, yaml.Node] = {}
    for key, value in root.value:
        if key.value not in SECTIONS:
            problems.append(f"{source}:{_line(key)}: unknown section {key.value!r}; the file holds "
                            f"{' and '.join(SECTIONS)}")
        elif key.value in sections:
            problems.append(f"{source}:{_line(key)}: section {key.value!r} given twice")
        else:
            sections[key.value] = value
    vendor_keys, vendor_lines = _vendor_keys(sections.get("vendor_keys"), source, problems)
    values, lines = _values(sections.get("values"), STANDARD_KEYS + vendor_keys, source, problems)
    lines = {**vendor_lines, **lines}
    if problems:
        raise ConfigFileError("\n".join(problems))
    return InitialValues(source, values, lines, vendor_keys)


def load_initial_values(path: Path) -> InitialValues:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read the OCPP initial-values file: {exc}") from None
    return parse_initial_values(text, str(path))


def _mapping(node: yaml.Node | None, what: str, source: str, problems: list[str]) -> list[tuple[yaml.Node, yaml.Node]]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == YAML_NULL):
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{source}:{_line(node)}: {what} must be a mapping")
        return []
    return node.value


def _text(node: yaml.Node, where: str, problems: list[str]) -> str | None:
    """A scalar as written, or a list of scalars joined into a CSL."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == YAML_NULL:
            problems.append(f"{where}: no value (write '' for an empty text)")
            return None
        return str(node.value)
    if isinstance(node, yaml.SequenceNode):
        items = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag == YAML_NULL or "," in item.value:
                problems.append(f"{where}: list items must be single values without commas")
                return None
            items.append(str(item.value))
        return ",".join(items)
    problems.append(f"{where}: expected a value or a list of values")
    return None


def _values(node: yaml.Node | None, definitions: Sequence[KeyDef], source: str,
            problems: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    by_fold = {d.name.casefold(): d for d in definitions}
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for key, value in _mapping(node, "'values'", source, problems):
        where = f"{source}:{_line(key)}"
        defn = by_fold.get(str(key.value).casefold())
        if defn is None:
            close = difflib.get_close_matches(str(key.value), [d.name for d in definitions], n=1)
            hint = f" (did you mean {close[0]}?)" if close else "; declare vendor keys under vendor_keys"
            problems.append(f"{where}: {key.value}: unknown configuration key{hint}")
            continue
        if defn.derived:
            problems.append(f"{where}: {defn.name}: set by the station at start-up (one per evse_manager wired to "
                            "the ocpp16 module); remove it from the file")
            continue
        if defn.name in values:
            problems.append(f"{where}: {defn.name}: given twice (first on line {lines[defn.name]})")
            continue
        text = _text(value, f"{where}: {defn.name}", problems)
        if text is not None:
            values[defn.name], lines[defn.name] = text, _line(key)
    return values, lines


def _vendor_keys(node: yaml.Node | None, source: str, problems: list[str]) -> tuple[tuple[KeyDef, ...],
                                                                                  dict[str, int]]:
    taken = {d.name.casefold() for d in STANDARD_KEYS}
    keys: list[KeyDef] = []
    lines: dict[str, int] = {}
    for key, value in _mapping(node, "'vendor_keys'", source, problems):
        name, where = str(key.value), f"{source}:{_line(key)}: vendor key {key.value}"
        if not VENDOR_NAME.fullmatch(name):
            problems.append(f"{where}: a name is a letter then letters, digits, '_', '.', '-' (at most "
                            f"{KEY_MAX_LENGTH} characters)")
        elif name.casefold() in taken:
            problems.append(f"{where}: the name is taken by a standard key or an earlier vendor key")
        else:
            taken.add(name.casefold())
            defn = _vendor_key(name, value, where, problems)
            if defn is not None:
                keys.append(defn)
                lines[name] = _line(key)
    return tuple(keys), lines


def _vendor_key(name: str, node: yaml.Node, where: str, problems: list[str]) -> KeyDef | None:
    before = len(problems)
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{where}: expected a mapping of {', '.join(VENDOR_FIELDS)}")
        return None
    fields: dict[str, yaml.Node] = {}
    for field_key, field_value in node.value:
        if field_key.value not in VENDOR_FIELDS:
            problems.append(f"{where}: unknown field {field_key.value!r}; known: {', '.join(VENDOR_FIELDS)}")
        else:
            fields[field_key.value] = field_value
    scalars = {k: _text(v, f"{where}: {k}", problems) for k, v in fields.items() if k not in ("values", "default")}
    kind = {t.value.casefold(): t for t in ValueType}.get((scalars.get("type") or "").casefold())
    access = {a.value: a for a in Access}.get((scalars.get("access") or "RW").upper())
    if kind is None:
        problems.append(f"{where}: type must be one of {', '.join(t.value for t in ValueType)}")
    if access is None:
        problems.append(f"{where}: access must be R, RW or W")
    numbers: dict[str, int | None] = {}
    for number_field in ("minimum", "maximum", "min_length", "max_length"):
        text = scalars.get(number_field)
        try:
            numbers[number_field] = None if text is None else int(text)
        except ValueError:
            problems.append(f"{where}: {number_field} must be an integer")
    reboot = (scalars.get("reboot_required") or "false").lower()
    if reboot not in ("true", "false"):
        problems.append(f"{where}: reboot_required must be true or false")
    choices: tuple[str, ...] = ()
    if "values" in fields:
        joined = _text(fields["values"], f"{where}: values", problems)
        choices = tuple(joined.split(",")) if joined else ()
    default = _text(fields["default"], f"{where}: default", problems) if "default" in fields else None
    if "default" not in fields and access is not Access.WRITE:
        problems.append(f"{where}: a default is required (except for write-only keys)")
    if len(problems) > before or kind is None or access is None:
        return None
    items = None if kind is not ValueType.CSL else (Items.CHOICE if choices else Items.TEXT)
    return KeyDef(name, "Vendor", kind, access, default, scalars.get("description") or "", required=False,
                  minimum=numbers.get("minimum"), maximum=numbers.get("maximum"), choices=choices, items=items,
                  min_length=numbers.get("min_length") or 0, max_length=numbers.get("max_length") or VALUE_MAX_LENGTH,
                  reboot_required=reboot == "true", standard=False)


class ConfigStore:
    """The station's :class:`Configuration` plus the file that keeps the CSMS's changes across restarts."""

    def __init__(self, path: Path, config: Configuration, persisted: Mapping[str, str], log: EventLogger) -> None:
        self.path = path
        self.config = config
        self.log = log
        self._persisted = dict(persisted)

    @classmethod
    def open(cls, state_file: Path, initial_file: Path | None, log: EventLogger, *,
             runtime: Mapping[str, str | int | bool] | None = None, max_security_profile: int = 1) -> ConfigStore:
        """Load defaults, the initial file, the stored changes and ``runtime`` values (e.g. NumberOfConnectors).

        Raises :class:`ConfigFileError` for a bad initial file (nothing applied) and :class:`ConfigStorageError`
        when the state file exists but cannot be read. Stored values that no longer fit are logged and dropped.
        """
        initial = load_initial_values(initial_file) if initial_file is not None else InitialValues("(no file)", {}, {})
        definitions = initial.definitions
        runtime_texts = {key: ("true" if v else "false") if isinstance(v, bool) else str(v)
                         for key, v in (runtime or {}).items()}
        values, problems = resolve_values(definitions, {**initial.values, **runtime_texts})
        by_name = {d.name: d for d in definitions}
        errors = [f"{initial.where(key, getattr(by_name.get(key), 'max_items_key', None))}: {key}: {reason}"
                  + (" (value from the station)" if key in runtime_texts else "") for key, reason in problems.items()]
        if errors:
            raise ConfigFileError("\n".join(errors))
        stored = cls._read_state(state_file, log)
        persisted: dict[str, str] = {}
        for key, text in stored.items():
            try:
                canonical = cls._stored_value(by_name.get(key), text, values)
            except InvalidValue as exc:
                log.warning("stored configuration value dropped, initial or default value used", key=key,
                            reason=exc.reason, file=str(state_file))
                continue
            if key == "SecurityProfile" and int(canonical) < int(values["SecurityProfile"] or 0):
                continue  # the file raised it since: the profile only goes up
            values[key] = persisted[key] = canonical
        inconsistent = consistency_problems(values, max_security_profile)
        if inconsistent:
            raise ConfigFileError("\n".join(f"{initial.where(key)}: {key}: {reason}"
                                            for key, reason in inconsistent.items()))
        config = Configuration(definitions, values, max_security_profile=max_security_profile)
        log.info("OCPP configuration loaded", initial_file=initial.source, state_file=str(state_file),
                 stored_changes=len(persisted), vendor_keys=len(initial.vendor_keys))
        return cls(state_file, config, persisted, log)

    @staticmethod
    def _stored_value(defn: KeyDef | None, text: str, values: Mapping[str, str | None]) -> str:
        if defn is None:
            raise InvalidValue("no such key any more")
        if defn.readonly or defn.derived:
            raise InvalidValue("the key is read-only now")
        return parse_value(defn, text, values)

    def get(self, keys: Sequence[str] | None = None) -> GetResult:
        return self.config.get(keys)

    def change(self, key: str, value: str) -> ChangeResult:
        """ChangeConfiguration: the change is on disk before an Accepted/RebootRequired is returned."""
        result = self.config.check_change(key, value)
        if result.accepted and result.value is not None:
            try:
                self._save({**self._persisted, result.key: result.value})
            except OSError as exc:
                self.log.error("configuration change not stored", key=result.key, file=str(self.path),
                               error=str(exc))
                result = replace(result, status=REJECTED, reason=f"could not store the change: {exc}", value=None)
            else:
                self._persisted[result.key] = result.value
                self.config.apply(result)
        if result.accepted:
            fields: dict[str, Any] = {"key": result.key, "status": result.status}
            if not result.write_only:
                fields["value"] = result.loggable_value
            self.log.info("configuration changed", **fields)
        else:
            self.log.warning("configuration change refused", key=result.key, status=result.status,
                             reason=result.reason)
        return result

    def set(self, key: str, value: str | int | bool, *, persist: bool = True) -> None:
        """Station-side update of any key (e.g. HeartbeatInterval from BootNotification.conf); raises
        :class:`InvalidValue` or OSError, and then changes nothing.
        """
        defn = self.config.definition(key)
        if defn is None:
            raise KeyError(f"no configuration key {key!r}")
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        canonical = parse_value(defn, text, self.config.values())
        if persist and not defn.derived:
            self._save({**self._persisted, defn.name: canonical})
            self._persisted[defn.name] = canonical
        self.config.set(defn.name, canonical)

    def _save(self, persisted: Mapping[str, str]) -> None:
        atomic_write_json(self.path, {"format": STATE_FORMAT, "values": dict(persisted)})

    @staticmethod
    def _read_state(path: Path, log: EventLogger) -> dict[str, str]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigStorageError(f"{path}: cannot read the stored OCPP configuration: {exc}") from None
        try:
            data = json.loads(text)
            values = data["values"] if isinstance(data, dict) and data.get("format") == STATE_FORMAT else None
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise ValueError(f"expected {{\"format\": {STATE_FORMAT}, \"values\": {{key: text}}}}")
        except (ValueError, KeyError) as exc:
            kept = path.with_name(path.name + ".corrupt")
            path.replace(kept)
            log.error("stored OCPP configuration unreadable, set aside; initial and default values used",
                      file=str(path), kept_as=str(kept), reason=str(exc)[:200])
            return {}
        return values
