"""Modbus RTU frames: CRC, read requests and replies, exceptions, corrupted frames, wire time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.modbus import rtu

slave_ids = st.integers(1, 247)
functions = st.sampled_from((3, 4))


def test_crc_known_vectors() -> None:
    assert rtu.read_request(1, 4, 0, 2) == bytes.fromhex("01 04 00 00 00 02 71 CB")
    assert rtu.read_request(1, 3, 0, 1) == bytes.fromhex("01 03 00 00 00 01 84 0A")
    assert rtu.crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value
    assert rtu.crc16(b"") == 0xFFFF
    # a real SDM630 reply: 230.0 V as float32 from slave 1
    assert rtu.read_response(1, 4, [0x4366, 0x0000]) == bytes.fromhex("01 04 04 43 66 00 00") + bytes.fromhex(
        f"{rtu.crc16(bytes.fromhex('01 04 04 43 66 00 00')):04x}")[::-1]


@given(slave_ids, functions, st.integers(0, 65535), st.integers(1, 125))
def test_request_round_trip(slave_id: int, function_code: int, address: int, count: int) -> None:
    count = min(count, 65536 - address)
    frame = rtu.read_request(slave_id, function_code, address, count)
    assert len(frame) == 8
    assert rtu.request_frame_length(frame[:2]) == 8
    assert rtu.parse_request(frame) == (slave_id, function_code, address, count)


@given(slave_ids, functions, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125))
def test_response_round_trip(slave_id: int, function_code: int, words: list[int]) -> None:
    frame = rtu.read_response(slave_id, function_code, words)
    assert len(frame) == rtu.response_length(function_code, len(words))
    assert rtu.expected_reply_length(frame[:3]) == len(frame)
    assert rtu.parse_response(frame, slave_id, function_code, len(words)) == words


@given(slave_ids, functions, st.integers(0, 65000), st.integers(1, 125), st.integers(0, 63))
def test_any_single_bit_flip_is_caught(slave_id: int, function_code: int, address: int, count: int,
                                       bit: int) -> None:
    corrupted = bytearray(rtu.read_request(slave_id, function_code, address, count))
    corrupted[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(rtu.FrameError, match="bad CRC"):
        rtu.parse_request(bytes(corrupted))


def test_corrupted_and_truncated_frames_are_rejected() -> None:
    frame = bytearray(rtu.read_request(1, 4, 0, 2))
    frame[-1] ^= 0xFF
    with pytest.raises(rtu.FrameError, match="bad CRC"):
        rtu.parse_request(bytes(frame))
    with pytest.raises(rtu.FrameError, match="8 bytes, got 7"):
        rtu.parse_request(rtu.read_request(1, 4, 0, 2)[:-1])
    reply = bytearray(rtu.read_response(1, 4, [1, 2]))
    reply[3] ^= 0x10
    with pytest.raises(rtu.FrameError, match="bad CRC"):
        rtu.parse_response(bytes(reply), 1, 4, 2)
    with pytest.raises(rtu.FrameError, match="does not hold 3 registers"):
        rtu.parse_response(rtu.read_response(1, 4, [1, 2]), 1, 4, 3)
    with pytest.raises(rtu.FrameError, match="reply from slave 2, expected 1"):
        rtu.parse_response(rtu.read_response(2, 4, [1, 2]), 1, 4, 2)
    with pytest.raises(rtu.FrameError, match="out of range"):
        rtu.parse_request(rtu.with_crc(bytes.fromhex("01 04 00 00 00 7E")))  # 126 registers


def test_other_functions_are_told_apart_from_garbage() -> None:
    write = rtu.with_crc(bytes.fromhex("05 06 00 10 00 2A"))  # write single register
    with pytest.raises(rtu.UnsupportedFunction) as caught:
        rtu.parse_request(write)
    assert (caught.value.slave_id, caught.value.function_code) == (5, 6)
    assert rtu.request_frame_length(bytes.fromhex("01 10 00 00 00 02 04")) == 13


def test_exception_replies() -> None:
    frame = rtu.exception_response(1, 4, rtu.ILLEGAL_DATA_ADDRESS)
    assert frame[:3] == bytes.fromhex("01 84 02") and len(frame) == 5
    assert rtu.expected_reply_length(frame[:3]) == 5
    with pytest.raises(rtu.ExceptionReply) as caught:
        rtu.parse_response(frame, 1, 4, 2)
    assert caught.value.code == 2


def test_bad_request_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"slave id must be 1\.\.247"):
        rtu.read_request(0, 4, 0, 1)
    with pytest.raises(ValueError, match="not a register read"):
        rtu.read_request(1, 6, 0, 1)
    with pytest.raises(ValueError, match=r"count must be 1\.\.125"):
        rtu.read_request(1, 4, 0, 126)
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        rtu.read_request(1, 4, 65535, 2)


def test_wire_time() -> None:
    assert rtu.response_length(4, 2) == 9
    assert rtu.wire_time_s(8, 9600) == pytest.approx(8 * 11 / 9600)
    assert rtu.wire_time_s(10, 9600, bits_per_char=rtu.bits_per_char("N", 1)) == pytest.approx(10 * 10 / 9600)
    assert rtu.bits_per_char("E", 1) == rtu.bits_per_char("N", 2) == 11
    assert rtu.frame_gap_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu.frame_gap_s(115200) == 1.75e-3
    with pytest.raises(ValueError):
        rtu.wire_time_s(8, 0)
