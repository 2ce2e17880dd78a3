"""board_simulator over a real broker: what an EVSE manager and a test lab see of the board, EV and meter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, chargepoint_cmd, run, running_station, subprocess_env, write_wiring

from chargepoint import CmdError
from chargepoint.busprobe import BusProbe
from chargepoint.iec61851 import duty_cycle_for_current

BOARD = "  board_1:\n    module: board_simulator\n    config: {time_scale: 3600, meter_interval_s: 0.1}\n"


class Bench:
    """The probe's view of one simulated board: cmds by implementation, vars by name."""

    def __init__(self, probe: BusProbe, module_id: str = "board_1") -> None:
        self.probe = probe
        self.module_id = module_id
        probe.watch(f"cp/{module_id}/#")

    async def call(self, impl: str, cmd: str, **args: Any) -> Any:
        return await self.probe.call(self.module_id, impl, cmd, args)

    def topic(self, impl: str, kind: str, name: str) -> str:
        return f"cp/{self.module_id}/{impl}/{kind}/{name}"

    def value(self, impl: str, name: str) -> Any:
        payload = self.probe.latest(self.topic(impl, "var", name))
        assert payload is not None, f"{impl}/{name} never published"
        return json.loads(payload)

    async def until(self, impl: str, name: str, predicate: Callable[[Any], bool], kind: str = "var") -> Any:
        payload = await self.probe.wait_for(self.topic(impl, kind, name), lambda p: predicate(json.loads(p)), 5)
        return json.loads(payload)

    async def cp(self, state: str) -> None:
        await self.until("board", "cp_state", lambda value: value == state)

    async def relay(self, closed: bool) -> None:
        await self.until("board", "relay_state", lambda value: value["closed"] is closed)

    async def error(self, error_type: str, active: bool) -> dict[str, Any]:
        return await self.until("board", error_type, lambda body: body["active"] is active, kind="error")

    async def charge(self, current_A: float = 16) -> None:
        """Plug in (if needed), offer ``current_A`` and close the relay, as an EVSE manager would."""
        if not (await self.until("ev", "state", lambda state: True))["plugged"]:
            assert await self.call("ev", "plug_in") is True
        await self.call("board", "set_pwm", duty_cycle_percent=duty_cycle_for_current(current_A))
        await self.cp("C")
        assert await self.call("board", "allow_power_on", allowed=True, phases=3) is True
        await self.relay(True)


def test_session_plug_charge_pause_unplug(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.cp("A")
            capabilities = await bench.until("board", "capabilities", lambda value: True)
            assert capabilities["max_phases"] == 3 and capabilities["has_lock"] is True
            assert await bench.call("board", "allow_power_on", allowed=True, phases=3) is False, "no EV, no power"

            assert await bench.call("ev", "plug_in") is True
            await bench.cp("B")
            assert await bench.until("board", "pp_ampacity_A", lambda value: value is not None) == 32
            assert await bench.call("ev", "plug_in") is False
            assert await bench.call("board", "allow_power_on", allowed=True, phases=3) is False, "B is not C"
            assert await bench.call("board", "lock") is True
            await bench.until("board", "lock_state", lambda value: value == "locked")

            await bench.charge(16)
            reading = await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] > 0)
            assert reading["power_W"]["total"] == pytest.approx(16 * 230 * 3)
            assert reading["current_A"] == {"L1": 16.0, "L2": 16.0, "L3": 16.0}
            assert reading["meter_id"] == "sim-board_1" and reading["timestamp"].endswith("Z")
            # 11 kW at time_scale 3600: 11 kWh per real second
            start = reading["energy_Wh_import"]["total"]
            later = await bench.until("powermeter", "powermeter",
                                      lambda r: r["energy_Wh_import"]["total"] > start + 2000)
            assert later["energy_Wh_import"]["L1"] == pytest.approx(later["energy_Wh_import"]["total"] / 3, rel=1e-3)
            ev = await bench.until("ev", "state", lambda s: s["energy_Wh"] > 2000)
            assert ev["current_A"] == 16 and ev["requesting_power"] is True

            await bench.call("board", "set_pwm", duty_cycle_percent=duty_cycle_for_current(10))
            await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == pytest.approx(6900))

            assert await bench.call("ev", "pause") is True
            await bench.cp("B")
            await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == 0)
            assert bench.value("ev", "state")["paused"] is True
            assert bench.value("board", "relay_state")["closed"] is True, "the board leaves the relay to the manager"
            assert await bench.call("ev", "resume") is True
            await bench.cp("C")
            await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] > 0)

            await bench.call("board", "pwm_off")
            await bench.cp("B")
            await bench.call("board", "set_pwm", duty_cycle_percent=duty_cycle_for_current(16))
            await bench.cp("C")

            energy_before_unplug = bench.value("powermeter", "powermeter")["energy_Wh_import"]["total"]
            assert await bench.call("ev", "unplug") is True
            await bench.cp("A")
            await bench.relay(False)
            reading = await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == 0)
            assert reading["energy_Wh_import"]["total"] >= energy_before_unplug
            assert bench.value("board", "pp_ampacity_A") is None
            assert await bench.call("ev", "unplug") is False

    run(scenario())


def test_ev_limits_phases_and_full_battery(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.cp("A")
            assert await bench.call("ev", "plug_in", max_current_A=10, phases=1, cable_ampacity_A=20,
                                    energy_to_full_Wh=3000) is True
            assert await bench.until("board", "pp_ampacity_A", lambda value: value is not None) == 20
            await bench.charge(32)
            reading = await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] > 0)
            assert reading["current_A"] == {"L1": 10.0, "L2": 0.0, "L3": 0.0}
            assert reading["power_W"]["total"] == pytest.approx(2300)
            # 2.3 kW fills 3 kWh in about 1.3 s at time_scale 3600; then the EV stops requesting
            await bench.cp("B")
            state = await bench.until("ev", "state", lambda s: s["paused"])
            assert state["energy_Wh"] == pytest.approx(3000)
            assert state["requesting_power"] is False and state["current_A"] == 0
            total = bench.value("powermeter", "powermeter")["energy_Wh_import"]["total"]
            assert total == pytest.approx(3000, abs=0.01)

            await bench.call("ev", "unplug")
            await bench.cp("A")
            await bench.call("ev", "plug_in", max_current_A=16, phases=3)
            await bench.charge(32)
            await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == pytest.approx(16 * 690))
            await bench.call("ev", "set_max_current", current_A=8)
            await bench.until("powermeter", "powermeter", lambda r: r["current_A"]["L2"] == 8)

    run(scenario())


@pytest.mark.parametrize(("kind", "cp_state", "relay_opens"), [
    ("diode_fault", "F", True),
    ("ventilation_required", "D", True),
    ("rcd", "C", True),
    ("overcurrent", "C", True),
    ("cp_short", "E", True),
    ("relay_welded", "C", False),
    ("lock_fault", "C", False),
])
def test_fault_raises_board_error_until_cleared(broker: Broker, tmp_path: Path, kind: str, cp_state: str,
                                                relay_opens: bool) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.error(kind, active=False)
            await bench.charge(16)

            await bench.call("ev", "fault", kind=kind)
            raised = await bench.error(kind, active=True)
            assert raised["message"] and raised["timestamp"].endswith("Z")
            await bench.cp(cp_state)
            assert kind in bench.value("ev", "state")["faults"]
            if relay_opens:
                await bench.relay(False)
                await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == 0)
                assert await bench.call("board", "allow_power_on", allowed=True, phases=3) is False
            elif kind == "relay_welded":
                assert await bench.call("board", "allow_power_on", allowed=False, phases=3) is False
                assert bench.value("board", "relay_state")["closed"] is True
            else:
                assert await bench.call("board", "unlock") is False

            await bench.call("ev", "clear_fault", kind=kind)
            await bench.error(kind, active=False)
            await bench.cp("C")
            await bench.until("ev", "state", lambda s: kind not in s["faults"])
            if kind == "relay_welded":
                await bench.relay(False)  # commanded open while it was welded
            assert await bench.call("board", "allow_power_on", allowed=True, phases=3) is True
            await bench.relay(True)
            await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] > 0)

    run(scenario())


def test_bad_requests_are_refused_and_change_nothing(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.cp("A")
            with pytest.raises(CmdError) as no_ev:
                await bench.call("ev", "fault", kind="diode_fault")
            assert no_ev.value.code == "handler_error" and "plug one in first" in no_ev.value.message
            with pytest.raises(CmdError) as no_ev_current:
                await bench.call("ev", "set_max_current", current_A=10)
            assert "no EV plugged in" in no_ev_current.value.message
            with pytest.raises(CmdError) as bad_kind:
                await bench.call("ev", "fault", kind="meteor")
            assert bad_kind.value.code == "invalid_args"
            with pytest.raises(CmdError) as bad_duty:
                await bench.call("board", "set_pwm", duty_cycle_percent=120)
            assert bad_duty.value.code == "invalid_args"
            assert await bench.call("ev", "pause") is False
            assert bench.value("board", "cp_state") == "A"
            assert bench.value("ev", "state")["faults"] == []

    run(scenario())


def test_meter_and_plugged_ev_survive_a_restart(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)

    async def first_run() -> float:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.charge(16)
            reading = await bench.until("powermeter", "powermeter", lambda r: r["energy_Wh_import"]["total"] > 1000)
            await bench.call("ev", "fault", kind="rcd")
            await bench.relay(False)
            stopped = await bench.until("powermeter", "powermeter", lambda r: r["power_W"]["total"] == 0)
            assert stopped["energy_Wh_import"]["total"] >= reading["energy_Wh_import"]["total"]
            return float(stopped["energy_Wh_import"]["total"])

    async def second_run(energy_Wh: float) -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.cp("B")
            reading = await bench.until("powermeter", "powermeter", lambda r: True)
            assert reading["energy_Wh_import"]["total"] == pytest.approx(energy_Wh, abs=0.01)
            await bench.error("rcd", active=False)
            assert bench.value("board", "relay_state")["closed"] is False
            assert bench.value("ev", "state")["plugged"] is True

    energy = run(first_run())
    assert isinstance(energy, float)
    run(second_run(energy))


def test_unreadable_saved_state_starts_fresh(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, BOARD)
    saved = tmp_path / "state" / "board_1" / "board.json"
    saved.parent.mkdir(parents=True)
    saved.write_text('{"energy_Wh": [1, -5, 2], "ev": null}')

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            bench = Bench(probe)
            await bench.cp("A")
            reading = await bench.until("powermeter", "powermeter", lambda r: True)
            assert reading["energy_Wh_import"]["total"] == 0

    run(scenario())


def test_plugged_ev_and_energy_survive_kill_9(broker: Broker, tmp_path: Path) -> None:
    """The state file follows plug-in and unplug at once and the energy register within about a second."""
    path = write_wiring(tmp_path, broker.port, BOARD)
    per_second_Wh = 16 * 230 * 3 * 3600 / 3600  # 11 kW at time_scale 3600, per real second

    async def killed_after(steps: Callable[[Bench], Any]) -> Any:
        process = subprocess.Popen(chargepoint_cmd("run", str(path)), env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with BusProbe(broker.host, broker.port) as probe:
                await probe.wait_station_ready(20)
                result = await steps(Bench(probe))
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        return result

    async def plug_in(bench: Bench) -> None:
        await bench.cp("A")
        assert await bench.call("ev", "plug_in") is True

    async def charge(bench: Bench) -> float:
        await bench.cp("B")  # still plugged in after the kill
        await bench.charge(16)
        reading = await bench.until("powermeter", "powermeter",
                                    lambda r: r["energy_Wh_import"]["total"] > 3 * per_second_Wh)
        return float(reading["energy_Wh_import"]["total"])

    async def unplug(bench: Bench) -> float:
        await bench.cp("B")
        reading = await bench.until("powermeter", "powermeter", lambda r: True)
        assert bench.value("board", "relay_state")["closed"] is False
        assert await bench.call("ev", "unplug") is True
        return float(reading["energy_Wh_import"]["total"])

    async def unplugged(bench: Bench) -> None:
        await bench.cp("A")
        assert await bench.until("board", "pp_ampacity_A", lambda value: True) is None, "no cable"

    run(killed_after(plug_in))
    last_seen_Wh = run(killed_after(charge))
    assert isinstance(last_seen_Wh, float)
    restored_Wh = run(killed_after(unplug))
    assert isinstance(restored_Wh, float)
    assert last_seen_Wh - 1.5 * per_second_Wh <= restored_Wh <= last_seen_Wh + 0.5 * per_second_Wh
    run(killed_after(unplugged))
