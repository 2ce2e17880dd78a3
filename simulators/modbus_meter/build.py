"""Meters from configuration (the CLI's options, the station module's ``meters`` list) onto a line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chargepoint.modbus.model import ModelError, load_model

from .load import ConstantLoad, ProfileLoad
from .slave import SlaveLine


@dataclass(frozen=True)
class MeterSpec:
    slave_id: int
    model: str
    energy_Wh: float = 0.0
    load_W: float = 0.0


def resolve_model_name(model: str, base_dir: Path | None) -> str | Path:
    """A built-in name as is; something that looks like a file path relative to ``base_dir``."""
    if model.endswith((".yaml", ".yml")) or "/" in model:
        path = Path(model).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path
    return model


def build_line(specs: list[MeterSpec], baudrate: int, now: float, time_scale: float = 1.0,
               base_dir: Path | None = None) -> SlaveLine:
    """A line with one meter per spec; ValueError naming the meter on a bad spec or model."""
    if not specs:
        raise ValueError("no meters: give at least one slave id and model")
    line = SlaveLine(baudrate)
    for index, spec in enumerate(specs):
        where = f"meter {index + 1} (slave id {spec.slave_id})"
        try:
            model = load_model(resolve_model_name(spec.model, base_dir))
            line.add_meter(spec.slave_id, model, spec.energy_Wh, ConstantLoad(spec.load_W), now, time_scale)
        except (ModelError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return line


def parse_profile(text: str, now: float) -> ProfileLoad:
    """``"10:7400,5:0"`` = 10 s at 7400 W, then 5 s at 0 W, repeating."""
    steps = []
    for index, part in enumerate(text.split(",")):
        seconds, sep, power = part.partition(":")
        try:
            if not sep:
                raise ValueError
            steps.append((float(seconds), float(power)))
        except ValueError:
            raise ValueError(f"profile step {index + 1} {part!r}: expected SECONDS:WATTS") from None
    return ProfileLoad(tuple(steps), now)
