"""powermeter_modbus: the pure poller (retries, errors, staleness, plausibility) and the config merging."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.interfaces import check, load_interface
from chargepoint.modbus.codec import encode
from chargepoint.modbus.model import MeterModel, ModelError, load_model
from chargepoint.modbus.plan import ReadRequest
from modules.powermeter_modbus.poller import (
    COMMUNICATION_FAULT,
    STALE_DATA,
    Action,
    ClearError,
    MeterPoller,
    Note,
    PollSettings,
    Publish,
    RaiseError,
    Read,
    ReadFailure,
)
from modules.powermeter_modbus.settings import SettingsError, line_conflict, meter_settings

SDM630 = load_model("sdm630")
EM24 = load_model("em24")
SCHEMA = load_interface("powermeter").vars["powermeter"].schema
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUT = ReadFailure("timeout", "no reply from slave 1 within 0.5 s")


def values(energy_Wh: float, power_W: float = 7400.0) -> dict[str, dict[str, float]]:
    third = power_W / 3
    return {"energy_Wh_import": {"total": energy_Wh}, "energy_Wh_export": {"total": 0.0},
            "power_W": {"total": power_W, "L1": third, "L2": third, "L3": third},
            "voltage_V": {"L1": 230.0, "L2": 231.0, "L3": 229.0}, "current_A": {"L1": 10.7, "L2": 10.7, "L3": 10.7},
            "frequency_Hz": {"L1": 50.0}}


def words_for(model: MeterModel, request: ReadRequest, quantities: dict[str, dict[str, float]]) -> list[int]:
    """The register image a meter with ``quantities`` answers ``request`` with (NaN: "not available")."""
    words = [0] * request.count
    for register in request.registers:
        value = quantities.get(register.quantity, {}).get(register.phase, 0.0)
        encoded, exponent = encode(register, value)
        for offset, word in enumerate(encoded):
            words[register.address - request.address + offset] = word
        if register.exponent_address is not None and exponent is not None:
            words[register.exponent_address - request.address] = exponent
    return words


class Bench:
    """A poller on a simulated clock; ``cycle`` answers every read from a meter holding ``quantities``."""

    def __init__(self, model: MeterModel = SDM630, poll: PollSettings | None = None) -> None:
        self.model = model
        self.now = 0.0
        self.poller = MeterPoller(model, "meter-1", poll or PollSettings(1.0, 10.0, 2), self.now)
        self.log: list[Action] = []

    def at(self, now: float) -> list[Action]:
        self.now = now
        actions = self.poller.tick(now)
        self.log += actions
        return actions

    def answer(self, actions: list[Action], quantities: dict[str, dict[str, float]] | None,
               failure: ReadFailure = TIMEOUT) -> list[Action]:
        """Answer each Read in ``actions`` (and the reads that follow) until none is outstanding."""
        done: list[Action] = []
        pending = [a for a in actions if isinstance(a, Read)]
        while pending:
            read = pending.pop(0)
            if quantities is None:
                out = self.poller.read_failed(self.now, failure)
            else:
                out = self.poller.read_done(self.now, WHEN, words_for(self.model, read.request, quantities))
            self.log += out
            done += out
            pending += [a for a in out if isinstance(a, Read)]
        return done


def published(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.reading for a in actions if isinstance(a, Publish)]


def errors(actions: list[Action]) -> list[tuple[str, str]]:
    return [("raise", a.error_type) if isinstance(a, RaiseError) else ("clear", a.error_type)
            for a in actions if isinstance(a, RaiseError | ClearError)]


def test_a_good_cycle_publishes_a_schema_valid_reading_with_timestamp_and_meter_id() -> None:
    bench = Bench()
    actions = bench.answer(bench.at(0.0), values(1234567.5))
    [reading] = published(actions)
    assert check(SCHEMA, reading) is None
    assert reading["timestamp"] == "2026-03-01T12:00:00.000Z" and reading["meter_id"] == "meter-1"
    assert reading["energy_Wh_import"]["total"] == pytest.approx(1234567.5, abs=0.1)
    assert reading["voltage_V"] == pytest.approx({"L1": 230.0, "L2": 231.0, "L3": 229.0})
    assert errors(actions) == []
    assert bench.poller.deadline == 1.0  # the next poll


def test_a_read_is_retried_retries_times_before_communication_fault_and_a_good_cycle_clears_it() -> None:
    bench = Bench(poll=PollSettings(1.0, 10.0, retries=2))
    first = bench.at(0.0)
    [read] = first
    again = bench.poller.read_failed(0.1, TIMEOUT)
    assert [a for a in again if isinstance(a, Read)] == [Read(read.request, 2)]
    again = bench.poller.read_failed(0.2, TIMEOUT)
    assert [a for a in again if isinstance(a, Read)] == [Read(read.request, 3)]
    final = bench.poller.read_failed(0.3, TIMEOUT)
    assert not any(isinstance(a, Read) for a in final)
    [fault] = [a for a in final if isinstance(a, RaiseError)]
    assert fault.error_type == COMMUNICATION_FAULT and "no reply" in fault.message and "3 tries" in fault.message
    assert errors(bench.answer(bench.at(1.0), None)) == []  # raised once per outage
    recovered = bench.answer(bench.at(6.0), values(10.0))  # fault_poll_interval_s later
    assert errors(recovered) == [("clear", COMMUNICATION_FAULT)] and len(published(recovered)) == 1


def test_a_meter_in_communication_fault_is_polled_slower_with_one_try_per_read() -> None:
    """A dead meter on a shared line: one timeout every fault_poll_interval_s instead of retries + 1 timeouts
    every poll, so the other meters keep their intervals; it is picked up again when it answers."""
    bench = Bench(poll=PollSettings(1.0, 10.0, retries=2, fault_poll_interval_s=4.0))
    bench.answer(bench.at(0.0), None)
    assert COMMUNICATION_FAULT in bench.poller.active_errors
    tries_per_cycle = []
    for now in (1.0, 2.0, 3.0, 5.0, 8.0, 9.0):
        started = bench.at(now)
        reads = [a for a in started if isinstance(a, Read)]
        tries_per_cycle.append(len(reads) + sum(isinstance(a, Read) for a in bench.answer(started, None)))
    assert tries_per_cycle == [1, 0, 0, 1, 0, 1], "polled at 1, then every 4 s, one try each"
    assert bench.poller.next_poll_at == 13.0
    recovered = bench.answer(bench.at(13.0), values(10.0))
    assert ("clear", COMMUNICATION_FAULT) in errors(recovered) and len(published(recovered)) == 1
    assert bench.poller.next_poll_at == 14.0, "back to poll_interval_s"
    bench.at(14.0)
    assert [a.attempt for a in bench.poller.read_failed(14.0, TIMEOUT) if isinstance(a, Read)] == [2], \
        "retries again once it answered"


def test_a_failure_within_the_retries_raises_nothing() -> None:
    bench = Bench(poll=PollSettings(1.0, 10.0, retries=1))
    [_read] = bench.at(0.0)
    retry = bench.poller.read_failed(0.0, ReadFailure("crc", "CRC error"))
    actions = bench.answer(retry, values(5.0))
    assert errors(actions) == [] and len(published(actions)) == 1


def test_stale_data_is_raised_after_stale_after_s_without_a_reading_and_cleared_by_the_next() -> None:
    bench = Bench(poll=PollSettings(1.0, 3.0, retries=0, fault_poll_interval_s=1.0))
    bench.answer(bench.at(0.0), values(1.0))
    for second in (1.0, 2.0):
        assert errors(bench.answer(bench.at(second), None)) == ([("raise", COMMUNICATION_FAULT)] if second == 1.0
                                                                  else [])
    assert bench.poller.deadline == 3.0
    due = bench.at(3.0)  # stale, and the next poll starts
    assert errors(due) == [("raise", STALE_DATA)]
    back = bench.answer(due, values(2.0))
    assert ("clear", STALE_DATA) in errors(back) and ("clear", COMMUNICATION_FAULT) in errors(back)


def test_energy_going_backwards_is_rejected_and_logged_not_published() -> None:
    bench = Bench()
    bench.answer(bench.at(0.0), values(1000.0))
    actions = bench.answer(bench.at(1.0), values(900.0))
    assert published(actions) == []
    [note] = [a for a in actions if isinstance(a, Note) and a.event == "reading rejected"]
    assert "went backwards from 1000 to 900" in note.fields["reason"]
    assert published(bench.answer(bench.at(2.0), values(1000.5)))


def test_not_available_values_are_left_out_and_an_unavailable_import_energy_rejects_the_reading() -> None:
    bench = Bench()
    quantities = values(1000.0)
    quantities["voltage_V"]["L2"] = math.nan
    [reading] = published(bench.answer(bench.at(0.0), quantities))
    assert reading["voltage_V"] == pytest.approx({"L1": 230.0, "L3": 229.0})
    assert any(isinstance(a, Note) and a.event == "values not available, left out" for a in bench.log)
    quantities["energy_Wh_import"]["total"] = math.nan
    actions = bench.answer(bench.at(1.0), quantities)
    assert published(actions) == []
    assert any(isinstance(a, Note) and a.fields.get("reason") == "import energy not available" for a in actions)


def test_a_reply_with_the_wrong_number_of_registers_counts_as_a_failed_try() -> None:
    bench = Bench(poll=PollSettings(1.0, 10.0, retries=0))
    bench.at(0.0)
    actions = bench.poller.read_done(0.0, WHEN, [1, 2, 3])
    assert errors(actions) == [("raise", COMMUNICATION_FAULT)]
    assert "3 registers instead of" in next(a for a in actions if isinstance(a, RaiseError)).message


# -- properties -------------------------------------------------------------------------------------------------

step = st.tuples(st.floats(0.0, 3.0), st.one_of(st.none(), st.floats(0.0, 1e7)),
                 st.integers(0, 3))  # (time advance, energy or None = meter silent, failures before success)


def run_cycle(bench: Bench, energy: float | None, failures: int) -> list[Action]:
    """Tick; each read of a started cycle fails ``failures`` times, then succeeds (never when ``energy`` is None)."""
    out = bench.at(bench.now)
    reads = [a for a in out if isinstance(a, Read)]
    while reads:
        read = reads.pop()
        if energy is None or read.attempt <= failures:
            new = bench.poller.read_failed(bench.now, TIMEOUT)
        else:
            new = bench.poller.read_done(bench.now, WHEN, words_for(bench.model, read.request, values(energy)))
        bench.log += new
        out += new
        reads = [a for a in new if isinstance(a, Read)]
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=40), st.integers(0, 3), st.floats(0.5, 5.0))
def test_published_energy_never_decreases_and_the_errors_follow_the_rules(
        steps: list[tuple[float, float | None, int]], retries: int, stale_after_s: float) -> None:
    bench = Bench(EM24, PollSettings(1.0, stale_after_s, retries))
    last_energy, last_good, comm_fault = -1.0, 0.0, False
    for advance, energy, failures in steps:
        bench.now += advance
        cycle_due = bench.now >= bench.poller.next_poll_at
        actions = run_cycle(bench, energy, failures)
        if cycle_due:  # while the fault is raised, a read gets one try
            comm_fault = energy is None or failures > (0 if comm_fault else retries)
        for reading in published(actions):
            assert check(SCHEMA, reading) is None
            assert reading["energy_Wh_import"]["total"] >= last_energy
            last_energy, last_good = reading["energy_Wh_import"]["total"], bench.now
        assert (COMMUNICATION_FAULT in bench.poller.active_errors) == comm_fault
        assert (STALE_DATA in bench.poller.active_errors) == (bench.now - last_good >= stale_after_s)
    raised = [a for a in bench.log if isinstance(a, RaiseError | ClearError)]
    for kind in (COMMUNICATION_FAULT, STALE_DATA):  # raise and clear alternate, starting with a raise
        sequence = [isinstance(a, RaiseError) for a in raised if a.error_type == kind]
        assert sequence == [index % 2 == 0 for index in range(len(sequence))]


# -- settings ---------------------------------------------------------------------------------------------------

BASE = {"model": "sdm120", "meter_id": None, "slave_id": None, "port": "/dev/ttyUSB0", "baudrate": None,
        "parity": None, "stopbits": None, "host": None, "tcp_port": 502, "timeout_s": 0.5,
        "inter_request_delay_ms": 0, "retries": 2, "poll_interval_s": 1, "stale_after_s": 10,
        "fault_poll_interval_s": 5}


def test_model_defaults_fill_what_the_config_leaves_out() -> None:
    meter = meter_settings(BASE, "grid_meter", Path("/etc/chargepoint"))
    assert (meter.line.baudrate, meter.line.parity, meter.line.stopbits, meter.slave_id) == (2400, "N", 1, 1)
    assert meter.meter_id == "grid_meter"
    explicit = meter_settings(BASE | {"baudrate": 9600, "slave_id": 7, "meter_id": "SN123"}, "m", Path("/"))
    assert (explicit.line.baudrate, explicit.slave_id, explicit.meter_id) == (9600, 7, "SN123")


def test_a_model_file_path_is_relative_to_the_wiring_file(tmp_path: Path) -> None:
    (tmp_path / "meters").mkdir()
    (tmp_path / "meters" / "mine.yaml").write_text((Path(load_model.__code__.co_filename).parent / "models"
                                                    / "sdm120.yaml").read_text())
    meter = meter_settings(BASE | {"model": "meters/mine.yaml", "port": "line"}, "m", tmp_path)
    assert meter.model.name == "mine" and meter.line.port == str(tmp_path / "line")


def test_bad_configs_are_rejected_with_the_reason() -> None:
    with pytest.raises(SettingsError, match=r"either port .* or host .*not both"):
        meter_settings(BASE | {"host": "192.0.2.7"}, "m", Path("/"))
    with pytest.raises(SettingsError, match="not neither"):
        meter_settings(BASE | {"port": None}, "m", Path("/"))
    with pytest.raises(SettingsError, match="baudrate: only for a serial line"):
        meter_settings(BASE | {"port": None, "host": "192.0.2.7", "baudrate": 9600}, "m", Path("/"))
    with pytest.raises(ModelError, match=r"unknown meter model 'sdm12'.*built-in models: .*sdm120"):
        meter_settings(BASE | {"model": "sdm12"}, "m", Path("/"))


def test_meters_on_one_line_must_agree_on_the_line_settings() -> None:
    sdm120 = meter_settings(BASE, "meter_a", Path("/"))
    sdm630 = meter_settings(BASE | {"model": "sdm630", "slave_id": 2}, "meter_b", Path("/"))
    problem = line_conflict(sdm630, "meter_a", sdm120.line)
    assert problem is not None
    assert "baudrate 9600 (model default) but meter_a uses 2400" in problem
    agreed = meter_settings(BASE | {"model": "sdm630", "slave_id": 2, "baudrate": 2400}, "meter_b", Path("/"))
    assert line_conflict(agreed, "meter_a", sdm120.line) is None
    assert sdm120.line.same_line(agreed.line)
