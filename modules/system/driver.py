"""Runs the actions of a firmware or log-upload job: the one async loop both share."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from .jobs import Action, PublishStatus, Wait

Step = Callable[[Any], Awaitable[list[Action] | None]]


class TimedJob(Protocol):
    def timer_expired(self) -> list[Action]: ...


async def run_actions(actions: Iterable[Action], job: TimedJob, publish: Callable[[PublishStatus], None],
                      steps: dict[type, Step]) -> None:
    """Publish statuses, sleep for timers and run each other action's step; follow-up actions queue behind."""
    queue: deque[Action] = deque(actions)
    while queue:
        action = queue.popleft()
        if isinstance(action, PublishStatus):
            publish(action)
        elif isinstance(action, Wait):
            await asyncio.sleep(action.seconds)
            queue.extend(job.timer_expired())
        else:
            queue.extend(await steps[type(action)](action) or [])
