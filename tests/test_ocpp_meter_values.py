"""OCPP 1.6 meter values from powermeter readings: exact values, units, phases and contexts, schema validity of
every MeterValues.req and StopTransaction.req built from them, and clock-aligned instants."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.ocpp16.meter_values import (
    MEASURANDS,
    PHASES,
    format_value,
    meter_value,
    next_aligned_time,
    parse_measurand,
    sampled_values,
    transaction_data,
)
from modules.ocpp16.schemas import validate_request

NOW = "2026-03-01T10:15:30.123Z"
THREE_PHASE: dict[str, Any] = {
    "timestamp": NOW, "meter_id": "M-1",
    "energy_Wh_import": {"total": 12345.0, "L1": 4115.0, "L2": 4115.0, "L3": 4115.0},
    "energy_Wh_export": {"total": 0},
    "power_W": {"total": 11040.5, "L1": 3680.25, "L2": 3680.25, "L3": 3680.0},
    "reactive_power_VAR": {"total": -120.0},
    "voltage_V": {"L1": 230.1, "L2": 229.87, "L3": 231.0},
    "current_A": {"L1": 16.0, "L2": 16.01, "L3": 15.999, "N": 0.2},
    "frequency_Hz": {"L1": 50.02},
}


def rows(samples: list[dict[str, str]]) -> list[tuple[str, str | None, str, str | None]]:
    return [(s["measurand"], s.get("phase"), s["value"], s.get("unit")) for s in samples]


def meter_values_request(value: dict[str, Any]) -> dict[str, Any]:
    return {"connectorId": 1, "transactionId": 7, "meterValue": [value]}


def test_energy_register_is_the_total_in_wh_with_context_location_and_raw_format() -> None:
    samples = sampled_values(THREE_PHASE, ["Energy.Active.Import.Register"], context="Sample.Periodic")
    assert samples == [{"value": "12345", "context": "Sample.Periodic", "format": "Raw",
                        "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"}]


def test_each_measurand_gives_its_unit_and_phases() -> None:
    measurands = ["Power.Active.Import", "Current.Import", "Voltage", "Frequency", "Energy.Active.Export.Register"]
    samples = sampled_values(THREE_PHASE, measurands, context="Trigger")
    assert rows(samples) == [
        ("Power.Active.Import", None, "11040.5", "W"),
        ("Power.Active.Import", "L1", "3680.25", "W"),
        ("Power.Active.Import", "L2", "3680.25", "W"),
        ("Power.Active.Import", "L3", "3680", "W"),
        ("Current.Import", "L1", "16", "A"),
        ("Current.Import", "L2", "16.01", "A"),
        ("Current.Import", "L3", "15.999", "A"),
        ("Current.Import", "N", "0.2", "A"),
        ("Voltage", "L1-N", "230.1", "V"),
        ("Voltage", "L2-N", "229.87", "V"),
        ("Voltage", "L3-N", "231", "V"),
        ("Frequency", None, "50.02", None),
        ("Energy.Active.Export.Register", None, "0", "Wh"),
    ]
    assert {s["context"] for s in samples} == {"Trigger"}
    validate_request("MeterValues", meter_values_request({"timestamp": NOW, "sampledValue": samples}))


def test_a_phase_suffix_selects_that_phase_only() -> None:
    measurands = ["Energy.Active.Import.Register.L2", "Voltage.L3", "Voltage.L1-N", "Current.Import.N",
                  "Power.Active.Import.L1-N", "Frequency.L1", "Voltage.L1-L2", "Current.Import.L1-L2"]
    samples = sampled_values(THREE_PHASE, measurands, context="Sample.Clock")
    assert rows(samples) == [
        ("Energy.Active.Import.Register", "L2", "4115", "Wh"),
        ("Voltage", "L3-N", "231", "V"),
        ("Voltage", "L1-N", "230.1", "V"),
        ("Current.Import", "N", "0.2", "A"),
        ("Power.Active.Import", "L1", "3680.25", "W"),
        ("Frequency", "L1", "50.02", None),
    ]


def test_signed_power_splits_into_import_and_export() -> None:
    exporting = {"timestamp": NOW, "meter_id": "M", "energy_Wh_import": {"total": 5},
                 "power_W": {"total": -3000.0, "L1": -3000.0}, "current_A": {"L1": -13.0},
                 "reactive_power_VAR": {"total": -120.0}}
    measurands = ["Power.Active.Import", "Power.Active.Export", "Current.Import", "Current.Export",
                  "Power.Reactive.Import", "Power.Reactive.Export"]
    assert rows(sampled_values(exporting, measurands, context="Sample.Periodic")) == [
        ("Power.Active.Import", None, "0", "W"), ("Power.Active.Import", "L1", "0", "W"),
        ("Power.Active.Export", None, "3000", "W"), ("Power.Active.Export", "L1", "3000", "W"),
        ("Current.Import", "L1", "0", "A"), ("Current.Export", "L1", "13", "A"),
        ("Power.Reactive.Import", None, "0", "var"), ("Power.Reactive.Export", None, "120", "var"),
    ]


def test_offered_power_and_current_come_from_the_offered_argument() -> None:
    samples = sampled_values(THREE_PHASE, ["Power.Offered", "Current.Offered"], context="Sample.Periodic",
                             offered={"power_W": 11000, "current_A": 16.0})
    assert rows(samples) == [("Power.Offered", None, "11000", "W"), ("Current.Offered", None, "16", "A")]
    assert sampled_values(THREE_PHASE, ["Power.Offered", "Current.Offered"], context="Sample.Periodic") == []


def test_measurands_the_reading_lacks_are_skipped_and_unknown_names_refused() -> None:
    minimal = {"timestamp": NOW, "meter_id": "M", "energy_Wh_import": {"total": 1.5}}
    samples = sampled_values(minimal, ["SoC", "Temperature", "Voltage", "Power.Active.Import", "Frequency",
                                       "Energy.Active.Import.Interval", "Energy.Active.Import.Register"],
                             context="Sample.Periodic", location="Inlet")
    assert rows(samples) == [("Energy.Active.Import.Register", None, "1.5", "Wh")]
    assert samples[0]["location"] == "Inlet"
    for bad in ("Energy", "Voltage.L4", "voltage", "Current.Import.", ""):
        with pytest.raises(ValueError, match=r"not an OCPP 1\.6 measurand"):
            sampled_values(minimal, ["Energy.Active.Import.Register", bad], context="Sample.Periodic")
    with pytest.raises(ValueError, match="ReadingContext"):
        sampled_values(minimal, ["Voltage"], context="Periodic")
    with pytest.raises(ValueError, match="Location"):
        sampled_values(minimal, ["Voltage"], context="Trigger", location="Grid")


def test_non_finite_and_non_numeric_values_are_left_out() -> None:
    broken = {"timestamp": NOW, "meter_id": "M", "energy_Wh_import": {"total": math.nan},
              "power_W": {"total": math.inf, "L1": 7.0, "L2": True, "L3": "5"}, "voltage_V": {"L1": -math.inf},
              "current_A": {"L1": 10**400}}
    samples = sampled_values(broken, ["Energy.Active.Import.Register", "Power.Active.Import", "Voltage",
                                      "Current.Import"], context="Sample.Periodic")
    assert rows(samples) == [("Power.Active.Import", "L1", "7", "W")]


@pytest.mark.parametrize(("number", "text"), [
    (12345.0, "12345"), (12345, "12345"), (0.1 + 0.2, "0.3"), (1234.56789, "1234.568"), (1e20, "100000000000000000000"),
    (1e-7, "0"), (-1e-7, "0"), (-2.5, "-2.5"), (229.99999, "230"), (0.0005, "0.001"),
])
def test_values_are_fixed_point_with_at_most_three_decimals(number: float, text: str) -> None:
    assert format_value(number) == text


def test_meter_value_uses_the_reading_timestamp_unless_given() -> None:
    value = meter_value(THREE_PHASE, ["Energy.Active.Import.Register"], context="Transaction.Begin")
    assert value["timestamp"] == NOW
    assert value["sampledValue"][0]["context"] == "Transaction.Begin"
    other = meter_value(THREE_PHASE, ["Energy.Active.Import.Register"], context="Trigger",
                        timestamp="2026-03-01T11:00:00Z")
    assert other["timestamp"] == "2026-03-01T11:00:00Z"
    with pytest.raises(ValueError, match="no timestamp"):
        meter_value({"energy_Wh_import": {"total": 1}}, ["Voltage"], context="Trigger")


def test_transaction_data_orders_begin_samples_and_end_and_validates_in_stop_transaction() -> None:
    def at(minute: int, energy: float) -> dict[str, Any]:
        return {**THREE_PHASE, "timestamp": f"2026-03-01T10:{minute:02d}:00Z", "energy_Wh_import": {"total": energy}}

    data = transaction_data(at(0, 100), at(30, 700), ["Energy.Active.Import.Register", "Frequency"],
                            periodic=[at(20, 500), at(10, 300)], clock=[at(15, 400)],
                            aligned_measurands=["Energy.Active.Import.Register"])
    contexts = [(mv["timestamp"][11:16], mv["sampledValue"][0]["context"], mv["sampledValue"][0]["value"])
                for mv in data]
    assert contexts == [("10:00", "Transaction.Begin", "100"), ("10:10", "Sample.Periodic", "300"),
                        ("10:15", "Sample.Clock", "400"), ("10:20", "Sample.Periodic", "500"),
                        ("10:30", "Transaction.End", "700")]
    assert [sv["measurand"] for sv in data[0]["sampledValue"]] == ["Energy.Active.Import.Register", "Frequency"]
    assert [sv["measurand"] for sv in data[2]["sampledValue"]] == ["Energy.Active.Import.Register"]
    validate_request("StopTransaction", {"transactionId": 7, "meterStop": 700, "timestamp": NOW,
                                         "reason": "Local", "transactionData": data})
    assert transaction_data(at(0, 1), at(1, 2), ["SoC"], periodic=[at(0, 1)]) == []


# -- properties -------------------------------------------------------------------------------------------

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
weird = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.integers(-10**6, 10**6))


def phase_group(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


readings = st.fixed_dictionaries(
    {"timestamp": st.just(NOW), "meter_id": st.just("M-1")},
    optional={
        "energy_Wh_import": phase_group(("total", "L1", "L2", "L3"), weird),
        "energy_Wh_export": phase_group(("total", "L1", "L2", "L3"), weird),
        "power_W": phase_group(("total", "L1", "L2", "L3"), weird),
        "reactive_power_VAR": phase_group(("total", "L1", "L2", "L3"), weird),
        "voltage_V": phase_group(("L1", "L2", "L3"), weird),
        "current_A": phase_group(("L1", "L2", "L3", "N"), weird),
        "frequency_Hz": phase_group(("L1", "L2", "L3"), weird),
    })
# Mostly the measurands a reading can supply, so that phase-qualified ones meet readings that have the phase.
SUPPLIED = ["Energy.Active.Import.Register", "Energy.Active.Export.Register", "Power.Active.Import",
            "Power.Active.Export", "Power.Reactive.Import", "Power.Reactive.Export", "Current.Import",
            "Current.Export", "Voltage", "Frequency", "Power.Offered", "Current.Offered"]
some_measurand = st.one_of(st.sampled_from(SUPPLIED), st.sampled_from(sorted(MEASURANDS)))
measurand_names = st.one_of(some_measurand, st.builds(lambda m, p: f"{m}.{p}", some_measurand,
                                                      st.sampled_from(sorted(PHASES))))
contexts = st.sampled_from(["Interruption.Begin", "Interruption.End", "Sample.Clock", "Sample.Periodic",
                            "Transaction.Begin", "Transaction.End", "Trigger", "Other"])
offers = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"power_W": weird, "current_A": weird}))
READING_KEY_OF_PHASE = {"L1": "L1", "L2": "L2", "L3": "L3", "N": "N", "L1-N": "L1", "L2-N": "L2", "L3-N": "L3"}
FIELD_OF = {"Voltage": "voltage_V", "Current.Import": "current_A", "Current.Export": "current_A",
            "Power.Active.Import": "power_W", "Power.Active.Export": "power_W",
            "Power.Reactive.Import": "reactive_power_VAR", "Power.Reactive.Export": "reactive_power_VAR",
            "Energy.Active.Import.Register": "energy_Wh_import", "Energy.Active.Export.Register": "energy_Wh_export",
            "Frequency": "frequency_Hz"}


@settings(max_examples=300, deadline=None)
@given(reading=readings, measurands=st.lists(measurand_names, max_size=12), context=contexts, offered=offers)
def test_any_reading_and_measurands_give_schema_valid_messages(reading: dict[str, Any], measurands: list[str],
                                                               context: str, offered: dict[str, Any] | None) -> None:
    value = meter_value(reading, measurands, context=context, offered=offered)
    for sample in value["sampledValue"]:
        number = float(sample["value"])
        assert math.isfinite(number) and "e" not in sample["value"].lower() and "nan" not in sample["value"].lower()
        assert len(sample["value"].partition(".")[2]) <= 3
        assert sample["context"] == context
        assert sample["measurand"] in {parse_measurand(name)[0] for name in measurands}
        if "phase" in sample:  # only phases the reading has
            field = FIELD_OF[sample["measurand"]]
            assert READING_KEY_OF_PHASE[sample["phase"]] in reading[field]
    if not value["sampledValue"]:
        return
    validate_request("MeterValues", meter_values_request(value))
    data = transaction_data(reading, reading, measurands, periodic=[reading], clock=[reading],
                            aligned_measurands=measurands)
    validate_request("StopTransaction", {"transactionId": 1, "meterStop": 0, "timestamp": NOW,
                                         "transactionData": data})


# -- clock alignment --------------------------------------------------------------------------------------

def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("now", "interval", "expected"), [
    ("2026-03-01 00:00:00", 900, "2026-03-01 00:15:00"),  # exactly on a boundary: strictly after
    ("2026-03-01 00:14:59.999999", 900, "2026-03-01 00:15:00"),
    ("2026-03-01 23:59:59", 900, "2026-03-02 00:00:00"),  # midnight
    ("2026-03-01 10:15:30", 3600, "2026-03-01 11:00:00"),
    ("2026-03-01 22:00:00", 25200, "2026-03-02 00:00:00"),  # 7 h does not divide a day: restarts at midnight
    ("2026-03-01 20:59:59", 25200, "2026-03-01 21:00:00"),
    ("2026-03-01 12:00:00", 86400, "2026-03-02 00:00:00"),
    ("2026-03-01 12:00:00", 100000, "2026-03-02 00:00:00"),
    ("2026-10-25 01:30:00", 3600, "2026-10-25 02:00:00"),  # a European DST change day: UTC knows none
])
def test_next_aligned_time(now: str, interval: int, expected: str) -> None:
    assert next_aligned_time(utc(now), interval) == utc(expected)


def test_next_aligned_time_converts_other_zones_to_utc_and_refuses_bad_input() -> None:
    berlin = timezone(timedelta(hours=2))
    assert next_aligned_time(datetime(2026, 6, 1, 2, 10, tzinfo=berlin), 900) == utc("2026-06-01 00:15:00")
    with pytest.raises(ValueError, match="aware"):
        next_aligned_time(datetime(2026, 6, 1), 900)
    for bad in (0, -60, True):
        with pytest.raises(ValueError, match="positive"):
            next_aligned_time(utc("2026-06-01 00:00:00"), bad)


@settings(max_examples=300, deadline=None)
@given(now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       interval=st.integers(1, 2 * 86400))
def test_aligned_time_is_the_first_boundary_after_now(now: datetime, interval: int) -> None:
    aligned = next_aligned_time(now, interval)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert now < aligned <= midnight + timedelta(days=1)
    since_midnight = (aligned - midnight).total_seconds()
    assert since_midnight == 86400 or since_midnight % interval == 0
    assert aligned - timedelta(seconds=interval) <= now or aligned == midnight + timedelta(days=1)
