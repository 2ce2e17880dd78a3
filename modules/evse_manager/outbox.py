"""Session file writes off the event loop, and the publications that must wait for them.

The session file is written with fsync, which takes milliseconds; done on the event loop it would
stall every module of the process. Here it runs in a thread of its own, one write after the other
in the order the core asked for them. Whatever the core publishes after a write waits until that
write is on disk, so ``transaction_started`` (and every var showing the transaction) is never out
before the transaction is stored. Board cmds do not pass through here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .actions import Action, PersistSession


@dataclass(frozen=True)
class Write:
    """A session file write under way in the writer thread."""

    record: dict[str, Any] | None
    done: asyncio.Future[None]


class Outbox:
    """``persist`` starts a write; ``publish`` sends at once unless a write started before it is pending.

    ``publish_now(action)`` carries out a held action; ``stored(record)`` runs after each write
    (also after a failed one, which ``save`` reports itself) once what waited for it was published.
    """

    def __init__(self, save: Callable[[dict[str, Any] | None], None], publish_now: Callable[[Action], None],
                 stored: Callable[[dict[str, Any] | None], None],
                 spawn: Callable[[Coroutine[Any, Any, None]], Any], thread_name: str) -> None:
        self._save = save
        self._publish_now = publish_now
        self._stored = stored
        self._spawn = spawn
        self._queue: deque[Write | Action] = deque()
        self._draining = False  # a drain task, or close(), takes entries off the queue
        self._closed = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    def persist(self, action: PersistSession) -> None:
        if self._closed:  # after close() the writer thread is gone and nothing waits any more
            self._save(action.record)
            return
        self._queue.append(self._start_write(action.record))
        if not self._draining:
            self._draining = True
            self._spawn(self._drain())

    def publish(self, action: Action) -> None:
        if self._queue:
            self._queue.append(action)
        else:
            self._publish_now(action)

    def _start_write(self, record: dict[str, Any] | None) -> Write:
        """The writer thread starts now; one thread, so writes happen in the order they were started."""
        return Write(record, asyncio.get_running_loop().run_in_executor(self._writer, self._save, record))

    def _publish_entry(self, entry: Write | Action) -> None:
        assert not isinstance(entry, Write)
        self._publish_now(entry)

    async def _drain(self) -> None:
        try:
            while self._queue:
                write = self._queue[0]
                assert isinstance(write, Write)
                await asyncio.shield(write.done)  # a cancelled drain leaves the write to close()
                self._queue.popleft()
                while self._queue and not isinstance(self._queue[0], Write):
                    self._publish_entry(self._queue.popleft())
                self._stored(write.record)
        finally:
            self._draining = False

    async def close(self, last: list[Action]) -> None:
        """On shutdown: finish every queued write and publication in order, then ``last``; no callbacks.

        Runs after the drain task was cancelled; what arrives meanwhile is queued and done here too.
        """
        self._draining = True
        for action in last:
            self._queue.append(self._start_write(action.record) if isinstance(action, PersistSession) else action)
        while self._queue:
            entry = self._queue.popleft()
            if isinstance(entry, Write):
                await entry.done
            else:
                self._publish_entry(entry)
        self._closed = True
        self._writer.shutdown(wait=False)
