"""Finding modules by name and reading their manifests.

Search order: ``settings.module_paths``, the built-in ``modules/`` and ``simulators/`` (checkout or
installed wheel), then the ``chargepoint.modules`` entry-point group.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from chargepoint.module import Module

PACKAGE_DIR = Path(__file__).parent
ENTRY_POINT_GROUP = "chargepoint.modules"
MANIFEST_KEYS = {"description", "config", "provides", "requires", "standalone"}


class ManifestError(Exception):
    """A manifest is missing, malformed or its module code cannot be loaded."""


@dataclass(frozen=True)
class Requirement:
    interface: str
    min: int = 1
    max: int | None = 1


@dataclass(frozen=True)
class Manifest:
    description: str
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    provides: dict[str, str] = field(default_factory=dict)
    requires: dict[str, Requirement] = field(default_factory=dict)

    @property
    def config_schema(self) -> dict[str, Any]:
        """JSON schema of the whole ``config:`` mapping of a module instance."""
        required = [k for k, schema in self.config.items() if "default" not in schema]
        return {
            "type": "object",
            "properties": self.config,
            "required": required,
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    folder: Path
    manifest: Manifest
    origin: str  # "path", "builtin" or "entry_point"


def builtin_dirs() -> list[Path]:
    """Folders holding the built-in modules: the checkout's, else the wheel's copy."""
    dirs: list[Path] = []
    for base in (PACKAGE_DIR.parent, PACKAGE_DIR / "_builtin"):
        for sub in ("modules", "simulators"):
            folder = base / sub
            if folder.is_dir() and folder not in dirs:
                dirs.append(folder)
    return dirs


def _as_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def parse_manifest(data: Any, source: str) -> Manifest:
    data = _as_mapping(data, source)
    unknown = set(data) - MANIFEST_KEYS
    if unknown:
        raise ManifestError(f"{source}: unknown keys {sorted(unknown)}")
    config = _as_mapping(data.get("config"), f"{source}: config")
    for key, schema in config.items():
        if not isinstance(schema, dict):
            raise ManifestError(f"{source}: config.{key}: expected a JSON schema mapping")
    provides = {str(k): str(v) for k, v in _as_mapping(data.get("provides"), f"{source}: provides").items()}
    requires: dict[str, Requirement] = {}
    for req_id, req in _as_mapping(data.get("requires"), f"{source}: requires").items():
        req = _as_mapping(req, f"{source}: requires.{req_id}")
        if "interface" not in req:
            raise ManifestError(f"{source}: requires.{req_id}: missing 'interface'")
        maximum = req.get("max", 1)
        requires[str(req_id)] = Requirement(
            str(req["interface"]), int(req.get("min", 1)), None if maximum is None else int(maximum)
        )
    return Manifest(str(data.get("description", "")), config, provides, requires)


def read_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(data, str(path))


def fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Return ``value`` with the schema's defaults filled in, nested objects included."""
    if value is None and "default" in schema:
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        value = dict(value)
        for key, sub in schema["properties"].items():
            if key in value:
                value[key] = fill_defaults(sub, value[key])
            elif isinstance(sub, dict) and "default" in sub:
                value[key] = fill_defaults(sub, copy.deepcopy(sub["default"]))
    return value


class ModuleRegistry:
    """Finds modules by name on the search path and loads their code."""

    def __init__(self, module_paths: list[Path] | None = None) -> None:
        self.builtin = builtin_dirs()
        self.search_dirs = [Path(p) for p in (module_paths or [])] + self.builtin
        self._cache: dict[str, ModuleInfo | None] = {}

    def find(self, name: str) -> ModuleInfo | None:
        if name not in self._cache:
            self._cache[name] = self._find(name)
        return self._cache[name]

    def _find(self, name: str) -> ModuleInfo | None:
        for folder in self.search_dirs:
            candidate = folder / name
            if (candidate / "manifest.yaml").is_file():
                origin = "builtin" if folder in self.builtin else "path"
                return ModuleInfo(name, candidate, read_manifest(candidate), origin)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                package = ep.load()
                folder = Path(getattr(package, "__file__", "") or "").parent
                if not (folder / "manifest.yaml").is_file():
                    raise ManifestError(f"entry point {ep.value!r}: no manifest.yaml in {folder}")
                return ModuleInfo(name, folder, read_manifest(folder), "entry_point")
        return None

    def names(self) -> list[str]:
        found: set[str] = set()
        for folder in self.search_dirs:
            found.update(p.parent.name for p in folder.glob("*/manifest.yaml"))
        found.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        return sorted(found)

    def all(self) -> dict[str, ModuleInfo]:
        result = {}
        for name in self.names():
            info = self.find(name)
            if info is not None:
                result[name] = info
        return result


def load_module_class(info: ModuleInfo) -> type[Module]:
    """Import the module's package and return its :class:`Module` subclass."""
    from chargepoint.module import Module

    if "chargepoint_ext" not in sys.modules:
        namespace = ModuleType("chargepoint_ext")
        namespace.__path__ = []
        sys.modules["chargepoint_ext"] = namespace
    package_name = f"chargepoint_ext.{info.name}"
    package: ModuleType | None = sys.modules.get(package_name)
    if package is None:
        init = info.folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            package_name, init, submodule_search_locations=[str(info.folder)]
        )
        if spec is None or spec.loader is None or not init.is_file():
            raise ManifestError(f"{info.folder}: no __init__.py with the module's code")
        package = importlib.util.module_from_spec(spec)
        sys.modules[package_name] = package
        try:
            spec.loader.exec_module(package)
        except Exception:
            del sys.modules[package_name]
            raise
    explicit = getattr(package, "module_class", None)
    if inspect.isclass(explicit) and issubclass(explicit, Module):
        return explicit
    classes = [
        obj
        for obj in vars(package).values()
        if inspect.isclass(obj) and issubclass(obj, Module) and obj is not Module
        and obj.__module__.startswith(package_name)
    ]
    if len(classes) != 1:
        raise ManifestError(
            f"{info.folder}: expected exactly one chargepoint.Module subclass (or `module_class`), "
            f"found {len(classes)}"
        )
    return classes[0]
