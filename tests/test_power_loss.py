"""kill -9 of the station process during a session, then a restart: resumed or closed with PowerLoss."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import Broker, chargepoint_cmd, run, subprocess_env, write_wiring
from scenario import Lab, station_modules

from chargepoint.busprobe import BusProbe


def start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(chargepoint_cmd("run", str(path)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("mode", ["resume", "power_loss"])
def test_kill_during_session_then_restart(broker: Broker, tmp_path: Path, mode: str) -> None:
    modules = station_modules(tmp_path, evse_config=f", session_resume: {mode}, meter_persist_interval_s: 0.2")
    path = write_wiring(tmp_path, broker.port, modules)
    processes = [start(path)]

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await probe.wait_station_ready(20)
            await lab.plug(1)
            await lab.wait_charger_state(1, "waiting_for_authorization")
            await lab.swipe("AA11")
            started = await lab.wait_event(1, "transaction_started")
            await lab.wait_charger_state(1, "charging")
            await asyncio.sleep(1.0)
            before_kill = await lab.energy_Wh(1)
            os.kill(processes[0].pid, signal.SIGKILL)
            processes[0].wait(5)
            seen = len(lab.events[1])
            processes.append(start(path))
            if mode == "resume":
                await lab.wait_event(1, "session_resumed", timeout=20, after=seen)
                await lab.wait_charger_state(1, "charging", timeout=10)
                assert "transaction_finished" not in lab.kinds(1)
                await lab.swipe("AA11")
                finished = await lab.wait_event(1, "transaction_finished", after=seen)
                assert finished["reason"] == "Local"
            else:
                finished = await lab.wait_event(1, "transaction_finished", timeout=20, after=seen)
                assert finished["reason"] == "PowerLoss"
                # The last persisted meter value: not before the start, not after the kill.
                assert started["meter_Wh"] <= finished["meter_Wh"] <= before_kill + 1
            assert finished["session_id"] == started["session_id"]
            assert lab.kinds(1).count("transaction_started") == 1
            assert lab.kinds(1).count("transaction_finished") == 1

    try:
        run(scenario(), timeout=90)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
