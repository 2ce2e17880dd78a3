"""Finding or starting the broker (launch.py) and the ``python -m chargepoint.broker`` process."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chargepoint.broker import launch
from chargepoint.broker.embedded import EmbeddedBroker
from chargepoint.broker.launch import (
    BrokerStartError,
    ensure_broker,
    free_port,
    is_loopback,
    port_answers,
    start_mosquitto_subprocess,
    stop_process,
)

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
HAVE_MOSQUITTO = shutil.which("mosquitto") is not None
needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto is not installed on this machine")


def round_trip(port: int, topic: str = "cp/test/ping") -> bytes:
    """Subscribe, publish and receive one message through the broker on 127.0.0.1:port (blocking)."""
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, m: got.put(m.payload)
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert subscribed.wait(5), "no SUBACK"
        client.publish(topic, b"pong", qos=1)
        return got.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide mosquitto from shutil.which, as on a machine without it."""
    real_which = shutil.which

    def which(cmd: str, *args: object, **kwargs: object) -> str | None:
        return None if os.path.basename(cmd) == "mosquitto" else real_which(cmd, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "which", which)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("LOCALHOST", True), ("10.0.0.1", False), ("0.0.0.0", False), ("broker.example", False), ("", False)],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_port_answers() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            assert await port_answers("127.0.0.1", listener.getsockname()[1])
        assert not await port_answers("127.0.0.1", free_port())

    asyncio.run(main())


def test_external_mode_starts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.broker")
    port = free_port()

    async def main() -> None:
        handle = await ensure_broker("127.0.0.1", port, "external")
        assert (handle.kind, handle.host, handle.port) == ("external", "127.0.0.1", port)
        assert not await port_answers("127.0.0.1", port)
        await handle.stop()

    asyncio.run(main())
    assert not any("broker started" in r.getMessage() for r in caplog.records)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="auto"):
        asyncio.run(ensure_broker("127.0.0.1", 1883, "sometimes"))


@needs_mosquitto
def test_auto_starts_mosquitto(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.broker")
    port = free_port()

    async def main() -> None:
        handle = await ensure_broker("localhost", port, "auto")
        try:
            assert (handle.kind, handle.host, handle.port) == ("mosquitto", "127.0.0.1", port)
            assert await asyncio.to_thread(round_trip, port) == b"pong"
        finally:
            await handle.stop()
        assert not await port_answers("127.0.0.1", port)

    asyncio.run(main())
    assert f"broker started kind=mosquitto port={port}" in caplog.text


def test_auto_starts_embedded_without_mosquitto(no_mosquitto: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.broker")
    port = free_port()

    async def main() -> None:
        handle = await ensure_broker("127.0.0.1", port, "auto")
        try:
            assert (handle.kind, handle.port) == ("embedded", port)
            assert await asyncio.to_thread(round_trip, port) == b"pong"
        finally:
            await handle.stop()
        assert not await port_answers("127.0.0.1", port)

    asyncio.run(main())
    assert f"broker started kind=embedded port={port}" in caplog.text


def test_auto_uses_a_broker_that_already_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("a second broker was started")

    monkeypatch.setattr(launch, "start_mosquitto_subprocess", must_not_start)
    monkeypatch.setattr(launch, "EmbeddedBroker", must_not_start)

    async def main() -> None:
        async with EmbeddedBroker() as running:
            handle = await ensure_broker("127.0.0.1", running.port, "auto")
            assert (handle.kind, handle.port) == ("external", running.port)
            await handle.stop()  # does not stop someone else's broker
            assert await port_answers("127.0.0.1", running.port)

    asyncio.run(main())


def test_auto_never_starts_for_a_remote_host(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def silent(host: str, port: int, timeout: float = 0.5) -> bool:
        return False  # stands in for a remote host that does not answer (no traffic leaves loopback)

    monkeypatch.setattr(launch, "port_answers", silent)
    handle = asyncio.run(ensure_broker("192.0.2.10", 1883, "auto"))
    assert (handle.kind, handle.host) == ("external", "192.0.2.10")
    assert any(r.levelno == logging.WARNING and "not a loopback" in r.getMessage() for r in caplog.records)


def test_mosquitto_that_exits_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: something is wrong with the config' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BrokerStartError, match=r"exited with code 3 .*something is wrong"):
        asyncio.run(ensure_broker("127.0.0.1", free_port(), "auto"))
    with pytest.raises(BrokerStartError, match=r"exited with code 3"):
        start_mosquitto_subprocess(free_port())


@needs_mosquitto
def test_mosquitto_subprocess_restarts_on_the_same_port() -> None:
    port = free_port()
    proc = start_mosquitto_subprocess(port)
    try:
        assert round_trip(port) == b"pong"
        with pytest.raises(BrokerStartError, match="cannot start mosquitto"):
            start_mosquitto_subprocess(port)  # already taken
    finally:
        stop_process(proc)
    assert proc.returncode is not None
    again = start_mosquitto_subprocess(port)
    try:
        assert round_trip(port) == b"pong"
    finally:
        assert stop_process(again) == 0


def _start_module_process(port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargepoint.broker", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready, "no 'listening' line within 10 s"
    assert proc.stdout.readline() == f"listening 127.0.0.1:{port}\n"
    return proc


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_module_process_serves_and_exits_on_sigterm(processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    first = _start_module_process(port)
    processes.append(first)
    assert round_trip(port) == b"pong"
    with socket.create_connection(("127.0.0.1", port)):  # a client still connected at SIGTERM
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
    second = _start_module_process(port)  # same port right away, as tests restarting a broker do
    processes.append(second)
    assert round_trip(port) == b"pong"
    second.send_signal(signal.SIGINT)
    assert second.wait(10) == 0
