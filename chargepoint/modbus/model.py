"""Meter models: which registers hold which quantity, loaded and validated from YAML.

A model file (see ``models/TEMPLATE.yaml.example``) names, per quantity and phase, the register's function
code, 0-based address, encoding, word order and scale. Every problem found is reported with the file, the
line and the key path (``quantities.voltage_V.L4``); a model with any problem is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargepoint.config import ConfigError, Lines, format_path, line_of, read_yaml, show, suggest

QUANTITIES = ("energy_Wh_import", "energy_Wh_export", "power_W", "reactive_power_VAR", "voltage_V", "current_A",
              "frequency_Hz")
PHASES = ("total", "L1", "L2", "L3", "N")
ENCODINGS = ("float32", "int16", "uint16", "int32", "uint32", "int64", "uint64", "iskra_t5", "iskra_t6")
WORD_ORDERS = ("big", "little")
FUNCTION_CODES = (3, 4)
PARITIES = ("N", "E", "O")

#: Phases each quantity may have, as in ``chargepoint/interfaces/powermeter.yaml``.
ALLOWED_PHASES: dict[str, tuple[str, ...]] = {
    "energy_Wh_import": ("total", "L1", "L2", "L3"),
    "energy_Wh_export": ("total", "L1", "L2", "L3"),
    "power_W": ("total", "L1", "L2", "L3"),
    "reactive_power_VAR": ("total", "L1", "L2", "L3"),
    "voltage_V": ("L1", "L2", "L3"),
    "current_A": ("L1", "L2", "L3", "N"),
    "frequency_Hz": ("L1", "L2", "L3"),
}

#: ``unit:`` a register may be given in, and the factor to the quantity's own unit.
UNITS: dict[str, dict[str, int]] = {
    "energy_Wh_import": {"Wh": 1, "kWh": 1000, "MWh": 1_000_000},
    "energy_Wh_export": {"Wh": 1, "kWh": 1000, "MWh": 1_000_000},
    "power_W": {"W": 1, "kW": 1000},
    "reactive_power_VAR": {"VAR": 1, "kVAR": 1000},
    "voltage_V": {"V": 1},
    "current_A": {"A": 1},
    "frequency_Hz": {"Hz": 1},
}

REGISTER_COUNTS = {"float32": 2, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
                   "iskra_t5": 2, "iskra_t6": 2}
#: Encodings that may take their decade exponent from a separate register.
EXPONENT_ENCODINGS = ("int16", "uint16", "int32", "uint32", "int64", "uint64")
MODBUS_MAX_READ = 125
MODELS_DIR = Path(__file__).parent / "models"

TOP_KEYS = ("title", "notes", "serial", "max_registers_per_read", "max_gap", "defaults", "quantities")
SERIAL_KEYS = ("baudrate", "parity", "stopbits", "slave_id")
DEFAULT_KEYS = ("function_code", "encoding", "word_order", "scale")
REGISTER_KEYS = ("address", "function_code", "encoding", "word_order", "scale", "unit", "exponent_address")


class ModelError(ValueError):
    """A meter model cannot be loaded; the message names the file (and line) and why, one problem a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Register:
    """Where one value of one quantity lives, and how to turn its words into the quantity's unit."""

    quantity: str
    phase: str
    function_code: int  # 3 (holding) or 4 (input)
    address: int  # 0-based PDU offset
    encoding: str
    word_order: str  # "big" = high word first, "little" = low word first
    scale: float  # decoded number * scale = value in the quantity's unit (Wh, W, VAR, V, A, Hz)
    exponent_address: int | None = None  # value * 10**(int16 at this register, same function code)

    @property
    def count(self) -> int:
        """Registers occupied (1, 2 or 4)."""
        return REGISTER_COUNTS[self.encoding]

    @property
    def key(self) -> str:
        """``voltage_V.L1``: how problems and logs name the register."""
        return f"{self.quantity}.{self.phase}"


@dataclass(frozen=True)
class SerialDefaults:
    """The line settings and slave id a meter has out of the box."""

    baudrate: int = 9600
    parity: str = "N"  # "N" | "E" | "O"
    stopbits: int = 1
    slave_id: int = 1


@dataclass(frozen=True)
class MeterModel:
    name: str
    title: str
    registers: tuple[Register, ...]
    serial: SerialDefaults
    max_registers_per_read: int = 100
    max_gap: int = 10  # unused registers a batched read may span

    def register(self, quantity: str, phase: str) -> Register | None:
        """The register of ``quantity`` / ``phase``, if the model has one."""
        for register in self.registers:
            if register.quantity == quantity and register.phase == phase:
                return register
        return None


def builtin_model_names() -> list[str]:
    """Names of the shipped models (``sdm630``, ...), sorted."""
    return sorted(path.stem for path in MODELS_DIR.glob("*.yaml"))


def load_model(name_or_path: str | Path) -> MeterModel:
    """A shipped model by name (``"sdm630"``) or a model file by path; :class:`ModelError` on any problem."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        return load_model_file(Path(name_or_path))
    names = builtin_model_names()
    if text not in names:
        raise ModelError([f"unknown meter model {text!r}{suggest(text, names)}; built-in models: "
                          f"{', '.join(names)}; or give the path of a model YAML file"])
    return load_model_file(MODELS_DIR / f"{text}.yaml")


def load_model_file(path: Path) -> MeterModel:
    try:
        data, lines, duplicates = read_yaml(path, str(path))
    except ConfigError as exc:
        raise ModelError([str(problem) for problem in exc.problems]) from None
    parser = _ModelParser(str(path), lines)
    for duplicate in duplicates:
        parser.problems.append(str(duplicate))
    model = parser.parse(path.stem, data)
    if parser.problems or model is None:
        raise ModelError(list(dict.fromkeys(parser.problems)))
    return model


class _ModelParser:
    """Collects every problem of one model file instead of stopping at the first."""

    def __init__(self, file: str, lines: Lines) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[str] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        line = line_of(self.lines, path)
        where = f"{self.file}:{line}" if line is not None else self.file
        self.problems.append(f"{where}: {format_path(path) or 'top level'}: {message}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, not {show(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem((*path, str(key)), f"unknown key {key!r}{suggest(key, allowed)}; "
                                                f"allowed: {', '.join(allowed)}")
        return {key: item for key, item in value.items() if key in allowed}

    def integer(self, value: Any, path: tuple[str, ...], low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, not {show(value)}")
            return None
        if not low <= value <= high:
            self.problem(path, f"{value} is out of range {low}..{high}")
            return None
        return value

    def choice(self, value: Any, path: tuple[str, ...], allowed: tuple[Any, ...]) -> Any:
        if value not in allowed or isinstance(value, bool):
            self.problem(path, f"{show(value)} is not one of {', '.join(map(str, allowed))}{suggest(value, allowed)}")
            return None
        return value

    def number(self, value: Any, path: tuple[str, ...]) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value == 0:
            self.problem(path, f"must be a non-zero number, not {show(value)}")
            return None
        return float(value)

    def parse(self, name: str, data: Any) -> MeterModel | None:
        if not isinstance(data, dict):
            self.problem((), f"a meter model must be a mapping with 'quantities', not {show(data)}")
            return None
        top = self.mapping(data, (), TOP_KEYS)
        title = top.get("title", name)
        if not isinstance(title, str) or not title.strip():
            self.problem(("title",), f"must be a non-empty string, not {show(title)}")
        if "notes" in top and not isinstance(top["notes"], str):
            self.problem(("notes",), f"must be a string, not {show(top['notes'])}")
        serial = self.serial(top.get("serial"))
        max_read = self.integer(top.get("max_registers_per_read", 100), ("max_registers_per_read",),
                                4, MODBUS_MAX_READ)
        max_gap = self.integer(top.get("max_gap", 10), ("max_gap",), 0, MODBUS_MAX_READ)
        defaults = self.mapping(top.get("defaults"), ("defaults",), DEFAULT_KEYS)
        quantities = top.get("quantities")
        if quantities is None:
            self.problem(("quantities",), "missing: a model needs at least one register")
            return None
        registers = self.registers(quantities, defaults, max_read or MODBUS_MAX_READ)
        self.check_overlaps(registers)
        if self.problems or max_read is None or max_gap is None:
            return None
        return MeterModel(name=name, title=str(title), registers=tuple(registers), serial=serial,
                          max_registers_per_read=max_read, max_gap=max_gap)

    def serial(self, value: Any) -> SerialDefaults:
        raw = self.mapping(value, ("serial",), SERIAL_KEYS)
        fallback = SerialDefaults()
        baudrate = self.integer(raw.get("baudrate", fallback.baudrate), ("serial", "baudrate"), 300, 4_000_000)
        parity = self.choice(raw.get("parity", fallback.parity), ("serial", "parity"), PARITIES)
        stopbits = self.choice(raw.get("stopbits", fallback.stopbits), ("serial", "stopbits"), (1, 2))
        slave_id = self.integer(raw.get("slave_id", fallback.slave_id), ("serial", "slave_id"), 1, 247)
        return SerialDefaults(baudrate=baudrate or fallback.baudrate, parity=parity or fallback.parity,
                              stopbits=stopbits or fallback.stopbits, slave_id=slave_id or fallback.slave_id)

    def registers(self, quantities: Any, defaults: dict[str, Any], max_read: int) -> list[Register]:
        registers: list[Register] = []
        if not isinstance(quantities, dict) or not quantities:
            self.problem(("quantities",), f"must be a non-empty mapping of quantities, not {show(quantities)}")
            return registers
        for quantity, phases in quantities.items():
            path = ("quantities", str(quantity))
            if quantity not in QUANTITIES:
                self.problem(path, f"unknown quantity {quantity!r}{suggest(quantity, QUANTITIES)}; "
                                   f"allowed: {', '.join(QUANTITIES)}")
                continue
            allowed = ALLOWED_PHASES[quantity]
            if not isinstance(phases, dict) or not phases:
                self.problem(path, f"must map phases ({', '.join(allowed)}) to registers, not {show(phases)}")
                continue
            for phase, fields in phases.items():
                if phase not in allowed:
                    self.problem((*path, str(phase)), f"unknown phase {phase!r} for {quantity}{suggest(phase, allowed)}"
                                                      f"; allowed: {', '.join(allowed)}")
                    continue
                register = self.register(quantity, phase, fields, defaults, max_read)
                if register is not None:
                    registers.append(register)
        return registers

    def register(self, quantity: str, phase: str, fields: Any, defaults: dict[str, Any],
                 max_read: int) -> Register | None:
        path = ("quantities", quantity, phase)
        if not isinstance(fields, dict):
            self.problem(path, f"must be a mapping with at least 'address', not {show(fields)}")
            return None
        own = self.mapping(fields, path, REGISTER_KEYS)
        if "address" not in own:
            self.problem(path, "missing 'address' (0-based register offset, e.g. 0x48)")
            return None
        before = len(self.problems)

        def field(key: str, fallback: Any) -> tuple[Any, tuple[str, ...]]:
            if key in own:
                return own[key], (*path, key)
            return defaults.get(key, fallback), ("defaults", key)

        value, where = field("function_code", 4)
        function_code = self.choice(value, where, FUNCTION_CODES)
        value, where = field("encoding", "float32")
        encoding = self.choice(value, where, ENCODINGS)
        value, where = field("word_order", "big")
        word_order = self.choice(value, where, WORD_ORDERS)
        value, where = field("scale", 1)
        scale = self.number(value, where)
        units = UNITS[quantity]
        unit = self.choice(own.get("unit", next(iter(units))), (*path, "unit"), tuple(units))
        address = self.integer(own["address"], (*path, "address"), 0, 65535)
        exponent_address = None
        if "exponent_address" in own:
            exponent_address = self.integer(own["exponent_address"], (*path, "exponent_address"), 0, 65535)
            if encoding is not None and encoding not in EXPONENT_ENCODINGS:
                self.problem((*path, "exponent_address"), f"not allowed with encoding {encoding} "
                                                          f"(only with {', '.join(EXPONENT_ENCODINGS)})")
        if len(self.problems) > before:
            return None
        assert function_code is not None and encoding is not None and address is not None
        count = REGISTER_COUNTS[encoding]
        if address + count > 65536:
            self.problem((*path, "address"), f"{encoding} at {address} would run past register 65535")
            return None
        if count > max_read:
            self.problem(path, f"{encoding} needs {count} registers, more than max_registers_per_read ({max_read})")
            return None
        total_scale = float(Decimal(repr(scale)) * units[unit])
        return Register(quantity=quantity, phase=phase, function_code=function_code, address=address,
                        encoding=encoding, word_order=word_order, scale=total_scale,
                        exponent_address=exponent_address)

    def check_overlaps(self, registers: list[Register]) -> None:
        """Two values must not share a register; an exponent register may serve several values but hold none."""
        reaching: Register | None = None  # of the registers so far, the one reaching furthest
        for register in sorted(registers, key=lambda r: (r.function_code, r.address)):
            if (reaching is not None and reaching.function_code == register.function_code
                    and register.address < reaching.address + reaching.count):
                self.problem(("quantities", register.quantity, register.phase, "address"),
                             f"register {register.address} overlaps {reaching.key} (function code "
                             f"{reaching.function_code}, address {reaching.address}, {reaching.count} registers)")
            if (reaching is None or reaching.function_code != register.function_code
                    or register.address + register.count > reaching.address + reaching.count):
                reaching = register
        for register in registers:
            if register.exponent_address is None:
                continue
            for other in registers:
                if (other.function_code == register.function_code
                        and other.address <= register.exponent_address < other.address + other.count):
                    self.problem(("quantities", register.quantity, register.phase, "exponent_address"),
                                 f"register {register.exponent_address} holds the value of {other.key}")
