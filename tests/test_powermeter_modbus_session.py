"""A SIL session metered by the simulated Modbus meter through powermeter_modbus, against a real CSMS peer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring
from scenario import Lab
from test_ocpp16_with_csms import csms_running, ocpp_station

from chargepoint.busprobe import BusProbe
from chargepoint.modbus.codec import decode, encode
from chargepoint.modbus.model import load_model

START_WH = 2_000_000.0


def modbus_metered_station(folder: Path, csms_url: str) -> str:
    """The OCPP test station with evse_1 and ocpp reading the simulated Modbus meter instead of the board's."""
    link = folder / "state" / "meter_sim" / "meter-line"
    modules = ocpp_station(folder, csms_url).replace("powermeter: [board_1.powermeter]",
                                                      "powermeter: [meter_1.powermeter]")
    assert modules.count("meter_1.powermeter") == 2
    return modules + (
        "  meter_sim:\n    module: modbus_meter\n"
        "    config: {baudrate: 38400, time_scale: 3600,"
        f" meters: [{{slave_id: 1, model: sdm630, energy_Wh: {START_WH}}}]}}\n"
        "    connections: {load: [board_1.powermeter]}\n"
        "  meter_1:\n    module: powermeter_modbus\n"
        f"    config: {{model: sdm630, port: '{link}', baudrate: 38400, poll_interval_s: 0.25, timeout_s: 0.3}}\n"
    )


def register_value(energy_Wh: float) -> float:
    """What the SDM630's import register holds for ``energy_Wh`` (float32 kWh)."""
    register = load_model("sdm630").register("energy_Wh_import", "total")
    assert register is not None
    value = decode(register, encode(register, energy_Wh)[0])
    assert value is not None
    return value


def test_session_energy_comes_from_the_modbus_meter_and_survives_the_meter_vanishing(broker: Broker,
                                                                                     tmp_path: Path) -> None:
    readings: list[dict[str, Any]] = []

    async def main() -> None:
        async with csms_running(tmp_path) as csms:
            modules = modbus_metered_station(tmp_path, csms.server.url.rstrip("/"))
            async with running_station(write_wiring(tmp_path, broker.port, modules)), \
                    BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/main/var/connection")
                probe.watch("cp/meter_1/powermeter/var/powermeter", lambda _t, p: readings.append(json.loads(p)))
                probe.watch("cp/meter_1/powermeter/error/+")
                probe.watch("cp/meter_sim/control/var/state")
                await probe.wait_for("cp/ocpp/main/var/connection",
                                     lambda p: json.loads(p)["registration"] == "Accepted", 15)
                lab = Lab(probe)
                await lab.plug(1)
                await lab.wait_charger_state(1, "waiting_for_authorization")
                await lab.swipe("CARD1")
                await lab.wait_charger_state(1, "charging")
                start = await csms.wait_message("StartTransaction", lambda m: m["direction"] == "in")
                assert start["payload"]["meterStart"] >= START_WH

                # the meter's line vanishes mid-session (USB adapter pulled) and comes back
                assert await probe.call("meter_sim", "control", "unplug") is True
                fault = await probe.wait_for("cp/meter_1/powermeter/error/communication_fault",
                                             lambda p: json.loads(p)["active"], 10)
                assert "does not exist" in json.loads(fault)["message"] or "went away" in json.loads(fault)["message"]
                state = await lab.wait_charger_state(1, "charging")
                await probe.wait_for("cp/evse_1/evse/var/state",
                                     lambda p: "powermeter_failure" in json.dumps(json.loads(p)["active_errors"]), 10)
                assert await probe.call("meter_sim", "control", "replug") is True
                await probe.wait_for("cp/meter_1/powermeter/error/communication_fault",
                                     lambda p: not json.loads(p)["active"], 10)
                state = await probe.wait_for("cp/evse_1/evse/var/state",
                                             lambda p: json.loads(p)["active_errors"] == [], 10)
                assert json.loads(state)["charger_state"] == "charging"

                # freeze the meter, let the station see the frozen register, then stop
                await probe.call("meter_sim", "control", "set_load", {"slave_id": 1, "power_W": 0})
                frozen = json.loads(await probe.wait_for("cp/meter_sim/control/var/state",
                                                         lambda p: json.loads(p)["meters"][0]["power_W"] == 0, 5))
                energy = frozen["meters"][0]["energy_Wh_import"]
                await probe.wait_for("cp/meter_1/powermeter/var/powermeter",
                                     lambda p: json.loads(p)["power_W"]["total"] == 0, 5)
                await lab.swipe("CARD1")
                stop = await csms.wait_message("StopTransaction", lambda m: m["direction"] == "in")
                assert stop["payload"]["meterStop"] == round(register_value(energy))
                assert stop["payload"]["meterStop"] > start["payload"]["meterStart"]

    run(main(), timeout=60)
    energies = [reading["energy_Wh_import"]["total"] for reading in readings]
    assert len(energies) >= 3 and energies == sorted(energies)
