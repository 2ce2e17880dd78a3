"""The Modbus meter simulator's pure core: loads and energy, RTU framing, register images, faults, timing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.modbus.codec import decode
from chargepoint.modbus.model import builtin_model_names, load_model
from chargepoint.modbus.rtu import crc16, read_request, wire_time_s
from simulators.modbus_meter.build import MeterSpec, build_line, parse_profile
from simulators.modbus_meter.load import ConstantLoad, ExternalLoad, MeterReadings, ProfileLoad
from simulators.modbus_meter.slave import SlaveLine, byte_deadlines, mapped_span, words_of

MODELS = {name: load_model(name) for name in builtin_model_names()}


def request_frame(slave_id: int, function_code: int, body: bytes) -> bytes:
    frame = bytes([slave_id, function_code]) + body
    crc = crc16(frame)
    return frame + bytes([crc & 0xFF, crc >> 8])


def sdm630_line(power_W: float = 0.0, energy_Wh: float = 1000.0, now: float = 0.0) -> SlaveLine:
    line = SlaveLine(9600)
    line.add_meter(1, MODELS["sdm630"], energy_Wh, ConstantLoad(power_W), now)
    return line


def ask(line: SlaveLine, frame: bytes, now: float) -> bytes | None:
    """Send one frame, let the line go quiet, return the single reply frame (or None)."""
    replies = line.receive(frame, now) + line.idle(now + 1.0)
    assert len(replies) <= 1
    return replies[0].frame if replies else None


def value_of(line: SlaveLine, slave_id: int, quantity: str, phase: str, now: float) -> float | None:
    """Read one register over RTU and decode it with the CORE codec."""
    register = line.meters[slave_id].model.register(quantity, phase)
    assert register is not None
    reply = ask(line, read_request(slave_id, register.function_code, register.address, register.count), now)
    assert reply is not None and reply[1] == register.function_code
    return decode(register, words_of(reply))


# -- loads and energy -----------------------------------------------------------------------------------------

def test_constant_load_integrates_energy_per_phase() -> None:
    readings = MeterReadings.start(3, 3000.0, now=0.0, load=ConstantLoad(7200.0))
    readings.advance(1800.0)  # half an hour at 7.2 kW
    values = readings.values()
    assert values["energy_Wh_import"]["total"] == pytest.approx(3000 + 3600)
    assert values["energy_Wh_import"]["L2"] == pytest.approx(1000 + 1200)
    assert values["power_W"]["L1"] == pytest.approx(2400)
    assert values["current_A"]["L3"] == pytest.approx(2400 / 230)
    assert values["energy_Wh_export"]["total"] == 0


def test_negative_power_counts_export_and_leaves_import_alone() -> None:
    readings = MeterReadings.start(1, 500.0, now=0.0, load=ConstantLoad(-3600.0))
    readings.advance(3600.0)
    assert readings.values()["energy_Wh_import"]["total"] == pytest.approx(500)
    assert readings.values()["energy_Wh_export"]["total"] == pytest.approx(3600)


def test_profile_repeats_and_time_scale_speeds_up() -> None:
    profile = ProfileLoad(((10.0, 3600.0), (20.0, 0.0)), started_at=100.0)
    readings = MeterReadings.start(1, 0.0, now=100.0, load=profile, time_scale=360.0)
    assert profile.power_at(105.0) == 3600 and profile.power_at(115.0) == 0 and profile.power_at(135.0) == 3600
    readings.advance(100.0 + 2 * 30.0 + 5.0)  # two whole periods and half a step
    # each period: 10 s at 3600 W = 10 Wh real, times 360
    assert readings.values()["energy_Wh_import"]["total"] == pytest.approx((10 + 10 + 5) * 360)


def test_external_load_per_phase_and_summed_onto_one_phase() -> None:
    three = MeterReadings.start(3, 0.0, now=0.0, load=ExternalLoad((100.0, 200.0, 300.0)))
    assert three.values()["power_W"] == {"total": 600.0, "L1": 100.0, "L2": 200.0, "L3": 300.0}
    one = MeterReadings.start(1, 0.0, now=0.0, load=ExternalLoad((100.0, 200.0, 300.0)))
    assert one.values()["power_W"]["L1"] == 600.0


@pytest.mark.parametrize("bad", [{"phases": 4}, {"energy_Wh": -1.0}, {"time_scale": 0.0}])
def test_bad_meter_settings_are_refused(bad: dict[str, float]) -> None:
    args = {"phases": 3, "energy_Wh": 0.0, "time_scale": 1.0} | bad
    with pytest.raises(ValueError, match="must be"):
        MeterReadings.start(int(args["phases"]), args["energy_Wh"], 0.0, time_scale=args["time_scale"])


def test_profile_text_and_its_errors() -> None:
    assert parse_profile("10:7400,5:0", now=3.0) == ProfileLoad(((10.0, 7400.0), (5.0, 0.0)), 3.0)
    with pytest.raises(ValueError, match="step 2 '5': expected SECONDS:WATTS"):
        parse_profile("10:7400,5", now=0.0)
    with pytest.raises(ValueError, match=r"duration 0.0 s must be > 0"):
        parse_profile("0:100", now=0.0)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.5, 100), st.floats(-20000, 20000)), min_size=1, max_size=5),
       cuts=st.lists(st.floats(0, 500), max_size=8))
def test_energy_is_monotonic_and_independent_of_how_often_it_is_read(
        steps: list[tuple[float, float]], cuts: list[float]) -> None:
    profile = ProfileLoad(tuple(steps), started_at=0.0)
    in_steps = MeterReadings.start(3, 100.0, 0.0, profile)
    at_once = MeterReadings.start(3, 100.0, 0.0, profile)
    previous = (100.0, 0.0)
    for cut in sorted(cuts):
        in_steps.advance(cut)
        values = in_steps.values()
        now = (values["energy_Wh_import"]["total"], values["energy_Wh_export"]["total"])
        assert now[0] >= previous[0] - 1e-9 and now[1] >= previous[1] - 1e-9
        previous = now
    in_steps.advance(500.0)
    at_once.advance(500.0)
    for quantity in ("energy_Wh_import", "energy_Wh_export"):
        assert in_steps.values()[quantity]["total"] == pytest.approx(at_once.values()[quantity]["total"], abs=1e-6)


# -- reads --------------------------------------------------------------------------------------------------------

def test_sdm630_read_gives_the_encoded_readings() -> None:
    line = sdm630_line(power_W=6900.0, energy_Wh=12345.0)
    assert value_of(line, 1, "voltage_V", "L2", 0.0) == pytest.approx(230.0)
    assert value_of(line, 1, "power_W", "total", 0.0) == pytest.approx(6900.0)
    assert value_of(line, 1, "current_A", "L1", 0.0) == pytest.approx(10.0, rel=1e-6)
    assert value_of(line, 1, "energy_Wh_import", "total", 0.0) == pytest.approx(12345.0, abs=1)
    assert value_of(line, 1, "energy_Wh_import", "total", 3600.0) == pytest.approx(12345.0 + 6900, abs=1)


def test_a_batched_read_spans_unmapped_registers_as_zeros() -> None:
    line = sdm630_line()
    reply = ask(line, read_request(1, 4, 0x00, 0x4C), 0.0)  # the whole map in one read
    assert reply is not None and reply[2] == 2 * 0x4C
    words = words_of(reply)
    assert struct.unpack(">f", struct.pack(">HH", *words[0:2]))[0] == pytest.approx(230.0)
    assert words[0x12:0x18] == [0] * 6  # between L3 power and L1 reactive power: nothing mapped


@pytest.mark.parametrize(("request_body", "exception"), [
    (read_request(1, 4, 0x4A, 4), 0x02),  # runs past the last register (0x4B)
    (read_request(1, 3, 0x00, 2), 0x02),  # the SDM630 maps nothing to holding registers
    (request_frame(1, 4, bytes([0, 0, 0, 126])), 0x03),  # more than Modbus allows in one read
    (request_frame(1, 6, bytes([0, 1, 0, 5])), 0x01),  # write single register: not supported
    (request_frame(1, 0x2B, bytes([0x0E, 1, 0])), 0x01),  # device identification: unknown layout, ends by silence
])
def test_bad_requests_get_exception_replies(request_body: bytes, exception: int) -> None:
    reply = ask(sdm630_line(), request_body, 0.0)
    assert reply is not None
    assert reply[1] == request_body[1] | 0x80 and reply[2] == exception
    assert crc16(reply[:-2]) == reply[-2] | reply[-1] << 8


def test_unknown_slave_ids_and_bad_crcs_get_no_reply() -> None:
    line = sdm630_line()
    assert ask(line, read_request(9, 4, 0, 2), 0.0) is None
    assert ask(line, request_frame(0, 4, bytes([0, 0, 0, 2])), 2.0) is None  # broadcast
    corrupt = bytearray(read_request(1, 4, 0, 2))
    corrupt[-1] ^= 0x01
    assert ask(line, bytes(corrupt), 4.0) is None
    assert line.ignored_frames == 1 and line.meters[1].requests == 0
    assert ask(line, read_request(1, 4, 0, 2), 6.0) is not None, "the next good frame after a silence is answered"


def test_frames_split_across_reads_and_back_to_back_frames() -> None:
    line = sdm630_line()
    frame = read_request(1, 4, 0, 2)
    assert line.receive(frame[:3], 0.0) == []
    assert line.deadline() == pytest.approx(0.0 + 3.5 * 11 / 9600)
    assert len(line.receive(frame[3:], 0.001)) == 1
    assert len(line.receive(frame + read_request(1, 4, 2, 2), 1.0)) == 2


def test_a_partial_frame_is_dropped_after_a_silence() -> None:
    line = sdm630_line()
    frame = read_request(1, 4, 0, 2)
    line.receive(frame[:5], 0.0)
    assert line.idle(0.5) == [] and line.ignored_frames == 1
    assert len(line.receive(frame, 1.0)) == 1


def test_reply_waits_for_the_request_to_arrive_at_the_baud_rate() -> None:
    line = sdm630_line()
    replies = line.receive(read_request(1, 4, 0, 0x4C), 10.0)
    assert replies[0].send_at == pytest.approx(10.0 + wire_time_s(8, 9600))
    deadlines = byte_deadlines(replies[0].send_at, len(replies[0].frame), 9600)
    assert deadlines[-1] == pytest.approx(10.0 + wire_time_s(8 + 5 + 2 * 0x4C, 9600))


# -- faults -------------------------------------------------------------------------------------------------------

def test_faults_for_n_requests_then_normal_again() -> None:
    line = sdm630_line()
    line.inject_fault(1, "no_reply", 2)
    assert ask(line, read_request(1, 4, 0, 2), 0.0) is None
    assert ask(line, read_request(1, 4, 0, 2), 2.0) is None
    assert ask(line, read_request(1, 4, 0, 2), 4.0) is not None
    assert line.meters[1].requests == 3 and line.meters[1].faults == {}


def test_bad_crc_wrong_id_and_slow_reply() -> None:
    line = sdm630_line()
    line.inject_fault(1, "bad_crc")
    reply = ask(line, read_request(1, 4, 0, 2), 0.0)
    assert reply is not None and crc16(reply[:-2]) != reply[-2] | reply[-1] << 8
    line.clear_faults(1)
    line.inject_fault(1, "wrong_slave_id", 1)
    reply = ask(line, read_request(1, 4, 0, 2), 2.0)
    assert reply is not None and reply[0] == 2 and crc16(reply[:-2]) == reply[-2] | reply[-1] << 8
    line.inject_fault(1, "slow_reply", 1, delay_ms=250)
    slow = line.receive(read_request(1, 4, 0, 2), 4.0)[0]
    assert slow.send_at == pytest.approx(4.0 + wire_time_s(8, 9600) + 0.25)


@pytest.mark.parametrize(("args", "message"), [
    ((5, "no_reply"), "no meter with slave id 5"),
    ((1, "explode"), "fault 'explode': must be one of"),
    ((1, "no_reply", 0), "count 0: must be >= 1"),
])
def test_bad_fault_injection_changes_nothing(args: tuple[object, ...], message: str) -> None:
    line = sdm630_line()
    with pytest.raises(ValueError, match=message):
        line.inject_fault(*args)  # type: ignore[arg-type]
    assert line.meters[1].faults == {}


def test_tcp_answers_like_a_gateway() -> None:
    line = sdm630_line()
    pdu = read_request(1, 4, 0, 2)[1:-2]
    answer = line.answer_pdu(1, pdu, 0.0)
    assert answer is not None and answer.pdu[:2] == b"\x04\x04"
    missing = line.answer_pdu(7, pdu, 0.0)
    assert missing is not None and missing.pdu == b"\x84\x0b"
    line.inject_fault(1, "no_reply", 1)
    assert line.answer_pdu(1, pdu, 0.0) is None


def test_build_line_names_the_meter_with_a_bad_model() -> None:
    with pytest.raises(ValueError, match=r"meter 2 \(slave id 2\): unknown meter model 'sdm999'"):
        build_line([MeterSpec(1, "sdm630"), MeterSpec(2, "sdm999")], 9600, 0.0)
    with pytest.raises(ValueError, match="slave id 1: already used"):
        build_line([MeterSpec(1, "sdm630"), MeterSpec(1, "em24")], 9600, 0.0)


# -- properties ---------------------------------------------------------------------------------------------------

def three_meter_line(power_W: float) -> SlaveLine:
    line = SlaveLine(9600)
    for slave_id, name in enumerate(sorted(MODELS), start=1):
        line.add_meter(slave_id, MODELS[name], 54321.0, ConstantLoad(power_W), 0.0)
    return line


def frames_and_noise() -> st.SearchStrategy[bytes]:
    """Random bytes, well-formed requests of any function code, and requests with one byte flipped."""
    request = st.builds(request_frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=12))
    reads = st.builds(request_frame, st.integers(0, 10), st.sampled_from([3, 4]), st.binary(min_size=4, max_size=4))

    def flip(frame: bytes, position: int) -> bytes:
        index = position % len(frame)
        return frame[:index] + bytes([frame[index] ^ 0x10]) + frame[index + 1:]

    return st.one_of(st.binary(max_size=40), request, reads, st.builds(flip, reads, st.integers(0, 7)))


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.tuples(frames_and_noise(), st.floats(0, 0.01)), max_size=12))
def test_any_bytes_never_crash_the_line(chunks: list[tuple[bytes, float]]) -> None:
    line = three_meter_line(1000.0)
    line.inject_fault(2, "wrong_slave_id")
    now = 0.0
    for data, pause in chunks:
        now += pause
        for reply in line.receive(data, now) + line.idle(now + pause):
            assert reply.send_at >= now
            assert reply.slave_id in line.meters
            assert reply.frame[0] == (3 if reply.slave_id == 2 else reply.slave_id)
            assert crc16(reply.frame[:-2]) == reply.frame[-2] | reply.frame[-1] << 8
    line.idle(now + 1.0)
    assert line.deadline() is None


@settings(max_examples=200, deadline=None)
@given(data=st.data(), power_W=st.floats(-30000, 30000, allow_nan=False), elapsed=st.floats(0, 36000))
def test_every_read_of_a_mapped_register_returns_the_encoded_reading(
        data: st.DataObject, power_W: float, elapsed: float) -> None:
    line = three_meter_line(power_W)
    slave_id = data.draw(st.sampled_from(sorted(line.meters)))
    meter = line.meters[slave_id]
    register = data.draw(st.sampled_from(meter.model.registers))
    span = mapped_span(meter.model, register.function_code)
    assert span is not None
    start = data.draw(st.integers(max(span[0], register.address + register.count - 125), register.address))
    end = data.draw(st.integers(register.address + register.count, min(span[1], start + 125)))
    reply = ask(line, read_request(slave_id, register.function_code, start, end - start), elapsed)
    assert reply is not None and reply[1] == register.function_code, reply
    words = words_of(reply)
    offset = register.address - start
    exponent = None
    if register.exponent_address is not None:
        exponent = words[register.exponent_address - start]
    value = decode(register, words[offset:offset + register.count], exponent)
    expected = meter.readings.values()[register.quantity].get(register.phase, 0.0)
    assert value is not None
    unsigned = register.encoding.startswith("uint") or register.encoding == "iskra_t5"
    resolution = abs(register.scale) + abs(expected) * 1e-6
    assert value == pytest.approx(abs(expected) if unsigned else expected, abs=resolution)
