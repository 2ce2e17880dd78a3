"""The pure board + EV + meter model of board_simulator: unit tests and properties over random event sequences."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.iec61851 import current_for_duty_cycle, duty_cycle_for_current
from chargepoint.registry import ModuleRegistry, load_module_class

_info = ModuleRegistry([]).find("board_simulator")
assert _info is not None
load_module_class(_info)  # imports the package as the runtime does
core = importlib.import_module(f"chargepoint_ext.{_info.name}.core")
saved_module = importlib.import_module(f"chargepoint_ext.{_info.name}.saved")
BoardModel = core.BoardModel
BoardSettings = core.BoardSettings


def model(**settings_changes: Any) -> Any:
    return BoardModel(BoardSettings(**settings_changes), last_time=0.0)


def charging(current_A: float = 16, **settings_changes: Any) -> Any:
    board = model(**settings_changes)
    assert board.plug_in(0.0) is True
    board.set_pwm(0.0, duty_cycle_for_current(current_A))
    assert board.allow_power_on(0.0, True, 3) is True
    return board


# -- control pilot --------------------------------------------------------------------------

def test_cp_follows_plug_pwm_and_ev_readiness() -> None:
    board = model()
    assert board.cp_state == "A"
    board.plug_in(1.0)
    assert board.cp_state == "B"
    board.set_pwm(1.0, 5.0)  # digital communication only: a basic EV cannot charge with it
    assert board.cp_state == "B"
    board.set_pwm(1.0, duty_cycle_for_current(16))
    assert board.cp_state == "C"
    board.set_paused(1.0, True)
    assert board.cp_state == "B"
    board.set_paused(1.0, False)
    board.pwm_off(1.0)
    assert board.cp_state == "B"
    board.enable(1.0, False)
    assert board.cp_state == "F"
    board.enable(1.0, True)
    board.unplug(1.0)
    assert board.cp_state == "A"


def test_relay_closes_only_in_c_or_d_and_opens_without_an_ev() -> None:
    board = model()
    assert board.allow_power_on(0.0, True, 3) is False
    board.plug_in(0.0)
    assert board.allow_power_on(0.0, True, 3) is False
    board.set_pwm(0.0, duty_cycle_for_current(16))
    assert board.allow_power_on(0.0, True, 2) is True
    assert (board.relay_closed, board.relay_phases) == (True, 2)
    board.set_paused(0.0, True)
    assert board.relay_closed, "in B the relay is the EVSE manager's business"
    board.unplug(0.0)
    assert (board.relay_closed, board.relay_phases) == (False, 0)


# -- meter ----------------------------------------------------------------------------------

def test_ev_draws_min_of_offered_and_its_maximum_on_common_phases() -> None:
    board = charging(16)
    assert board.meter_view().current_A == (16.0, 16.0, 16.0)
    assert sum(board.meter_view().power_W) == pytest.approx(16 * 230 * 3)
    board.set_ev_max_current(0.0, 10)
    assert board.meter_view().current_A == (10.0, 10.0, 10.0)
    one_phase_ev = model(phases=3)
    one_phase_ev.plug_in(0.0, max_current_A=32, phases=1)
    one_phase_ev.set_pwm(0.0, duty_cycle_for_current(20))
    one_phase_ev.allow_power_on(0.0, True, 3)
    assert one_phase_ev.meter_view().current_A == (20.0, 0.0, 0.0)
    single_phase_board = charging(16, phases=1)
    assert single_phase_board.meter_view().current_A == (16.0,)
    assert single_phase_board.meter_view().voltage_V == (230.0,)


def test_energy_integrates_power_over_scaled_time() -> None:
    board = charging(16, time_scale=3600)
    board.advance(1.0)  # one real second is one simulated hour
    assert sum(board.meter_view().energy_Wh) == pytest.approx(11040)
    assert board.ev.energy_Wh == pytest.approx(11040)
    board.advance(0.5)  # the clock going backwards adds nothing and removes nothing
    assert sum(board.meter_view().energy_Wh) == pytest.approx(11040)
    board.set_paused(2.0, True)
    board.advance(5.0)
    assert sum(board.meter_view().energy_Wh) == pytest.approx(11040 * 2)


def test_full_ev_stops_at_exactly_its_energy_and_says_when() -> None:
    board = model(time_scale=3600)
    board.plug_in(0.0, energy_to_full_Wh=5520)
    board.set_pwm(0.0, duty_cycle_for_current(16))
    board.allow_power_on(0.0, True, 3)
    assert board.next_change_at() == pytest.approx(0.5)
    board.advance(3.0)
    assert board.ev.energy_Wh == 5520
    assert sum(board.energy_Wh) == pytest.approx(5520)
    assert board.cp_state == "B" and board.ev_view().paused
    assert board.next_change_at() is None


# -- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "cp_state"), [
    ("diode_fault", "F"), ("ventilation_required", "D"), ("rcd", "C"), ("overcurrent", "C"), ("cp_short", "E"),
])
def test_protective_faults_open_the_relay_and_block_it(kind: str, cp_state: str) -> None:
    board = charging(16)
    board.inject_fault(1.0, kind)
    assert kind in board.board_errors()
    assert board.cp_state == cp_state
    assert not board.relay_closed and board.meter_view().current_A == (0.0, 0.0, 0.0)
    assert board.allow_power_on(1.0, True, 3) is False
    board.clear_fault(1.0, kind)
    assert board.board_errors() == {} and board.cp_state == "C"
    assert board.allow_power_on(1.0, True, 3) is True


def test_ventilation_charges_in_d_where_the_station_ventilates() -> None:
    board = model(supports_ventilation=True)
    board.plug_in(0.0, ventilation=True)
    board.set_pwm(0.0, duty_cycle_for_current(16))
    assert board.cp_state == "D" and board.board_errors() == {}
    assert board.allow_power_on(0.0, True, 3) is True
    assert board.meter_view().current_A == (16.0, 16.0, 16.0)


def test_welded_relay_stays_closed_until_repaired() -> None:
    board = charging(16)
    board.inject_fault(0.0, "relay_welded")
    assert board.allow_power_on(0.0, False, 3) is False
    assert board.relay_closed
    board.clear_fault(0.0)
    assert not board.relay_closed, "repaired, it follows the open command it was given"


def test_ev_faults_need_an_ev_and_leave_with_it() -> None:
    board = model()
    with pytest.raises(ValueError, match="plug one in first"):
        board.inject_fault(0.0, "diode_fault")
    board.plug_in(0.0)
    board.inject_fault(0.0, "diode_fault")
    board.inject_fault(0.0, "rcd")
    board.unplug(0.0)
    assert set(board.board_errors()) == {"rcd"}, "an RCD trip latches until cleared"
    with pytest.raises(ValueError, match="unknown fault"):
        board.inject_fault(0.0, "meteor")


def test_lock_and_its_fault() -> None:
    board = model()
    assert board.set_lock(0.0, True) is True and board.board_view().lock_state == "locked"
    board.inject_fault(0.0, "lock_fault")
    assert board.set_lock(0.0, False) is False and board.board_view().lock_state == "locked"
    with pytest.raises(ValueError, match="no connector lock"):
        model(has_lock=False).set_lock(0.0, True)


def test_cable_coding() -> None:
    board = model(pp_ampacity_A=32)
    assert board.board_view().pp_ampacity_A is None
    board.plug_in(0.0, cable_ampacity_A=20)
    assert board.board_view().pp_ampacity_A == 20
    tethered = model(pp_ampacity_A=None)
    tethered.plug_in(0.0, cable_ampacity_A=20)
    assert tethered.board_view().pp_ampacity_A is None


# -- persistence ----------------------------------------------------------------------------

def test_saved_state_round_trip_and_bad_saved_state() -> None:
    board = charging(16, time_scale=3600)
    board.advance(0.25)
    saved = saved_module.saved_state(board)
    again = model(time_scale=3600)
    saved_module.restore(again, copy.deepcopy(saved))
    assert saved_module.saved_state(again) == saved
    assert again.cp_state == "B" and not again.relay_closed, "after a restart: EV plugged, no PWM, relay open"
    for bad in ([], {"energy_Wh": [1, 2]}, {"energy_Wh": [1, 2, -3], "ev": None},
                {"energy_Wh": [0, 0, 0], "ev": {"max_current_A": 16}},
                {"energy_Wh": [0, 0, 0], "ev": {**saved["ev"], "phases": 7}}):
        fresh = model()
        with pytest.raises(ValueError):
            saved_module.restore(fresh, bad)
        assert saved_module.saved_state(fresh) == saved_module.saved_state(model())


def test_state_file_is_written_at_once_on_plug_changes_and_energy_alone_once_a_second() -> None:
    board = model(time_scale=3600)
    due = saved_module.save_due
    empty = saved_module.saved_state(board)
    assert due(None, empty, power_changed=False, seconds_since_save=0.0), "the first state is written at once"
    assert not due(empty, empty, power_changed=False, seconds_since_save=99.0), "nothing changed"
    board.plug_in(0.0)
    plugged = saved_module.saved_state(board)
    assert due(empty, plugged, power_changed=False, seconds_since_save=0.0)
    board.set_pwm(0.0, duty_cycle_for_current(16))
    board.allow_power_on(0.0, True, 3)
    board.advance(0.1)
    counting = saved_module.saved_state(board)
    assert counting["ev"]["energy_Wh"] > 0
    assert not due(plugged, counting, power_changed=False, seconds_since_save=0.1)
    assert due(plugged, counting, power_changed=False, seconds_since_save=1.0)
    assert due(plugged, counting, power_changed=True, seconds_since_save=0.1), "power stopped or started"
    board.set_ev_max_current(0.1, 10)
    assert due(counting, saved_module.saved_state(board), power_changed=False, seconds_since_save=0.0)
    board.unplug(0.2)
    assert due(counting, saved_module.saved_state(board), power_changed=False, seconds_since_save=0.0)


# -- properties over random event sequences -------------------------------------------------

ALLOW_POWER_ON = st.tuples(st.just("allow_power_on"), st.fixed_dictionaries({"allowed": st.booleans(),
                                                                            "phases": st.integers(1, 3)}))
EVENTS = st.one_of(
    ALLOW_POWER_ON,
    st.tuples(st.just("plug_in"), st.fixed_dictionaries({
        "max_current_A": st.none() | st.floats(0, 80), "phases": st.none() | st.integers(1, 3),
        "cable_ampacity_A": st.none() | st.sampled_from([13, 20, 32, 63, 70]),
        "energy_to_full_Wh": st.none() | st.floats(1, 50_000), "ventilation": st.booleans()})),
    st.tuples(st.just("unplug"), st.just({})),
    st.tuples(st.just("set_paused"), st.fixed_dictionaries({"paused": st.booleans()})),
    st.tuples(st.just("set_pwm"), st.fixed_dictionaries({"duty_percent": st.floats(0, 100)})),
    st.tuples(st.just("pwm_off"), st.just({})),
    ALLOW_POWER_ON,
    st.tuples(st.just("enable"), st.fixed_dictionaries({"enabled": st.booleans()})),
    st.tuples(st.just("set_ev_max_current"), st.fixed_dictionaries({"current_A": st.floats(0, 80)})),
    st.tuples(st.just("inject_fault"), st.fixed_dictionaries({"kind": st.sampled_from(core.FAULT_KINDS)})),
    st.tuples(st.just("clear_fault"), st.fixed_dictionaries({"kind": st.none() | st.sampled_from(core.FAULT_KINDS)})),
    st.tuples(st.just("set_lock"), st.fixed_dictionaries({"locked": st.booleans()})),
    st.tuples(st.just("advance"), st.just({})),
)
SETTINGS = st.builds(BoardSettings, phases=st.integers(1, 3), pp_ampacity_A=st.sampled_from([None, 32]),
                     supports_ventilation=st.booleans(), time_scale=st.sampled_from([1.0, 60.0, 3600.0]),
                     ev_phases=st.integers(1, 3))


def observable(board: Any) -> tuple[Any, ...]:
    return (board.board_view(), board.ev_view(), board.meter_view(), saved_module.saved_state(board),
            board.relay_commanded)


def check_invariants(board: Any) -> None:
    currents = board.meter_view().current_A
    cp = board.cp_state
    if any(currents):
        assert board.relay_closed and cp in ("C", "D")
        assert max(currents) <= board.offered_current_A
        assert max(currents) <= board.ev.max_current_A
        assert sum(1 for amps in currents if amps) <= min(board.ev.phases, board.relay_phases)
    ev = board.ev
    if "cp_short" in board.faults:
        assert cp == "E"
    elif not board.enabled:
        assert cp == "F"
    elif ev is None:
        assert cp == "A"
    elif "diode_fault" in board.faults:
        assert cp == "F"
    elif cp in ("C", "D"):
        assert not ev.paused and not ev.full and current_for_duty_cycle(board.duty_percent) > 0
        assert (cp == "D") == (ev.wants_ventilation or "ventilation_required" in board.faults)
    else:
        assert cp == "B"
        assert ev.paused or ev.full or board.duty_percent is None or current_for_duty_cycle(board.duty_percent) == 0
    if board.relay_closed and "relay_welded" not in board.faults:
        assert cp in ("B", "C", "D")
        assert not core.PROTECTIVE_ERRORS & board.board_errors().keys()
    assert set(board.faults) - {"ventilation_required"} <= set(board.board_errors())
    assert not core.EV_FAULTS & set(board.faults) or ev is not None


@settings(max_examples=300, deadline=None)
@given(board_settings=SETTINGS, start_charging=st.booleans(),
       steps=st.lists(st.tuples(EVENTS, st.floats(0, 600)), max_size=40))
def test_random_event_sequences_keep_the_board_consistent(board_settings: Any, start_charging: bool,
                                                          steps: list[tuple[Any, float]]) -> None:
    board = BoardModel(board_settings, last_time=0.0)
    if start_charging:
        board.plug_in(0.0)
        board.set_pwm(0.0, duty_cycle_for_current(16))
        board.allow_power_on(0.0, True, 3)
    now = 0.0
    for (name, args), elapsed in steps:
        now += elapsed
        registers = list(board.energy_Wh)
        ev_energy = board.ev.energy_Wh if board.ev is not None else None
        before = observable(board)
        try:
            getattr(board, name)(now, **args)
        except ValueError:
            assert observable(board) == before, f"{name}{args} refused but changed the board"
            board.advance(now)
        assert all(after >= earlier for after, earlier in zip(board.energy_Wh, registers, strict=True))
        if ev_energy is not None and board.ev is not None:
            assert board.ev.energy_Wh - ev_energy == pytest.approx(sum(board.energy_Wh) - sum(registers), abs=1e-6)
            if board.ev.energy_to_full_Wh is not None and ev_energy <= board.ev.energy_to_full_Wh:
                assert board.ev.energy_Wh <= board.ev.energy_to_full_Wh
        check_invariants(board)
