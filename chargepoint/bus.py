"""MQTT connection for one module (or the manager), driven by the asyncio loop.

paho-mqtt does the protocol; its socket is registered with the running event loop, so there is no
extra thread and no hop between threads on the hot path. The client reconnects by itself with
back-off, re-subscribes and re-publishes every retained value it published, so the broker's view
of this module is restored after a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from chargepoint.logs import EventLogger

MessageCallback = Callable[[str, bytes], None]
ConnectHook = Callable[[], None]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class BusClient:
    """One MQTT connection. Publish and subscribe work before the first connect: they are replayed."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        keepalive_s: int = 30,
        will: Will | None = None,
        log: EventLogger | None = None,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.log = log or EventLogger(f"bus.{client_id}")
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._subscriptions: dict[str, int] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._connect_hooks: list[ConnectHook] = []
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ever_connected = False
        self._writing_directly = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(0)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write

    # -- loop integration -------------------------------------------------------------------
    def _in_loop(self, func: Callable[..., object], *args: object) -> None:
        if threading.get_ident() == self._loop_thread:
            func(*args)
        else:
            self._loop.call_soon_threadsafe(func, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        self._in_loop(self._loop.add_reader, sock, client.loop_read)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        self._in_loop(self._loop.remove_reader, sock)
        self._in_loop(self._loop.remove_writer, sock)

    def _on_register_write(self, client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        if not self._writing_directly:
            self._in_loop(self._loop.add_writer, sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        self._in_loop(self._loop.remove_writer, sock)

    # -- connection -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; returns at once (see ``connected``)."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name=f"mqtt-connect-{self.client_id}"))
        self._tasks.append(asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}"))

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def _connect_loop(self) -> None:
        delay = 0.05
        while not self._stopping:
            if not self.connected.is_set() and not self._client.is_connected():
                try:
                    await self._loop.run_in_executor(None, self._connect_blocking)
                    delay = 0.05
                except OSError as exc:
                    if delay >= 1.6:
                        self.log.warning("broker unreachable", host=self.host, port=self.port, error=str(exc))
                    await asyncio.sleep(delay * (0.75 + random.random() / 2))
                    delay = min(delay * 2, 5.0)
                    continue
            await asyncio.sleep(0.2)

    def _connect_blocking(self) -> None:
        if self._ever_connected:
            self._client.reconnect()
        else:
            self._client.connect(self.host, self.port, self.keepalive_s)
        self._ever_connected = True

    async def _misc_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            self.log.warning("broker refused connection", reason=str(reason))
            return
        for topic_filter, qos in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        for topic, (payload, qos) in self._retained.items():
            client.publish(topic, payload, qos=qos, retain=True)
        self.connected.set()
        self.log.debug("connected", host=self.host, port=self.port)
        for hook in list(self._connect_hooks):
            hook()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._stopping:
            self.log.warning("broker connection lost", reason=str(reason))

    def on_connect(self, hook: ConnectHook) -> None:
        """Call ``hook`` after every (re)connect, once subscriptions and retained values are restored."""
        self._connect_hooks.append(hook)

    async def stop(self, flush_timeout: float = 1.0) -> None:
        """Disconnect cleanly (no last will), after queued publishes have left.

        Subscriptions are dropped first and their acknowledgement awaited: closing a socket with
        unread incoming data makes the kernel reset the connection, and the broker may then lose
        the DISCONNECT and publish the will.
        """
        self._stopping = True
        if self._client.is_connected():
            deadline = self._loop.time() + flush_timeout
            if self._subscriptions:
                unsubscribed = asyncio.Event()
                self._client.on_unsubscribe = lambda *_args: unsubscribed.set()
                self._client.unsubscribe(list(self._subscriptions))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(unsubscribed.wait(), flush_timeout)
            while self._client.want_write() and self._loop.time() < deadline:
                await asyncio.sleep(0.005)
            self._writing_directly = True
            try:
                self._client.disconnect()
                self._client.loop_write()
            finally:
                self._writing_directly = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        sock = self._client.socket()
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self.connected.clear()

    # -- messages -------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0,
                replay: bool = True) -> None:
        """Publish; retained values are re-published after a reconnect unless ``replay`` is False."""
        if retain and replay:
            self._retained[topic] = (payload, qos)
        if self._client.is_connected():
            self._publish_now(topic, payload, qos, retain)

    def _publish_now(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand the packet to paho and write it at once; wait for writability only if the socket is full."""
        if threading.get_ident() != self._loop_thread:
            self._client.publish(topic, payload, qos=qos, retain=retain)
            return
        self._writing_directly = True
        try:
            self._client.publish(topic, payload, qos=qos, retain=retain)
            self._client.loop_write()
        finally:
            self._writing_directly = False
        sock = self._client.socket()
        if self._client.want_write() and sock is not None:
            self._loop.add_writer(sock, self._client.loop_write)

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 0) -> None:
        """Deliver every message matching ``topic_filter`` to ``callback(topic, payload)``."""

        def deliver(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            callback(message.topic, message.payload)

        self._client.message_callback_add(topic_filter, deliver)
        self._subscriptions[topic_filter] = max(qos, self._subscriptions.get(topic_filter, 0))
        if self._client.is_connected():
            self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._client.message_callback_remove(topic_filter)
        self._subscriptions.pop(topic_filter, None)
        if self._client.is_connected():
            self._client.unsubscribe(topic_filter)
