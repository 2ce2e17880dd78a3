"""MQTT stream framing: the remaining-length varint and splitting bytes into packets. Pure code."""

from __future__ import annotations

MAX_REMAINING_LENGTH = 268_435_455


class ProtocolError(ValueError):
    """A malformed or forbidden packet; the connection must be closed."""


def encode_remaining_length(n: int) -> bytes:
    """The variable-length encoding of `n` (0 .. MAX_REMAINING_LENGTH)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length out of range: {n}")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """Decode a remaining length at `start`: (value, index after it), or None if incomplete."""
    value = 0
    shift = 0
    for i in range(start, min(start + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) - start >= 4:
        raise ProtocolError("remaining length longer than 4 bytes")
    return None


class FrameReader:
    """Splits a byte stream into (first byte, body) frames; feed it whatever arrives."""

    __slots__ = ("_chunks", "_have", "_max", "_need")

    def __init__(self, max_size: int = MAX_REMAINING_LENGTH) -> None:
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._max = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return the frames completed by them, in order."""
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
        frames: list[tuple[int, bytes]] = []
        pos = 0
        size = len(data)
        self._need = 0
        while pos < size:
            header = decode_remaining_length(data, pos + 1)
            if header is None:
                break
            length, body_start = header
            if length > self._max:
                raise ProtocolError(f"packet of {length} bytes exceeds the limit of {self._max}")
            end = body_start + length
            if end > size:
                self._need = end - pos
                break
            frames.append((data[pos], data[body_start:end]))
            pos = end
        if pos < size:
            rest = data[pos:] if pos else data
            self._chunks = [rest]
            self._have = len(rest)
        else:
            self._have = 0
        return frames
