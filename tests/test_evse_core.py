"""The EVSE session state machine, driven directly: the main flows a user or a CSMS sees."""

from __future__ import annotations

from typing import Any

import pytest
from evse_harness import SOCKET_WITH_LOCK, T0, Harness

from chargepoint.timestamps import to_rfc3339
from modules.evse_manager.actions import Lock, PersistSession, Publish, PwmOff, RaiseError, SetPwm, SetRelay, Unlock
from modules.evse_manager.model import ConfigError, EvseConfig


def test_start_opens_relay_stops_pwm_and_publishes_idle() -> None:
    h = Harness()
    assert h.actions[:2] == [SetRelay(False, 0), PwmOff()]
    state = h.last("state")
    assert state["charger_state"] == "idle" and state["enabled"] and state["session_id"] is None
    assert h.last("limits")["max_current_A"] == 32 and h.last("limits")["limited_by"] == "config"


def test_plug_then_authorize_charges_and_unplug_finishes() -> None:
    h = Harness()
    h.feed("meter_reading", 1000.0, 0.0)
    h.feed("cp_state", "B")
    assert h.event_types() == ["session_started"]
    assert h.core.charger_state == "waiting_for_authorization"
    assert h.pwm_duty is None
    assert h.cmd("authorize", "04A2B3C4", "rfid", "FLEET", None) is True
    started = h.events("transaction_started")[0]
    assert started["id_token"] == "04A2B3C4" and started["meter_Wh"] == 1000.0 and started["parent_id"] == "FLEET"
    assert h.pwm_duty == 53.33 and not h.relay_closed  # 32 A offered, EV still in B
    assert h.core.charger_state == "preparing"
    h.feed("cp_state", "C")
    assert h.relay_closed and h.core.charger_state == "charging"
    h.feed("meter_reading", 1500.0, 11000.0)
    assert h.last("session")["energy_Wh"] == 500.0 and h.last("session")["power_W"] == 11000.0
    h.clear()
    h.feed("cp_state", "A")
    assert h.actions[0] == SetRelay(False, 0)
    finished = h.events("transaction_finished")[0]
    assert finished["reason"] == "EVDisconnected" and finished["meter_Wh"] == 1500.0
    assert h.event_types() == ["transaction_finished", "session_finished"]
    assert h.events()[0]["session_id"] == started["session_id"]
    assert h.core.charger_state == "idle" and h.pwm_duty is None
    assert h.last("session")["active"] is False and h.last("session")["energy_Wh"] == 500.0


def test_authorize_before_plug_in_starts_the_transaction_on_plug_in() -> None:
    h = Harness()
    assert h.cmd("authorize", "CARD", "rfid", None, None) is True
    assert h.core.charger_state == "preparing" and h.last("state")["authorized"]
    session_id = h.events("authorized")[0]["session_id"]
    h.feed("cp_state", "B")
    assert h.event_types() == ["authorized", "session_started", "transaction_started"]
    assert {event["session_id"] for event in h.events()} == {session_id}


def test_plugin_timeout_expires_an_authorization_without_plug_in() -> None:
    h = Harness(plugin_timeout_s=30)
    h.cmd("authorize", "CARD", "rfid", None, None)
    h.advance(29)
    assert "plugin_timeout" not in h.event_types()
    h.advance(1)
    assert h.event_types()[-1] == "plugin_timeout"
    assert h.core.charger_state == "idle" and not h.last("state")["authorized"]
    h.feed("cp_state", "B")
    assert "transaction_started" not in h.event_types()
    assert h.cmd("authorize", "CARD", "rfid", None, None) is True


def test_withdraw_authorization_only_before_the_transaction() -> None:
    h = Harness()
    assert h.cmd("withdraw_authorization") is False
    h.cmd("authorize", "CARD", "rfid", None, None)
    assert h.cmd("withdraw_authorization") is True
    assert h.event_types()[-1] == "authorization_withdrawn" and h.core.charger_state == "idle"
    h.charging()
    assert h.cmd("withdraw_authorization") is False


def test_stop_transaction_opens_relay_and_waits_for_unplug() -> None:
    h = Harness()
    h.charging()
    h.clear()
    assert h.cmd("stop_transaction", "Remote", None) is True
    assert h.actions[0] == SetRelay(False, 0)
    assert h.pwm_duty is None
    assert h.events("transaction_finished")[0]["reason"] == "Remote"
    assert h.core.charger_state == "finishing"
    assert h.cmd("stop_transaction", "Remote", None) is False
    assert h.cmd("authorize", "CARD", "rfid", None, None) is False  # unplug first
    h.feed("cp_state", "B")
    h.feed("cp_state", "A")
    assert h.event_types().count("transaction_finished") == 1
    assert h.event_types()[-1] == "session_finished"


def test_stop_by_token_records_who_stopped() -> None:
    h = Harness()
    h.charging("CARD")
    h.cmd("stop_transaction", "Local", "CARD")
    finished = h.events("transaction_finished")[0]
    assert finished["reason"] == "Local" and finished["stop_id_token"] == "CARD" and finished["id_token"] == "CARD"


def test_board_fault_during_charging_stops_with_emergency_stop() -> None:
    h = Harness()
    h.charging()
    h.clear()
    h.feed("board_error", "rcd", True, "residual current 32 mA")
    assert h.actions[0] == SetRelay(False, 0)
    finished = h.events("transaction_finished")[0]
    assert finished["reason"] == "EmergencyStop" and "rcd" in finished["details"]
    assert RaiseError("ground_failure", "board rcd: residual current 32 mA") in h.actions
    assert h.core.charger_state == "faulted" and h.last("state")["active_errors"] == ["ground_failure"]
    assert h.cmd("authorize", "CARD", "rfid", None, None) is False
    h.feed("board_error", "rcd", False, "")
    assert h.core.charger_state == "finishing" and h.last("state")["active_errors"] == []
    assert not h.relay_closed


@pytest.mark.parametrize(("cp", "error"), [("E", "ev_communication_error"), ("F", "ev_communication_error"),
                                           ("D", "ventilation_required")])
def test_cp_error_states_stop_charging(cp: str, error: str) -> None:
    h = Harness()
    h.charging()
    h.feed("cp_state", cp)
    assert not h.relay_closed and error in h.last("state")["active_errors"]
    assert h.events("transaction_finished")[0]["reason"] == "EmergencyStop"


def test_state_d_charges_when_the_board_ventilates() -> None:
    h = Harness()
    h.feed("capabilities", {**SOCKET_WITH_LOCK, "has_lock": False, "supports_ventilation": True})
    h.feed("cp_state", "B")
    h.cmd("authorize", "CARD", "rfid", None, None)
    h.feed("cp_state", "D")
    assert h.relay_closed and h.core.charger_state == "charging"


def test_disable_while_charging_is_scheduled_until_the_transaction_ends() -> None:
    h = Harness()
    h.charging()
    assert h.cmd("disable", "csms", 5000) == "Scheduled"
    assert h.relay_closed and h.core.charger_state == "charging" and h.last("state")["enabled"]
    h.cmd("stop_transaction", "Local", None)
    assert h.event_types()[-1] == "disabled"
    assert h.core.charger_state == "unavailable" and h.last("state")["availability_source"] == "csms"
    assert h.cmd("authorize", "CARD", "rfid", None, None) is False
    assert h.cmd("enable", "csms", 5000) == "Accepted"
    assert h.event_types()[-1] == "enabled" and h.core.charger_state == "finishing"


def test_best_priority_decides_availability() -> None:
    h = Harness()
    assert h.cmd("disable", "service_technician", 0) == "Accepted"
    assert h.cmd("enable", "csms", 5000) == "Rejected"
    assert h.core.charger_state == "unavailable"
    assert h.cmd("clear_availability", "service_technician") is True
    assert h.core.charger_state == "idle" and h.last("state")["availability_source"] == "csms"
    assert h.cmd("clear_availability", "service_technician") is False


def test_evse_pause_and_ev_pause() -> None:
    h = Harness()
    assert h.cmd("pause") is False
    h.charging()
    assert h.cmd("pause") is True
    assert not h.relay_closed and h.pwm_duty is None and h.core.charger_state == "suspended_evse"
    assert h.events("charging_paused")[-1]["paused_by"] == "evse"
    assert h.cmd("resume") is True and h.relay_closed
    assert h.event_types()[-1] == "charging_resumed"
    assert h.cmd("resume") is False
    h.feed("cp_state", "B")
    assert not h.relay_closed and h.core.charger_state == "suspended_ev"
    assert h.events("charging_paused")[-1]["paused_by"] == "ev"


def test_limits_take_the_tightest_of_config_cable_and_energy() -> None:
    h = Harness(energy_fallback_current_A=8)
    h.charging()
    h.feed("pp_ampacity", 20)
    assert h.last("limits")["limited_by"] == "cable" and h.pwm_duty == 33.33
    assert h.cmd("set_max_current", 10, None, 60) == 10.0
    assert h.last("limits")["limited_by"] == "energy" and h.pwm_duty == 16.66 and h.relay_closed
    assert h.cmd("set_max_current", 4, None, None) == 0.0
    assert not h.relay_closed and h.pwm_duty is None and h.core.charger_state == "suspended_evse"
    assert h.cmd("set_max_current", 16, 1, 60) == 16.0
    assert h.relay_closed and h.last("limits")["phases"] == 1
    assert [a for a in h.actions if isinstance(a, SetRelay)][-1] == SetRelay(True, 1)
    h.advance(61)
    limits = h.last("limits")
    assert limits["limited_by"] == "fallback" and limits["max_current_A"] == 8 and limits["phases"] == 3


def test_connector_lock_brackets_the_transaction() -> None:
    h = Harness()
    h.feed("capabilities", SOCKET_WITH_LOCK)
    h.feed("lock_state", "unlocked")
    h.feed("cp_state", "B")
    h.clear()
    h.cmd("authorize", "CARD", "rfid", None, None)
    assert Lock() in h.actions
    h.feed("cp_state", "C")
    assert not h.relay_closed  # not before the lock confirms
    h.feed("lock_state", "locked")
    assert h.relay_closed
    h.clear()
    h.cmd("stop_transaction", "Local", None)
    assert h.actions.index(SetRelay(False, 0)) < h.actions.index(Unlock())


BOARD_COMMANDS = SetRelay | PwmOff | SetPwm | Lock | Unlock


@pytest.mark.parametrize("ending", ["stop_transaction", "unplug", "board_fault", "force_unlock"])
def test_pwm_goes_off_with_the_transaction_and_stays_off_while_idle(ending: str) -> None:
    """IEC 61851: no PWM (state X1) without an offer; it goes off right after the relay opens, before the unlock."""
    h = Harness()
    h.feed("capabilities", SOCKET_WITH_LOCK)
    h.feed("lock_state", "locked")
    h.charging()
    h.clear()
    if ending == "stop_transaction":
        h.cmd("stop_transaction", "Local", None)
    elif ending == "unplug":
        h.feed("cp_state", "A")
    elif ending == "board_fault":
        h.feed("board_error", "rcd", True, "30 mA")
    else:
        h.cmd("force_unlock")
    assert [a for a in h.actions if isinstance(a, BOARD_COMMANDS)] == [SetRelay(False, 0), PwmOff(), Unlock()]
    h.feed("board_error", "rcd", False, "")
    h.feed("cp_state", "A")
    h.feed("cp_state", "B")  # the next EV, not authorized yet
    h.feed("cp_state", "C")  # an EV may ask in X1; it gets neither PWM nor power
    h.advance(30)
    assert not any(isinstance(a, SetPwm) for a in h.actions)
    assert h.pwm_duty is None and not h.relay_closed
    assert h.core.charger_state == "waiting_for_authorization"


def test_force_unlock_stops_the_transaction_or_is_not_supported() -> None:
    tethered = Harness()
    assert tethered.cmd("force_unlock") is False
    h = Harness()
    h.feed("capabilities", SOCKET_WITH_LOCK)
    h.feed("lock_state", "locked")
    h.charging()
    h.clear()
    assert h.cmd("force_unlock") is True
    assert h.actions.index(SetRelay(False, 0)) < h.actions.index(Unlock())
    assert h.events("transaction_finished")[0]["reason"] == "UnlockCommand"


def test_reservation_admits_only_its_own_authorization() -> None:
    h = Harness()
    assert h.cmd("reserve", 7) == "Accepted" and h.core.charger_state == "reserved"
    assert h.cmd("reserve", 8) == "Occupied"
    assert h.cmd("authorize", "OTHER", "rfid", None, None) is False
    assert h.cmd("authorize", "OWNER", "rfid", None, 7) is True
    assert h.events("reservation_ended")[0]["reservation_id"] == 7
    assert h.last("state")["reservation_id"] is None
    h.feed("cp_state", "B")
    assert h.events("transaction_started")[0]["reservation_id"] == 7
    assert h.cmd("reserve", 9) == "Occupied"


def test_reserve_refused_when_faulted_or_unavailable_and_cancel() -> None:
    h = Harness()
    h.feed("board_error", "relay_welded", True, "")
    assert h.cmd("reserve", 1) == "Faulted"
    h.feed("board_error", "relay_welded", False, "")
    h.cmd("disable", "local_api", 10)
    assert h.cmd("reserve", 1) == "Unavailable"
    h.cmd("enable", "local_api", 10)
    assert h.cmd("reserve", 1) == "Accepted"
    assert h.cmd("cancel_reservation", 2) is False
    assert h.cmd("cancel_reservation", 1) is True and h.core.charger_state == "idle"


def test_session_ids_are_new_for_every_plug_in() -> None:
    h = Harness()
    for _ in range(3):
        h.feed("cp_state", "B")
        h.feed("cp_state", "A")
    started = [event["session_id"] for event in h.events("session_started")]
    assert len(set(started)) == 3


def test_meter_value_is_persisted_at_the_configured_interval() -> None:
    h = Harness(meter_persist_interval_s=10)
    h.charging(meter_Wh=100.0)
    records = [a.record for a in h.actions if isinstance(a, PersistSession)]
    assert records[-1] is not None and records[-1]["meter_start_Wh"] == 100.0
    h.clear()
    h.advance(10)
    assert not any(isinstance(a, PersistSession) for a in h.actions)  # meter unchanged
    h.feed("meter_reading", 250.0, 7000.0)
    h.advance(1)
    persisted = [a.record for a in h.actions if isinstance(a, PersistSession)]
    assert persisted and persisted[-1] is not None and persisted[-1]["meter_last_Wh"] == 250.0


def test_transaction_is_persisted_before_transaction_started_is_published() -> None:
    h = Harness()
    h.feed("cp_state", "B")
    h.clear()
    h.cmd("authorize", "CARD", "rfid", None, None)
    persist = next(i for i, a in enumerate(h.actions) if isinstance(a, PersistSession))
    started = next(i for i, a in enumerate(h.actions)
                   if isinstance(a, Publish) and a.var == "session_event" and a.value["type"] == "transaction_started")
    assert persist < started


def test_pwm_and_lock_start_at_once_but_the_relay_waits_for_the_stored_transaction() -> None:
    h = Harness(auto_store=False)
    h.feed("capabilities", SOCKET_WITH_LOCK)
    h.feed("lock_state", "unlocked")
    h.feed("cp_state", "B")
    h.clear()
    h.cmd("authorize", "CARD", "rfid", None, None)
    assert [a for a in h.actions if isinstance(a, BOARD_COMMANDS)] == [Lock(), SetPwm(53.33)]
    session_id = h.persisted_session_ids()[0]
    h.feed("lock_state", "locked")
    h.feed("cp_state", "C")
    assert not h.relay_closed and h.core.charger_state == "preparing"
    h.store(None)  # a removal of an earlier session's file says nothing about this one
    h.store("another-session")
    assert not h.relay_closed and "charging_started" not in h.event_types()
    h.store(session_id)
    assert h.relay_closed and h.core.charger_state == "charging"
    assert h.event_types()[-1] == "charging_started"


def _record(h: Harness) -> dict[str, Any]:
    """The session file a station charging from 100 to 400 Wh leaves behind at 09:30."""
    h.charging(meter_Wh=100.0)
    h.feed("meter_reading", 400.0, 5000.0)
    h.now = T0.replace(minute=30)
    record = next(a.record for a in h.core.checkpoint(h.now) if isinstance(a, PersistSession))
    assert record is not None
    return record


def test_restart_resumes_the_transaction_when_still_plugged_in() -> None:
    record = _record(Harness())
    h = Harness(session_resume="resume")
    h.feed("restore", record)
    assert h.event_types() == []  # waits for the CP state
    h.feed("meter_reading", 410.0, 0.0)
    h.feed("cp_state", "C")
    resumed = h.events("session_resumed")[0]
    assert resumed["session_id"] == record["session_id"] and resumed["meter_Wh"] == 410.0
    assert "transaction_started" not in h.event_types() and "session_started" not in h.event_types()
    assert h.relay_closed and h.core.charger_state == "charging"
    h.feed("cp_state", "A")
    finished = h.events("transaction_finished")[0]
    assert finished["reason"] == "EVDisconnected" and finished["session_id"] == record["session_id"]
    assert h.last("session")["energy_Wh"] == 310.0


def test_a_resumed_transaction_is_already_stored() -> None:
    record = _record(Harness())
    h = Harness(auto_store=False, session_resume="resume")
    h.feed("restore", record)
    h.feed("cp_state", "C")
    assert h.event_types() == ["session_resumed", "charging_resumed"] and h.relay_closed  # no write to wait for


@pytest.mark.parametrize(("mode", "cp"), [("power_loss", "C"), ("resume", "A"), ("resume", None)])
def test_restart_closes_the_transaction_with_power_loss(mode: str, cp: str | None) -> None:
    record = _record(Harness())
    h = Harness(session_resume=mode, restore_wait_s=5)
    h.feed("restore", record)
    if cp is None:
        h.advance(5)  # the board never reports a CP state
    else:
        h.feed("cp_state", cp)
    finished = h.events("transaction_finished")[0]
    assert finished["reason"] == "PowerLoss" and finished["meter_Wh"] == 400.0
    assert finished["timestamp"] == to_rfc3339(T0.replace(minute=30)) == record["meter_last_at"]
    assert h.event_types()[:2] == ["transaction_finished", "session_finished"]
    assert PersistSession(None) in h.actions and not h.relay_closed
    if cp == "C":
        assert h.event_types()[2] == "session_started"
        assert h.events("session_started")[0]["session_id"] != record["session_id"]
        assert h.core.charger_state == "waiting_for_authorization"


def test_bad_input_raises_and_changes_nothing() -> None:
    h = Harness()
    h.feed("cp_state", "B")
    before = (h.core.charger_state, len(h.actions))
    with pytest.raises(ValueError, match="cp_state 'X'"):
        h.feed("cp_state", "X")
    with pytest.raises(ValueError, match="token_type"):
        h.cmd("authorize", "CARD", "bogus", None, None)
    with pytest.raises(ValueError, match="stop reason"):
        h.cmd("stop_transaction", "Bored", None)
    with pytest.raises(ValueError, match="max_phases"):
        h.feed("capabilities", {**SOCKET_WITH_LOCK, "max_phases": 4})
    with pytest.raises(ValueError, match="min_current_A"):
        h.feed("capabilities", {"max_current_A": 16})
    assert (h.core.charger_state, len(h.actions)) == before
    assert h.core.board.max_current_A is None


def test_inconsistent_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"min_current_A \(10\) is above max_current_A \(8\)"):
        EvseConfig(min_current_A=10, max_current_A=8)
    with pytest.raises(ConfigError, match="session_resume"):
        EvseConfig(session_resume="maybe")


def test_duty_cycle_follows_iec_61851() -> None:
    h = Harness(max_current_A=16)
    h.charging()
    assert [a for a in h.actions if isinstance(a, SetPwm)][-1] == SetPwm(26.66)


def test_a_transaction_waits_for_the_first_meter_reading_of_a_connected_meter() -> None:
    h = Harness(has_powermeter=True, meter_wait_s=10)
    h.feed("cp_state", "B")
    assert h.cmd("authorize", "CARD", "rfid", None, None) is True
    h.advance(3)
    assert h.events("transaction_started") == [] and h.pwm_duty is None
    h.feed("meter_reading", 4321.0, 0.0)
    started = h.events("transaction_started")
    assert len(started) == 1 and started[0]["meter_Wh"] == 4321.0
    assert h.pwm_duty is not None


def test_a_silent_meter_delays_the_transaction_only_up_to_meter_wait_s() -> None:
    h = Harness(has_powermeter=True, meter_wait_s=5)
    h.feed("cp_state", "B")
    h.cmd("authorize", "CARD", "rfid", None, None)
    h.advance(4)
    assert h.events("transaction_started") == []
    h.advance(1)
    started = h.events("transaction_started")
    assert len(started) == 1 and started[0]["meter_Wh"] is None
    assert h.pwm_duty is not None
