"""Loading the wiring YAML of a station into :class:`StationConfig`.

The loader keeps the line of every key so that each problem found by :mod:`chargepoint.validate`
can point at ``FILE:LINE``. See ``docs/wiring.md`` for the file format.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from chargepoint.registry import fill_defaults

Key = str | int
Lines = dict[tuple[Key, ...], int]

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The wiring file is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def suggest(word: object, candidates: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    if not isinstance(word, str):
        return ""
    names = {c.lower(): c for c in candidates if isinstance(c, str)}
    match = difflib.get_close_matches(word.lower(), names, n=1)
    return f" (did you mean {names[match[0]]!r}?)" if match else ""


def show(value: Any) -> str:
    """A value as an integrator wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def one_line(exc: Exception) -> str:
    """The first line of an error; the YAML position when a YAML error caused it."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
        text += f" (line {cause.problem_mark.line + 1}, column {cause.problem_mark.column + 1})"
    return text


def sorted_problems(problems: list[Problem]) -> list[Problem]:
    """Without repeats, in file order (problems without a line first)."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: p.line or 0)


@dataclass(frozen=True)
class Duplicate:
    path: tuple[Key, ...]  # the mapping holding the key twice
    key: Any
    line: int
    first_line: int


class LineLoader(yaml.SafeLoader):
    """A safe loader that records the line of every key and item, and finds duplicate keys.

    ``lines`` maps a path tuple (``("active_modules", "evse_1", "config")``) to its 1-based line;
    with duplicate keys the last value wins (as in plain PyYAML) and ``duplicates`` lists the others.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: Lines = {}
        self.duplicates: list[Duplicate] = []
        self._walking: set[int] = set()

    def construct_document(self, node: yaml.Node) -> Any:
        self._record(node, ())
        return super().construct_document(node)

    def _record(self, node: yaml.Node, path: tuple[Key, ...]) -> None:
        if id(node) in self._walking:  # a recursive alias
            return
        self._walking.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self._key(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    self.duplicates.append(Duplicate(path, key, line, seen[key]))
                else:
                    seen[key] = line
                self.lines[(*path, key)] = line
                self._record(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                self._record(item, (*path, index))
        self._walking.discard(id(node))

    def _key(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            key = self.construct_object(node)
            try:
                hash(key)
            except TypeError:
                return repr(key)
            return key
        return f"<{node.id} at line {node.start_mark.line + 1}>"


def format_path(path: tuple[Key, ...]) -> str:
    """``("active_modules", "evse_1", "config", "a")`` -> ``evse_1: config.a``."""
    if len(path) >= 2 and path[0] == "active_modules":
        rest = format_path(path[2:])
        return f"{path[1]}: {rest}" if rest else str(path[1])
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def line_of(lines: Lines, path: tuple[Key, ...]) -> int | None:
    """Line of ``path``, or of its closest ancestor that has one."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def read_yaml(path: Path, file: str) -> tuple[Any, Lines, list[Problem]]:
    """Parse ``path``; raise :class:`ConfigError` when it cannot be read or parsed.

    Returns the data, the lines and the duplicate-key problems (which do not stop parsing).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file, None, f"cannot read: {exc}")]) from None
    loader = LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context
        if exc.context and exc.context_mark and exc.problem:
            what += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise ConfigError([Problem(file, mark.line + 1 if mark else None, f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, None, f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    problems = []
    for dup in loader.duplicates:
        if dup.path == ("active_modules",):
            message = f"duplicate module id {dup.key!r} (first defined on line {dup.first_line})"
        else:
            where = format_path(dup.path) or "the top level"
            message = f"{where}: duplicate key {dup.key!r} (first defined on line {dup.first_line})"
        problems.append(Problem(file, dup.line, message))
    return data, loader.lines, problems


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "cp"
    broker: Literal["auto", "external"] = "auto"
    keepalive_s: int = 30


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    state_dir: Path
    module_paths: list[Path] = field(default_factory=list)
    interface_paths: list[Path] = field(default_factory=list)
    log_level: str = "INFO"
    validate_payloads: bool = True


@dataclass(frozen=True)
class Connection:
    module_id: str
    impl_id: str


@dataclass(frozen=True)
class ModuleInstance:
    id: str
    module: str
    config: dict[str, Any]
    connections: dict[str, list[Connection]]
    standalone: bool = False


@dataclass(frozen=True)
class StationConfig:
    path: Path
    settings: Settings
    modules: dict[str, ModuleInstance]


def resolve_paths(base: Path, paths: list[str]) -> list[Path]:
    return [(base / Path(p).expanduser()).resolve() for p in paths]


def parse_settings(raw: dict[str, Any] | None, yaml_path: Path) -> Settings:
    """Build :class:`Settings` from an already validated ``settings:`` mapping."""
    raw = raw or {}
    base = yaml_path.parent
    state_dir = raw.get("state_dir") or f"var/{yaml_path.stem}"
    return Settings(
        mqtt=MqttSettings(**(raw.get("mqtt") or {})),
        state_dir=resolve_paths(base, [state_dir])[0],
        module_paths=resolve_paths(base, raw.get("module_paths") or []),
        interface_paths=resolve_paths(base, raw.get("interface_paths") or []),
        log_level=raw.get("log_level", "INFO"),
        validate_payloads=raw.get("validate_payloads", True),
    )


CONNECTION_KEYS = ("module_id", "implementation_id")


def parse_connection(item: Any) -> Connection:
    """``"x.y"`` or ``{module_id: x, implementation_id: y}``; ValueError says what is wrong."""
    if isinstance(item, str):
        module_id, dot, impl_id = item.partition(".")
        if dot and module_id and impl_id:
            return Connection(module_id, impl_id)
        raise ValueError(f"expected '<module_id>.<impl_id>', got {item!r}")
    if isinstance(item, dict):
        for key in item:
            if key not in CONNECTION_KEYS:
                raise ValueError(f"unknown key {key!r}{suggest(key, CONNECTION_KEYS)}")
        missing = [key for key in CONNECTION_KEYS if not isinstance(item.get(key), str) or not item[key]]
        if missing:
            raise ValueError(f"{missing[0]!r} missing or not a string")
        return Connection(item["module_id"], item["implementation_id"])
    raise ValueError(f"expected '<module_id>.<impl_id>' or {{module_id: ..., implementation_id: ...}}, "
                     f"got {item!r}")


def load_station_config(path: str | Path, *, prefix_override: str | None = None) -> StationConfig:
    """Read and validate a wiring file; raise :class:`ConfigError` with every problem found.

    Also registers ``settings.interface_paths`` with :func:`chargepoint.interfaces.add_interface_dirs`.
    """
    from chargepoint import validate  # validate imports this module

    file = str(path)
    yaml_path = Path(path).resolve()
    data, lines, problems = read_yaml(yaml_path, file)
    report = validate.validate_station(data, lines, file, yaml_path)
    problems = sorted_problems(problems + report.problems)
    if prefix_override is not None and not validate.PREFIX_PATTERN.fullmatch(prefix_override):
        problems.append(Problem(file, None, f"prefix override {prefix_override!r}: not a valid MQTT prefix"))
    if problems or report.settings is None or report.registry is None:
        raise ConfigError(problems)
    settings = report.settings
    if prefix_override is not None:
        settings = replace(settings, mqtt=replace(settings.mqtt, prefix=prefix_override))
    modules: dict[str, ModuleInstance] = {}
    for module_id, raw in data["active_modules"].items():
        info = report.registry.find(raw["module"])
        assert info is not None  # validated
        config = raw.get("config", raw.get("config_module")) or {}
        config = fill_defaults(info.manifest.config_schema, copy.deepcopy(config))
        connections = {req_id: [] for req_id in info.manifest.requires}
        for req_id, items in (raw.get("connections") or {}).items():
            connections[req_id] = [parse_connection(item) for item in items]
        modules[module_id] = ModuleInstance(
            module_id, raw["module"], config, connections, bool(raw.get("standalone", False))
        )
    return StationConfig(yaml_path, settings, modules)
