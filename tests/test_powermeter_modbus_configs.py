"""The shipped Modbus meter configs: both validate, and config/sil-modbus.yaml runs and meters EVSE 1."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, Broker, chargepoint_cmd, run, running_station, subprocess_env

from chargepoint.busprobe import BusProbe

CONFIG = ROOT / "config"


@pytest.mark.parametrize("name", ["sil-modbus.yaml", "rpi-sdm630.yaml"])
def test_shipped_modbus_configs_are_valid(name: str) -> None:
    result = subprocess.run(chargepoint_cmd("validate", str(CONFIG / name)), env=subprocess_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout


def test_sil_modbus_station_meters_evse_1_through_the_simulated_sdm630(broker: Broker, tmp_path: Path) -> None:
    text = (CONFIG / "sil-modbus.yaml").read_text()
    state = tmp_path / "state"
    replaced = {
        "  mqtt: {host: 127.0.0.1, port: 1883, prefix: cp, broker: auto}":
            f"  mqtt: {{host: 127.0.0.1, port: {broker.port}, prefix: cp, broker: external}}",
        "  state_dir: ../var/sil-modbus": f"  state_dir: {state}",
        "port: ../var/sil-modbus/meter_sim/meter-line": f"port: {state / 'meter_sim' / 'meter-line'}",
    }
    for old, new in replaced.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    for referenced in ("allowlist.yaml", "ocpp16.yaml"):
        shutil.copy(CONFIG / referenced, tmp_path / referenced)
    (tmp_path / "sil-modbus.yaml").write_text(text)

    async def scenario() -> None:
        async with running_station(tmp_path / "sil-modbus.yaml"), BusProbe("127.0.0.1", broker.port) as probe:
            probe.watch("cp/meter_1/powermeter/var/powermeter")
            probe.watch("cp/evse_1/evse/var/state")
            payload = await probe.wait_for("cp/meter_1/powermeter/var/powermeter", lambda p: True, 10)
            reading = json.loads(payload)
            assert reading["meter_id"] == "SIL-SDM630-1"
            assert reading["energy_Wh_import"]["total"] == pytest.approx(1_500_000, abs=1)
            state = await probe.wait_for("cp/evse_1/evse/var/state", lambda p: True, 10)
            assert json.loads(state)["active_errors"] == []

    run(scenario(), timeout=40)
