"""The RPC session on the websocket: frames in and out, our CALLs as futures, timeouts, retries.

Glue between ``OcppConnection`` (events, send) and the sans-I/O ``RpcSession``. Every CALL we send gets
a future that resolves with the session event that ended it (CallResult, CallError, Timeout, CallAborted),
never with an exception. Transactional CALLs (Start/StopTransaction, MeterValues) wait in the queue across
disconnections and are tried ``attempts`` times; the others are dropped when the connection drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chargepoint.logs import EventLogger

from .connection import (
    BinaryReceived,
    Connected,
    ConnectFailed,
    Disconnected,
    NotConnectedError,
    OcppConnection,
    TextReceived,
)
from .message_log import MessageLog
from .rpc import (
    CallAborted,
    CallError,
    CallResult,
    CheckedPayload,
    Event,
    IncomingCall,
    ProtocolError,
    Requeued,
    RpcSession,
    Timeout,
)

Outcome = CallResult | CallError | Timeout | CallAborted


@dataclass
class _Pending:
    action: str
    payload: dict[str, Any] | CheckedPayload
    urgent: bool
    transactional: bool
    attempts_left: int
    on_done: Callable[[Outcome], None] | None = None
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class OcppLink:
    def __init__(self, rpc: RpcSession, connection: OcppConnection, log: EventLogger,
                 on_incoming: Callable[[IncomingCall], None],
                 on_connected: Callable[[int], None], on_disconnected: Callable[[], None],
                 message_log: MessageLog | None = None) -> None:
        self.rpc = rpc
        self.connection = connection
        self.log = log
        self.message_log = message_log
        self._on_incoming = on_incoming
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._pending: dict[str, _Pending] = {}
        self._changed = asyncio.Event()  # something to flush or a deadline passed: run_timers wakes
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_lock = asyncio.Lock()
        self.number: int | None = None  # the open connection, None while disconnected

    @property
    def connected(self) -> bool:
        return self.number is not None

    def send(self, action: str, payload: dict[str, Any] | CheckedPayload, *, urgent: bool = False,
             transactional: bool = False, attempts: int = 1, flushed_by_caller: bool = False,
             on_done: Callable[[Outcome], None] | None = None) -> asyncio.Future[Outcome]:
        """Queue one CALL; raises PayloadError/ValueError for a payload the schema refuses (nothing queued).

        ``flushed_by_caller``: the caller awaits :meth:`flush` itself right after, which saves waking the
        timer task once per message (the transactional queue's replay). ``on_done(outcome)`` is called as
        soon as the CALL ended, inside the link's handling of the event that ended it (before the link
        flushes), while the future's waiters resume a loop turn later.
        """
        pending = _Pending(action, payload, urgent, transactional, max(attempts, 1) - 1, on_done)
        if not self.connected and not transactional:
            self._resolve(pending, CallAborted("", action), soon=True)
            return pending.future
        self._queue(pending, kick=not flushed_by_caller)
        return pending.future

    def _queue(self, pending: _Pending, *, kick: bool = True) -> None:
        message_id = self.rpc.send_call(pending.action, pending.payload, urgent=pending.urgent)
        self._pending[message_id] = pending
        if kick:
            self._changed.set()

    def reply(self, message_id: str, payload: dict[str, Any]) -> None:
        if self.rpc.reply(message_id, payload):
            self._changed.set()

    def reply_error(self, message_id: str, code: str, description: str) -> None:
        if self.rpc.reply_error(message_id, code, description):
            self._changed.set()

    async def flush(self) -> None:
        """Write what the session has to send now (only while connected)."""
        async with self._flush_lock:
            number = self.number
            if number is None:
                return
            try:
                for frame in self.rpc.frames_to_send(asyncio.get_running_loop().time()):
                    if self.message_log is not None:
                        self.message_log.write("out", frame)
                    await self.connection.send(frame, number)
            except NotConnectedError as exc:
                self.log.debug("frame not sent, connection gone", error=str(exc))
            finally:
                self._arm_timer()  # a CALL that went out has a deadline now

    async def run_events(self) -> None:
        async for event in self.connection.events():
            if isinstance(event, Connected):
                self.number = event.number
                self.log.info("CSMS connected", url=event.url, subprotocol=event.subprotocol)
                self._on_connected(event.number)
            elif isinstance(event, TextReceived):
                if event.number != self.number:
                    continue
                if self.message_log is not None:
                    self.message_log.write("in", event.text)
                self._handle(self.rpc.receive(event.text, asyncio.get_running_loop().time()))
            elif isinstance(event, BinaryReceived):
                self.log.warning("binary frame from the CSMS ignored (OCPP-J uses text frames)", size=len(event.data))
            elif isinstance(event, Disconnected):
                self.number = None
                self._handle(self.rpc.reset_connection(requeue=True))
                self._drop_non_transactional()
                self._on_disconnected()
            elif isinstance(event, ConnectFailed):
                pass  # the connection logs it
            await self.flush()

    async def run_timers(self) -> None:
        """Flushes what others queued and handles call timeouts; a loop timer wakes it at the next deadline."""
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._handle(self.rpc.poll(loop.time()))
            await self.flush()

    def _arm_timer(self) -> None:
        deadline = self.rpc.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._timer, self._timer_at = None, None
        self._changed.set()

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, IncomingCall):
                self._on_incoming(event)
            elif isinstance(event, Requeued):
                pending = self._pending.pop(event.old_message_id, None)
                if pending is not None:
                    self._pending[event.message_id] = pending
            elif isinstance(event, ProtocolError):
                self.log.warning("OCPP frame refused", reason=event.reason, message_id=event.message_id,
                                 answered_with=event.answered_with)
            else:
                self._finished(event)
        if events:
            self._arm_timer()

    def _finished(self, event: Outcome) -> None:
        pending = self._pending.pop(event.message_id, None)
        if pending is None:
            return
        if isinstance(event, CallResult) and event.problem is not None:
            self.log.warning("CSMS answer breaks the OCPP schema, used as far as possible", action=event.action,
                             problem=str(event.problem))
        if isinstance(event, Timeout | CallError) and pending.attempts_left > 0:
            pending.attempts_left -= 1
            self.log.warning("CALL failed, trying again", action=event.action, outcome=type(event).__name__,
                             attempts_left=pending.attempts_left)
            self._queue(pending)
            return
        if isinstance(event, Timeout | CallError):
            self.log.warning("CALL failed", action=event.action, outcome=type(event).__name__,
                             code=getattr(event, "code", None), description=getattr(event, "description", None))
        self._resolve(pending, event)

    def _resolve(self, pending: _Pending, outcome: Outcome, *, soon: bool = False) -> None:
        if not pending.future.done():
            pending.future.set_result(outcome)
        if pending.on_done is None:
            return
        if soon:  # not from inside send(): the callback may send again
            asyncio.get_running_loop().call_soon(self._call_on_done, pending.on_done, outcome)
        else:
            self._call_on_done(pending.on_done, outcome)

    def _call_on_done(self, on_done: Callable[[Outcome], None], outcome: Outcome) -> None:
        try:
            on_done(outcome)
        except Exception as exc:  # a callback's bug must not stop the link's event handling
            self.log.error("CALL outcome handler failed", error=repr(exc))

    def _drop_non_transactional(self) -> None:
        for message_id, pending in list(self._pending.items()):
            if not pending.transactional and self.rpc.cancel(message_id):
                del self._pending[message_id]
                self._resolve(pending, CallAborted(message_id, pending.action))


def when_done(future: asyncio.Future[Outcome], callback: Callable[[Outcome], None]) -> None:
    """Run ``callback(outcome)`` when the CALL ends."""
    future.add_done_callback(lambda f: callback(f.result()))
