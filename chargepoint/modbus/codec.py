"""Register words <-> values in the quantity's unit.

Encodings (``Register.encoding``), all with 16-bit registers whose bytes are big-endian on the wire:

- ``float32``: IEEE 754 single; NaN and infinities mean "not available".
- ``int16``/``uint16``/``int32``/``uint32``/``int64``/``uint64``: two's complement or unsigned integers. The
  ABB "not available" markers decode to ``None``: all bits set for unsigned, ``0x7FFF...`` for signed (per width).
- ``iskra_t5`` / ``iskra_t6``: Iskra's 32-bit measurement types. The high byte is a signed decade exponent, the
  low 24 bits the value: unsigned for T5 (voltages), signed two's complement for T6 (currents, powers), as the
  Iskra register tables and the EVerest ``RsIskraMeter`` driver use them (voltage T5, current/power T6).

``word_order`` "big" means the high word comes first, "little" the low word first (Carlo Gavazzi, Phoenix
Contact); it applies to every multi-register encoding. A register with ``exponent_address`` is multiplied by
``10 ** exponent`` where ``exponent`` is the int16 in that register (Iskra energy counters). ``scale`` applies
last. Values are computed in decimal, so ``2301 * 0.1`` is ``230.1`` and a float32 reads as the shortest decimal
that gives the same float32 (``230.1``, not ``230.10000610351562``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from chargepoint.modbus.model import Register

#: bits and signedness of the plain integer encodings
INTEGERS: dict[str, tuple[int, bool]] = {
    "int16": (16, True), "uint16": (16, False), "int32": (32, True), "uint32": (32, False),
    "int64": (64, True), "uint64": (64, False),
}
ISKRA_SIGNED = {"iskra_t5": False, "iskra_t6": True}
EXPONENT_RANGE = (-32768, 32767)  # an int16 exponent register
ISKRA_EXPONENT_RANGE = (-128, 127)  # the signed high byte of T5/T6


def decode(register: Register, words: Sequence[int], exponent: int | None = None) -> float | None:
    """The value of ``register`` from its ``words`` (as read, in wire order); ``None`` for "not available".

    ``exponent`` is the word read at ``register.exponent_address`` (raw 0..65535 or already signed); it is
    required exactly when the register has an exponent address. ``ValueError`` on a wrong number of words.
    """
    _check_words(register, words)
    if register.exponent_address is None and exponent is not None:
        raise ValueError(f"{register.key}: got an exponent but the register has no exponent_address")
    if register.exponent_address is not None:
        if exponent is None:
            raise ValueError(f"{register.key}: needs the exponent word from register {register.exponent_address}")
        if not EXPONENT_RANGE[0] <= exponent <= 0xFFFF:
            raise ValueError(f"{register.key}: exponent {exponent} is not a 16-bit register value")
    raw = _combine(register, words)
    scale = Decimal(repr(register.scale))
    if register.encoding == "float32":
        number = struct.unpack(">f", raw.to_bytes(4, "big"))[0]
        if not math.isfinite(number):
            return None
        return _finite(Decimal(_float32_text(number)) * scale)
    if register.encoding in ISKRA_SIGNED:
        mantissa = _signed(raw & 0xFFFFFF, 24) if ISKRA_SIGNED[register.encoding] else raw & 0xFFFFFF
        return _finite(Decimal(mantissa).scaleb(_signed(raw >> 24, 8)) * scale)
    bits, signed = INTEGERS[register.encoding]
    if raw == _marker(bits, signed):
        return None
    number = _signed(raw, bits) if signed else raw
    decade = 0 if exponent is None else _signed(exponent & 0xFFFF, 16)
    return _finite(Decimal(number).scaleb(decade) * scale)


def encode(register: Register, value: float, *, exponent: int | None = None) -> tuple[list[int], int | None]:
    """The words (wire order) a meter holds for ``value``, and the exponent register's word (or ``None``).

    ``decode(register, *encode(register, x))`` gives ``x`` within the encoding's resolution. NaN gives the
    "not available" marker where the encoding has one. For Iskra types and registers with an exponent address,
    ``exponent`` fixes the decade exponent; by default the smallest one that holds the value is chosen.
    ``ValueError`` when the value cannot be held (out of range, negative for unsigned, NaN without a marker).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{register.key}: value must be a number, not {value!r}")
    if math.isnan(value):
        return not_available_words(register), None
    if math.isinf(value):
        raise ValueError(f"{register.key}: cannot encode {value}")
    raw = Decimal(repr(float(value))) / Decimal(repr(register.scale))
    if register.encoding == "float32":
        if exponent is not None:
            raise ValueError(f"{register.key}: float32 takes no exponent")
        try:
            packed = struct.pack(">f", float(raw))
        except OverflowError:
            raise ValueError(f"{register.key}: {value} is too large for float32") from None
        return _split(register, int.from_bytes(packed, "big")), None
    if register.encoding in ISKRA_SIGNED:
        signed = ISKRA_SIGNED[register.encoding]
        low, high = (-(1 << 23), (1 << 23) - 1) if signed else (0, (1 << 24) - 1)
        mantissa, decade = _fit(register, raw, low, high, ISKRA_EXPONENT_RANGE, exponent)
        return _split(register, ((decade & 0xFF) << 24) | (mantissa & 0xFFFFFF)), None
    bits, signed = INTEGERS[register.encoding]
    low, high = (-(1 << (bits - 1)), _marker(bits, signed) - 1) if signed else (0, _marker(bits, signed) - 1)
    if register.exponent_address is None:
        if exponent is not None:
            raise ValueError(f"{register.key}: the register has no exponent_address")
        mantissa, _ = _fit(register, raw, low, high, (0, 0), 0)
        return _split(register, mantissa & ((1 << bits) - 1)), None
    mantissa, decade = _fit(register, raw, low, high, EXPONENT_RANGE, exponent)
    return _split(register, mantissa & ((1 << bits) - 1)), decade & 0xFFFF


def not_available_words(register: Register) -> list[int]:
    """The words a meter sends when it has no value (NaN for float32, the ABB markers for integers)."""
    if register.encoding == "float32":
        return _split(register, 0x7FC00000)
    if register.encoding in INTEGERS:
        return _split(register, _marker(*INTEGERS[register.encoding]))
    raise ValueError(f"{register.key}: {register.encoding} has no 'not available' marker")


def _check_words(register: Register, words: Sequence[int]) -> None:
    if len(words) != register.count:
        raise ValueError(f"{register.key}: {register.encoding} needs {register.count} registers, got {len(words)}")
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ValueError(f"{register.key}: {word!r} is not a 16-bit register value")


def _combine(register: Register, words: Sequence[int]) -> int:
    ordered = list(words) if register.word_order == "big" else list(reversed(words))
    raw = 0
    for word in ordered:
        raw = (raw << 16) | word
    return raw


def _split(register: Register, raw: int) -> list[int]:
    words = [(raw >> (16 * index)) & 0xFFFF for index in reversed(range(register.count))]
    return words if register.word_order == "big" else list(reversed(words))


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _marker(bits: int, signed: bool) -> int:
    """The "not available" value: 0x7FFF... for signed, 0xFFFF... for unsigned."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def _finite(number: Decimal) -> float | None:
    result = float(number)
    return result if math.isfinite(result) else None


def _float32_text(number: float) -> str:
    """The shortest decimal that reads back as the same float32."""
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        try:
            if struct.unpack(">f", struct.pack(">f", float(text)))[0] == number:
                return text
        except OverflowError:
            continue
    return repr(number)


def _fit(register: Register, raw: Decimal, low: int, high: int, decades: tuple[int, int],
         fixed: int | None) -> tuple[int, int]:
    """(mantissa, decade) with ``mantissa * 10**decade`` closest to ``raw`` and the mantissa in ``low..high``.

    Without ``fixed``, the decade is the one that writes ``raw`` exactly (never above 0) when that fits,
    else the smallest one whose rounded mantissa fits.
    """
    if fixed is not None:
        if not decades[0] <= fixed <= decades[1]:
            raise ValueError(f"{register.key}: exponent {fixed} is out of range {decades[0]}..{decades[1]}")
        candidates = [fixed]
    else:
        exact = min(raw.normalize().as_tuple().exponent, 0) if raw else 0
        assert isinstance(exact, int)
        candidates = list(range(max(exact, decades[0]), decades[1] + 1))
    for decade in candidates:
        try:
            mantissa = int(raw.scaleb(-decade).to_integral_value(rounding=ROUND_HALF_EVEN))
        except InvalidOperation:
            continue
        if low <= mantissa <= high:
            return mantissa, decade
        if mantissa < low and low == 0:
            break  # negative: no decade helps
    raise ValueError(f"{register.key}: {float(raw * Decimal(repr(register.scale)))} does not fit "
                     f"{register.encoding} (range {low}..{high} times scale {register.scale})")
