"""The embedded MQTT broker: codec and topic rules (pure), then real sockets and paho-mqtt peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from chargepoint.broker.embedded import EmbeddedBroker
from chargepoint.broker.packets import (
    DISCONNECT,
    MAX_REMAINING_LENGTH,
    PINGREQ,
    Ack,
    Connack,
    Connect,
    Control,
    FrameReader,
    Packet,
    PacketType,
    ProtocolError,
    Publish,
    Suback,
    Will,
    decode_remaining_length,
    encode_ack,
    encode_connect,
    encode_publish,
    encode_remaining_length,
    encode_subscribe,
    parse_packet,
)
from chargepoint.broker.topics import SubscriptionTree, topic_matches, valid_topic_filter

pytestmark = pytest.mark.timeout(30)

# --- pure: topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),
        ("+/+", "/", True),
        ("+", "/", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/+", "$SYS/x", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
    ],
)
def test_topic_matches(filter_: str, topic: str, expected: bool) -> None:
    assert topic_matches(filter_, topic) is expected
    tree: SubscriptionTree[str] = SubscriptionTree()
    tree.add(filter_, "k", 1)
    assert (tree.match(topic) == {"k": 1}) is expected


@pytest.mark.parametrize(
    ("filter_", "valid"),
    [("a/b", True), ("#", True), ("a/#", True), ("+/+/#", True), ("a#", False), ("a/#/b", False),
     ("a+/b", False), ("", False), ("a\x00", False), ("/", True)],
)
def test_valid_topic_filter(filter_: str, valid: bool) -> None:
    assert valid_topic_filter(filter_) is valid


_levels = st.sampled_from(["a", "b", "$x", ""])
_topics = st.lists(_levels, min_size=1, max_size=4).map("/".join)
_filters = st.lists(st.sampled_from(["a", "b", "$x", "", "+"]), min_size=1, max_size=4).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join([*ls, "#"]), "#"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_filters, st.integers(0, 3), st.integers(0, 1)), max_size=12), _topics,
       st.lists(_filters, max_size=4))
def test_subscription_tree_agrees_with_topic_matches(
    subs: list[tuple[str, int, int]], topic: str, removed: list[str]
) -> None:
    tree: SubscriptionTree[int] = SubscriptionTree()
    table: dict[tuple[str, int], int] = {}
    for filter_, key, qos in subs:
        tree.add(filter_, key, qos)
        table[(filter_, key)] = qos
    for filter_ in removed:
        for key in range(4):
            assert tree.remove(filter_, key) is ((filter_, key) in table)
            table.pop((filter_, key), None)
    expected: dict[int, int] = {}
    for (filter_, key), qos in table.items():
        if topic_matches(filter_, topic):
            expected[key] = max(expected.get(key, 0), qos)
    assert tree.match(topic) == expected
    for filter_, key in list(table):
        tree.remove(filter_, key)
    assert not tree


# --- pure: codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
     (MAX_REMAINING_LENGTH, "ffffff7f")],
)
def test_remaining_length_vectors(value: int, encoded: str) -> None:
    assert encode_remaining_length(value).hex() == encoded
    assert decode_remaining_length(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@given(st.integers(0, MAX_REMAINING_LENGTH))
def test_remaining_length_round_trip(value: int) -> None:
    data = b"\x30" + encode_remaining_length(value)
    assert decode_remaining_length(data, 1) == (value, len(data))
    assert decode_remaining_length(data[:-1], 1) is None


def test_remaining_length_too_long_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        decode_remaining_length(b"\x30\xff\xff\xff\xff\x01", 1)
    with pytest.raises(ValueError):
        encode_remaining_length(MAX_REMAINING_LENGTH + 1)


_topic_names = st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",)),
                       min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(_topic_names, st.binary(max_size=300), st.integers(0, 2), st.booleans(), st.booleans(),
       st.integers(1, 65535), st.integers(1, 50))
def test_publish_round_trip(topic: str, payload: bytes, qos: int, retain: bool, dup: bool, pid: int,
                            chunk: int) -> None:
    dup = dup and qos > 0
    pid = pid if qos else 0
    data = encode_publish(topic, payload, qos, retain, dup, pid) * 2
    reader = FrameReader()
    frames = [f for i in range(0, len(data), chunk) for f in reader.feed(data[i:i + chunk])]
    assert len(frames) == 2
    for first, body in frames:
        assert parse_packet(first, body) == Publish(topic, payload, qos, retain, dup, pid)


def test_connect_round_trip() -> None:
    will = Will("cp/m/state", b"offline", 1, True)
    data = encode_connect("m1", keepalive=30, will=will, username="u", password=b"p")
    [(first, body)] = FrameReader().feed(data)
    assert parse_packet(first, body) == Connect("m1", True, 30, will, "u", b"p", "MQTT", 4)


@pytest.mark.parametrize(
    "frame",
    [
        "00 00",  # reserved type 0
        "f0 00",  # reserved type 15
        "36 05 0001 61 0001",  # PUBLISH QoS 3
        "38 03 0001 61",  # QoS 0 with DUP
        "30 03 0001 2b",  # wildcard in a topic name
        "80 06 0001 0001 61 00",  # SUBSCRIBE with flags 0
        "82 06 0001 0001 61 03",  # SUBSCRIBE asking QoS 3
        "40 02 0000",  # PUBACK with packet id 0
        "c0 01 00",  # PINGREQ with a body
        "30 03 0003 61",  # topic length beyond the body
    ],
)
def test_parse_rejects_malformed(frame: str) -> None:
    [(first, body)] = FrameReader().feed(bytes.fromhex(frame.replace(" ", "")))
    with pytest.raises(ProtocolError):
        parse_packet(first, body)


# --- live broker helpers --------------------------------------------------------------------------


@pytest.fixture
def port() -> Iterator[int]:
    """An EmbeddedBroker on 127.0.0.1, served by asyncio.run in a background thread."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        broker = EmbeddedBroker()
        await broker.start()
        stop = asyncio.Event()
        state.update(port=broker.port, loop=asyncio.get_running_loop(), stop=stop)
        ready.set()
        await stop.wait()
        await broker.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield state["port"]  # type: ignore[misc]
    finally:
        loop, stop = state["loop"], state["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(5)
        assert not thread.is_alive()


class Peer:
    """A paho-mqtt 2 client running its own network thread."""

    def __init__(self, port: int, client_id: str = "", will: Will | None = None,
                 max_inflight: int = 20) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subacks: queue.Queue[list[int]] = queue.Queue()
        connected = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._subacks.put([x.value for x in codes])
        self.client.max_inflight_messages_set(max_inflight)
        if will is not None:
            self.client.will_set(will.topic, will.payload, will.qos, will.retain)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(5), "paho client did not connect"

    def subscribe(self, filter_: str, qos: int = 0) -> list[int]:
        self.client.subscribe(filter_, qos)
        return self._subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(5)

    def get(self, timeout: float = 5) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def topics(self, n: int) -> list[str]:
        return sorted(self.get().topic for _ in range(n))

    def assert_nothing(self, wait: float = 0.2) -> None:
        with pytest.raises(queue.Empty):
            msg = self.messages.get(timeout=wait)
            pytest.fail(f"unexpected message {msg.topic} {msg.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(port: int) -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


class Raw:
    """A bare socket speaking MQTT by hand, for exact control of packets and abrupt closes."""

    def __init__(self, port: int, connect: bytes | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = FrameReader()
        self.pending: list[tuple[int, bytes]] = []
        if connect is not None:
            self.sock.sendall(connect)
            assert self.read() == Connack(False, 0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.pending.extend(self.reader.feed(data))
        return parse_packet(*self.pending.pop(0))

    def is_closed(self, timeout: float = 3) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(port: int) -> Iterator[Callable[..., Raw]]:
    """Open Raw connections to the broker; all are closed after the test."""
    made: list[Raw] = []

    def open_raw(connect: bytes | None = None) -> Raw:
        made.append(Raw(port, connect))
        return made[-1]

    yield open_raw
    for conn in made:
        conn.close()


# --- live broker ----------------------------------------------------------------------------------


def test_publish_subscribe(port: int, peers: list[Peer]) -> None:
    sub, pub = Peer(port, "sub"), Peer(port, "pub")
    peers += [sub, pub]
    assert sub.subscribe("cp/evse_1/evse/var/#", 1) == [1]
    pub.publish("cp/evse_1/evse/var/state", b'"charging"', qos=1)
    pub.publish("cp/other", b"x")
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("cp/evse_1/evse/var/state", b'"charging"', 1, False)
    pub.publish("cp/evse_1/evse/var/power", b"7", qos=0)
    assert sub.get().qos == 0
    sub.assert_nothing()


def test_wildcards_and_dollar_topics(port: int, peers: list[Peer]) -> None:
    everything, plus, sys_ = Peer(port), Peer(port), Peer(port)
    pub = Peer(port)
    peers += [everything, plus, sys_, pub]
    everything.subscribe("#")
    plus.subscribe("+/state")
    sys_.subscribe("$SYS/#")
    for topic in ["$SYS/state", "m/state", "m/x/state", "m"]:
        pub.publish(topic, b"1")
    assert everything.topics(3) == ["m", "m/state", "m/x/state"]
    assert plus.topics(1) == ["m/state"]
    assert sys_.topics(1) == ["$SYS/state"]
    for peer in (everything, plus, sys_):
        peer.assert_nothing(0.1)


def test_retained_delivery_and_deletion(port: int, peers: list[Peer]) -> None:
    pub = Peer(port)
    peers.append(pub)
    pub.publish("cp/m/state", b"ready", qos=1, retain=True)
    pub.publish("cp/n/state", b"starting", retain=True)
    late = Peer(port)
    peers.append(late)
    late.subscribe("cp/+/state", 1)
    got = {m.topic: (m.payload, m.qos, m.retain) for m in (late.get(), late.get())}
    assert got == {"cp/m/state": (b"ready", 1, True), "cp/n/state": (b"starting", 0, True)}
    pub.publish("cp/m/state", b"", retain=True)  # deletes; still delivered live, retain flag 0
    live = late.get()
    assert (live.payload, live.retain) == (b"", False)
    later = Peer(port)
    peers.append(later)
    later.subscribe("cp/#")
    assert [(m.topic, m.payload) for m in [later.get()]] == [("cp/n/state", b"starting")]
    later.assert_nothing()


def test_will_on_abrupt_close(port: int, peers: list[Peer], raw: Callable[..., Raw]) -> None:
    watcher = Peer(port)
    peers.append(watcher)
    watcher.subscribe("cp/+/state", 1)
    conn = raw(encode_connect("mod", will=Will("cp/mod/state", b"offline", 1, True)))
    conn.close()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("cp/mod/state", b"offline", 1, False)
    late = Peer(port)  # will retain was honoured
    peers.append(late)
    late.subscribe("cp/mod/state")
    retained = late.get()
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_no_will_on_clean_disconnect(port: int, peers: list[Peer], raw: Callable[..., Raw]) -> None:
    watcher = Peer(port)
    peers.append(watcher)
    watcher.subscribe("#")
    conn = raw(encode_connect("mod", will=Will("cp/mod/state", b"offline")))
    conn.send(DISCONNECT)
    assert conn.is_closed()
    graceful = Peer(port, "graceful", will=Will("cp/g/state", b"offline"))
    graceful.close()
    watcher.assert_nothing(0.3)


def test_will_on_keepalive_expiry(port: int, peers: list[Peer], raw: Callable[..., Raw]) -> None:
    watcher = Peer(port)
    peers.append(watcher)
    watcher.subscribe("cp/#")
    start = time.monotonic()
    conn = raw(encode_connect("sleepy", keepalive=1, will=Will("cp/sleepy/state", b"offline")))
    assert watcher.get().payload == b"offline"
    assert 1.4 <= time.monotonic() - start < 3
    assert conn.is_closed(1)


def test_client_id_takeover_publishes_old_will(
    port: int, peers: list[Peer], raw: Callable[..., Raw]
) -> None:
    watcher = Peer(port)
    peers.append(watcher)
    watcher.subscribe("cp/#")
    old = raw(encode_connect("dup", will=Will("cp/dup/state", b"old-gone")))
    new = raw(encode_connect("dup"))
    assert old.is_closed()
    assert watcher.get().payload == b"old-gone"
    new.send(PINGREQ)
    assert new.read() == Control(PacketType.PINGRESP)
    new.close()


def test_qos1_flow(raw: Callable[..., Raw]) -> None:
    sub = raw(encode_connect("rawsub"))
    sub.send(encode_subscribe(3, [("q/#", 1), ("q2/#", 2), ("bad/#/x", 0)]))
    assert sub.read() == Suback(3, [1, 1, 0x80])
    pub = raw(encode_connect("rawpub"))
    pub.send(encode_publish("q/1", b"hello", qos=1, packet_id=7))
    assert pub.read() == Ack(PacketType.PUBACK, 7)
    delivered = sub.read()
    assert isinstance(delivered, Publish)
    assert (delivered.topic, delivered.payload, delivered.qos) == ("q/1", b"hello", 1)
    sub.send(encode_ack(PacketType.PUBACK, delivered.packet_id))
    pub.send(encode_publish("q/2", b"low"))  # QoS 0 publish stays QoS 0
    assert sub.read() == Publish("q/2", b"low")
    sub.close()
    pub.close()


def test_qos2_publish_is_routed_once(port: int, peers: list[Peer], raw: Callable[..., Raw]) -> None:
    sub = Peer(port)
    peers.append(sub)
    assert sub.subscribe("x", 2) == [1]
    pub = raw(encode_connect("q2"))
    pub.send(encode_publish("x", b"once", qos=2, packet_id=9))
    assert pub.read() == Ack(PacketType.PUBREC, 9)
    pub.send(encode_publish("x", b"once", qos=2, packet_id=9, dup=True))
    assert pub.read() == Ack(PacketType.PUBREC, 9)
    pub.send(encode_ack(PacketType.PUBREL, 9))
    assert pub.read() == Ack(PacketType.PUBCOMP, 9)
    msg = sub.get()
    assert (msg.payload, msg.qos) == (b"once", 1)
    sub.assert_nothing()
    pub.close()


def test_overlapping_subscriptions_deliver_once_at_max_qos(port: int, peers: list[Peer]) -> None:
    sub, pub = Peer(port), Peer(port)
    peers += [sub, pub]
    sub.subscribe("a/#", 0)
    sub.subscribe("a/+", 1)
    sub.subscribe("a/b", 0)
    pub.publish("a/b", b"1", qos=1)
    assert sub.get().qos == 1
    sub.assert_nothing()


def test_unsubscribe_stops_delivery(port: int, peers: list[Peer]) -> None:
    sub = Peer(port)
    peers.append(sub)
    sub.subscribe("u/#")
    sub.publish("u/1", b"1")
    assert sub.get().payload == b"1"
    sub.client.unsubscribe("u/#")
    sub.publish("u/1", b"2")  # same connection: processed after the UNSUBSCRIBE
    sub.assert_nothing()


def test_order_of_1000_messages(port: int, peers: list[Peer]) -> None:
    sub, pub = Peer(port), Peer(port, max_inflight=0)  # else paho sends QoS 0 ahead of queued QoS 1
    peers += [sub, pub]
    sub.subscribe("seq", 1)
    infos = [pub.client.publish("seq", str(i).encode(), qos=i % 2) for i in range(1000)]
    for info in infos:
        info.wait_for_publish(5)
    assert [int(sub.get().payload) for _ in range(1000)] == list(range(1000))


@pytest.mark.parametrize(
    "garbage",
    [bytes.fromhex("f000"), bytes.fromhex("360500016100 01"), bytes.fromhex("8203000100"),
     bytes.fromhex("30ffffffff01"), encode_connect("again")],
    ids=["reserved-type", "qos3", "subscribe-truncated", "length-too-long", "second-connect"],
)
def test_malformed_packet_closes_only_that_connection(
    port: int, peers: list[Peer], garbage: str, caplog: pytest.LogCaptureFixture
, raw: Callable[..., Raw]) -> None:
    caplog.set_level(logging.WARNING, logger="chargepoint.broker")
    sub, pub = Peer(port), Peer(port)
    peers += [sub, pub]
    sub.subscribe("#")
    bad = raw(encode_connect("bad", will=Will("bad/will", b"gone")))
    bad.send(garbage)
    assert bad.is_closed()
    assert sub.get().topic == "bad/will"  # a protocol error publishes the will
    pub.publish("still/ok", b"1")
    assert sub.get().topic == "still/ok"
    assert any("bad packet" in r.getMessage() for r in caplog.records)


def test_first_packet_must_be_connect(raw: Callable[..., Raw]) -> None:
    conn = raw()
    conn.send(PINGREQ)
    assert conn.is_closed()


def test_connect_variants(raw: Callable[..., Raw]) -> None:
    generated = raw(encode_connect(""))  # empty id + clean session: accepted
    old_protocol = raw(encode_connect("v31", protocol_level=3))
    for conn in (generated, old_protocol):
        conn.send(PINGREQ)
        assert conn.read() == Control(PacketType.PINGRESP)
    no_id = raw()
    no_id.send(encode_connect("", clean_session=False))
    assert no_id.read() == Connack(False, 2)
    assert no_id.is_closed()
    v5 = raw()
    v5.send(encode_connect("five", protocol_level=5))
    assert v5.read() == Connack(False, 1)
    assert v5.is_closed()


def test_persistent_session_request_gets_a_clean_one(raw: Callable[..., Raw]) -> None:
    conn = raw()
    conn.send(encode_connect("keep", clean_session=False))
    assert conn.read() == Connack(False, 0)
    conn.close()


def test_stop_closes_clients() -> None:
    async def main() -> None:
        broker = EmbeddedBroker()
        await broker.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(encode_connect("c"))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes.fromhex("20020000")
        await broker.stop()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    asyncio.run(main())
