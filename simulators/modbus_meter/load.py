"""What a simulated meter measures: a load (constant, a repeating profile, or fed from outside) and the
energy registers that integrate it. Pure: every call takes ``now`` (monotonic seconds)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

PHASE_NAMES = ("L1", "L2", "L3")
NOMINAL_VOLTAGE_V = 230.0
FREQUENCY_HZ = 50.0


@dataclass(frozen=True)
class ConstantLoad:
    """``power_W`` in total, split evenly over the meter's phases (negative = export)."""

    power_W: float


@dataclass(frozen=True)
class ProfileLoad:
    """Steps of (seconds, W) played in order from ``started_at``, then again from the first."""

    steps: tuple[tuple[float, float], ...]
    started_at: float

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("load profile: needs at least one (seconds, W) step")
        for index, (duration_s, _) in enumerate(self.steps):
            if not duration_s > 0:
                raise ValueError(f"load profile step {index}: duration {duration_s!r} s must be > 0")

    @property
    def period_s(self) -> float:
        return sum(duration for duration, _ in self.steps)

    def segments(self, start: float, end: float) -> Iterator[tuple[float, float]]:
        """(seconds, W) pieces covering ``start``..``end``."""
        period = self.period_s
        position = (start - self.started_at) % period
        remaining = end - start
        index, offset = 0, position
        while offset >= self.steps[index][0]:
            offset -= self.steps[index][0]
            index = (index + 1) % len(self.steps)
        while remaining > 0:
            duration, power = self.steps[index]
            piece = min(duration - offset, remaining)
            yield piece, power
            remaining -= piece
            offset = 0.0
            index = (index + 1) % len(self.steps)

    def power_at(self, now: float) -> float:
        position = (now - self.started_at) % self.period_s
        for duration, power in self.steps:
            if position < duration:
                return power
            position -= duration
        return self.steps[-1][1]


@dataclass(frozen=True)
class ExternalLoad:
    """Power per phase (W) fed in from outside, e.g. the board simulator's meter."""

    phase_power_W: tuple[float, ...]


Load = ConstantLoad | ProfileLoad | ExternalLoad


def split_power(load: Load, phases: int, now: float) -> tuple[float, ...]:
    """Power per phase (W) the load draws at ``now`` on a meter with ``phases`` phases."""
    if isinstance(load, ExternalLoad):
        given = load.phase_power_W
        if len(given) == phases:
            return tuple(given)
        return (sum(given) / phases,) * phases
    total = load.power_W if isinstance(load, ConstantLoad) else load.power_at(now)
    return (total / phases,) * phases


@dataclass
class MeterReadings:
    """The registers of one meter: energy per phase integrates the load's power over time."""

    phases: int
    energy_import_Wh: list[float]
    now: float
    load: Load = field(default_factory=lambda: ConstantLoad(0.0))
    energy_export_Wh: list[float] = field(default_factory=list)
    voltage_V: float = NOMINAL_VOLTAGE_V
    time_scale: float = 1.0

    @classmethod
    def start(cls, phases: int, energy_Wh: float, now: float, load: Load | None = None,
              time_scale: float = 1.0) -> MeterReadings:
        if phases not in (1, 2, 3):
            raise ValueError(f"meter phases {phases}: must be 1, 2 or 3")
        if not energy_Wh >= 0:
            raise ValueError(f"energy register start {energy_Wh!r} Wh: must be >= 0")
        if not time_scale > 0:
            raise ValueError(f"time_scale {time_scale!r}: must be > 0")
        return cls(phases=phases, energy_import_Wh=[energy_Wh / phases] * phases, now=now,
                   load=load or ConstantLoad(0.0), energy_export_Wh=[0.0] * phases, time_scale=time_scale)

    def advance(self, now: float) -> None:
        """Integrate the energy drawn since the last call; time never runs backwards here."""
        if now <= self.now:
            return
        if isinstance(self.load, ProfileLoad):
            pieces: Sequence[tuple[float, float]] = list(self.load.segments(self.now, now))
            for seconds, total in pieces:
                self._add(seconds, (total / self.phases,) * self.phases)
        else:
            self._add(now - self.now, split_power(self.load, self.phases, now))
        self.now = now

    def _add(self, seconds: float, phase_power_W: Sequence[float]) -> None:
        hours = seconds * self.time_scale / 3600.0
        for index, power in enumerate(phase_power_W):
            if power > 0:
                self.energy_import_Wh[index] += power * hours
            elif power < 0:
                self.energy_export_Wh[index] -= power * hours

    def set_load(self, load: Load, now: float) -> None:
        self.advance(now)
        self.load = load

    def values(self) -> dict[str, dict[str, float]]:
        """Every quantity a register may map, by quantity and phase ("total" where it makes sense)."""
        names = PHASE_NAMES[:self.phases]
        power = split_power(self.load, self.phases, self.now)
        current = [p / self.voltage_V for p in power]

        def with_total(values: Sequence[float]) -> dict[str, float]:
            return {"total": sum(values), **dict(zip(names, values, strict=True))}

        return {
            "energy_Wh_import": with_total(self.energy_import_Wh),
            "energy_Wh_export": with_total(self.energy_export_Wh),
            "power_W": with_total(power),
            "reactive_power_VAR": with_total([0.0] * self.phases),
            "voltage_V": {"total": self.voltage_V, **dict.fromkeys(names, self.voltage_V)},
            "current_A": {"total": sum(current), **dict(zip(names, current, strict=True)), "N": 0.0},
            "frequency_Hz": {"total": FREQUENCY_HZ, **dict.fromkeys(names, FREQUENCY_HZ)},
        }
