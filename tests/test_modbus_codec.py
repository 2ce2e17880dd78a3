"""Register encodings: every encoding round-trips, known words decode to the meter's values, markers mean None."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.modbus.codec import decode, encode, not_available_words
from chargepoint.modbus.model import ENCODINGS, Register

INTEGER_BITS = {"int16": (16, True), "uint16": (16, False), "int32": (32, True), "uint32": (32, False),
                "int64": (64, True), "uint64": (64, False)}
SCALES = (1.0, 0.1, 0.01, 0.001, 10.0, 1000.0)


def register(encoding: str, word_order: str = "big", scale: float = 1.0, exponent_address: int | None = None,
             quantity: str = "power_W") -> Register:
    return Register(quantity=quantity, phase="total", function_code=4, address=0, encoding=encoding,
                    word_order=word_order, scale=scale, exponent_address=exponent_address)


word_orders = st.sampled_from(("big", "little"))
scales = st.sampled_from(SCALES)


@given(st.sampled_from(tuple(INTEGER_BITS)), word_orders, scales, st.data())
def test_integers_round_trip_exactly_in_steps_of_the_scale(encoding: str, order: str, scale: float,
                                                             data: st.DataObject) -> None:
    bits, signed = INTEGER_BITS[encoding]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 2) if signed else (0, (1 << bits) - 2)
    low, high = max(low, -(1 << 50)), min(high, 1 << 50)  # a float holds 64-bit counters to 2**53
    number = data.draw(st.integers(low, high))
    reg = register(encoding, order, scale)
    value = decode(reg, _words_of(number, bits, order))
    assert value is not None
    words, exponent = encode(reg, value)
    assert exponent is None
    assert words == _words_of(number, bits, order)
    assert decode(reg, words) == value
    assert value == pytest.approx(number * scale, rel=1e-15)


@given(st.floats(min_value=-(2.0**126), max_value=2.0**126, width=32), word_orders, scales)
def test_float32_round_trips_to_the_same_float32(number: float, order: str, scale: float) -> None:
    reg = register("float32", order, scale)
    words, _ = encode(reg, number * scale)
    value = decode(reg, words)
    assert value is not None
    assert value == pytest.approx(number * scale, rel=2**-23, abs=1e-44 * scale)
    words, _ = encode(register("float32", order), number)
    assert struct.unpack(">f", struct.pack(">f", decode(register("float32", order), words)))[0] == number


@given(st.sampled_from(("iskra_t5", "iskra_t6")), word_orders,
       st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_iskra_types_round_trip_within_24_bits(encoding: str, order: str, number: float) -> None:
    reg = register(encoding, order)
    if encoding == "iskra_t5":
        number = abs(number)
    words, _ = encode(reg, number)
    value = decode(reg, words)
    assert value is not None
    assert value == pytest.approx(number, rel=1e-6, abs=1e-120)  # mantissa >= 2**23 / 10


@given(st.sampled_from(("int16", "uint32", "int32", "uint64")), word_orders,
       st.decimals(min_value=0, max_value=10**9, places=3))
def test_exponent_register_round_trips(encoding: str, order: str, number: object) -> None:
    reg = register(encoding, order, exponent_address=10)
    words, exponent = encode(reg, float(number))  # type: ignore[arg-type]
    assert exponent is not None and 0 <= exponent <= 0xFFFF
    assert decode(reg, words, exponent) == pytest.approx(float(number), rel=2e-4)  # type: ignore[arg-type]


def test_known_words_from_meter_manuals() -> None:
    assert decode(register("float32"), [0x4366, 0x0000]) == 230.0
    assert decode(register("float32", scale=1000), [0x449A, 0x5000]) == 1234500.0  # 1234.5 kWh in Wh
    assert decode(register("float32"), [0x4247, 0x999A]) == 49.9  # shortest decimal, not 49.900001525878906
    assert decode(register("uint32", scale=0.1), [0x0000, 0x08FD]) == 230.1
    assert decode(register("int32", "little", 0.1), [0xFFE7, 0xFFFF]) == -2.5  # Carlo Gavazzi, low word first
    assert decode(register("uint64", scale=10), [0, 0, 0x0001, 0xE240]) == 1234560.0  # ABB 0.01 kWh
    assert decode(register("int64", "little"), [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]) == -2.0
    assert decode(register("int16", scale=0.001), [0xFC18]) == -1.0
    # Iskra manual examples: T5 123456 * 10^-3, T6 -123456 * 10^-3
    assert decode(register("iskra_t5"), [0xFD01, 0xE240]) == 123.456
    assert decode(register("iskra_t6"), [0xFDFE, 0x1DC0]) == -123.456
    assert decode(register("iskra_t5"), [0xFDFE, 0x1DC0]) == 16653.76  # the same bits unsigned
    # exponent register: raw word 0xFFFE or signed -2 mean 10^-2
    energy = register("uint32", exponent_address=7)
    assert decode(energy, [0x0001, 0xE240], 0xFFFE) == 1234.56
    assert decode(energy, [0x0001, 0xE240], -2) == 1234.56
    assert decode(energy, [0x0001, 0xE240], 3) == 123456000.0


@pytest.mark.parametrize("encoding", ["float32", *INTEGER_BITS])
@pytest.mark.parametrize("order", ["big", "little"])
def test_not_available_markers_decode_to_none(encoding: str, order: str) -> None:
    reg = register(encoding, order)
    assert decode(reg, not_available_words(reg)) is None
    assert decode(reg, encode(reg, math.nan)[0]) is None


def test_markers_are_the_abb_ones() -> None:
    assert not_available_words(register("uint32")) == [0xFFFF, 0xFFFF]
    assert not_available_words(register("int32")) == [0x7FFF, 0xFFFF]
    assert not_available_words(register("int32", "little")) == [0xFFFF, 0x7FFF]
    assert not_available_words(register("uint64")) == [0xFFFF] * 4
    assert not_available_words(register("int16")) == [0x7FFF]
    assert decode(register("int64"), [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]) is None
    for words in ([0x7F80, 0], [0xFF80, 0], [0x7FC0, 0], [0xFFC0, 0x0001]):  # +inf, -inf, NaNs
        assert decode(register("float32"), words) is None
    assert decode(register("int32"), [0x8000, 0x0000]) == -(2**31)  # not a marker for ABB


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(register("uint16"), -1)
    with pytest.raises(ValueError, match="does not fit"):
        encode(register("int16"), 40000)
    with pytest.raises(ValueError, match="does not fit"):
        encode(register("uint32"), 0xFFFFFFFF)  # would be the marker
    with pytest.raises(ValueError, match="too large for float32"):
        encode(register("float32"), 1e39)
    with pytest.raises(ValueError, match="no 'not available' marker"):
        encode(register("iskra_t6"), math.nan)
    with pytest.raises(ValueError, match="exponent -200 is out of range"):
        encode(register("iskra_t5"), 1.0, exponent=-200)


def test_bad_words_are_refused_with_the_register_named() -> None:
    with pytest.raises(ValueError, match=r"power_W.total: float32 needs 2 registers, got 1"):
        decode(register("float32"), [0x4366])
    with pytest.raises(ValueError, match="not a 16-bit register value"):
        decode(register("uint16"), [70000])
    with pytest.raises(ValueError, match="needs the exponent word from register 7"):
        decode(register("uint32", exponent_address=7), [0, 1])
    with pytest.raises(ValueError, match="has no exponent_address"):
        decode(register("uint32"), [0, 1], 2)


def test_fixed_exponent_is_used() -> None:
    reg = register("uint32", exponent_address=3)
    words, exponent = encode(reg, 1234.5, exponent=-3)
    assert (words, exponent) == ([0x0012, 0xD644], 0xFFFD)
    assert encode(register("iskra_t6"), -1234.56, exponent=-3)[0] == [0xFDED, 0x2980]


def test_every_encoding_is_covered() -> None:
    assert set(ENCODINGS) == {"float32", "iskra_t5", "iskra_t6", *INTEGER_BITS}


def _words_of(number: int, bits: int, order: str) -> list[int]:
    raw = number & ((1 << bits) - 1)
    words = [(raw >> shift) & 0xFFFF for shift in range(bits - 16, -1, -16)]
    return words if order == "big" else words[::-1]


def test_float32_words_are_ieee_754() -> None:
    words, _ = encode(register("float32", "little"), 230.0)
    assert words == [0x0000, 0x4366]
    assert struct.unpack(">f", bytes.fromhex("43660000"))[0] == decode(register("float32"), [0x4366, 0])
