"""`chargepoint sim ...` in subprocesses against a running simulated station on a real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from helpers import ROOT, Broker, chargepoint_cmd, run, running_station, subprocess_env, write_wiring

from chargepoint.broker.launch import free_port
from chargepoint.busprobe import BusProbe
from chargepoint.iec61851 import duty_cycle_for_current

STATION = """\
  board_1:
    module: board_simulator
    config: {time_scale: 3600, meter_interval_s: 0.1}
  board_2:
    module: board_simulator
    config: {evse_id: 2, phases: 1}
  desk:
    module: token_manual
  door:
    module: token_manual
    config: {source: door}
"""


async def sim(config: Path, *args: str) -> tuple[int, str, str]:
    """Run ``chargepoint sim ARGS --config CONFIG``; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *chargepoint_cmd("sim", *args, "--config", str(config)), cwd=ROOT, env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def table(stdout: str) -> dict[str, dict[str, str]]:
    """The status table as EVSE id -> column -> cell."""
    header, *rows = [line.split() for line in stdout.strip().splitlines()]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_plug_pause_fault_unplug_drive_the_board(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, STATION)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            cp_state = "cp/board_1/board/var/cp_state"
            probe.watch(cp_state)
            probe.watch("cp/board_1/board/error/+")
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "A", 5)

            code, out, _ = await sim(path, "plug", "1")
            assert (code, out.strip()) == (0, "EVSE 1 (board_1): EV plugged in")
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "B", 5)
            code, _, err = await sim(path, "plug", "1")
            assert code == 1 and "already plugged in" in err

            await probe.call("board_1", "board", "set_pwm", {"duty_cycle_percent": duty_cycle_for_current(16)})
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "C", 5)
            assert (await sim(path, "ev-pause", "1"))[0] == 0
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "B", 5)
            assert (await sim(path, "ev-resume", "1"))[0] == 0
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "C", 5)

            code, out, _ = await sim(path, "fault", "1", "diode")
            assert (code, out.strip()) == (0, "EVSE 1 (board_1): fault diode_fault injected")
            await probe.wait_for("cp/board_1/board/error/diode_fault", lambda p: json.loads(p)["active"], 5)
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "F", 5)
            assert (await sim(path, "clear-fault", "1"))[0] == 0
            await probe.wait_for("cp/board_1/board/error/diode_fault", lambda p: not json.loads(p)["active"], 5)
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "C", 5)

            assert (await sim(path, "unplug", "1"))[0] == 0
            await probe.wait_for(cp_state, lambda p: json.loads(p) == "A", 5)
            code, _, err = await sim(path, "unplug", "1")
            assert code == 1 and "no EV plugged in" in err
            code, _, err = await sim(path, "fault", "1", "diode_fault")
            assert code == 1 and "plug one in first" in err, "the station's refusal is passed on"

    run(scenario())


def test_swipe_presents_the_token_on_the_chosen_reader(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, STATION)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            seen: list[dict[str, object]] = []
            probe.watch("cp/+/main/var/token", lambda _topic, payload: seen.append(json.loads(payload)))
            await probe.wait_state("desk", "ready")

            code, out, _ = await sim(path, "swipe", "04a1b2c3")
            assert (code, out.strip()) == (0, "token 04A1B2C3 presented on desk")
            await probe.wait_for("cp/desk/main/var/token", lambda p: True, 5)
            assert seen[-1]["id_token"] == "04A1B2C3" and seen[-1]["source"] == "manual"

            code, _, _ = await sim(path, "swipe", "CAFE", "--reader", "door", "--evse", "2", "--type", "central")
            assert code == 0
            await probe.wait_for("cp/door/main/var/token", lambda p: True, 5)
            assert seen[-1] == {**seen[-1], "id_token": "CAFE", "source": "door", "connectors": [2],
                                "token_type": "central"}

            code, _, err = await sim(path, "swipe", "CAFE", "--reader", "dor")
            assert code == 2 and "unknown reader 'dor'" in err and "desk, door" in err

    run(scenario())


def test_status_prints_every_evse(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, STATION)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            probe.watch("cp/board_1/powermeter/var/powermeter")
            code, out, _ = await sim(path, "status")
            assert code == 0
            rows = table(out)
            assert rows["1"]["STATE"] == "ev_unplugged" and rows["1"]["CP"] == "A"
            assert rows["2"]["RELAY"] == "open" and rows["2"]["POWER_W"] == "0"

            await sim(path, "plug", "1")
            await probe.call("board_1", "board", "set_pwm", {"duty_cycle_percent": duty_cycle_for_current(16)})
            assert await probe.call("board_1", "board", "allow_power_on", {"allowed": True}) is True
            await probe.wait_for("cp/board_1/powermeter/var/powermeter",
                                 lambda p: json.loads(p)["energy_Wh_import"]["total"] > 100, 5)
            rows = table((await sim(path, "status"))[1])
            assert rows["1"]["STATE"] == "ev_charging" and rows["1"]["CP"] == "C"
            assert rows["1"]["RELAY"] == "closed" and rows["1"]["POWER_W"] == "11040"
            assert float(rows["1"]["ENERGY_WH"]) > 100
            assert rows["2"]["STATE"] == "ev_unplugged"

    run(scenario())


FAKE_EVSE_MANAGER = """\
description: Stand-in with the evse_manager's name and wiring, for reading the topology only.
config:
  evse_id: {type: integer, minimum: 1, default: 1, description: EVSE id}
provides:
  evse: evse
requires:
  board: {interface: board, min: 1, max: 1}
"""


def test_status_reads_the_evse_manager_vars(broker: Broker, tmp_path: Path) -> None:
    """EVSE ids come from the evse_manager instances; the table shows their retained state and session."""
    path = write_wiring(tmp_path, broker.port, STATION)
    fake = tmp_path / "fake" / "evse_manager"
    fake.mkdir(parents=True)
    (fake / "manifest.yaml").write_text(FAKE_EVSE_MANAGER)
    view = tmp_path / "view.yaml"
    view.write_text(
        f"settings:\n  mqtt: {{host: 127.0.0.1, port: {broker.port}}}\n  module_paths: [{fake.parent}]\n"
        "active_modules:\n"
        "  left:\n    module: evse_manager\n    config: {evse_id: 7}\n    connections: {board: [board_2.board]}\n"
        + STATION)
    timestamp = "2025-03-14T09:26:53Z"
    state = {"evse_id": 7, "connector_id": 1, "charger_state": "charging", "cp_state": "C", "plugged": True,
             "enabled": True, "availability_source": None, "authorized": True, "relay_closed": True,
             "session_id": "s-1", "transaction_active": True, "reservation_id": None, "active_errors": [],
             "timestamp": timestamp}
    session = {"evse_id": 7, "session_id": "s-1", "active": True, "started_at": timestamp, "id_token": "04A2B3C4",
               "parent_id": None, "transaction_active": True, "transaction_started_at": timestamp,
               "meter_start_Wh": 1000.0, "energy_Wh": 1234.5, "power_W": 7360.0, "timestamp": timestamp}

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert probe.bus is not None
            for var, value in (("state", state), ("session", session)):
                probe.bus.publish(f"cp/left/evse/var/{var}", json.dumps(value).encode(), retain=True, qos=1)
            code, out, err = await sim(view, "status")
            assert code == 0, err
            rows = table(out)
            assert set(rows) == {"1", "7"}, "board_2 is EVSE 7 through the evse_manager; board_1 keeps its own id"
            assert rows["7"] == {"EVSE": "7", "STATE": "charging", "CP": "C", "RELAY": "closed", "POWER_W": "7360",
                                 "ENERGY_WH": "1234.5", "TOKEN": "04A2B3C4"}
            assert (await sim(view, "plug", "7"))[1].strip() == "EVSE 7 (board_2): EV plugged in"
            code, _, err = await sim(view, "plug", "2")
            assert code == 2 and "unknown EVSE 2" in err and "has EVSE 1, 7" in err

    run(scenario())


def test_bad_requests_exit_2_with_a_clear_message(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, STATION)
    unreachable_port = free_port()
    nowhere = write_wiring(tmp_path, unreachable_port, STATION, name="nowhere.yaml")

    async def scenario() -> None:
        code, _, err = await sim(path, "plug", "9")
        assert code == 2 and "unknown EVSE 9" in err and "has EVSE 1, 2" in err
        code, _, err = await sim(path, "fault", "1", "meteor")
        assert code == 2 and "unknown fault 'meteor'" in err and "diode" in err
        code, _, err = await sim(nowhere, "status")
        assert code == 2 and f"127.0.0.1:{unreachable_port}" in err
        code, _, err = await sim(tmp_path / "missing.yaml", "status")
        assert code == 2 and "missing.yaml: no such wiring file" in err

    run(scenario())
