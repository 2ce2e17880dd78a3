"""Find or start the MQTT broker (settings.mqtt.broker: auto | external).

`auto`: if nothing answers on a loopback address, start a private broker bound to 127.0.0.1 — the
system ``mosquitto`` if installed, else the embedded pure-Python broker. `external`: never start one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from typing import IO, Literal

from chargepoint.broker.embedded import EmbeddedBroker

log = logging.getLogger("chargepoint.broker")

BrokerKind = Literal["mosquitto", "embedded", "external"]
BrokerMode = Literal["auto", "external"]
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 3.0
STOP_TIMEOUT = 3.0

# Last lines mosquitto wrote to stderr, per process, for error messages.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_STDERR_TAILS: weakref.WeakKeyDictionary[subprocess.Popen[bytes], collections.deque[str]] = (
    weakref.WeakKeyDictionary()
)


class BrokerStartError(RuntimeError):
    """A private broker could not be started."""


async def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds within `timeout` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _mosquitto_config(port: int) -> str:
    return (
        f"listener {port} {LOOPBACK}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        # Without it, back-to-back small messages to one client wait for its delayed ACK (~40 ms).
        "set_tcp_nodelay true\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
        "log_timestamp false\n"
    )


def _pump_stderr(stream: IO[bytes], tail: collections.deque[str], tmpdir: str) -> None:
    """Forward mosquitto's stderr to our log until it exits, then remove its config directory."""
    try:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                log.warning("mosquitto: %s", line)
    finally:
        stream.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def mosquitto_output(proc: subprocess.Popen[bytes]) -> str:
    """The last lines a process started by start_mosquitto_subprocess wrote to stderr."""
    return " | ".join(_STDERR_TAILS.get(proc, ()))


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or in the sbin folders Debian installs it to (not on users' PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(SBIN_DIRS))


def start_mosquitto_subprocess(port: int, *, wait: float | None = START_TIMEOUT,
                               executable: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``mosquitto`` listening on 127.0.0.1:`port` with a temporary config.

    With `wait` (seconds), block until the port answers; raise BrokerStartError if mosquitto exits
    or does not listen in time. Stop it with stop_process().
    """
    exe = executable or find_mosquitto()
    if exe is None:
        raise BrokerStartError("mosquitto is not installed (not found on PATH)")
    _check_port_free(port)
    tmpdir = tempfile.mkdtemp(prefix="chargepoint-mosquitto-")
    conf = os.path.join(tmpdir, "mosquitto.conf")
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write(_mosquitto_config(port))
    try:
        # Own session: Ctrl-C in the terminal stops the station, which then stops its broker last.
        proc = subprocess.Popen([exe, "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise BrokerStartError(f"cannot run {exe}: {exc}") from exc
    tail: collections.deque[str] = collections.deque(maxlen=20)
    _STDERR_TAILS[proc] = tail
    assert proc.stderr is not None
    threading.Thread(target=_pump_stderr, args=(proc.stderr, tail, tmpdir),
                     name=f"mosquitto-{port}-stderr", daemon=True).start()
    if wait:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                time.sleep(0.05)  # let the stderr thread catch the last lines
                raise _exit_error(proc, port)
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
                return proc
            if time.monotonic() >= deadline:
                stop_process(proc)
                raise BrokerStartError(f"mosquitto did not listen on {LOOPBACK}:{port} within {wait:g} s")
            time.sleep(0.02)
    return proc


def _check_port_free(port: int) -> None:
    """Raise BrokerStartError if something already listens on 127.0.0.1:`port`.

    Otherwise waiting for the port to answer could mistake the other listener for mosquitto.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise BrokerStartError(f"cannot start mosquitto on {LOOPBACK}:{port}: {exc}") from exc


def _exit_error(proc: subprocess.Popen[bytes], port: int) -> BrokerStartError:
    return BrokerStartError(f"mosquitto exited with code {proc.returncode} before listening on "
                            f"{LOOPBACK}:{port}: {mosquitto_output(proc) or 'no output'}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM `proc`, SIGKILL it after `timeout` seconds; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("process %d ignored SIGTERM for %g s; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


class BrokerHandle:
    """The broker in use: started by us (mosquitto, embedded) or someone else's (external)."""

    def __init__(self, kind: BrokerKind, host: str, port: int, *,
                 process: subprocess.Popen[bytes] | None = None,
                 embedded: EmbeddedBroker | None = None) -> None:
        self.kind: BrokerKind = kind
        self.host = host
        self.port = port
        self.process = process
        self.embedded = embedded

    async def stop(self) -> None:
        """Stop the broker if we started it; idempotent; nothing for an external one."""
        process, self.process = self.process, None
        embedded, self.embedded = self.embedded, None
        if process is not None:
            code = await asyncio.to_thread(stop_process, process)
            log.info("broker stopped kind=%s port=%d code=%s", self.kind, self.port, code)
        if embedded is not None:
            await embedded.stop()
            log.info("broker stopped kind=%s port=%d", self.kind, self.port)

    def __repr__(self) -> str:
        return f"BrokerHandle(kind={self.kind!r}, host={self.host!r}, port={self.port})"


async def ensure_broker(host: str, port: int, mode: BrokerMode | str) -> BrokerHandle:
    """Return the broker to connect to, starting a private one on 127.0.0.1 if `mode` is auto.

    A started broker always listens on 127.0.0.1 (the handle's host), whatever loopback name was
    given. Raises BrokerStartError if mosquitto cannot be started, ValueError for an unknown mode.
    """
    if mode not in ("auto", "external"):
        raise ValueError(f"settings.mqtt.broker must be 'auto' or 'external', not {mode!r}")
    if mode == "external":
        log.info("broker external host=%s port=%d (never started by us)", host, port)
        return BrokerHandle("external", host, port)
    if port and await port_answers(host, port):
        log.info("broker found host=%s port=%d; not starting one", host, port)
        return BrokerHandle("external", host, port)
    if not is_loopback(host):
        log.warning("no broker answers on %s:%d and it is not a loopback address; not starting one",
                    host, port)
        return BrokerHandle("external", host, port)
    exe = find_mosquitto()
    if exe is not None:
        listen = port or free_port()
        proc = start_mosquitto_subprocess(listen, wait=None, executable=exe)
        try:
            await _wait_listening(proc, listen, START_TIMEOUT)
        except BaseException:
            await asyncio.to_thread(stop_process, proc)
            raise
        log.info("broker started kind=mosquitto port=%d pid=%d exe=%s", listen, proc.pid, exe)
        return BrokerHandle("mosquitto", LOOPBACK, listen, process=proc)
    broker = EmbeddedBroker(LOOPBACK, port)
    try:
        await broker.start()
    except OSError as exc:
        raise BrokerStartError(f"embedded broker cannot listen on {LOOPBACK}:{port}: {exc}") from exc
    log.info("broker started kind=embedded port=%d (mosquitto not installed)", broker.port)
    return BrokerHandle("embedded", LOOPBACK, broker.port, embedded=broker)


async def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            await asyncio.sleep(0.05)  # let the stderr thread catch the last lines
            raise _exit_error(proc, port)
        if await port_answers(LOOPBACK, port, timeout=0.2):
            return
        if time.monotonic() >= deadline:
            raise BrokerStartError(f"mosquitto did not listen on {LOOPBACK}:{port} within {timeout:g} s")
        await asyncio.sleep(0.02)
