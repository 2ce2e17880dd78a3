"""One owner per Modbus line: a pymodbus client and a lock that lets one request at a time onto the wire.

Every meter of a station that names the same serial port (or the same TCP server) reads through the same
:class:`ModbusLine`, found in a per-event-loop registry (:func:`acquire_line` / :func:`release_line`), so
requests never overlap on a half-duplex RS485 bus. Meters sharing a line therefore have to run in the same
process (not ``standalone``). The line opens its port lazily and reopens it after it vanished (a USB adapter
unplugged), at most once per ``REOPEN_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from chargepoint.modbus.plan import ReadRequest
from chargepoint.modbus.rtu import crc16, expected_reply_length, frame_gap_s, read_request, response_length

from .poller import ReadFailure
from .settings import SERIAL, LineSettings

REOPEN_INTERVAL_S = 1.0
EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "slave device failure", 5: "acknowledge", 6: "slave device busy",
                   10: "gateway path unavailable", 11: "gateway target device failed to respond"}

# Our own log lines say what failed and why; pymodbus would add one error line of its own per failed read.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ReadError(Exception):
    """A read attempt failed; ``failure`` says how."""

    def __init__(self, failure: ReadFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class LineStats:
    """What went over the line: for logs and the benchmark's wire-time limit."""

    requests: int = 0
    bytes_on_wire: int = 0  # request + reply bytes of the answered RTU requests
    failures: int = 0


@dataclass
class _Unsettled:
    """A reply to ``request_key`` may still arrive until ``until``: hold back any other request till then."""

    request_key: tuple[int, int, int, int]
    until: float


@dataclass
class ModbusLine:
    settings: LineSettings
    users: set[str] = field(default_factory=set)  # ids of the modules reading through this line
    stats: LineStats = field(default_factory=LineStats)

    def __post_init__(self) -> None:
        self.lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._reopen_at = 0.0
        self._open_error = ""
        self._last_done = 0.0
        self._unsettled: _Unsettled | None = None
        self._received: list[bytes] = []
        self.opened = False  # the port is open (for logs: the caller reports transitions)

    @property
    def name(self) -> str:
        return self.settings.name

    def _gap_s(self) -> float:
        """Silence before a request: the configured delay, and on RTU at least 3.5 characters."""
        gap = self.settings.inter_request_delay_ms / 1000
        if self.settings.kind == SERIAL:
            gap = max(gap, frame_gap_s(self.settings.baudrate))
        return gap

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received.append(bytes(data))
        return data

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        line = self.settings
        if line.kind == SERIAL:
            assert line.port is not None
            return AsyncModbusSerialClient(line.port, baudrate=line.baudrate, parity=line.parity,
                                           stopbits=line.stopbits, bytesize=8, timeout=line.timeout_s, retries=0,
                                           reconnect_delay=0, trace_packet=self._trace, name=line.name)
        assert line.host is not None
        return AsyncModbusTcpClient(line.host, port=line.tcp_port, timeout=line.timeout_s, retries=0,
                                    reconnect_delay=0, trace_packet=self._trace, name=line.name)

    async def _ensure_open(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._client is not None and self._client.connected:
            return
        if self._client is not None:
            self._client.close()
            self._client = None
            self.opened = False
            self._open_error = self._lost_message()
        if loop.time() < self._reopen_at:
            raise ReadError(ReadFailure("port", self._open_error or f"{self.name} is not open"))
        self._reopen_at = loop.time() + REOPEN_INTERVAL_S
        line = self.settings
        if line.kind == SERIAL and line.port is not None and not os.path.exists(line.port):
            self._open_error = f"serial port {line.port} does not exist (adapter unplugged?)"
            raise ReadError(ReadFailure("port", self._open_error))
        client = self._new_client()
        if not await client.connect():
            client.close()
            self._open_error = (f"cannot open serial port {line.port}" if line.kind == SERIAL
                                else f"cannot connect to {line.name}")
            raise ReadError(ReadFailure("port", self._open_error))
        self._client, self.opened = client, True

    async def read(self, slave_id: int, request: ReadRequest) -> list[int]:
        """One attempt at ``request`` on this line; :class:`ReadError` when it fails."""
        loop = asyncio.get_running_loop()
        key = (slave_id, request.function_code, request.address, request.count)
        async with self.lock:
            try:
                await self._ensure_open(loop)
                wait_until = self._last_done + self._gap_s()
                if self._unsettled is not None and self._unsettled.request_key != key:
                    wait_until = max(wait_until, self._unsettled.until)
                if (pause := wait_until - loop.time()) > 0:
                    await asyncio.sleep(pause)
                words = await self._transact(slave_id, request)
                self.stats.bytes_on_wire += (len(read_request(slave_id, request.function_code, request.address,
                                                              request.count))
                                             + response_length(request.function_code, request.count))
                if self._unsettled is not None and self._unsettled.request_key == key:
                    # this reply may have answered an earlier try; the reply to this one may still come
                    self._unsettled.until = loop.time() + self.settings.timeout_s
                return words
            except ReadError as exc:
                self.stats.failures += 1
                if exc.failure.kind in ("timeout", "crc", "wrong_slave", "bad_reply"):
                    self._unsettled = _Unsettled(key, loop.time() + self.settings.timeout_s)
                raise
            finally:
                self.stats.requests += 1
                self._last_done = loop.time()

    async def _transact(self, slave_id: int, request: ReadRequest) -> list[int]:
        assert self._client is not None
        reader = (self._client.read_input_registers if request.function_code == 4
                  else self._client.read_holding_registers)
        self._received = []
        try:
            response = await reader(request.address, count=request.count, device_id=slave_id)
        except ModbusIOException:
            raise ReadError(self._classify_silence(slave_id)) from None
        except ConnectionException:
            raise ReadError(ReadFailure("port", self._lost_message())) from None
        except ModbusException as exc:
            raise ReadError(ReadFailure("bad_reply", f"undecodable reply: {exc}")) from None
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ReadError(ReadFailure("exception", f"slave {slave_id} answered exception {code} ({name})"))
        words = list(getattr(response, "registers", []))
        if len(words) != request.count:
            raise ReadError(ReadFailure("bad_reply", f"{len(words)} registers in the reply, asked for {request.count}"))
        return words

    def _classify_silence(self, slave_id: int) -> ReadFailure:
        """No usable reply came: tell silence from garbage, a CRC error or another slave answering."""
        if self._client is not None and not self._client.connected:
            return ReadFailure("port", self._lost_message())
        received = max(self._received, key=len, default=b"")
        if not received:
            return ReadFailure("timeout", f"no reply from slave {slave_id} within {self.settings.timeout_s:g} s")
        if self.settings.kind != SERIAL:
            return ReadFailure("bad_reply", f"unusable {len(received)}-byte reply from slave {slave_id}")
        expected = expected_reply_length(received[:3])
        if expected is None or len(received) < expected:
            return ReadFailure("timeout", f"reply from slave {slave_id} incomplete after {self.settings.timeout_s:g} s "
                                          f"({len(received)} of {expected or '?'} bytes)")
        frame = received[:expected]
        if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            return ReadFailure("crc", f"CRC error in a {len(frame)}-byte reply (expected slave {slave_id})")
        if frame[0] != slave_id:
            return ReadFailure("wrong_slave", f"reply from slave {frame[0]} instead of slave {slave_id}")
        return ReadFailure("bad_reply", f"unexpected {len(frame)}-byte reply from slave {slave_id}")

    def _lost_message(self) -> str:
        if self.settings.kind == SERIAL:
            return f"serial port {self.name} went away (adapter unplugged?)"
        return f"connection to {self.name} lost"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.opened = False


_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[ModbusLine]] = weakref.WeakKeyDictionary()


class LineConflictError(ValueError):
    """Two meters name the same line with different line settings."""


def acquire_line(settings: LineSettings, user: str,
                 conflict: Callable[[ModbusLine], str | None] | None = None) -> ModbusLine:
    """The line owner for ``settings`` in this event loop, opened for ``user``.

    ``conflict(line)`` returns why ``user`` cannot join an existing line (raised as
    :class:`LineConflictError`) or None.
    """
    lines = _registries.setdefault(asyncio.get_running_loop(), [])
    for line in lines:
        if line.settings.same_line(settings):
            problem = conflict(line) if conflict is not None else None
            if problem:
                raise LineConflictError(problem)
            line.users.add(user)
            return line
    line = ModbusLine(settings)
    line.users.add(user)
    lines.append(line)
    return line


def release_line(line: ModbusLine, user: str) -> None:
    """``user`` is done with ``line``; the last user closes it."""
    line.users.discard(user)
    if line.users:
        return
    line.close()
    lines = _registries.get(asyncio.get_running_loop(), [])
    if line in lines:
        lines.remove(line)
