"""rfid_pn532: a PN532 on a serial line (pyserial-asyncio) feeding :class:`ReaderSession`; see docs/readers.md."""

from __future__ import annotations

import asyncio
from collections import deque

import serial
import serial_asyncio

from chargepoint import Module
from chargepoint.timestamps import utc_now

from .protocol import (
    Action,
    CardPresented,
    ClosePort,
    Note,
    OpenPort,
    ReaderFault,
    ReaderOnline,
    ReaderSession,
    ReaderSettings,
    Send,
)

READ_CHUNK = 512


class RfidPn532(Module):
    async def init(self) -> None:
        config = self.config
        self.port: str = config["port"]
        self.source: str = config["source"] or self.id
        self.session = ReaderSession(ReaderSettings(
            poll_interval_s=config["poll_interval_s"], debounce_s=config["debounce_s"],
            reconnect_interval_s=config["reconnect_interval_s"], response_timeout_s=config["response_timeout_s"],
        ))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def ready(self) -> None:
        self.spawn(self._run(), name=f"{self.id}-reader")

    async def shutdown(self) -> None:
        self._close_port()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        actions: deque[Action] = deque(self.session.start(loop.time()))
        while True:
            while actions:
                actions.extend(await self._perform(actions.popleft()))
            actions.extend(await self._next_event())

    async def _next_event(self) -> list[Action]:
        """Wait for bytes, a port failure or the session's deadline, and feed it to the session."""
        loop = asyncio.get_running_loop()
        deadline = self.session.deadline
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        if self._reader is None:
            await asyncio.sleep(timeout if timeout is not None else self.config["reconnect_interval_s"])
            return self.session.tick(loop.time())
        try:
            data = await asyncio.wait_for(self._reader.read(READ_CHUNK), timeout)
        except TimeoutError:
            return self.session.tick(loop.time())
        except (serial.SerialException, OSError) as exc:
            self._close_port()
            return self.session.port_closed(loop.time(), str(exc))
        if not data:
            self._close_port()
            return self.session.port_closed(loop.time(), "the port was closed")
        return self.session.data_received(data, loop.time())

    async def _perform(self, action: Action) -> list[Action]:
        now = asyncio.get_running_loop().time
        if isinstance(action, Send):
            if self._writer is not None:
                self._writer.write(action.data)
        elif isinstance(action, CardPresented):
            self.provides["main"].publish("token", {
                "id_token": action.id_tag, "token_type": "rfid", "source": self.source, "timestamp": utc_now(),
            })
            self.log.info("card presented", id_token=action.id_tag, source=self.source)
        elif isinstance(action, OpenPort):
            try:
                self._reader, self._writer = await serial_asyncio.open_serial_connection(
                    url=self.port, baudrate=self.config["baudrate"], exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                return self.session.port_closed(now(), str(exc))
            self._writer.transport.serial.reset_input_buffer()  # type: ignore[attr-defined]
            return self.session.port_opened(now())
        elif isinstance(action, ClosePort):
            self._close_port()
        elif isinstance(action, ReaderOnline):
            self.provides["main"].clear_error("reader_fault")
            self.log.info("reader online", port=self.port, firmware=action.firmware)
        elif isinstance(action, ReaderFault):
            self.provides["main"].raise_error("reader_fault", f"PN532 on {self.port}: {action.message}")
        elif isinstance(action, Note):
            getattr(self.log, action.level)(action.event, port=self.port, **action.fields)
        return []

    def _close_port(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
