"""The websocket link to the CSMS: connect with ``ocpp1.6``, keep alive, reconnect with back-off on every drop.

The OCPP logic sits above: it iterates ``events()`` (Connected, TextReceived, BinaryReceived, Disconnected,
ConnectFailed, in the order they happened) and calls ``send(text)``. This class knows nothing about OCPP
messages. Security profiles 2 and 3 need only settings: a wss:// endpoint and an ``ssl_context_factory``
(CA bundle, client certificate), called for each attempt so a new certificate applies on the next dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.typing import Subprotocol

import chargepoint
from chargepoint.logs import EventLogger

from .backoff import RandomSource
from .endpoint import ConnectionSettings, check_seconds, describe_close_code, describe_dial_failure

OCPP16 = Subprotocol("ocpp1.6")


class EventLog(Protocol):
    def debug(self, event: str, **fields: Any) -> None: ...
    def info(self, event: str, **fields: Any) -> None: ...
    def warning(self, event: str, **fields: Any) -> None: ...


def _hide_credentials(record: logging.LogRecord) -> bool:
    """websockets logs the handshake headers at DEBUG; never let the Authorization value through."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in ("authorization", "proxy-authorization"):
        record.args = (args[0], "***")
    return True


WEBSOCKETS_LOGGER = logging.getLogger("chargepoint.ocpp16.websocket")
WEBSOCKETS_LOGGER.addFilter(_hide_credentials)


@dataclass(frozen=True)
class Connected:
    number: int
    """Counts successful connections from 1; ``send(..., number=n)`` refuses to go out on a later one."""
    url: str
    subprotocol: str


@dataclass(frozen=True)
class TextReceived:
    number: int
    text: str


@dataclass(frozen=True)
class BinaryReceived:
    """OCPP-J uses text frames only; the OCPP layer logs and ignores these."""

    number: int
    data: bytes


@dataclass(frozen=True)
class Disconnected:
    number: int
    code: int | None
    reason: str
    retry_in_s: float | None
    """None when the station closed the link itself (``close()`` or ``reconnect()``)."""


@dataclass(frozen=True)
class ConnectFailed:
    attempt: int
    reason: str
    status_code: int | None
    retry_in_s: float


ConnectionEvent = Connected | TextReceived | BinaryReceived | Disconnected | ConnectFailed


class NotConnectedError(ConnectionError):
    """There is no open connection to send on (or not the one the caller meant)."""


class _Failure(Exception):
    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


_END = object()


class OcppConnection:
    """One CSMS link. ``run()`` (or ``async with``) keeps it up until ``close()``."""

    def __init__(self, settings: ConnectionSettings, log: EventLog | None = None,
                 random_source: RandomSource = random.random) -> None:
        self._settings = settings
        self._log: EventLog = log or EventLogger("ocpp16.connection")
        self._random = random_source
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._number = 0
        self._ping_interval_s = settings.ping_interval_s
        self._ping_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._opening: asyncio.Future[ClientConnection] | None = None
        self._closing = False
        self._redial_now = False
        self._running = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- public API ------------------------------------------------------------------------
    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def events(self) -> AsyncIterator[ConnectionEvent]:
        """Every event in order; ends after ``close()``. Meant for one consumer."""
        while True:
            event = await self._events.get()
            if event is _END:
                self._events.put_nowait(_END)
                return
            yield event  # type: ignore[misc]

    async def send(self, text: str, number: int | None = None) -> None:
        """Sends one text frame. With ``number``, only on that connection (a reply must not reach a later one)."""
        if not isinstance(text, str):
            raise TypeError(f"OCPP-J frames are text, got {type(text).__name__}")
        ws = self._ws
        if ws is None or (number is not None and number != self._number):
            raise NotConnectedError("not connected to the CSMS" if ws is None else f"connection {number} is gone")
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise NotConnectedError(f"the CSMS connection closed while sending ({exc})") from exc

    def set_ping_interval(self, seconds: float) -> None:
        """WebSocketPingInterval changed: applies to the open connection at once."""
        check_seconds("WebSocketPingInterval", seconds, allow_zero=True)
        self._ping_interval_s = seconds
        self._ping_changed.set()

    async def reconnect(self, settings: ConnectionSettings | None = None) -> None:
        """Drops the link and dials again at once, with new settings if given (new key, profile, endpoint)."""
        if settings is not None:
            self._settings = settings
            self._ping_interval_s = settings.ping_interval_s
        self._redial_now = True
        await self._interrupt("reconnecting")

    async def close(self) -> None:
        """Closes the link for good; ``events()`` ends after the final Disconnected."""
        self._closing = True
        await self._interrupt("station shutting down")
        if self._running:
            await self._stopped.wait()
        else:
            self._events.put_nowait(_END)

    async def __aenter__(self) -> OcppConnection:
        self._task = asyncio.create_task(self.run(), name="ocpp16-connection")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
        if self._task is not None:
            await self._task

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("this connection is already running")
        self._running = True
        attempt = 0
        try:
            while not self._closing:
                settings = self._settings
                try:
                    ws = await self._open(settings, attempt + 1)
                except _Failure as failure:
                    attempt += 1
                    delay = self._delay(settings, attempt)
                    status = {} if failure.status_code is None else {"status": failure.status_code}
                    self._log.warning("CSMS connection failed", url=settings.url, reason=failure.reason, **status,
                                      attempt=attempt, retry_in_s=round(delay, 3))
                    self._events.put_nowait(ConnectFailed(attempt, failure.reason, failure.status_code, delay))
                    await self._pause(delay)
                    continue
                if ws is None:  # close() or reconnect() cut the dial short
                    continue
                started = asyncio.get_running_loop().time()
                await self._serve(ws)
                if asyncio.get_running_loop().time() - started >= settings.stable_after_s:
                    attempt = 0
                if self._redial_now:
                    attempt = 0
                else:
                    attempt += 1
                delay = None if self._closing or self._redial_now else self._delay(settings, attempt)
                self._report_closed(ws, delay)
                if delay is not None:
                    await self._pause(delay)
        finally:
            self._running = False
            self._stopped.set()
            self._events.put_nowait(_END)

    # -- internals ---------------------------------------------------------------------------
    def _delay(self, settings: ConnectionSettings, attempt: int) -> float:
        return settings.backoff.delay_s(attempt, self._random)

    async def _pause(self, delay: float) -> None:
        """Waits for the back-off, cut short by ``close()`` or ``reconnect()``."""
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()
        self._redial_now = False

    async def _interrupt(self, reason: str) -> None:
        self._wake.set()
        if self._opening is not None:
            self._opening.cancel()
        ws = self._ws
        if ws is not None:
            await ws.close(1000, reason)

    async def _open(self, settings: ConnectionSettings, attempt: int) -> ClientConnection | None:
        """An open connection that agreed to ocpp1.6, None when closed meanwhile; raises _Failure."""
        url = settings.url
        self._log.debug("connecting to CSMS", url=url, attempt=attempt, security_profile=settings.security_profile)
        self._wake.clear()
        self._redial_now = False
        tls: dict[str, Any] = {}
        if url.startswith("wss://") and settings.ssl_context_factory is not None:
            try:
                tls["ssl"] = settings.ssl_context_factory()
            except (OSError, ValueError) as exc:
                raise _Failure(f"TLS setup failed: {exc}") from exc
        self._opening = asyncio.ensure_future(connect(
            url, subprotocols=[OCPP16], additional_headers=settings.upgrade_headers(),
            user_agent_header=f"chargepoint/{chargepoint.__version__}", compression=None,
            open_timeout=settings.open_timeout_s, close_timeout=settings.close_timeout_s,
            ping_interval=None, ping_timeout=None, max_size=settings.max_message_bytes,
            logger=WEBSOCKETS_LOGGER, **tls,
        ))
        try:
            ws = await self._opening
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return None
        except Exception as exc:
            raise _Failure(*describe_dial_failure(exc, url, settings.open_timeout_s)) from exc
        finally:
            self._opening = None
        if ws.subprotocol != OCPP16:
            await ws.close(1002, "no agreed subprotocol")
            raise _Failure("the CSMS completed the websocket handshake without agreeing to subprotocol ocpp1.6: "
                           "it does not serve OCPP 1.6 on this endpoint (CitrineOS: wrong port)")
        if self._closing or self._redial_now:  # close() or reconnect() came while the handshake finished
            await ws.close(1000, "station shutting down" if self._closing else "reconnecting")
            return None
        self._number += 1
        self._ws = ws
        self._ping_changed.clear()
        self._log.info("connected to CSMS", url=url, subprotocol=ws.subprotocol, connection=self._number)
        self._events.put_nowait(Connected(self._number, url, ws.subprotocol))
        return ws

    async def _serve(self, ws: ClientConnection) -> None:
        number = self._number
        keep_alive = asyncio.create_task(self._keep_alive(ws), name="ocpp16-ping")
        try:
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosed:
                    return
                if isinstance(message, str):
                    self._events.put_nowait(TextReceived(number, message))
                else:
                    self._events.put_nowait(BinaryReceived(number, bytes(message)))
        finally:
            self._ws = None
            if ws.state is State.OPEN:  # cancelled while serving: drop the socket, nobody reads it any more
                ws.transport.abort()
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive

    async def _keep_alive(self, ws: ClientConnection) -> None:
        while True:
            interval = self._ping_interval_s
            try:
                await asyncio.wait_for(self._ping_changed.wait(), interval if interval > 0 else None)
                self._ping_changed.clear()
                continue
            except TimeoutError:
                pass
            try:
                pong = await ws.ping()
                await asyncio.wait_for(pong, self._settings.pong_timeout_s)
            except ConnectionClosed:
                return
            except TimeoutError:
                self._log.warning("no pong from the CSMS, dropping the connection",
                                  pong_timeout_s=self._settings.pong_timeout_s)
                await ws.close(1011, "ping timeout")
                return

    def _report_closed(self, ws: ClientConnection, retry_in_s: float | None) -> None:
        code = ws.close_code
        reason = ws.close_reason or ""
        if retry_in_s is None:
            self._log.info("CSMS connection closed by the station", code=code, reason=reason)
        else:
            self._log.warning("CSMS connection lost", code=code, reason=reason, meaning=describe_close_code(code),
                              retry_in_s=round(retry_in_s, 3))
        self._events.put_nowait(Disconnected(self._number, code, reason, retry_in_s))
