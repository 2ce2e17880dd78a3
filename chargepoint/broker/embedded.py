"""A small asyncio MQTT 3.1.1 broker, used when no system broker is installed.

Scope and choices:

- QoS 0 and 1 end to end. Subscriptions asking for QoS 2 are granted QoS 1. An incoming QoS 2
  PUBLISH is answered with PUBREC, routed once on receipt, and PUBREL is answered with PUBCOMP.
- Sessions are always clean: clean_session=0 is accepted but nothing is stored or queued offline and
  CONNACK says session_present=0. QoS 1 messages are not re-sent (there is no session to resume).
- Retained messages, wildcards (a leading wildcard does not match ``$`` topics), last will (also on
  keepalive expiry at 1.5 x keepalive, protocol errors and client-id takeover), one delivery per
  client at the highest granted QoS of its matching subscriptions, per-client publish order.
- Protocol levels 4 (3.1.1) and 3 (3.1). No authentication: any user name and password are accepted.
- A malformed packet closes that connection (logged); a client whose unsent output exceeds
  `MAX_WRITE_BUFFER` is disconnected as a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from chargepoint.broker.packets import (
    PINGRESP,
    Ack,
    Connect,
    Control,
    FrameReader,
    PacketType,
    ProtocolError,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_ack,
    encode_connack,
    encode_suback,
    parse_packet,
    parse_publish,
    publish_header,
)
from chargepoint.broker.topics import SubscriptionTree, topic_matches, valid_topic_filter

log = logging.getLogger("chargepoint.broker")

CONNECT_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 32 * 1024 * 1024
_PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3)}


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


class _Message:
    """A message being routed, with its encoded forms cached across subscribers."""

    __slots__ = ("_frame0", "_head1", "payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self._frame0: bytes | None = None
        self._head1: bytes | None = None

    def frame(self, qos: int, packet_id: int, retain: bool) -> bytes:
        """The PUBLISH packet for one subscriber."""
        if retain:
            head = publish_header(self.topic.encode(), len(self.payload), qos, True)
            return head + _u16(packet_id) + self.payload if qos else head + self.payload
        if qos:
            if self._head1 is None:
                self._head1 = publish_header(self.topic.encode(), len(self.payload), 1)
            return self._head1 + _u16(packet_id) + self.payload
        if self._frame0 is None:
            self._frame0 = publish_header(self.topic.encode(), len(self.payload)) + self.payload
        return self._frame0


class _Session(asyncio.Protocol):
    """One client connection."""

    def __init__(self, broker: EmbeddedBroker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.client_id = ""
        self.peer = "?"
        self.connected = False
        self.closed = False
        self.will: _Message | None = None
        self.keepalive = 0
        self.last_rx = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.filters: dict[str, int] = {}
        self.next_pid = 0
        self.inflight: set[int] = set()
        self.awaiting_rel: set[int] = set()
        self.paused = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        self.broker._sessions.add(self)
        self.timer = self.loop.call_later(CONNECT_TIMEOUT, self._check_alive)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        try:
            for first, body in self.reader.feed(data):
                if self.closed:
                    return
                self._handle(first, body)
        except ProtocolError as exc:
            self._close(f"bad packet: {exc}", will=True, level=logging.WARNING)
        except Exception:
            log.exception("internal error handling a packet from id=%s peer=%s", self.client_id, self.peer)
            self._close("internal error", will=True, level=logging.ERROR)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("connection closed by client" if exc is None else f"connection lost: {exc}", will=True)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # --- packets --------------------------------------------------------------------------------

    def _handle(self, first: int, body: bytes) -> None:
        if first >> 4 == 3 and self.connected:  # PUBLISH, the hot path
            self._on_publish(parse_publish(first, body))
            return
        packet = parse_packet(first, body)
        if not self.connected:
            if not isinstance(packet, Connect):
                raise ProtocolError(f"first packet is {type(packet).__name__}, not CONNECT")
            self._on_connect(packet)
        elif isinstance(packet, Ack):
            self._on_ack(packet)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Control) and packet.type is PacketType.PINGREQ:
            self._write(PINGRESP)
        elif isinstance(packet, Control) and packet.type is PacketType.DISCONNECT:
            self.will = None
            self._close("disconnected", will=False)
        else:
            raise ProtocolError(f"unexpected {type(packet).__name__} from a client")

    def _on_connect(self, packet: Connect) -> None:
        broker = self.broker
        if (packet.protocol_name, packet.protocol_level) not in _PROTOCOLS:
            if packet.protocol_name in ("MQTT", "MQIsdp"):
                self._write(encode_connack(False, 1))
            raise ProtocolError(f"unsupported protocol {packet.protocol_name!r} "
                                f"level {packet.protocol_level}")
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_session:
                self._write(encode_connack(False, 2))
                raise ProtocolError("empty client id without clean session")
            client_id = f"auto-{secrets.token_hex(8)}"
        self.client_id = client_id
        old = broker._clients.get(client_id)
        if old is not None:
            old._close(f"taken over by {self.peer}", will=True)
        broker._clients[client_id] = self
        self.connected = True
        self.keepalive = packet.keepalive
        if packet.will is not None:
            w = packet.will
            self.will = _Message(w.topic, w.payload, w.qos, w.retain)
        self._write(encode_connack(False, 0))
        log.info("client connected id=%s peer=%s keepalive=%d", client_id, self.peer, self.keepalive)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keepalive:
            self.timer = self.loop.call_later(self.keepalive * 1.5, self._check_alive)

    def _on_publish(self, packet: Publish) -> None:
        qos = packet.qos
        if qos == 2:
            fresh = packet.packet_id not in self.awaiting_rel
            self.awaiting_rel.add(packet.packet_id)
            if fresh:
                self.broker._route(_Message(packet.topic, packet.payload, 2, packet.retain))
            self._write(encode_ack(PacketType.PUBREC, packet.packet_id))
            return
        self.broker._route(_Message(packet.topic, packet.payload, qos, packet.retain))
        if qos:
            self._write(encode_ack(PacketType.PUBACK, packet.packet_id))

    def _on_ack(self, packet: Ack) -> None:
        if packet.type is PacketType.PUBACK:
            self.inflight.discard(packet.packet_id)
        elif packet.type is PacketType.PUBREL:
            self.awaiting_rel.discard(packet.packet_id)
            self._write(encode_ack(PacketType.PUBCOMP, packet.packet_id))
        elif packet.type is not PacketType.PUBCOMP:
            # PUBREC/PUBCOMP cannot concern us (we never send QoS 2); PUBCOMP is ignored, the rest is bad.
            raise ProtocolError(f"unexpected {packet.type.name} from a client")

    def _on_subscribe(self, packet: Subscribe) -> None:
        broker = self.broker
        codes: list[int] = []
        retained: dict[str, int] = {}
        for filter_, requested in packet.topics:
            if not valid_topic_filter(filter_):
                codes.append(0x80)
                log.warning("client id=%s subscribed to invalid filter %r", self.client_id, filter_)
                continue
            granted = min(requested, 1)
            self.filters[filter_] = granted
            broker._subs.add(filter_, self, granted)
            codes.append(granted)
            for topic in broker._retained_matching(filter_):
                if retained.get(topic, -1) < granted:
                    retained[topic] = granted
        self._write(encode_suback(packet.packet_id, codes))
        log.debug("client id=%s subscribed %s", self.client_id, packet.topics)
        for topic, granted in retained.items():
            message = broker._retained.get(topic)
            if message is not None:
                self.deliver(message, min(granted, message.qos), retain=True)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        for filter_ in packet.filters:
            if self.filters.pop(filter_, None) is not None:
                self.broker._subs.remove(filter_, self)
        self._write(encode_ack(PacketType.UNSUBACK, packet.packet_id))
        log.debug("client id=%s unsubscribed %s", self.client_id, packet.filters)

    # --- output and lifetime --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def deliver(self, message: _Message, qos: int, retain: bool = False) -> None:
        """Send `message` to this client at `qos` (0 or 1)."""
        if self.closed or self.transport is None:
            return
        pid = 0
        if qos:
            pid = self._allocate_pid()
            qos = 1 if pid else 0
        self.transport.write(message.frame(qos, pid, retain))
        if self.paused and self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._close("slow consumer: too much unsent output", will=True, level=logging.WARNING)

    def _allocate_pid(self) -> int:
        inflight = self.inflight
        if len(inflight) >= 65535:
            return 0
        pid = self.next_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in inflight:
                break
        self.next_pid = pid
        inflight.add(pid)
        return pid

    def _check_alive(self) -> None:
        self.timer = None
        if self.closed:
            return
        limit = self.keepalive * 1.5 if self.connected else CONNECT_TIMEOUT
        idle = self.loop.time() - self.last_rx
        if idle >= limit:
            what = "keepalive expired" if self.connected else "no CONNECT in time"
            self._close(what, will=True, level=logging.WARNING)
        else:
            self.timer = self.loop.call_later(limit - idle, self._check_alive)

    def _close(self, reason: str, *, will: bool, level: int = logging.INFO) -> None:
        """Forget this client (publishing its will if `will`) and close the socket; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        message = self.will if will else None
        self.will = None
        self.broker._detach(self)
        if self.connected:
            log.log(level, "client disconnected id=%s peer=%s reason=%s%s", self.client_id, self.peer,
                    reason, " (will published)" if message is not None else "")
        else:
            log.log(logging.DEBUG if level <= logging.INFO else level,
                    "connection closed before CONNECT peer=%s reason=%s", self.peer, reason)
        if self.transport is not None:
            self.transport.close()
        if message is not None:
            self.broker._route(message)


class EmbeddedBroker:
    """An in-process MQTT broker serving on `host`:`port` (0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._clients: dict[str, _Session] = {}
        self._subs: SubscriptionTree[_Session] = SubscriptionTree()
        self._retained: dict[str, _Message] = {}

    @property
    def port(self) -> int:
        """The bound port (valid after start())."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self, loop), self._host, self._requested_port, reuse_address=True
        )
        log.info("embedded broker listening %s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Close every client connection and the listener."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            session._close("broker stopping", will=False)
            if session.transport is not None:
                session.transport.abort()
        await server.wait_closed()
        self._retained.clear()
        log.info("embedded broker stopped")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- routing --------------------------------------------------------------------------------

    def _route(self, message: _Message) -> None:
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        qos = message.qos
        for session, granted in self._subs.match(message.topic).items():
            session.deliver(message, granted if granted < qos else qos)

    def _retained_matching(self, filter_: str) -> list[str]:
        if "+" not in filter_ and "#" not in filter_:
            return [filter_] if filter_ in self._retained else []
        return [topic for topic in self._retained if topic_matches(filter_, topic)]

    def _detach(self, session: _Session) -> None:
        for filter_ in session.filters:
            self._subs.remove(filter_, session)
        session.filters.clear()
        if self._clients.get(session.client_id) is session:
            del self._clients[session.client_id]
        self._sessions.discard(session)
