"""Board cmds in the order the core asked for them, without waiting for one reply before the next.

All cmds go out on the module's one MQTT connection to one board, so the broker delivers them in
the order they were sent and the board carries them out in that order: a relay opening sent before
``pwm_off`` is done before it, and a relay closing is never overtaken by a later opening. Each call
is a task of its own; tasks start in the order they were created, which is the order of the
actions. While the board is not ready, cmds wait in a queue (never overtaking each other) for
up to ``ready_wait_s``; then they are sent anyway and fail with ``not_ready``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from chargepoint import CmdError

from .actions import BoardAction, Lock, PwmOff, SetPwm, SetRelay, Unlock


class BoardConnection(Protocol):
    """The part of ``self.requires["board"]`` this needs."""

    @property
    def ready(self) -> bool: ...

    async def wait_ready(self, timeout: float) -> bool: ...

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any: ...


def board_call(action: BoardAction) -> tuple[str, dict[str, Any]]:
    """The board cmd and its arguments for one action."""
    if isinstance(action, SetPwm):
        return "set_pwm", {"duty_cycle_percent": action.duty_cycle_percent}
    if isinstance(action, PwmOff):
        return "pwm_off", {}
    if isinstance(action, SetRelay):
        return "allow_power_on", {"allowed": True, "phases": action.phases} if action.closed else {"allowed": False}
    if isinstance(action, Lock):
        return "lock", {}
    assert isinstance(action, Unlock)
    return "unlock", {}


class BoardLink:
    """Sends board actions at once and in order; each reply is handled when it comes.

    ``on_failure(cmd, error)`` runs for a call that failed, ``on_success(cmd)`` for one that was
    answered; a ``done`` future given to :meth:`send` gets the cmd's boolean result (False on failure).
    """

    def __init__(self, board: BoardConnection, spawn: Callable[[Coroutine[Any, Any, None]], Any],
                 on_success: Callable[[str], None], on_failure: Callable[[str, CmdError], None],
                 ready_wait_s: float) -> None:
        self._board = board
        self._spawn = spawn
        self._on_success = on_success
        self._on_failure = on_failure
        self._ready_wait_s = ready_wait_s
        self._waiting: deque[tuple[BoardAction, asyncio.Future[Any] | None]] = deque()

    def send(self, action: BoardAction, done: asyncio.Future[Any] | None = None) -> None:
        if self._waiting or not self._board.ready:
            self._waiting.append((action, done))
            if len(self._waiting) == 1:
                self._spawn(self._send_when_ready())
            return
        self._spawn(self._call(action, done))

    async def _send_when_ready(self) -> None:
        await self._board.wait_ready(self._ready_wait_s)
        while self._waiting:
            action, done = self._waiting.popleft()
            self._spawn(self._call(action, done))

    async def _call(self, action: BoardAction, done: asyncio.Future[Any] | None) -> None:
        cmd, args = board_call(action)
        try:
            result = await self._board.call(cmd, **args)
        except CmdError as exc:
            self._on_failure(cmd, exc)
            result = False
        else:
            self._on_success(cmd)
        if done is not None and not done.done():
            done.set_result(bool(result))
