"""OCPP 1.6 MeterValue / SampledValue payloads built from ``powermeter`` readings, and clock alignment.

Pure: a reading (the ``powermeter`` var of the powermeter interface) and the configured measurands go in,
schema-valid OCPP dicts come out.

Which values a configured measurand yields (MeterValuesSampledData and friends hold measurand names, each
optionally followed by ``.<phase>``, e.g. ``Voltage.L1-N``; see ``config_keys``):

- ``Energy.Active.Import.Register`` / ``Energy.Active.Export.Register``: the register total only, in Wh. The
  per-phase registers are sent only when asked for by name (``Energy.Active.Import.Register.L1``): CSMSs that
  ignore ``phase`` would otherwise bill a phase register as the total.
- ``Power.Active.Import`` / ``Power.Active.Export`` (W) and ``Power.Reactive.Import`` / ``Export`` (var): the
  total, then each phase the reading has. The reading's power is signed (positive is import), so Import is
  ``max(0, P)`` and Export ``max(0, -P)``.
- ``Current.Import`` / ``Current.Export`` (A): each conductor the reading has (L1, L2, L3, N), signed like power.
- ``Voltage`` (V): each phase the reading has, labelled ``L1-N`` ... (the meter measures phase to neutral).
- ``Frequency``: one value (L1, else the first phase given) without a phase; with a phase suffix that phase.
  No ``unit``: ``Hertz`` is not in the 1.6 specification's UnitOfMeasure and the OCA schema of
  StopTransaction.transactionData rejects it, so a Frequency sample stays valid wherever it goes.
- ``Power.Offered`` (W) / ``Current.Offered`` (A): from the ``offered`` argument (``power_W`` / ``current_A``).

A phase suffix selects that one phase (``L1`` and ``L1-N`` name the same conductor). Measurands the reading
cannot supply (Temperature, SoC, the Interval energies, ...) and non-finite numbers are skipped silently, so
the result may be empty; a name that is not a 1.6 measurand raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.v16.enums import Location, Measurand, Phase, ReadingContext

MEASURANDS = frozenset(m.value for m in Measurand)
PHASES = frozenset(p.value for p in Phase)
CONTEXTS = frozenset(c.value for c in ReadingContext)
LOCATIONS = frozenset(loc.value for loc in Location)
PHASE_KEYS = ("L1", "L2", "L3")
CONDUCTOR_KEYS = ("L1", "L2", "L3", "N")

PhaseLabel = Callable[[str], str | None]  # reading key -> the SampledValue phase (None: no phase)
ValueRow = tuple[str, str | None, str | None]  # value text, unit, phase

# measurand -> (reading field, unit, sign): sign +1 takes max(0, v), -1 takes max(0, -v), 0 the value as is.
_TOTALS: dict[str, tuple[str, str, int]] = {
    "Energy.Active.Import.Register": ("energy_Wh_import", "Wh", 0),
    "Energy.Active.Export.Register": ("energy_Wh_export", "Wh", 0),
    "Power.Active.Import": ("power_W", "W", 1),
    "Power.Active.Export": ("power_W", "W", -1),
    "Power.Reactive.Import": ("reactive_power_VAR", "var", 1),
    "Power.Reactive.Export": ("reactive_power_VAR", "var", -1),
}
_PER_CONDUCTOR: dict[str, tuple[str, str, int]] = {
    "Current.Import": ("current_A", "A", 1),
    "Current.Export": ("current_A", "A", -1),
    "Voltage": ("voltage_V", "V", 0),
}
_OFFERED: dict[str, tuple[str, str]] = {"Power.Offered": ("power_W", "W"), "Current.Offered": ("current_A", "A")}
_ENERGY_REGISTERS = frozenset({"Energy.Active.Import.Register", "Energy.Active.Export.Register"})


def parse_measurand(configured: str) -> tuple[str, str | None]:
    """``"Voltage.L1-N"`` -> ``("Voltage", "L1-N")``; ``"Voltage"`` -> ``("Voltage", None)``."""
    if configured in MEASURANDS:
        return configured, None
    head, _, tail = configured.rpartition(".")
    if head in MEASURANDS and tail in PHASES:
        return head, tail
    raise ValueError(f"{configured!r} is not an OCPP 1.6 measurand (optionally followed by .<phase>)")


def sampled_values(reading: Mapping[str, Any], measurands: Iterable[str], *, context: str,
                   location: str = "Outlet", offered: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """The SampledValues of ``reading`` for each configured measurand, in the order configured."""
    if context not in CONTEXTS:
        raise ValueError(f"{context!r} is not an OCPP 1.6 ReadingContext")
    if location not in LOCATIONS:
        raise ValueError(f"{location!r} is not an OCPP 1.6 Location")
    parsed = [parse_measurand(name) for name in measurands]
    samples: list[dict[str, str]] = []
    for measurand, phase in parsed:
        for value, unit, label in _values(reading, measurand, phase, offered or {}):
            sample = {"value": value, "context": context, "format": "Raw", "measurand": measurand}
            if label is not None:
                sample["phase"] = label
            sample["location"] = location
            if unit is not None:
                sample["unit"] = unit
            samples.append(sample)
    return samples


def meter_value(reading: Mapping[str, Any], measurands: Iterable[str], *, context: str,
                timestamp: str | None = None, location: str = "Outlet",
                offered: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One MeterValue: ``{"timestamp", "sampledValue"}``; the reading's timestamp unless ``timestamp`` is given.

    ``sampledValue`` may be empty (nothing configured is measured): the schemas need at least one, so the
    caller sends nothing then.
    """
    when = timestamp if timestamp is not None else reading.get("timestamp")
    if not isinstance(when, str) or not when:
        raise ValueError("meter value: the reading has no timestamp and none was given")
    return {"timestamp": when, "sampledValue": sampled_values(reading, measurands, context=context,
                                                              location=location, offered=offered)}


def transaction_data(begin: Mapping[str, Any] | None, end: Mapping[str, Any] | None,
                     sampled_measurands: Sequence[str], *, periodic: Iterable[Mapping[str, Any]] = (),
                     clock: Iterable[Mapping[str, Any]] = (), aligned_measurands: Sequence[str] = (),
                     location: str = "Outlet") -> list[dict[str, Any]]:
    """StopTransaction.transactionData: StopTxnSampledData at Transaction.Begin (``begin``), Sample.Periodic
    (``periodic``) and Transaction.End (``end``), StopTxnAlignedData at Sample.Clock (``clock``).

    Begin first, end last, the samples in between in time order; MeterValues without any value are left out.
    """
    middle = [(reading, "Sample.Periodic", sampled_measurands) for reading in periodic]
    middle += [(reading, "Sample.Clock", aligned_measurands) for reading in clock]
    middle.sort(key=lambda item: _instant(item[0]))
    ordered = ([(begin, "Transaction.Begin", sampled_measurands)] if begin is not None else []) + middle
    ordered += [(end, "Transaction.End", sampled_measurands)] if end is not None else []
    data = [meter_value(reading, measurands, context=context, location=location)
            for reading, context, measurands in ordered]
    return [value for value in data if value["sampledValue"]]


def next_aligned_time(now_utc: datetime, interval_s: int) -> datetime:
    """The next ClockAlignedDataInterval instant strictly after ``now_utc``.

    The intervals restart at every midnight UTC (1.6: "evenly spaced aggregation intervals per day, starting at
    00:00:00"), so with an interval that does not divide a day the last one of the day is shorter.
    """
    if isinstance(interval_s, bool) or not isinstance(interval_s, int) or interval_s <= 0:
        raise ValueError(f"clock-aligned interval must be a positive number of seconds, got {interval_s!r}")
    if now_utc.tzinfo is None:
        raise ValueError("next_aligned_time needs an aware datetime (UTC)")
    now = now_utc.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = now - midnight
    steps = elapsed // timedelta(seconds=interval_s) + 1
    return min(midnight + timedelta(seconds=interval_s * steps), midnight + timedelta(days=1))


def format_value(number: float) -> str:
    """Fixed-point text with at most 3 decimals and no trailing zeros: ``1234``, ``230.1``, never ``1e+20``."""
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _values(reading: Mapping[str, Any], measurand: str, phase: str | None,
            offered: Mapping[str, Any]) -> list[ValueRow]:
    """(value text, unit, phase label) for one configured measurand; empty when the reading lacks it."""
    if measurand in _TOTALS:
        field, unit, sign = _TOTALS[measurand]
        group = _group(reading, field)
        if phase is not None:
            return _pick(group, _conductor(phase, PHASE_KEYS), unit, sign, lambda key: key)
        keys = ("total",) if measurand in _ENERGY_REGISTERS else ("total", *PHASE_KEYS)
        return _collect(group, keys, unit, sign, lambda key: None if key == "total" else key)
    if measurand in _PER_CONDUCTOR:
        field, unit, sign = _PER_CONDUCTOR[measurand]
        group = _group(reading, field)
        conductors = CONDUCTOR_KEYS if measurand != "Voltage" else PHASE_KEYS
        label = (lambda key: f"{key}-N") if measurand == "Voltage" else (lambda key: key)
        if phase is not None:
            return _pick(group, _conductor(phase, conductors), unit, sign, label)
        return _collect(group, conductors, unit, sign, label)
    if measurand == "Frequency":
        group = _group(reading, "frequency_Hz")
        if phase is not None:
            return _pick(group, _conductor(phase, PHASE_KEYS), None, 0, lambda key: key)
        return _collect(group, PHASE_KEYS, None, 0, lambda key: None)[:1]
    if measurand in _OFFERED and phase is None:
        key, unit = _OFFERED[measurand]
        return _collect(offered, (key,), unit, 0, lambda _key: None)
    return []


def _group(reading: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    group = reading.get(field)
    return group if isinstance(group, Mapping) else {}


def _conductor(phase: str, allowed: Sequence[str]) -> str | None:
    """The reading key a configured phase names (``L1`` and ``L1-N`` are both L1); None when not measured."""
    key = phase.removesuffix("-N") if phase != "N" else phase
    return key if key in allowed else None


def _pick(group: Mapping[str, Any], key: str | None, unit: str | None, sign: int,
          label: PhaseLabel) -> list[ValueRow]:
    return [] if key is None else _collect(group, (key,), unit, sign, label)


def _collect(group: Mapping[str, Any], keys: Sequence[str], unit: str | None, sign: int,
             label: PhaseLabel) -> list[ValueRow]:
    found = []
    for key in keys:
        number = finite_number(group.get(key))
        if number is not None:
            directed = number if sign == 0 else max(0.0, sign * number)
            found.append((format_value(directed), unit, label(key)))
    return found


def energy_register_Wh(reading: Mapping[str, Any]) -> float | None:
    """The import energy register of a powermeter reading, when it has a usable one."""
    energy = finite_number(_group(reading, "energy_Wh_import").get("total"))
    return energy if energy is not None and energy >= 0 else None


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


def _instant(reading: Mapping[str, Any]) -> datetime:
    text = reading.get("timestamp")
    if not isinstance(text, str):
        raise ValueError("transaction data: a reading has no timestamp")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
