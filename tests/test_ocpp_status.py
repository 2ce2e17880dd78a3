"""StatusNotification state machine: statuses from EVSE states, error codes, when to notify, MinimumStatusDuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.ocpp16.status import (
    CHARGER_STATE_STATUS,
    NON_FATAL_ERRORS,
    STATUSES,
    ActiveError,
    StatusInputError,
    StatusMachine,
    StatusNotice,
)

SCHEMA = json.loads((Path(ocpp.__file__).parent / "v16" / "schemas" / "StatusNotification.json").read_text())
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVSE_ERRORS = ["ev_communication_error", "ground_failure", "over_current", "connector_lock_failure",
               "power_switch_failure", "powermeter_failure", "ventilation_required", "board_unavailable",
               "internal_error"]


def evse_state(charger_state: str = "idle", evse_id: int = 1, errors: list[str] | None = None,
               **fields: Any) -> dict[str, Any]:
    """An evse ``state`` var payload as evse_manager publishes it."""
    plugged = charger_state not in ("idle", "reserved", "unavailable")
    state = {"evse_id": evse_id, "connector_id": 1, "charger_state": charger_state, "cp_state": "B" if plugged else "A",
             "plugged": plugged, "enabled": charger_state != "unavailable", "availability_source": None,
             "authorized": charger_state in ("preparing", "charging"), "relay_closed": charger_state == "charging",
             "session_id": "s1" if plugged else None, "transaction_active": charger_state == "charging",
             "reservation_id": 7 if charger_state == "reserved" else None, "active_errors": errors or [],
             "timestamp": "2026-03-01T12:00:00.000Z"}
    state.update(fields)
    return state


def sent(notices: list[StatusNotice]) -> list[tuple[int, str, str]]:
    for notice in notices:
        VALIDATOR.validate(notice.payload())
    return [(n.connector_id, n.status, n.error_code) for n in notices]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_charging_session_walks_through_the_statuses() -> None:
    machine = StatusMachine()
    steps = [("idle", "Available"), ("waiting_for_authorization", "Preparing"), ("preparing", None),
             ("charging", "Charging"), ("suspended_ev", "SuspendedEV"), ("charging", "Charging"),
             ("suspended_evse", "SuspendedEVSE"), ("finishing", "Finishing"), ("idle", "Available"),
             ("reserved", "Reserved"), ("unavailable", "Unavailable")]
    for second, (charger_state, expected) in enumerate(steps):
        notices = machine.update_evse(evse_state(charger_state), at(second))
        assert sent(notices) == ([(1, expected, "NoError")] if expected else [])
    assert machine.status_of(1) == "Unavailable"


def test_payload_carries_the_time_of_the_change_in_rfc3339() -> None:
    notice = StatusMachine().update_evse(evse_state("charging", evse_id=2), at(1.5))[0]
    assert notice.payload() == {"connectorId": 2, "errorCode": "NoError", "status": "Charging",
                                "timestamp": "2026-03-01T12:00:01.500Z"}


def test_an_unchanged_state_sends_nothing_even_with_other_fields_and_messages() -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("charging", errors=["powermeter_failure"]), at(0), {"powermeter_failure": "a"})
    again = evse_state("charging", errors=["powermeter_failure"], timestamp="2026-03-01T12:00:09.000Z")
    assert machine.update_evse(again, at(9), {"powermeter_failure": "another text"}) == []


@pytest.mark.parametrize(("error", "code"), [
    ("ev_communication_error", "EVCommunicationError"), ("ground_failure", "GroundFailure"),
    ("over_current", "OverCurrentFailure"), ("connector_lock_failure", "ConnectorLockFailure"),
    ("power_switch_failure", "PowerSwitchFailure"), ("internal_error", "InternalError"),
])
def test_fatal_evse_errors_fault_the_connector_with_their_code(error: str, code: str) -> None:
    notices = StatusMachine().update_evse(evse_state("faulted", errors=[error]), at(0), {error: "relay welded"})
    assert sent(notices) == [(1, "Faulted", code)]
    assert notices[0].info == "relay welded"
    assert notices[0].vendor_error_code is None


@pytest.mark.parametrize("error", ["ventilation_required", "board_unavailable", "some_future_error"])
def test_other_errors_are_other_error_with_vendor_code(error: str) -> None:
    machine = StatusMachine(vendor_id="com.example.station")
    notice = machine.update_evse(evse_state("faulted", errors=[error]), at(0), {error: "x" * 80})[0]
    assert (notice.status, notice.error_code, notice.vendor_error_code) == ("Faulted", "OtherError", error)
    assert notice.vendor_id == "com.example.station"
    assert notice.info == "x" * 50  # the schema allows 50 characters
    VALIDATOR.validate(notice.payload())


def test_powermeter_failure_is_reported_with_the_current_status() -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("charging"), at(0))
    raised = machine.update_evse(evse_state("charging", errors=["powermeter_failure"]), at(1))
    assert sent(raised) == [(1, "Charging", "PowerMeterFailure")]
    cleared = machine.update_evse(evse_state("charging"), at(2))
    assert sent(cleared) == [(1, "Charging", "NoError")]


def test_a_new_fault_code_while_faulted_is_a_new_notification() -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("faulted", errors=["ev_communication_error"]), at(0))
    worse = machine.update_evse(evse_state("faulted", errors=["ev_communication_error", "ground_failure"]), at(1))
    assert sent(worse) == [(1, "Faulted", "GroundFailure")]
    lesser_left = machine.update_evse(evse_state("faulted", errors=["ev_communication_error"]), at(2))
    assert sent(lesser_left) == [(1, "Faulted", "EVCommunicationError")]
    assert sent(machine.update_evse(evse_state("idle"), at(3))) == [(1, "Available", "NoError")]


def test_each_newly_raised_error_is_reported_most_severe_last() -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("charging"), at(0))
    both = machine.update_evse(evse_state("faulted", errors=["powermeter_failure", "over_current"]), at(1))
    assert sent(both) == [(1, "Faulted", "PowerMeterFailure"), (1, "Faulted", "OverCurrentFailure")]
    lesser = machine.update_evse(evse_state("faulted", errors=["powermeter_failure", "over_current",
                                                               "connector_lock_failure"]), at(2))
    assert sent(lesser) == [(1, "Faulted", "ConnectorLockFailure"), (1, "Faulted", "OverCurrentFailure")]


def test_a_lesser_error_that_returns_is_reported_again() -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("faulted", errors=["ground_failure", "powermeter_failure"]), at(0))
    assert machine.update_evse(evse_state("faulted", errors=["ground_failure"]), at(1)) == []
    back = machine.update_evse(evse_state("faulted", errors=["ground_failure", "powermeter_failure"]), at(2))
    assert sent(back) == [(1, "Faulted", "PowerMeterFailure"), (1, "Faulted", "GroundFailure")]


def test_faulted_without_an_error_still_names_a_code() -> None:
    notices = StatusMachine().update_evse(evse_state("faulted"), at(0))
    assert sent(notices) == [(1, "Faulted", "InternalError")]


def test_connector_zero_follows_station_availability_and_errors() -> None:
    machine = StatusMachine()
    assert sent(machine.update_station(at(0), available=True)) == [(0, "Available", "NoError")]
    assert sent(machine.update_station(at(1), available=False)) == [(0, "Unavailable", "NoError")]
    reader = machine.update_station(at(2), errors=[ActiveError("reader_failure", "PN532 silent")])
    assert sent(reader) == [(0, "Unavailable", "ReaderFailure")]
    assert reader[0].info == "PN532 silent"
    fatal = machine.update_station(at(3), available=True, errors=[ActiveError("mains_loss", "no grid", fatal=True)])
    assert sent(fatal) == [(0, "Faulted", "OtherError")]
    assert sent(machine.update_station(at(4), errors=[])) == [(0, "Available", "NoError")]


def test_minimum_status_duration_drops_short_statuses_and_delays_lasting_ones() -> None:
    machine = StatusMachine(minimum_status_duration_s=5)
    assert sent(machine.update_evse(evse_state("idle"), at(0))) == [(1, "Available", "NoError")]
    assert machine.update_evse(evse_state("waiting_for_authorization"), at(1)) == []
    assert machine.next_due() == at(6)
    assert machine.update_evse(evse_state("idle"), at(3)) == []  # plugged and unplugged within 5 s
    assert machine.next_due() is None
    assert machine.tick(at(30)) == []
    machine.update_evse(evse_state("waiting_for_authorization"), at(40))
    assert machine.tick(at(44)) == []
    late = machine.tick(at(45))
    assert sent(late) == [(1, "Preparing", "NoError")]
    assert late[0].timestamp == at(40)  # the time the status began


def test_minimum_status_duration_never_delays_faults_or_errors() -> None:
    machine = StatusMachine(minimum_status_duration_s=60)
    machine.update_evse(evse_state("charging"), at(0))
    assert sent(machine.update_evse(evse_state("faulted", errors=["over_current"]), at(1))) == [
        (1, "Faulted", "OverCurrentFailure")]
    assert sent(machine.update_evse(evse_state("finishing", errors=[]), at(2))) == [(1, "Finishing", "NoError")]


def test_snapshot_reports_every_connector_and_counts_as_sent() -> None:
    machine = StatusMachine(minimum_status_duration_s=10)
    machine.update_evse(evse_state("idle", evse_id=2), at(0))
    machine.update_evse(evse_state("idle", evse_id=1), at(0))
    machine.update_evse(evse_state("charging", evse_id=1), at(1))  # held back
    everything = machine.snapshot(at(2))
    assert sent(everything) == [(0, "Available", "NoError"), (1, "Charging", "NoError"), (2, "Available", "NoError")]
    assert all(notice.timestamp == at(2) for notice in everything)
    assert machine.tick(at(100)) == []  # Charging went out with the snapshot
    assert sent(machine.snapshot(at(3), connector_id=2)) == [(2, "Available", "NoError")]
    with pytest.raises(StatusInputError, match="connector 3 is unknown"):
        machine.snapshot(at(3), connector_id=3)


@pytest.mark.parametrize(("state", "message"), [
    ({"charger_state": "idle", "active_errors": []}, "evse_id"),
    (evse_state("idle", evse_id=0), "evse_id"),
    (evse_state("dancing"), "charger_state 'dancing'"),
    (evse_state("idle", active_errors="ground_failure"), "active_errors"),
    ("idle", "must be an object"),
])
def test_bad_state_is_rejected_and_changes_nothing(state: Any, message: str) -> None:
    machine = StatusMachine()
    machine.update_evse(evse_state("charging"), at(0))
    with pytest.raises(StatusInputError, match=message):
        machine.update_evse(state, at(1))
    assert machine.update_evse(evse_state("charging"), at(2)) == []


def test_naive_time_and_bad_station_input_are_rejected() -> None:
    machine = StatusMachine()
    with pytest.raises(StatusInputError, match="timezone-aware"):
        machine.update_evse(evse_state(), datetime(2026, 3, 1, 12))
    with pytest.raises(StatusInputError, match="station errors"):
        machine.update_station(at(0), available=False, errors=["ground_failure"])  # type: ignore[list-item]
    assert machine.status_of(0) == "Available"  # the availability in the rejected call was not applied
    with pytest.raises(ValueError, match="MinimumStatusDuration"):
        machine.minimum_status_duration_s = -1


# -- properties -----------------------------------------------------------------------------------
error_lists = st.lists(st.sampled_from([*EVSE_ERRORS, "vendor_thing"]), unique=True, max_size=3)
steps = st.lists(st.tuples(st.integers(1, 3), st.sampled_from(sorted(CHARGER_STATE_STATUS)), error_lists,
                           st.integers(0, 8)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from([0, 5]))
def test_every_notice_is_valid_and_faulted_means_a_fatal_error(
        sequence: list[tuple[int, str, list[str], int]], minimum: int) -> None:
    machine = StatusMachine(minimum_status_duration_s=minimum)
    now = T0
    last_sent: dict[int, tuple[str, str]] = {}
    for evse_id, charger_state, errors, gap in sequence:
        now += timedelta(seconds=gap)
        state = evse_state(charger_state, evse_id=evse_id, errors=errors)
        notices = machine.update_evse(state, now) + machine.tick(now)
        for notice in notices:
            VALIDATOR.validate(notice.payload())
            assert notice.status in STATUSES
            last_sent[notice.connector_id] = (notice.status, notice.error_code)
        fatal = any(error not in NON_FATAL_ERRORS for error in errors)
        assert (machine.status_of(evse_id) == "Faulted") == (fatal or charger_state == "faulted")
        assert machine.update_evse(state, now) == []  # the same state again: nothing new
    for notice in machine.tick(now + timedelta(seconds=minimum)):
        last_sent[notice.connector_id] = (notice.status, notice.error_code)
    for connector_id, (status, _code) in last_sent.items():
        assert status == machine.status_of(connector_id)  # what the CSMS saw last is the truth in the end


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from(
    ["reader_failure", "weak_signal", "mains_loss", "internal_error"]), unique=True, max_size=2)), min_size=1))
def test_connector_zero_only_shows_station_statuses(sequence: list[tuple[bool, list[str]]]) -> None:
    machine = StatusMachine()
    for second, (available, errors) in enumerate(sequence):
        for notice in machine.update_station(at(second), available=available,
                                             errors=[ActiveError(kind) for kind in errors]):
            VALIDATOR.validate(notice.payload())
            assert notice.status in ("Available", "Unavailable", "Faulted")
        fatal = any(kind not in NON_FATAL_ERRORS for kind in errors)
        assert (machine.status_of(0) == "Faulted") == fatal
