"""evse_manager in a running station with the board simulator, over a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from helpers import Broker, chargepoint_cmd, run, running_station, subprocess_env, write_wiring

from chargepoint.busprobe import BusProbe

STATE = "cp/evse_1/evse/var/state"
SESSION = "cp/evse_1/evse/var/session"
EVENTS = "cp/evse_1/evse/var/session_event"
RELAY = "cp/board_1/board/var/relay_state"
CP = "cp/board_1/board/var/cp_state"
LOCK = "cp/board_1/board/var/lock_state"
RELAY_OPEN = 'allow_power_on {"allowed": false, "phases": 3}'
LIMITS = "cp/evse_1/evse/var/limits"


def station(tmp_path: Path, port: int, evse_config: str = "") -> Path:
    modules = (
        "  board_1:\n    module: board_simulator\n"
        "    config: {time_scale: 3600, meter_interval_s: 0.1}\n"
        "  evse_1:\n    module: evse_manager\n"
        f"    config: {{evse_id: 1, max_current_A: 16, meter_persist_interval_s: 0.2{evse_config}}}\n"
        "    connections:\n      board: [board_1.board]\n      powermeter: [board_1.powermeter]\n"
    )
    return write_wiring(tmp_path, port, modules)


class Watcher:
    """What a lab sees of EVSE 1: its state, session, session events and the board's relay."""

    def __init__(self, probe: BusProbe) -> None:
        self.probe = probe
        self.events: list[dict[str, Any]] = []
        for topic in (STATE, SESSION, RELAY, LIMITS):
            probe.watch(topic)
        probe.watch(EVENTS, lambda _topic, payload: self.events.append(json.loads(payload)))

    async def charger_state(self, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        payload = await self.probe.wait_for(STATE, lambda p: json.loads(p)["charger_state"] in states, timeout)
        return json.loads(payload)

    async def relay(self, closed: bool) -> None:
        await self.probe.wait_for(RELAY, lambda p: json.loads(p)["closed"] is closed, 10)

    async def event(self, kind: str) -> dict[str, Any]:
        await self.probe.wait_for(EVENTS, lambda _p: any(e["type"] == kind for e in self.events), 10)
        return next(event for event in self.events if event["type"] == kind)

    def kinds(self, after: int = 0) -> list[str]:
        return [event["type"] for event in self.events[after:]]

    async def kinds_become(self, expected: list[str], after: int) -> None:
        """Wait until the events from index ``after`` on are exactly ``expected``."""
        await self.probe.wait_for(EVENTS, lambda _p: self.kinds(after) == expected, 10)

    async def energy_above(self, energy_Wh: float) -> dict[str, Any]:
        payload = await self.probe.wait_for(SESSION, lambda p: (json.loads(p)["energy_Wh"] or 0) > energy_Wh, 10)
        return json.loads(payload)

    async def call(self, module: str, impl: str, cmd: str, **args: Any) -> Any:
        return await self.probe.call(module, impl, cmd, args)


async def plug_in_and_charge(lab: Watcher) -> dict[str, Any]:
    await lab.call("board_1", "ev", "plug_in")
    await lab.charger_state("waiting_for_authorization")
    assert await lab.call("evse_1", "evse", "authorize", id_token="04A2B3C4", token_type="rfid") is True
    await lab.relay(True)
    await lab.charger_state("charging")
    return await lab.event("transaction_started")


def test_plug_in_authorize_charge_stop_unplug(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            await lab.charger_state("idle")
            started = await plug_in_and_charge(lab)
            assert started["id_token"] == "04A2B3C4" and started["meter_Wh"] is not None
            limits = json.loads(probe.latest(LIMITS) or b"{}")
            assert limits["offered_current_A"] == 16 and limits["limited_by"] == "config"
            session = await lab.energy_above(50)  # 11 kW at time_scale 3600: about 3 Wh per ms
            assert session["session_id"] == started["session_id"] and session["transaction_active"]
            assert await lab.call("evse_1", "evse", "stop_transaction", reason="Remote") is True
            await lab.relay(False)
            finished = await lab.event("transaction_finished")
            assert finished["reason"] == "Remote" and finished["meter_Wh"] > started["meter_Wh"] + 50
            await lab.charger_state("finishing")
            await lab.call("board_1", "ev", "unplug")
            await lab.charger_state("idle")
            await lab.event("session_finished")
            assert lab.kinds() == ["session_started", "authorized", "transaction_started", "charging_started",
                                   "transaction_finished", "session_finished"]
            assert {event["session_id"] for event in lab.events} == {started["session_id"]}
            assert not (tmp_path / "state" / "evse_1" / "session.json").exists()

    run(scenario())


def from_first(traffic: list[str], entry: str) -> list[str]:
    """``traffic`` from the first ``entry`` on."""
    return traffic[traffic.index(entry):]


def test_board_cmds_are_pipelined_in_a_safe_order(broker: Broker, tmp_path: Path) -> None:
    """Lock and PWM go out together; on a stop the relay opens first, then PWM off, then the unlock."""
    path = station(tmp_path, broker.port)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            traffic: list[str] = []
            probe.watch("cp/board_1/board/cmd/+", lambda topic, payload: traffic.append(
                f"{topic.rsplit('/', 1)[1]} {json.dumps(json.loads(payload)['args'], sort_keys=True)}"))
            probe.watch("cp/evse_1/reply", lambda _topic, _payload: traffic.append("reply"))
            probe.watch(CP)
            probe.watch(LOCK)
            await plug_in_and_charge(lab)
            started = from_first(traffic, "lock {}")
            assert started[:2] == ["lock {}", 'set_pwm {"duty_cycle_percent": 26.66}'], "PWM waits for no reply"
            assert started.index('allow_power_on {"allowed": true, "phases": 3}') > 2
            traffic.clear()  # the cmds of the start-up went out before the lock: they are in order
            assert await lab.call("evse_1", "evse", "stop_transaction", reason="Remote") is True
            await lab.relay(False)
            await probe.wait_for(CP, lambda payload: json.loads(payload) == "B")
            await probe.wait_for(LOCK, lambda payload: json.loads(payload) == "unlocked")
            stopped = from_first(traffic, RELAY_OPEN)
            assert stopped[:3] == [RELAY_OPEN, "pwm_off {}", "unlock {}"], "all sent before the first reply"

    run(scenario())


def test_transaction_is_on_disk_before_anyone_hears_of_it(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port)
    session_file = tmp_path / "state" / "evse_1" / "session.json"

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            on_disk: dict[str, bool] = {}

            def note(what: str, seen: bool) -> None:
                if seen and what not in on_disk:
                    on_disk[what] = session_file.exists()

            probe.watch(EVENTS, lambda _t, p: note("event", json.loads(p)["type"] == "transaction_started"))
            probe.watch(STATE, lambda _t, p: note("state", json.loads(p)["transaction_active"]))
            probe.watch(SESSION, lambda _t, p: note("session", json.loads(p)["transaction_active"]))
            probe.watch(RELAY, lambda _t, p: note("relay", json.loads(p)["closed"]))
            await plug_in_and_charge(lab)
            assert on_disk == {"event": True, "state": True, "session": True, "relay": True}

    run(scenario())


def test_next_ev_sees_no_pwm_until_it_is_authorized(broker: Broker, tmp_path: Path) -> None:
    """IEC 61851 X1: stop, unplug at once and plug in again; each new EV finds no PWM, so it stays in B.

    The station runs in its own process, as in the field, so its board cmds race the lab's plug-ins.
    """
    path = station(tmp_path, broker.port)
    process = subprocess.Popen(chargepoint_cmd("run", str(path)), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            await probe.wait_station_ready(20)
            lab = Watcher(probe)
            cp_states: list[str] = []
            probe.watch(CP, lambda _topic, payload: cp_states.append(json.loads(payload)))
            await lab.charger_state("idle")
            await probe.wait_for(CP, lambda payload: json.loads(payload) == "A")
            for _ in range(5):
                plugged_at = len(cp_states)
                await plug_in_and_charge(lab)
                assert cp_states[plugged_at:] == ["B", "C"], "C before the authorization: the PWM was still on"
                assert await lab.call("evse_1", "evse", "stop_transaction", reason="Local") is True
                await lab.call("board_1", "ev", "unplug")
                await lab.charger_state("idle")
                lab.events.clear()

    try:
        run(scenario(), timeout=60)
    finally:
        process.terminate()
        process.wait(10)


def test_board_that_stops_answering_raises_board_unavailable(broker: Broker, tmp_path: Path) -> None:
    """Pipelined cmds still time out one by one; the next answered cmd clears the fault."""
    path = station(tmp_path, broker.port)
    path.write_text(path.read_text().replace("    module: board_simulator\n",
                                             "    module: board_simulator\n    standalone: true\n"))
    error = "cp/evse_1/evse/error/board_unavailable"

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path) as manager:
            lab = Watcher(probe)
            probe.watch(error)
            probe.watch(CP)
            probe.watch(LOCK)
            await lab.call("board_1", "ev", "plug_in")
            await lab.charger_state("waiting_for_authorization")
            board_pid = manager._children["board_1"].pid  # type: ignore[attr-defined]
            os.kill(board_pid, signal.SIGSTOP)
            try:
                assert await lab.call("evse_1", "evse", "authorize", id_token="04A2B3C4", token_type="rfid") is True
                raised = await probe.wait_for(error, lambda payload: json.loads(payload)["active"], 15)
                assert "timeout" in json.loads(raised)["message"]
                finished = await lab.event("transaction_finished")
                assert finished["reason"] == "EmergencyStop" and "board timeout" in finished["details"]
            finally:
                os.kill(board_pid, signal.SIGCONT)
            await probe.wait_for(error, lambda payload: not json.loads(payload)["active"], 10)
            await lab.charger_state("finishing")
            await probe.wait_for(LOCK, lambda payload: json.loads(payload) == "unlocked")
            await probe.wait_for(CP, lambda payload: json.loads(payload) == "B")  # the later pwm_off won

    run(scenario())


def test_fault_during_charging_opens_relay_and_finishes_with_emergency_stop(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            probe.watch("cp/evse_1/evse/error/ground_failure")
            await plug_in_and_charge(lab)
            await lab.call("board_1", "ev", "fault", kind="rcd")
            await lab.relay(False)
            finished = await lab.event("transaction_finished")
            assert finished["reason"] == "EmergencyStop" and "rcd" in finished["details"]
            state = await lab.charger_state("faulted")
            assert state["active_errors"] == ["ground_failure"] and not state["transaction_active"]
            error = json.loads(probe.latest("cp/evse_1/evse/error/ground_failure") or b"{}")
            assert error["active"] is True
            assert await lab.call("evse_1", "evse", "authorize", id_token="OTHER", token_type="rfid") is False
            await lab.call("board_1", "ev", "clear_fault")
            await lab.charger_state("finishing")

    run(scenario())


def test_disable_while_charging_is_scheduled(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            await plug_in_and_charge(lab)
            assert await lab.call("evse_1", "evse", "disable", source="csms", priority=5000) == "Scheduled"
            await lab.energy_above(20)
            assert json.loads(probe.latest(STATE) or b"{}")["charger_state"] == "charging"
            assert json.loads(probe.latest(RELAY) or b"{}")["closed"] is True
            await lab.call("evse_1", "evse", "stop_transaction", reason="Local")
            state = await lab.charger_state("unavailable")
            assert state["enabled"] is False and state["availability_source"] == "csms"
            await lab.event("disabled")
            assert await lab.call("evse_1", "evse", "enable", source="csms", priority=5000) == "Accepted"
            await lab.charger_state("finishing")

    run(scenario())


def test_restart_resumes_a_running_transaction(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port, ", session_resume: resume")

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            lab = Watcher(probe)
            async with running_station(path):
                started = await plug_in_and_charge(lab)
                await lab.energy_above(50)
            async with running_station(path):
                resumed = await lab.event("session_resumed")
                assert resumed["session_id"] == started["session_id"] and resumed["id_token"] == "04A2B3C4"
                await lab.relay(True)
                await lab.charger_state("charging")
                await lab.call("board_1", "ev", "unplug")
                finished = await lab.event("transaction_finished")
                assert finished["reason"] == "EVDisconnected" and finished["session_id"] == started["session_id"]
                assert lab.kinds().count("transaction_started") == 1
                assert lab.kinds().count("transaction_finished") == 1

    run(scenario())


def test_restart_in_power_loss_mode_closes_the_transaction(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port, ", session_resume: power_loss")
    session_file = tmp_path / "state" / "evse_1" / "session.json"

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            lab = Watcher(probe)
            async with running_station(path):
                started = await plug_in_and_charge(lab)
                await lab.energy_above(50)
            persisted = json.loads(session_file.read_text())
            first_run = len(lab.events)
            async with running_station(path):
                await lab.kinds_become(["transaction_finished", "session_finished", "session_started"], first_run)
                finished = lab.events[first_run]
                assert finished["reason"] == "PowerLoss" and finished["session_id"] == started["session_id"]
                assert finished["meter_Wh"] == persisted["meter_last_Wh"] > started["meter_Wh"]
                assert finished["timestamp"] == persisted["meter_last_at"]
                state = await lab.charger_state("waiting_for_authorization")  # the EV is still plugged in
                assert state["session_id"] != started["session_id"]
                assert json.loads(probe.latest(RELAY) or b"{}")["closed"] is False
                assert not session_file.exists()

    run(scenario())


def test_unusable_session_file_is_reported_and_left_alone(broker: Broker, tmp_path: Path) -> None:
    path = station(tmp_path, broker.port)
    session_file = tmp_path / "state" / "evse_1" / "session.json"
    session_file.parent.mkdir(parents=True)
    session_file.write_text('{"version": 1, "evse_id": 1')

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe, running_station(path):
            lab = Watcher(probe)
            await lab.charger_state("idle")
            info = await lab.call("evse_1", "evse", "get_info")
            assert info["max_current_A"] == 16 and info["has_powermeter"] is True
            assert session_file.read_text() == '{"version": 1, "evse_id": 1'
            assert "transaction_finished" not in lab.kinds()

    run(scenario())
