"""A PN532 on the far end of a pseudo-terminal, for testing readers over a real serial line.

The emulator owns the master side of ``pty.openpty()``; the reader under test opens the slave path
(:attr:`Pn532Emulator.port`). It runs in its own thread, so a test drives it from any thread or event
loop: :meth:`present` / :meth:`remove` a card, :meth:`garble_next` reply, :meth:`mute` (the PN532 stops
answering, the port stays) and :meth:`unplug` / :meth:`replug` (the port vanishes / comes back).

Unplug closes the pty, so the reader's open port fails the way a pulled USB-serial adapter does, and
removes ``link``. Replug opens a new pty (a new /dev/pts path) and points ``link`` at it, like udev
re-creating /dev/serial/by-id/...; configure the reader with ``link`` to follow it.

Its frame handling is written apart from ``modules/rfid_pn532/framing.py`` on purpose: a simulator that
reused the code under test would agree with that code's mistakes.
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chargepoint.ptyport import close_pty, open_pty

ACK = bytes.fromhex("0000ff00ff00")
ERROR_FRAME = bytes.fromhex("0000ff01ff7f8100")
SENS_RES_BY_UID_LENGTH = {4: b"\x00\x04", 7: b"\x00\x44", 10: b"\x00\x84"}
FIRMWARE_PN532_V1_6 = bytes([0x32, 0x01, 0x06, 0x07])


@dataclass(frozen=True)
class Card:
    uid: bytes
    sel_res: int
    ats: bytes = b""

    def target_data(self) -> bytes:
        """One target of an InListPassiveTarget reply at 106 kbps type A."""
        return (b"\x01" + SENS_RES_BY_UID_LENGTH[len(self.uid)] + bytes([self.sel_res, len(self.uid)])
                + self.uid + self.ats)


def reply_frame(command: int, data: bytes) -> bytes:
    payload = bytes([0xD5, command + 1]) + data
    return (b"\x00\x00\xff" + bytes([len(payload), -len(payload) & 0xFF]) + payload
            + bytes([-sum(payload) & 0xFF, 0x00]))


class Pn532Emulator:
    def __init__(self, link: str | Path | None = None, firmware: bytes = FIRMWARE_PN532_V1_6) -> None:
        self.link = Path(link) if link is not None else None
        self.firmware = firmware
        self.commands: list[int] = []  # codes of the valid command frames received, in order
        self.nacks_received = 0
        self.garbled_sent = 0
        self._lock = threading.Lock()
        self._card: Card | None = None
        self._garble_next = False
        self._muted = False
        self._awake = False
        self._buffer = bytearray()
        self._last_reply = b""
        self._master: int | None = None
        self._slave_keeper: int | None = None
        self.slave_path: str | None = None
        self._requests: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="pn532-emulator", daemon=True)

    @property
    def port(self) -> str:
        """What the reader opens: ``link`` if given, else the current slave path."""
        if self.link is not None:
            return str(self.link)
        assert self.slave_path is not None, "emulator not started"
        return self.slave_path

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> Pn532Emulator:
        self._plug_in()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._in_thread(self._shut_down)
            self._thread.join(5)
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)

    def __enter__(self) -> Pn532Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test does -------------------------------------------------------------------------------------
    def present(self, uid: str | bytes, sel_res: int | None = None, ats: bytes = b"") -> None:
        """Put a card in the field: ``uid`` as hex or bytes (4, 7 or 10 bytes). ``ats`` (starting with its
        length byte) makes it an ISO 14443-4 card.
        """
        uid_bytes = bytes.fromhex(uid) if isinstance(uid, str) else bytes(uid)
        if len(uid_bytes) not in SENS_RES_BY_UID_LENGTH:
            raise ValueError(f"UID of {len(uid_bytes)} bytes: ISO 14443 UIDs have 4, 7 or 10")
        if sel_res is None:
            sel_res = 0x08 if len(uid_bytes) == 4 else 0x00
        if ats:
            sel_res |= 0x20
        with self._lock:
            self._card = Card(uid_bytes, sel_res, ats)

    def remove(self) -> None:
        with self._lock:
            self._card = None

    def garble_next(self) -> None:
        """Corrupt one byte of the next reply frame's data (its checksum no longer matches)."""
        with self._lock:
            self._garble_next = True

    def mute(self) -> None:
        """Stop answering (the PN532 lost power or hangs); the serial port stays."""
        with self._lock:
            self._muted = True

    def unmute(self) -> None:
        """Answer again; the PN532 wants a wake-up first, as after a power cycle."""
        with self._lock:
            self._muted = False
            self._awake = False

    def unplug(self) -> None:
        """The port vanishes: the pty is closed (the reader's reads fail) and ``link`` removed."""
        self._in_thread(self._pull_out)

    def replug(self) -> None:
        """A fresh PN532 on a new pty; ``link`` points at it."""
        self._in_thread(self._plug_in)

    # -- the thread -------------------------------------------------------------------------------------------
    def _in_thread(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the emulator thread, which alone reads, writes and closes the pty."""
        done = threading.Event()
        self._requests.put((action, done))
        os.write(self._wake_write, b"x")
        if not done.wait(5):
            raise TimeoutError("PN532 emulator thread does not respond")

    def _plug_in(self) -> None:
        self._pull_out()
        self._master, self._slave_keeper, self.slave_path = open_pty(self.link)
        with self._lock:
            self._awake, self._buffer, self._last_reply = False, bytearray(), b""

    def _pull_out(self) -> None:
        close_pty(self.link, self._master, self._slave_keeper)
        self._master = self._slave_keeper = self.slave_path = None

    def _shut_down(self) -> None:
        self._pull_out()
        self._stopping = True

    def _serve(self) -> None:
        while not self._stopping:
            master = self._master
            watched = [self._wake_read] if master is None else [self._wake_read, master]
            readable, _, _ = select.select(watched, [], [], 1.0)
            if self._wake_read in readable:
                os.read(self._wake_read, 64)
                while not self._requests.empty():
                    action, done = self._requests.get()
                    action()
                    done.set()
                continue
            if master is not None and master in readable:
                try:
                    data = os.read(master, 1024)
                except OSError:
                    continue
                reply = self._receive(data)
                if reply:
                    os.write(master, reply)

    # -- the PN532 --------------------------------------------------------------------------------------------
    def _receive(self, data: bytes) -> bytes:
        """Bytes from the host in, bytes to send back out."""
        with self._lock:
            if self._muted:
                return b""
            if b"\x55" in data:
                self._awake = True
            out = b""
            self._buffer += data
            while (frame := self._next_host_frame()) is not None:
                out += self._answer(frame)
            return out

    def _next_host_frame(self) -> bytes | None:
        """The payload of the next well-formed host frame; ``b"ack"``/``b"nack"`` for those."""
        buffer = self._buffer
        while True:
            start = buffer.find(b"\x00\xff")
            if start < 0 or len(buffer) < start + 4:
                return None
            del buffer[:start]
            length, lcs = buffer[2], buffer[3]
            if (length, lcs) == (0x00, 0xFF):
                del buffer[:4]
                return b"ack"
            if (length, lcs) == (0xFF, 0x00):
                del buffer[:4]
                return b"nack"
            if (length + lcs) & 0xFF or length == 0:
                del buffer[:2]
                continue
            if len(buffer) < 4 + length + 1:
                return None
            payload, dcs = bytes(buffer[4 : 4 + length]), buffer[4 + length]
            del buffer[: 4 + length + 1]
            if (sum(payload) + dcs) & 0xFF == 0:
                return payload
            # a frame with a bad data checksum is dropped without a reply, as the PN532 does

    def _answer(self, frame: bytes) -> bytes:
        if not self._awake:
            return b""
        if frame == b"ack":  # the host aborts the command in progress; nothing to abort here
            return b""
        if frame == b"nack":
            self.nacks_received += 1
            return self._last_reply
        if len(frame) < 2 or frame[0] != 0xD4:
            return ERROR_FRAME
        command, params = frame[1], frame[2:]
        self.commands.append(command)
        data = self._reply_data(command, params)
        if data is None:
            return ACK + ERROR_FRAME
        self._last_reply = reply_frame(command, data)
        if self._garble_next:
            self._garble_next = False
            self.garbled_sent += 1
            corrupt = bytearray(self._last_reply)
            corrupt[-3] ^= 0xFF  # last data byte (e.g. the UID's last byte); DCS left as it was
            return ACK + bytes(corrupt)
        return ACK + self._last_reply

    def _reply_data(self, command: int, params: bytes) -> bytes | None:
        if command == 0x02:  # GetFirmwareVersion
            return self.firmware
        if command == 0x14 and params[:1] in (b"\x01", b"\x02", b"\x03", b"\x04"):  # SAMConfiguration
            return b""
        if command == 0x32 and params:  # RFConfiguration
            return b""
        if command == 0x4A and len(params) >= 2:  # InListPassiveTarget
            if params[1] != 0x00 or self._card is None:
                return b"\x00"
            return b"\x01" + self._card.target_data()
        return None
