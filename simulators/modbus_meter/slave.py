"""A line of simulated Modbus meters, without I/O: bytes and time in, reply frames and send times out.

:class:`SlaveLine` assembles RTU request frames from the bytes a master writes (a silence of 3.5
characters ends a frame, as on a real line), answers FC03/FC04 reads from a register image encoded
from the meter's current readings, and applies injected faults. Requests for slave ids nobody has
get no reply (an RS485 bus), frames with a bad CRC are ignored. :meth:`SlaveLine.answer_pdu` is the
same meters behind Modbus TCP.

Timing: a reply's first byte may not leave before the request has finished arriving at the line's
baud rate (plus any ``slow_reply`` delay); :func:`byte_deadlines` says when each reply byte may go out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chargepoint.modbus.codec import encode, not_available_words
from chargepoint.modbus.model import MeterModel, Register
from chargepoint.modbus.rtu import crc16, frame_gap_s, request_frame_length, wire_time_s, with_crc

from .load import Load, MeterReadings

FAULT_KINDS = ("no_reply", "bad_crc", "wrong_slave_id", "slow_reply")
READ_FUNCTION_CODES = (3, 4)
MAX_READ_COUNT = 125
ILLEGAL_FUNCTION, ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE = 1, 2, 3
GATEWAY_TARGET_FAILED = 0x0B
DEFAULT_SLOW_REPLY_MS = 500.0


@dataclass
class Fault:
    kind: str
    remaining: int | None  # requests left; None = until cleared
    delay_ms: float = 0.0


@dataclass
class Meter:
    slave_id: int
    model: MeterModel
    readings: MeterReadings
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: int = 0  # well-formed requests addressed to this meter
    replies: int = 0  # replies sent (including corrupted ones)

    def register_image(self) -> dict[int, dict[int, int]]:
        """function code -> address -> 16-bit word, encoded from the current readings."""
        values = self.readings.values()
        image: dict[int, dict[int, int]] = {fc: {} for fc in READ_FUNCTION_CODES}
        for register in self.model.registers:
            value = values.get(register.quantity, {}).get(register.phase, 0.0)
            words, exponent = encode_or_marker(register, value)
            target = image.setdefault(register.function_code, {})
            for offset, word in enumerate(words):
                target[register.address + offset] = word
            if register.exponent_address is not None and exponent is not None:
                target[register.exponent_address] = exponent & 0xFFFF
        return image


def encode_or_marker(register: Register, value: float) -> tuple[list[int], int | None]:
    """The register's words for ``value``; an unsigned register holds the magnitude (as meters show
    currents), and a value the encoding cannot hold gives the "not available" marker (zeros if it has none)."""
    for candidate in (value, abs(value)):
        try:
            return encode(register, candidate)
        except ValueError:
            continue
    try:
        return not_available_words(register), None
    except ValueError:
        return [0] * register.count, None


def model_phases(model: MeterModel) -> int:
    """Phases a model measures: 3 when it maps L2 or L3, else 1."""
    phases = {register.phase for register in model.registers}
    return 3 if phases & {"L2", "L3"} else 1


def mapped_span(model: MeterModel, function_code: int) -> tuple[int, int] | None:
    """[first, end) of the registers the model maps with ``function_code`` (exponents included)."""
    starts, ends = [], []
    for register in model.registers:
        if register.function_code != function_code:
            continue
        starts.append(register.address)
        ends.append(register.address + register.count)
        if register.exponent_address is not None:
            starts.append(register.exponent_address)
            ends.append(register.exponent_address + 1)
    return (min(starts), max(ends)) if starts else None


def byte_deadlines(first_byte_start: float, n_bytes: int, baudrate: int) -> list[float]:
    """When each byte of a reply has been fully on the wire if sending starts at ``first_byte_start``."""
    return [first_byte_start + wire_time_s(index + 1, baudrate) for index in range(n_bytes)]


@dataclass(frozen=True)
class Reply:
    """A frame to put on the line; its first byte may start at ``send_at`` (monotonic seconds)."""

    frame: bytes
    send_at: float
    slave_id: int  # the meter that answers (the frame may carry another id under wrong_slave_id)


@dataclass(frozen=True)
class Answer:
    """What a meter answers, before RTU or TCP framing."""

    slave_id: int  # id put in the reply (differs under wrong_slave_id)
    pdu: bytes
    delay_s: float
    corrupt: bool  # bad_crc


class SlaveLine:
    """The meters on one RS485 line (or behind one Modbus TCP server)."""

    def __init__(self, baudrate: int) -> None:
        if baudrate <= 0:
            raise ValueError(f"baudrate {baudrate}: must be > 0")
        self.baudrate = baudrate
        self.meters: dict[int, Meter] = {}
        self.ignored_frames = 0  # frames dropped for a bad CRC or a length that fits no request
        self._buffer = bytearray()
        self._frame_started_at = 0.0
        self._last_byte_at = 0.0
        self._discarding = False  # a bad frame was seen: drop bytes until the line goes quiet

    # -- meters ----------------------------------------------------------------------------------------------
    def add_meter(self, slave_id: int, model: MeterModel, energy_Wh: float, load: Load, now: float,
                  time_scale: float = 1.0) -> Meter:
        if not 1 <= slave_id <= 247:
            raise ValueError(f"slave id {slave_id}: must be 1..247")
        if slave_id in self.meters:
            raise ValueError(f"slave id {slave_id}: already used by another meter on this line")
        readings = MeterReadings.start(model_phases(model), energy_Wh, now, load, time_scale)
        meter = Meter(slave_id, model, readings)
        self.meters[slave_id] = meter
        return meter

    def meter(self, slave_id: int) -> Meter:
        try:
            return self.meters[slave_id]
        except KeyError:
            raise ValueError(f"no meter with slave id {slave_id} (have {sorted(self.meters)})") from None

    def set_load(self, slave_id: int, load: Load, now: float) -> None:
        self.meter(slave_id).readings.set_load(load, now)

    def inject_fault(self, slave_id: int, kind: str, count: int | None = None,
                     delay_ms: float = DEFAULT_SLOW_REPLY_MS) -> None:
        """``kind`` for the next ``count`` requests to that meter (None: until cleared)."""
        meter = self.meter(slave_id)
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault {kind!r}: must be one of {', '.join(FAULT_KINDS)}")
        if count is not None and count < 1:
            raise ValueError(f"fault count {count}: must be >= 1 (or none for until cleared)")
        if not delay_ms >= 0:
            raise ValueError(f"slow_reply delay {delay_ms!r} ms: must be >= 0")
        meter.faults[kind] = Fault(kind, count, delay_ms if kind == "slow_reply" else 0.0)

    def clear_faults(self, slave_id: int | None = None) -> None:
        for meter in [self.meter(slave_id)] if slave_id is not None else self.meters.values():
            meter.faults.clear()

    def advance(self, now: float) -> None:
        for meter in self.meters.values():
            meter.readings.advance(now)

    # -- RTU ----------------------------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[Reply]:
        """Bytes the master wrote, read at ``now``; returns the replies of the frames they complete."""
        if not data:
            return []
        if (self._buffer or self._discarding) and now - self._last_byte_at >= self.frame_gap_s:
            self._end_frame()
        if not self._buffer and not self._discarding:
            self._frame_started_at = now
        self._last_byte_at = now
        if self._discarding:
            return []
        self._buffer += data
        replies = []
        while self._buffer:
            length = self._expected_length()
            if length is None or len(self._buffer) < length:
                break
            frame = bytes(self._buffer[:length])
            if not self._crc_ok(frame):
                self.ignored_frames += 1
                self._buffer.clear()
                self._discarding = True
                break
            del self._buffer[:length]
            reply = self._answer_frame(frame, now)
            if reply is not None:
                replies.append(reply)
            self._frame_started_at = now
        return replies

    def idle(self, now: float) -> list[Reply]:
        """Called once the line has been quiet since :meth:`deadline`: what is buffered is a whole frame."""
        if now - self._last_byte_at < self.frame_gap_s:
            return []
        frame = bytes(self._buffer)
        discarding = self._discarding
        self._end_frame()
        if not frame or discarding:
            return []
        if len(frame) < 4 or not self._crc_ok(frame):
            self.ignored_frames += 1
            return []
        reply = self._answer_frame(frame, now)
        return [reply] if reply is not None else []

    def deadline(self) -> float | None:
        """When to call :meth:`idle` if no more bytes come (None: nothing pending)."""
        if self._buffer or self._discarding:
            return self._last_byte_at + self.frame_gap_s
        return None

    @property
    def frame_gap_s(self) -> float:
        return frame_gap_s(self.baudrate)

    def _end_frame(self) -> None:
        self._buffer.clear()
        self._discarding = False

    def _expected_length(self) -> int | None:
        """Length of the request frame in the buffer when its function code fixes it; otherwise the
        silence after it ends the frame."""
        return request_frame_length(bytes(self._buffer[:7]))

    @staticmethod
    def _crc_ok(frame: bytes) -> bool:
        return crc16(frame[:-2]) == frame[-2] | frame[-1] << 8

    def _answer_frame(self, frame: bytes, now: float) -> Reply | None:
        answer = self._answer(frame[0], frame[1:-2], now)
        if answer is None:
            return None
        reply_frame = with_crc(bytes([answer.slave_id]) + answer.pdu)
        if answer.corrupt:
            reply_frame = reply_frame[:-2] + bytes([reply_frame[-2] ^ 0xFF, reply_frame[-1] ^ 0x5A])
        request_arrived = self._frame_started_at + wire_time_s(len(frame), self.baudrate)
        return Reply(reply_frame, max(now, request_arrived) + answer.delay_s, frame[0])

    # -- TCP ----------------------------------------------------------------------------------------------------
    def answer_pdu(self, unit_id: int, pdu: bytes, now: float) -> Answer | None:
        """A Modbus TCP request; like an RS485 gateway, a meter that is missing or whose reply is garbled
        gets exception 0x0B (gateway target failed to respond), a ``no_reply`` meter no answer at all."""
        if unit_id not in self.meters:
            if not pdu or unit_id == 0:
                return None
            return Answer(unit_id, bytes([pdu[0] | 0x80, GATEWAY_TARGET_FAILED]), 0.0, False)
        answer = self._answer(unit_id, pdu, now)
        if answer is not None and answer.corrupt:
            return Answer(answer.slave_id, bytes([pdu[0] | 0x80, GATEWAY_TARGET_FAILED]), answer.delay_s, False)
        return answer

    # -- both ---------------------------------------------------------------------------------------------------
    def _answer(self, slave_id: int, pdu: bytes, now: float) -> Answer | None:
        meter = self.meters.get(slave_id)
        if meter is None or not pdu:
            return None  # nobody with that id on the bus (or a broadcast, which reads never use)
        meter.requests += 1
        self.advance(now)
        reply_pdu = self._serve(meter, pdu)
        faults = self._take_faults(meter)
        if "no_reply" in faults:
            return None
        meter.replies += 1
        reply_id = slave_id % 247 + 1 if "wrong_slave_id" in faults else slave_id
        delay = faults["slow_reply"].delay_ms / 1000 if "slow_reply" in faults else 0.0
        return Answer(reply_id, reply_pdu, delay, "bad_crc" in faults)

    @staticmethod
    def _take_faults(meter: Meter) -> dict[str, Fault]:
        """The faults acting on this request; counted ones use one request up."""
        active = dict(meter.faults)
        for kind, fault in active.items():
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del meter.faults[kind]
        return active

    def _serve(self, meter: Meter, pdu: bytes) -> bytes:
        function_code = pdu[0]
        if function_code not in READ_FUNCTION_CODES:
            return bytes([function_code | 0x80, ILLEGAL_FUNCTION])
        if len(pdu) != 5:
            return bytes([function_code | 0x80, ILLEGAL_DATA_VALUE])
        address = pdu[1] << 8 | pdu[2]
        count = pdu[3] << 8 | pdu[4]
        if not 1 <= count <= MAX_READ_COUNT:
            return bytes([function_code | 0x80, ILLEGAL_DATA_VALUE])
        span = mapped_span(meter.model, function_code)
        if span is None or address < span[0] or address + count > span[1]:
            return bytes([function_code | 0x80, ILLEGAL_DATA_ADDRESS])
        image = meter.register_image().get(function_code, {})
        words = [image.get(address + offset, 0) for offset in range(count)]
        return bytes([function_code, 2 * count]) + b"".join(word.to_bytes(2, "big") for word in words)


def words_of(reply_frame: bytes) -> list[int]:
    """The register words of a normal FC03/FC04 RTU reply frame."""
    data = reply_frame[3:-2]
    return [int.from_bytes(data[index:index + 2], "big") for index in range(0, len(data), 2)]

