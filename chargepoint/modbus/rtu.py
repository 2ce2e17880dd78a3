"""Modbus RTU frames for FC03/FC04 reads, exception replies, and how long bytes take on the wire.

An RTU frame is ``slave id, function code, data..., CRC`` with the CRC-16 (poly 0xA001 reflected, init 0xFFFF)
sent low byte first. Every parser raises :class:`FrameError` (a ``ValueError``) naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

READ_FUNCTIONS = (3, 4)
MAX_READ_COUNT = 125
REQUEST_LENGTH = 8  # slave, fc, address (2), count (2), crc (2)
EXCEPTION_LENGTH = 5  # slave, fc | 0x80, code, crc (2)
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
SERVER_DEVICE_FAILURE = 4


class FrameError(ValueError):
    """A frame that is too short, too long, has a bad CRC or bad fields."""


class UnsupportedFunction(FrameError):
    """A well-formed request for a function this codec does not read; answer with exception 1."""

    def __init__(self, slave_id: int, function_code: int) -> None:
        super().__init__(f"function code {function_code} is not a register read (3 or 4)")
        self.slave_id = slave_id
        self.function_code = function_code


class ExceptionReply(Exception):
    """The slave answered with a Modbus exception."""

    def __init__(self, slave_id: int, function_code: int, code: int) -> None:
        super().__init__(f"slave {slave_id} answered function {function_code} with exception {code}")
        self.slave_id = slave_id
        self.function_code = function_code
        self.code = code


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """The Modbus CRC of ``data``; a frame carries it low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def check_crc(frame: bytes) -> bytes:
    """The frame without its CRC; :class:`FrameError` if the CRC does not match."""
    if len(frame) < 4:
        raise FrameError(f"frame of {len(frame)} bytes is too short")
    body, received = frame[:-2], int.from_bytes(frame[-2:], "little")
    expected = crc16(body)
    if received != expected:
        raise FrameError(f"bad CRC: frame carries {received:04X}, data gives {expected:04X}")
    return body


def read_request(slave_id: int, function_code: int, address: int, count: int) -> bytes:
    """The full RTU frame reading ``count`` registers from ``address``."""
    _check_read(slave_id, function_code, address, count)
    return with_crc(bytes([slave_id, function_code]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def parse_request(frame: bytes) -> tuple[int, int, int, int]:
    """``(slave_id, function_code, address, count)`` of a read request.

    :class:`FrameError` on a bad length, CRC or count; :class:`UnsupportedFunction` for a valid frame of
    another function code (8-byte functions only).
    """
    if len(frame) != REQUEST_LENGTH:
        raise FrameError(f"a read request is {REQUEST_LENGTH} bytes, got {len(frame)}")
    body = check_crc(frame)
    slave_id, function_code = body[0], body[1]
    if function_code not in READ_FUNCTIONS:
        raise UnsupportedFunction(slave_id, function_code)
    address, count = int.from_bytes(body[2:4], "big"), int.from_bytes(body[4:6], "big")
    if not 1 <= count <= MAX_READ_COUNT or address + count > 0x10000:
        raise FrameError(f"read of {count} registers from {address} is out of range")
    return slave_id, function_code, address, count


def read_response(slave_id: int, function_code: int, words: Sequence[int]) -> bytes:
    """The normal reply to a read: byte count, then each word high byte first."""
    if not 0 <= slave_id <= 255:
        raise ValueError(f"slave id must be one byte, not {slave_id}")
    if function_code not in READ_FUNCTIONS:
        raise ValueError(f"function code {function_code} is not a register read")
    if not 1 <= len(words) <= MAX_READ_COUNT:
        raise ValueError(f"a reply holds 1..{MAX_READ_COUNT} registers, not {len(words)}")
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise ValueError("register values must be 0..65535")
    data = b"".join(word.to_bytes(2, "big") for word in words)
    return with_crc(bytes([slave_id, function_code, len(data)]) + data)


def parse_response(frame: bytes, slave_id: int, function_code: int, count: int) -> list[int]:
    """The words of a reply to a read of ``count`` registers.

    :class:`ExceptionReply` for an exception answer; :class:`FrameError` for a bad CRC, length, or a reply
    from another slave or to another function.
    """
    body = check_crc(frame)
    if body[0] != slave_id:
        raise FrameError(f"reply from slave {body[0]}, expected {slave_id}")
    if body[1] == function_code | 0x80 and len(body) == EXCEPTION_LENGTH - 2:
        raise ExceptionReply(slave_id, function_code, body[2])
    if body[1] != function_code:
        raise FrameError(f"reply to function {body[1]}, expected {function_code}")
    if len(frame) != response_length(function_code, count) or body[2] != 2 * count:
        raise FrameError(f"reply of {len(frame)} bytes does not hold {count} registers")
    return [int.from_bytes(body[3 + 2 * index:5 + 2 * index], "big") for index in range(count)]


def exception_response(slave_id: int, function_code: int, code: int) -> bytes:
    """The exception reply (function code with the high bit set, then the exception code)."""
    return with_crc(bytes([slave_id, (function_code | 0x80) & 0xFF, code]))


def response_length(function_code: int, count: int) -> int:
    """Bytes of a normal reply to a read of ``count`` registers (5 + 2 * count)."""
    if function_code not in READ_FUNCTIONS:
        raise ValueError(f"function code {function_code} is not a register read")
    return 5 + 2 * count


def expected_reply_length(header: bytes) -> int | None:
    """Length of the reply that starts with ``header`` (its first 3 bytes), or ``None`` if not known yet."""
    if len(header) < 3:
        return None
    if header[1] & 0x80:
        return EXCEPTION_LENGTH
    return 5 + header[2]


def request_frame_length(header: bytes) -> int | None:
    """Length of the request that starts with ``header``: 8 for functions 1-6, 9 + byte count for 15/16.

    ``None`` when more bytes are needed or the function is not one of those (the caller waits for silence).
    """
    if len(header) < 2:
        return None
    if 1 <= header[1] <= 6:
        return REQUEST_LENGTH
    if header[1] in (15, 16):
        return 9 + header[6] if len(header) >= 7 else None
    return None


def bits_per_char(parity: str = "E", stopbits: int = 1) -> int:
    """Bits on the wire per byte: start + 8 data + parity (unless ``N``) + stop bits (11 for 8E1 and 8N2)."""
    return 1 + 8 + (0 if parity == "N" else 1) + stopbits


def wire_time_s(n_bytes: int, baudrate: int, bits_per_char: int = 11) -> float:
    """Seconds ``n_bytes`` take on a line of ``baudrate`` (Modbus counts 11 bits per character)."""
    if baudrate <= 0:
        raise ValueError(f"baudrate must be positive, not {baudrate}")
    return n_bytes * bits_per_char / baudrate


def frame_gap_s(baudrate: int) -> float:
    """The silence that ends an RTU frame: 3.5 characters, fixed at 1.75 ms above 19200 baud."""
    return 1.75e-3 if baudrate > 19200 else wire_time_s(35, baudrate) / 10


def _check_read(slave_id: int, function_code: int, address: int, count: int) -> None:
    if not 1 <= slave_id <= 247:
        raise ValueError(f"slave id must be 1..247, not {slave_id}")
    if function_code not in READ_FUNCTIONS:
        raise ValueError(f"function code {function_code} is not a register read (3 or 4)")
    if not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"count must be 1..{MAX_READ_COUNT}, not {count}")
    if address < 0 or address + count > 0x10000:
        raise ValueError(f"registers {address}..{address + count - 1} are outside 0..65535")
