"""The I/O around :class:`~.slave.SlaveLine`: an RS485 line on a pseudo-terminal and a Modbus TCP server.

The line owns the master side of ``pty.openpty()``; the client under test opens the slave path
(:attr:`MeterLine.port`, or the ``link`` symlink kept pointing at it). A pty delivers bytes at once, so
replies are paced: each byte is written no earlier than the moment it would have finished arriving
at the configured baud rate, after the whole request had arrived. ``unplug`` closes the pty (the
client's port fails like a pulled USB adapter) and removes ``link``; ``replug`` opens a new one.

The TCP server (127.0.0.1, MBAP framing) serves the same meters without wire time. Each side runs in
its own thread; the meters are shared under one lock, so tests and the station module can change
loads and faults from any thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from chargepoint.ptyport import close_pty, open_pty

from .slave import Reply, SlaveLine, byte_deadlines

T = TypeVar("T")
MBAP_HEADER_BYTES = 7


class MeterLine:
    def __init__(self, line: SlaveLine, link: str | Path | None = None, tcp_port: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``tcp_port`` None: no TCP server; 0: any free port (see :attr:`tcp_port`)."""
        self.line = line
        self.link = Path(link) if link is not None else None
        self.clock = clock
        self.slave_path: str | None = None
        self.lock = threading.Lock()
        self._wanted_tcp_port = tcp_port
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._master: int | None = None
        self._slave_keeper: int | None = None
        self._requests: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> MeterLine:
        self._plug_in()
        serial_thread = threading.Thread(target=self._serve_serial, name="modbus-meter-rtu", daemon=True)
        self._threads.append(serial_thread)
        if self._wanted_tcp_port is not None:
            self._tcp = _TcpServer(("127.0.0.1", self._wanted_tcp_port), self)
            self._threads.append(threading.Thread(target=self._tcp.serve_forever, kwargs={"poll_interval": 0.2},
                                                  name="modbus-meter-tcp", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        if self._tcp is not None:
            self._tcp.shutdown()
            self._tcp.close_connections()
            self._tcp.server_close()
            self._tcp = None
        if self._threads and self._threads[0].is_alive():
            self._in_thread(self._shut_down)
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if self._master is not None:
            self._pull_out()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> MeterLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a user does ---------------------------------------------------------------------------------------
    @property
    def port(self) -> str:
        """What a client opens: ``link`` if given, else the current slave path."""
        if self.link is not None:
            return str(self.link)
        if self.slave_path is None:
            raise RuntimeError("the line is unplugged")
        return self.slave_path

    @property
    def tcp_port(self) -> int | None:
        return None if self._tcp is None else int(self._tcp.server_address[1])

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def change(self, action: Callable[[SlaveLine, float], T]) -> T:
        """Run ``action(line, now)`` under the lock (set a load, inject a fault, read the meters)."""
        with self.lock:
            return action(self.line, self.clock())

    def unplug(self) -> None:
        """The serial port vanishes: the pty is closed and ``link`` removed. TCP keeps serving."""
        self._in_thread(self._pull_out)

    def replug(self) -> None:
        """The port comes back on a new pty; ``link`` points at it."""
        self._in_thread(self._plug_in)

    # -- the serial thread --------------------------------------------------------------------------------------
    def _in_thread(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the serial thread, which alone reads, writes and closes the pty."""
        if not self._threads or not self._threads[0].is_alive():
            action()
            return
        done = threading.Event()
        self._requests.put((action, done))
        os.write(self._wake_write, b"x")
        if not done.wait(5):
            raise TimeoutError("Modbus meter line thread does not respond")

    def _plug_in(self) -> None:
        self._pull_out()
        self._master, self._slave_keeper, self.slave_path = open_pty(self.link)

    def _pull_out(self) -> None:
        close_pty(self.link, self._master, self._slave_keeper)
        self._master = self._slave_keeper = self.slave_path = None

    def _shut_down(self) -> None:
        self._pull_out()
        self._stopping = True

    def _serve_serial(self) -> None:
        while not self._stopping:
            master = self._master
            with self.lock:
                deadline = self.line.deadline()
            timeout = 1.0 if deadline is None else max(0.0, deadline - self.clock())
            watched = [self._wake_read] if master is None else [self._wake_read, master]
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._wake_read in readable:
                os.read(self._wake_read, 64)
                while not self._requests.empty():
                    action, done = self._requests.get()
                    action()
                    done.set()
                continue
            if master is None:
                continue
            replies: list[Reply] = []
            if master in readable:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    continue
                with self.lock:
                    replies = self.line.receive(data, self.clock())
            elif deadline is not None:
                with self.lock:
                    replies = self.line.idle(self.clock())
            for reply in replies:
                self._send_paced(master, reply)

    def _send_paced(self, master: int, reply: Reply) -> None:
        """Write ``reply`` so that no byte arrives before it could have at the line's baud rate."""
        deadlines = byte_deadlines(reply.send_at, len(reply.frame), self.line.baudrate)
        sent = 0
        while sent < len(deadlines):
            wait = deadlines[sent] - self.clock()
            if wait > 0:
                time.sleep(wait)
            now = self.clock()
            due = sent + 1
            while due < len(deadlines) and deadlines[due] <= now:
                due += 1
            try:
                os.write(master, reply.frame[sent:due])
            except OSError:
                return  # unplugged while answering
            sent = due


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], meter_line: MeterLine) -> None:
        self.meter_line = meter_line
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _MbapHandler)

    def close_connections(self) -> None:
        """End the open client connections too (shutdown() only stops accepting new ones)."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _MbapHandler(socketserver.BaseRequestHandler):
    """One Modbus TCP client: MBAP header (transaction, protocol 0, length, unit id) + PDU per request."""

    server: _TcpServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        with self.server.connections_lock:
            self.server.connections.add(connection)
        try:
            self._serve(connection)
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(connection)

    def _serve(self, connection: socket.socket) -> None:
        meter_line = self.server.meter_line
        while True:
            header = _receive_exactly(connection, MBAP_HEADER_BYTES)
            if header is None:
                return
            transaction, protocol, length, unit_id = (int.from_bytes(header[0:2], "big"),
                                                      int.from_bytes(header[2:4], "big"),
                                                      int.from_bytes(header[4:6], "big"), header[6])
            if protocol != 0 or not 2 <= length <= 254:
                return  # not Modbus: drop the connection, as servers do
            pdu = _receive_exactly(connection, length - 1)
            if pdu is None:
                return
            answer = meter_line.change(lambda line, now, unit=unit_id, body=pdu: line.answer_pdu(unit, body, now))
            if answer is None:
                continue
            if answer.delay_s > 0:
                time.sleep(answer.delay_s)
            reply = (transaction.to_bytes(2, "big") + b"\x00\x00" + (len(answer.pdu) + 1).to_bytes(2, "big")
                     + bytes([answer.slave_id]) + answer.pdu)
            try:
                connection.sendall(reply)
            except OSError:
                return


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = connection.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
