"""A client outside any module that calls cmds and reads vars by topic: for the CLI, tests and labs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from chargepoint.bus import BusClient
from chargepoint.logs import EventLogger
from chargepoint.module import CmdError


class BusProbe:
    """Talks to a running station the way any MQTT client could, with the documented payloads."""

    def __init__(self, host: str, port: int, prefix: str = "cp", name: str = "probe") -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.caller_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"{prefix}/{self.caller_id}/reply"
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._latest: dict[str, bytes] = {}
        self._changed = asyncio.Condition()
        self._callbacks: dict[str, list[Callable[[str, bytes], None]]] = {}
        self._watched: set[str] = set()
        self.bus: BusClient | None = None

    async def __aenter__(self) -> BusProbe:
        self.bus = BusClient(self.caller_id, self.host, self.port, log=EventLogger("chargepoint.probe"))
        self.bus.subscribe(self.reply_topic, self._on_reply)
        await self.bus.start()
        await self.bus.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            await self.bus.stop()

    def _on_reply(self, topic: str, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
            future = self._pending.get(reply["id"])
        except (ValueError, KeyError, TypeError):
            return
        if future is not None and not future.done():
            future.set_result(reply)

    async def call_raw(self, topic: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send ``body`` (with ``id`` and ``reply_to`` filled in) and return the raw reply."""
        assert self.bus is not None
        call_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self.bus.publish(topic, json.dumps({"id": call_id, "reply_to": self.reply_topic, **body}).encode())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CmdError("timeout", f"no reply on {topic} within {timeout:g} s") from None
        finally:
            self._pending.pop(call_id, None)

    async def call(self, module_id: str, impl_id: str, cmd: str, args: dict[str, Any] | None = None,
                   timeout: float = 5.0) -> Any:
        """Call a cmd; return its result or raise :class:`CmdError` with the reply's code."""
        topic = f"{self.prefix}/{module_id}/{impl_id}/cmd/{cmd}"
        reply = await self.call_raw(topic, {"args": args or {}}, timeout)
        if "error" in reply:
            raise CmdError(reply["error"]["code"], reply["error"]["message"])
        return reply.get("result")

    def watch(self, topic_filter: str, callback: Callable[[str, bytes], None] | None = None) -> None:
        """Keep the latest payload of every topic matching ``topic_filter`` (see ``wait_for``).

        ``callback(topic, payload)``, if given, also sees every message; watching the same filter
        again adds callbacks and never drops earlier ones.
        """
        assert self.bus is not None
        callbacks = self._callbacks.setdefault(topic_filter, [])
        if callback is not None:
            callbacks.append(callback)
        if topic_filter in self._watched:
            return
        self._watched.add(topic_filter)

        def deliver(topic: str, payload: bytes) -> None:
            self._latest[topic] = payload
            for each in callbacks:
                each(topic, payload)
            asyncio.get_running_loop().create_task(self._notify())

        self.bus.subscribe(topic_filter, deliver, qos=1)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def latest(self, topic: str) -> bytes | None:
        return self._latest.get(topic)

    async def wait_for(self, topic: str, predicate: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        """Wait until the latest payload on a watched ``topic`` satisfies ``predicate``."""

        def satisfied() -> bool:
            payload = self._latest.get(topic)
            return payload is not None and predicate(payload)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(satisfied), timeout)
            except TimeoutError:
                raise TimeoutError(f"{topic}: still {self._latest.get(topic)!r} after {timeout:g} s") from None
        return self._latest[topic]

    async def wait_state(self, module_id: str, state: str, timeout: float = 10.0) -> None:
        topic = f"{self.prefix}/{module_id}/state"
        self.watch(topic)
        await self.wait_for(topic, lambda p: p.decode() == state, timeout)

    async def wait_station_ready(self, timeout: float = 15.0) -> None:
        topic = f"{self.prefix}/ready"
        self.watch(topic)
        await self.wait_for(topic, lambda p: p == b"true", timeout)
