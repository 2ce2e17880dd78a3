"""PN532 frames and replies: encoding, incremental decoding, checksum errors, the replies the reader parses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modules.rfid_pn532 import framing
from modules.rfid_pn532.framing import (
    Ack,
    ErrorFrame,
    FrameDecoder,
    FrameError,
    Garbled,
    Information,
    Nack,
    TypeATarget,
)

payloads = st.binary(min_size=1, max_size=framing.MAX_PAYLOAD)
frame_values = st.one_of(
    payloads.filter(lambda p: p != bytes([framing.ERROR_TFI])).map(lambda p: Information(p[0], p[1:])),
    st.just(Ack()), st.just(Nack()), st.just(ErrorFrame()),
)


def encoded(frame: framing.Frame) -> bytes:
    if isinstance(frame, Ack):
        return framing.ACK
    if isinstance(frame, Nack):
        return framing.NACK
    if isinstance(frame, ErrorFrame):
        return framing.encode_frame(bytes([framing.ERROR_TFI]))
    assert isinstance(frame, Information)
    return framing.encode_frame(bytes([frame.tfi]) + frame.data)


def test_known_frames_from_the_user_manual() -> None:
    assert framing.get_firmware_version() == bytes.fromhex("0000ff02fed4022a00")
    assert framing.sam_configuration_normal() == bytes.fromhex("0000ff05fbd4140114010200")
    assert framing.in_list_passive_target() == bytes.fromhex("0000ff04fcd44a0100e100")
    assert FrameDecoder().feed(bytes.fromhex("0000ff01ff7f8100")) == [ErrorFrame()]
    assert FrameDecoder().feed(bytes.fromhex("0000ff06fad50332010607e800")) == [
        Information(0xD5, bytes.fromhex("0332010607"))
    ]


@given(payloads)
def test_encode_decode_round_trip(payload: bytes) -> None:
    frames = FrameDecoder().feed(framing.encode_frame(payload))
    expected = ErrorFrame() if payload == bytes([framing.ERROR_TFI]) else Information(payload[0], payload[1:])
    assert frames == [expected]


def test_long_payload_uses_an_extended_frame() -> None:
    payload = bytes([0xD5, 0x41]) + bytes(range(256))
    frame = framing.encode_frame(payload)
    assert frame[3:5] == b"\xff\xff"
    assert FrameDecoder().feed(frame) == [Information(0xD5, payload[1:])]


@given(st.lists(frame_values, max_size=6), st.data())
def test_stream_split_anywhere_gives_the_same_frames(frames: list[framing.Frame], data: st.DataObject) -> None:
    stream = framing.WAKEUP + b"".join(encoded(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    decoded: list[framing.Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded += decoder.feed(stream[start:end])
    assert decoded == frames


@given(payloads, st.data())
def test_a_corrupted_byte_is_never_taken_for_data(payload: bytes, data: st.DataObject) -> None:
    frame = bytearray(framing.encode_frame(payload))
    header = 7 if len(payload) > 0xFF else 4
    position = data.draw(st.integers(3, header + len(payload)), label="position")  # LEN .. DCS
    frame[position] ^= data.draw(st.integers(1, 255), label="flip")
    decoded = FrameDecoder().feed(bytes(frame))
    assert not any(isinstance(f, Information | ErrorFrame) for f in decoded)
    assert any(isinstance(f, Garbled) for f in decoded) or decoded in ([Ack()], [Nack()], [])


def test_garbled_frame_is_reported_and_the_next_one_still_parses() -> None:
    good = framing.encode_reply(0x4A, bytes.fromhex("01 01 0004 08 04 DEADBEEF"))
    bad = bytearray(good)
    bad[-3] ^= 0x01
    frames = FrameDecoder().feed(b"\x55\x00" + bytes(bad) + b"\x13\x37" + good)
    assert isinstance(frames[0], Garbled) and "data checksum" in frames[0].reason
    assert frames[1:] == [Information(0xD5, good[6:-2])]


def test_bad_length_checksum_resynchronises() -> None:
    frames = FrameDecoder().feed(bytes.fromhex("0000ff05ff") + framing.ACK)
    assert isinstance(frames[0], Garbled) and "length checksum" in frames[0].reason
    assert frames[1:] == [Ack()]


def test_encode_rejects_empty_and_oversized_payloads() -> None:
    with pytest.raises(FrameError, match=r"1\.\.265"):
        framing.encode_frame(b"")
    with pytest.raises(FrameError, match="266 bytes"):
        framing.encode_frame(bytes(266))


def test_in_list_passive_target_replies() -> None:
    assert framing.parse_in_list_passive_target(b"\x00") == []
    classic = framing.parse_in_list_passive_target(bytes.fromhex("01 01 0004 08 04 04a1b2c3"))
    assert classic == [TypeATarget(1, b"\x00\x04", 0x08, bytes.fromhex("04a1b2c3"))]
    assert classic[0].id_tag == "04A1B2C3"
    desfire = framing.parse_in_list_passive_target(
        bytes.fromhex("01 01 0344 20 07 04112233445566 06 75778102 80")
    )
    assert desfire[0].id_tag == "04112233445566" and desfire[0].ats == bytes.fromhex("067577810280")
    triple = framing.parse_in_list_passive_target(bytes.fromhex("01 01 0084 00 0a 00112233445566778899"))
    assert triple[0].id_tag == "00112233445566778899"


@pytest.mark.parametrize(("hex_data", "message"), [
    ("", "empty"),
    ("01 01 0004", "cut short"),
    ("01 01 0004 08 05 0102030405", "UID length 5"),
    ("01 01 0004 08 04 010203", "UID cut short"),
    ("01 01 0004 20 04 01020304 06 7577", "ATS of length 6 cut short"),
    ("01 01 0004 08 04 01020304 ff", "1 unexpected bytes"),
])
def test_malformed_target_replies_say_why(hex_data: str, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        framing.parse_in_list_passive_target(bytes.fromhex(hex_data))


def test_firmware_version() -> None:
    assert str(framing.parse_firmware_version(bytes.fromhex("32010607"))) == "PN532 v1.6"
    with pytest.raises(FrameError, match="expected 4"):
        framing.parse_firmware_version(b"\x32")
