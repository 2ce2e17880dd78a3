"""The `chargepoint` command as an integrator uses it: run, stop, validate, modules, systemd notify."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    COUNTER_AND_CLIENT,
    COUNTER_STANDALONE_AND_CLIENT,
    EXAMPLE,
    ROOT,
    Broker,
    chargepoint_cmd,
    run,
    subprocess_env,
    write_wiring,
)

from chargepoint.broker.launch import free_port
from chargepoint.busprobe import BusProbe


def start_station(path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(chargepoint_cmd("run", str(path), *extra), env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_station(process: subprocess.Popen[str], timeout: float = 10) -> tuple[int, float, str]:
    """SIGTERM the station; return its exit code, seconds it took to exit, and its log."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"station ignored SIGTERM for {timeout} s:\n{stderr}") from None
    return process.returncode, time.monotonic() - started, stderr


def test_run_then_sigterm_stops_everything_cleanly(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_STANDALONE_AND_CLIENT)
    process = start_station(path)

    async def until_ready() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            await probe.wait_station_ready(20)
            assert await probe.call("client", "main", "add_via_counter", {"a": 1}) == 1

    try:
        run(until_ready())
    except BaseException:
        process.kill()
        print(process.communicate()[1])
        raise
    code, seconds, log = stop_station(process)
    assert code == 0, log
    assert seconds < 6, f"stop took {seconds:.1f} s"
    assert "station stopped" in log

    async def final_states() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            for topic in ("cp/counter/state", "cp/client/state", "cp/ready"):
                probe.watch(topic)
            await probe.wait_for("cp/counter/state", lambda p: p == b"stopped", 5)
            await probe.wait_for("cp/client/state", lambda p: p == b"stopped", 5)
            await probe.wait_for("cp/ready", lambda p: p == b"false", 5)

    run(final_states())
    leftover = subprocess.run(["pgrep", "-f", f"--config {path}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "standalone child still running after stop"


def test_run_refuses_invalid_file_with_exit_code_2(tmp_path: Path) -> None:
    path = write_wiring(tmp_path, free_port(), "  counter:\n    module: example_countr\n")
    result = subprocess.run(chargepoint_cmd("run", str(path)), env=subprocess_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and "did you mean 'example_counter'" in result.stderr
    assert "nothing started" in result.stderr


def test_validate_command(tmp_path: Path) -> None:
    good = write_wiring(tmp_path, 1883, COUNTER_AND_CLIENT)
    result = subprocess.run(chargepoint_cmd("validate", str(good)), env=subprocess_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "valid" in result.stdout
    bad = write_wiring(tmp_path, 1883, COUNTER_AND_CLIENT.replace("counter.main", "countr.main"), name="bad.yaml")
    result = subprocess.run(chargepoint_cmd("validate", str(bad)), env=subprocess_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "did you mean 'counter'" in result.stdout


def test_modules_lists_provides_requires_and_config() -> None:
    result = subprocess.run(chargepoint_cmd("modules", "--path", str(EXAMPLE / "modules")), env=subprocess_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "example_client" in result.stdout
    assert "requires counter: example_counter [1..1]" in result.stdout
    assert "config limit: integer = 1000" in result.stdout
    assert "provides main: example_counter" in result.stdout


def test_help_and_version() -> None:
    for args in (["--help"], ["run", "--help"], ["validate", "--help"], ["modules", "--help"],
                 ["module", "run", "--help"], ["version"]):
        result = subprocess.run(chargepoint_cmd(*args), env=subprocess_env(), capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, (args, result.stderr)
    assert result.stdout.startswith("chargepoint ")


def test_auto_broker_is_started_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    path = write_wiring(tmp_path, port, COUNTER_AND_CLIENT, broker_mode="auto")
    process = start_station(path)

    async def until_ready() -> None:
        async with BusProbe("127.0.0.1", port) as probe:
            await probe.wait_station_ready(20)

    try:
        run(until_ready())
    finally:
        code, _, log = stop_station(process)
    assert code == 0
    assert "broker started" in log
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "private broker still listening after stop"


def test_systemd_ready_watchdog_and_stopping(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        env = subprocess_env() | {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        process = start_station(path, env=env)
        received: list[str] = []
        try:
            while not {"READY=1", "WATCHDOG=1"} <= {m.split("\n")[0] for m in received}:
                received.append(notify.recv(256).decode())
        finally:
            stop_station(process)
        while True:
            message = notify.recv(256).decode()
            if message.startswith("STOPPING=1"):
                break
    assert received[0].startswith("READY=1")


@pytest.mark.parametrize("name", ["sil.yaml", "sil-2evse.yaml"])
def test_sil_configs_are_valid_and_start(tmp_path: Path, name: str) -> None:
    port = free_port()
    sil = ROOT / "config" / name
    result = subprocess.run(chargepoint_cmd("validate", str(sil)), env=subprocess_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout
    process = start_station(sil, "--mqtt-port", str(port), "--state-dir", str(tmp_path / "state"))

    async def until_ready() -> None:
        async with BusProbe("127.0.0.1", port) as probe:
            await probe.wait_station_ready(20)

    try:
        asyncio.run(asyncio.wait_for(until_ready(), 30))
    finally:
        code, _, log = stop_station(process)
    assert code == 0, log


def test_restart_request_restarts_the_station_in_place(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)
    process = start_station(path)

    async def scenario() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            await probe.wait_station_ready(20)
            probe.watch("cp/counter/main/var/started_at")
            first = await probe.wait_for("cp/counter/main/var/started_at", lambda p: True)
            assert probe.bus is not None
            probe.bus.publish("cp/manager/restart", b'{"reason": "soft reset", "module_id": "test"}', qos=1)
            await probe.wait_for("cp/ready", lambda p: p == b"false", 10)
            await probe.wait_for("cp/counter/main/var/started_at", lambda p: p != first, 20)
            await probe.wait_for("cp/ready", lambda p: p == b"true", 20)
            assert process.poll() is None, "the station process exited instead of restarting"

    try:
        run(scenario())
    finally:
        code, _, log = stop_station(process)
    assert "station restart requested" in log and "reason=\"soft reset\"" in log
    assert code == 0
