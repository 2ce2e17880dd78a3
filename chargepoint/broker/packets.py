"""MQTT 3.1.1 (and 3.1) packet codec: pure functions over bytes, no I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from chargepoint.broker.framing import (
    MAX_REMAINING_LENGTH,
    FrameReader,
    ProtocolError,
    decode_remaining_length,
    encode_remaining_length,
)
from chargepoint.broker.topics import valid_topic_name

__all__ = [
    "DISCONNECT", "MAX_REMAINING_LENGTH", "PINGREQ", "PINGRESP", "Ack", "Connack", "Connect", "Control",
    "FrameReader", "Packet", "PacketType", "ProtocolError", "Publish", "Suback", "Subscribe",
    "Unsubscribe", "Will", "decode_remaining_length", "encode_ack", "encode_connack", "encode_connect",
    "encode_publish", "encode_remaining_length", "encode_suback", "encode_subscribe",
    "encode_unsubscribe", "parse_packet", "parse_publish", "publish_header",
]

_U16 = struct.Struct(">H")


class PacketType(IntEnum):
    """Control packet types (upper nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


# Required fixed-header flags for every type except PUBLISH.
_FLAGS = {t: (2 if t in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0)
          for t in PacketType if t is not PacketType.PUBLISH}


@dataclass(slots=True, frozen=True)
class Will:
    """The last will carried by CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class Connect:
    """A decoded CONNECT."""

    client_id: str
    clean_session: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(slots=True)
class Connack:
    """A decoded CONNACK."""

    session_present: bool
    return_code: int


@dataclass(slots=True)
class Publish:
    """A decoded PUBLISH; `packet_id` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0


@dataclass(slots=True)
class Subscribe:
    """A decoded SUBSCRIBE: (filter, requested qos) pairs."""

    packet_id: int
    topics: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class Suback:
    """A decoded SUBACK: one return code per filter (0x80 = failure)."""

    packet_id: int
    return_codes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Unsubscribe:
    """A decoded UNSUBSCRIBE."""

    packet_id: int
    filters: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK: a type and a packet id."""

    type: PacketType
    packet_id: int


@dataclass(slots=True)
class Control:
    """PINGREQ, PINGRESP or DISCONNECT: no body."""

    type: PacketType


Packet = Connect | Connack | Publish | Subscribe | Suback | Unsubscribe | Ack | Control


# --- decoding -----------------------------------------------------------------------------------


def _read_u16(body: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(body):
        raise ProtocolError("packet truncated")
    return _U16.unpack_from(body, pos)[0], pos + 2


def _read_bytes(body: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_u16(body, pos)
    if pos + n > len(body):
        raise ProtocolError("packet truncated")
    return body[pos:pos + n], pos + n


def _read_str(body: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _read_bytes(body, pos)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("string is not valid UTF-8") from exc
    if "\x00" in text:
        raise ProtocolError("string contains U+0000")
    return text, pos


def _packet_id(body: bytes, pos: int) -> tuple[int, int]:
    pid, pos = _read_u16(body, pos)
    if pid == 0:
        raise ProtocolError("packet identifier 0")
    return pid, pos


def parse_publish(first: int, body: bytes) -> Publish:
    """Decode a PUBLISH body; the topic must be a valid topic name."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    dup = bool(first & 8)
    if dup and not qos:
        raise ProtocolError("PUBLISH QoS 0 with DUP set")
    topic, pos = _read_str(body, 0)
    if not valid_topic_name(topic):
        raise ProtocolError(f"invalid topic name {topic!r}")
    pid = 0
    if qos:
        pid, pos = _packet_id(body, pos)
    return Publish(topic, body[pos:], qos, bool(first & 1), dup, pid)


def _parse_connect(body: bytes) -> Connect:
    name, pos = _read_str(body, 0)
    if pos + 4 > len(body):
        raise ProtocolError("CONNECT truncated")
    level, flags = body[pos], body[pos + 1]
    keepalive, pos = _read_u16(body, pos + 2)
    if flags & 1:
        raise ProtocolError("CONNECT reserved flag set")
    will_flag, will_qos, will_retain = flags & 4, (flags >> 3) & 3, bool(flags & 0x20)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise ProtocolError("CONNECT will flags inconsistent")
    if flags & 0x40 and not flags & 0x80 and level >= 4:
        raise ProtocolError("CONNECT password without user name")
    client_id, pos = _read_str(body, pos)
    will = None
    if will_flag:
        topic, pos = _read_str(body, pos)
        if not valid_topic_name(topic):
            raise ProtocolError(f"invalid will topic {topic!r}")
        payload, pos = _read_bytes(body, pos)
        will = Will(topic, payload, will_qos, will_retain)
    username = password = None
    if flags & 0x80:
        username, pos = _read_str(body, pos)
    if flags & 0x40:
        password, pos = _read_bytes(body, pos)
    if pos != len(body):
        raise ProtocolError("CONNECT has trailing bytes")
    return Connect(client_id, bool(flags & 2), keepalive, will, username, password, name, level)


def _parse_subscribe(body: bytes) -> Subscribe:
    pid, pos = _packet_id(body, 0)
    topics: list[tuple[str, int]] = []
    while pos < len(body):
        filter_, pos = _read_str(body, pos)
        if pos >= len(body):
            raise ProtocolError("SUBSCRIBE truncated")
        qos = body[pos]
        if qos > 2:
            raise ProtocolError(f"SUBSCRIBE requested QoS byte {qos:#x}")
        topics.append((filter_, qos))
        pos += 1
    if not topics:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(pid, topics)


def _parse_unsubscribe(body: bytes) -> Unsubscribe:
    pid, pos = _packet_id(body, 0)
    filters: list[str] = []
    while pos < len(body):
        filter_, pos = _read_str(body, pos)
        filters.append(filter_)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(pid, filters)


def parse_packet(first: int, body: bytes) -> Packet:
    """Decode one frame (as returned by FrameReader) into a packet object."""
    try:
        ptype = PacketType(first >> 4)
    except ValueError:
        raise ProtocolError(f"reserved packet type {first >> 4}") from None
    if ptype is PacketType.PUBLISH:
        return parse_publish(first, body)
    if first & 0x0F != _FLAGS[ptype]:
        raise ProtocolError(f"{ptype.name} with fixed-header flags {first & 0x0F:#x}")
    if ptype is PacketType.CONNECT:
        return _parse_connect(body)
    if ptype is PacketType.SUBSCRIBE:
        return _parse_subscribe(body)
    if ptype is PacketType.UNSUBSCRIBE:
        return _parse_unsubscribe(body)
    if ptype is PacketType.SUBACK:
        pid, pos = _packet_id(body, 0)
        return Suback(pid, list(body[pos:]))
    if ptype is PacketType.CONNACK:
        if len(body) != 2:
            raise ProtocolError("CONNACK length")
        return Connack(bool(body[0] & 1), body[1])
    if ptype in (PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT):
        if body:
            raise ProtocolError(f"{ptype.name} with a body")
        return Control(ptype)
    if len(body) != 2:
        raise ProtocolError(f"{ptype.name} length {len(body)}")
    return Ack(ptype, _packet_id(body, 0)[0])


# --- encoding -----------------------------------------------------------------------------------


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _str(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def publish_header(topic: bytes, payload_len: int, qos: int = 0, retain: bool = False,
                   dup: bool = False) -> bytes:
    """Fixed header plus topic of a PUBLISH; append the packet id (if qos) and payload."""
    first = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    length = 2 + len(topic) + (2 if qos else 0) + payload_len
    return bytes((first,)) + encode_remaining_length(length) + _U16.pack(len(topic)) + topic


def encode_publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, dup: bool = False,
                   packet_id: int = 0) -> bytes:
    """A complete PUBLISH packet."""
    head = publish_header(topic.encode(), len(payload), qos, retain, dup)
    return head + _U16.pack(packet_id) + payload if qos else head + payload


def encode_connect(client_id: str, *, clean_session: bool = True, keepalive: int = 60,
                   will: Will | None = None, username: str | None = None, password: bytes | None = None,
                   protocol_level: int = 4) -> bytes:
    """A complete CONNECT packet (used by tests and tools)."""
    name = "MQTT" if protocol_level >= 4 else "MQIsdp"
    flags = 2 if clean_session else 0
    tail = _str(client_id)
    if will is not None:
        flags |= 4 | (will.qos << 3) | (0x20 if will.retain else 0)
        tail += _str(will.topic) + _U16.pack(len(will.payload)) + will.payload
    if username is not None:
        flags |= 0x80
        tail += _str(username)
    if password is not None:
        flags |= 0x40
        tail += _U16.pack(len(password)) + password
    body = _str(name) + bytes((protocol_level, flags)) + _U16.pack(keepalive) + tail
    return _frame(0x10, body)


def encode_connack(session_present: bool, return_code: int) -> bytes:
    """A CONNACK packet."""
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def encode_ack(ptype: PacketType, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK."""
    return bytes(((ptype << 4) | _FLAGS[ptype], 2)) + _U16.pack(packet_id)


def encode_subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE packet."""
    body = _U16.pack(packet_id) + b"".join(_str(f) + bytes((q,)) for f, q in topics)
    return _frame(0x82, body)


def encode_suback(packet_id: int, return_codes: list[int]) -> bytes:
    """A SUBACK packet."""
    return _frame(0x90, _U16.pack(packet_id) + bytes(return_codes))


def encode_unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    """An UNSUBSCRIBE packet."""
    return _frame(0xA2, _U16.pack(packet_id) + b"".join(_str(f) for f in filters))


PINGREQ = bytes((0xC0, 0))
PINGRESP = bytes((0xD0, 0))
DISCONNECT = bytes((0xE0, 0))
