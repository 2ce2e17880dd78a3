"""The PN532 reader as a pure state machine: port events, received bytes and the clock in; actions out.

Life of a connection: open the port, wake the PN532 up (0x55 preamble) and send SAMConfiguration
(normal mode), GetFirmwareVersion and RFConfiguration (finite retries), then poll InListPassiveTarget
every ``poll_interval_s``. Each command gets ``attempts`` tries of ``response_timeout_s``: a timeout,
a NACK or an error frame resends it, a garbled reply is answered with a NACK (the PN532 then repeats
its reply). When the tries run out, or the port fails, the reader is offline: the port is closed, the
fault is raised once, and the port is reopened every ``reconnect_interval_s`` until the PN532 answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import framing
from .framing import Ack, Command, ErrorFrame, FrameDecoder, FrameError, Garbled, Information, Nack


@dataclass(frozen=True)
class ReaderSettings:
    poll_interval_s: float = 0.25
    debounce_s: float = 3.0
    reconnect_interval_s: float = 5.0
    response_timeout_s: float = 1.0
    attempts: int = 3


# -- actions for the shell --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenPort:
    """Open the serial port, then report :meth:`ReaderSession.port_opened` or ``port_closed``."""


@dataclass(frozen=True)
class ClosePort:
    pass


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class CardPresented:
    """A new presentation of a card: publish its UID as a token."""

    id_tag: str


@dataclass(frozen=True)
class ReaderOnline:
    """The PN532 answered the whole initialisation: clear the reader fault."""

    firmware: str


@dataclass(frozen=True)
class ReaderFault:
    """The reader became unavailable: raise the reader fault (sent once per outage)."""

    message: str


@dataclass(frozen=True)
class Note:
    """Something worth one log line."""

    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = OpenPort | ClosePort | Send | CardPresented | ReaderOnline | ReaderFault | Note


class Debouncer:
    """One presentation per card: a card seen again counts again only after it was out of the field for
    ``debounce_s`` (a held card, or one lifted and put back at once, is one presentation); another card
    counts at once.
    """

    def __init__(self, debounce_s: float) -> None:
        self.debounce_s = debounce_s
        self._id_tag: str | None = None
        self._last_seen = 0.0

    def observe(self, id_tag: str | None, now: float) -> bool:
        """Feed one poll result (``None``: no card); True when it is a new presentation."""
        if id_tag is None:
            return False
        new = id_tag != self._id_tag or now - self._last_seen >= self.debounce_s
        self._id_tag, self._last_seen = id_tag, now
        return new


INIT_SEQUENCE: tuple[tuple[Command, bytes], ...] = (
    (Command.SAM_CONFIGURATION, framing.sam_configuration_normal()),
    (Command.GET_FIRMWARE_VERSION, framing.get_firmware_version()),
    (Command.RF_CONFIGURATION, framing.rf_configuration_max_retries()),
)
POLL = (Command.IN_LIST_PASSIVE_TARGET, framing.in_list_passive_target())


class ReaderSession:
    """Drive one PN532. Call a method per event; execute the returned actions in order; call
    :meth:`tick` once the clock reaches :attr:`deadline`.
    """

    def __init__(self, settings: ReaderSettings) -> None:
        self.settings = settings
        self.deadline: float | None = None
        self.online = False
        self._port_open = False
        self._fault_active = False
        self._decoder = FrameDecoder()
        self._debouncer = Debouncer(settings.debounce_s)
        self._queue: list[tuple[Command, bytes]] = []
        self._pending: tuple[Command, bytes] | None = None
        self._acked = False
        self._attempt = 0
        self._firmware = "unknown"

    # -- port events ------------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        self.deadline = None
        return [OpenPort()]

    def port_opened(self, now: float) -> list[Action]:
        self._port_open = True
        self._decoder.reset()
        self._queue = list(INIT_SEQUENCE)
        command, frame = self._queue.pop(0)
        return self._send(command, framing.WAKEUP + frame, now)

    def port_closed(self, now: float, reason: str) -> list[Action]:
        """The port could not be opened, or failed while open (the shell has closed it)."""
        self._port_open = False
        return self._go_offline(now, f"serial port unavailable: {reason}")

    # -- bytes and time ---------------------------------------------------------------------------------------
    def data_received(self, data: bytes, now: float) -> list[Action]:
        actions: list[Action] = []
        for frame in self._decoder.feed(data):
            actions += self._on_frame(frame, now)
            if not self._port_open:
                break
        return actions

    def tick(self, now: float) -> list[Action]:
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if not self._port_open:
            return [OpenPort()]
        if self._pending is None:
            return self._send(*POLL, now)
        command, frame = self._pending
        return self._retry(now, f"no reply to {command.name} within {self.settings.response_timeout_s:g} s",
                           framing.ACK + frame)

    # -- internals --------------------------------------------------------------------------------------------
    def _send(self, command: Command, frame: bytes, now: float) -> list[Action]:
        self._pending, self._acked, self._attempt = (command, frame.removeprefix(framing.WAKEUP)), False, 1
        self.deadline = now + self.settings.response_timeout_s
        return [Send(frame)]

    def _retry(self, now: float, reason: str, resend: bytes) -> list[Action]:
        """Try the pending command again (``resend``: the bytes that do it) or give up and go offline."""
        assert self._pending is not None
        command = self._pending[0]
        if self._attempt >= self.settings.attempts:
            return self._go_offline(now, f"PN532 gives no valid reply to {command.name} "
                                         f"after {self._attempt} attempts: {reason}", close=True)
        self._attempt += 1
        self._acked = False
        self._decoder.reset()
        self.deadline = now + self.settings.response_timeout_s
        note = Note("info", "command retried", {"command": command.name, "attempt": self._attempt, "reason": reason})
        return [note, Send(resend)]

    def _go_offline(self, now: float, message: str, close: bool = False) -> list[Action]:
        actions: list[Action] = [ClosePort()] if close else []
        self._port_open = False
        self._pending = None
        self._queue = []
        self.deadline = now + self.settings.reconnect_interval_s
        if not self._fault_active:
            actions.append(ReaderFault(message))
            self._fault_active = True
        else:
            actions.append(Note("debug", "reader still unavailable", {"reason": message}))
        self.online = False
        return actions

    def _on_frame(self, frame: framing.Frame, now: float) -> list[Action]:
        if isinstance(frame, Garbled):
            note = Note("warning", "frame discarded", {"reason": frame.reason})
            if self._pending is not None and self._acked:
                return [note, *self._retry(now, frame.reason, framing.NACK)]
            return [note]
        if self._pending is None:
            return [Note("warning", "unexpected frame discarded", {"frame": type(frame).__name__})]
        command, frame_bytes = self._pending
        if isinstance(frame, Ack):
            self._acked = True
            return []
        if isinstance(frame, Nack | ErrorFrame):
            return self._retry(now, f"PN532 answered {command.name} with {type(frame).__name__}", frame_bytes)
        assert isinstance(frame, Information)
        if frame.tfi != framing.PN532_TO_HOST or frame.data[:1] != bytes([command + 1]):
            return [Note("warning", "unexpected frame discarded",
                         {"tfi": f"{frame.tfi:02X}", "data": frame.data.hex().upper(), "expected": command.name})]
        self._pending, self.deadline = None, None
        return self._on_reply(command, frame.data[1:], now)

    def _on_reply(self, command: Command, data: bytes, now: float) -> list[Action]:
        actions: list[Action] = []
        if command is Command.GET_FIRMWARE_VERSION:
            try:
                self._firmware = str(framing.parse_firmware_version(data))
            except FrameError as exc:
                actions.append(Note("warning", "reply discarded", {"reason": str(exc)}))
        if command is not Command.IN_LIST_PASSIVE_TARGET:
            if self._queue:
                return actions + self._send(*self._queue.pop(0), now)
            self.online, self._fault_active = True, False
            return [*actions, ReaderOnline(self._firmware), *self._send(*POLL, now)]
        try:
            targets = framing.parse_in_list_passive_target(data)
        except FrameError as exc:
            actions.append(Note("warning", "reply discarded", {"reason": str(exc)}))
            targets = []
        id_tag = targets[0].id_tag if targets else None
        if self._debouncer.observe(id_tag, now):
            assert id_tag is not None
            actions.append(CardPresented(id_tag))
        self.deadline = now + self.settings.poll_interval_s
        return actions
