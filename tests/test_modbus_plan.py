"""Read planning: few requests, every register read whole and exactly once; readings made from the replies."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from chargepoint.modbus.codec import encode
from chargepoint.modbus.model import ALLOWED_PHASES, MeterModel, Register, SerialDefaults, load_model
from chargepoint.modbus.plan import ReadRequest, plan_reads, reading_from_replies

SLOTS = [(quantity, phase) for quantity, phases in ALLOWED_PHASES.items() for phase in phases]
ENCODINGS = ("float32", "int16", "uint16", "int32", "uint32", "int64", "uint64", "iskra_t5")


@st.composite
def models(draw: st.DrawFn) -> MeterModel:
    """Random models: non-overlapping registers on FC03/FC04, some with exponent registers."""
    slots = draw(st.lists(st.sampled_from(SLOTS), min_size=1, max_size=len(SLOTS), unique=True))
    max_read = draw(st.integers(4, 125))
    registers = []
    next_free = {3: draw(st.integers(0, 100)), 4: draw(st.integers(0, 100))}
    for quantity, phase in slots:
        function_code = draw(st.sampled_from((3, 4)))
        encoding = draw(st.sampled_from(ENCODINGS))
        address = next_free[function_code] + draw(st.integers(0, 30))
        count = {"int16": 1, "uint16": 1, "int64": 4, "uint64": 4}.get(encoding, 2)
        next_free[function_code] = address + count
        exponent_address = None
        if encoding in ("uint32", "int32") and draw(st.booleans()):
            exponent_address = next_free[function_code] + draw(st.integers(0, 3))
            next_free[function_code] = exponent_address + 1
        registers.append(Register(quantity, phase, function_code, address, encoding, draw(st.sampled_from(
            ("big", "little"))), 1.0, exponent_address))
    return MeterModel(name="random", title="random", registers=tuple(registers), serial=SerialDefaults(),
                      max_registers_per_read=max_read, max_gap=draw(st.integers(0, 20)))


def holding(request: ReadRequest, function_code: int, address: int, count: int) -> bool:
    return request.function_code == function_code and request.address <= address and \
        address + count <= request.end


@given(models())
def test_plan_reads_every_register_whole_exactly_once_in_few_requests(model: MeterModel) -> None:
    requests = plan_reads(model)
    for register in model.registers:
        containing = [r for r in requests if holding(r, register.function_code, register.address, register.count)]
        listing = [r for r in requests if register in r.registers]
        assert len(containing) == 1 and listing == containing
        if register.exponent_address is not None:
            assert any(holding(r, register.function_code, register.exponent_address, 1) for r in requests)
    for request in requests:
        assert 1 <= request.count <= model.max_registers_per_read
        assert request.address >= 0 and request.end <= 65536
    ordered = sorted(requests, key=lambda r: (r.function_code, r.address))
    for first, second in itertools.pairwise(ordered):
        if first.function_code == second.function_code:
            assert first.end <= second.address  # no register read twice
            # as few as allowed: the two could not have been one request
            assert second.address - first.end > model.max_gap or \
                second.end - first.address > model.max_registers_per_read
    assert sum(len(r.registers) for r in requests) == len(model.registers)


@given(models(), st.data())
def test_reading_from_replies_gives_back_the_meter_values(model: MeterModel, data: st.DataObject) -> None:
    image: dict[tuple[int, int], int] = {}
    expected: dict[str, dict[str, float]] = {}
    for register in model.registers:
        value = float(data.draw(st.integers(0, 30000)))
        words, exponent = encode(register, value)
        for offset, word in enumerate(words):
            image[(register.function_code, register.address + offset)] = word
        if exponent is not None:
            assert register.exponent_address is not None
            image[(register.function_code, register.exponent_address)] = exponent
        expected.setdefault(register.quantity, {})[register.phase] = value
    replies = {r: [image.get((r.function_code, r.address + i), 0) for i in range(r.count)] for r in plan_reads(model)}
    reading, problems = reading_from_replies(model, replies)
    for quantity, phases in expected.items():
        if quantity in ("energy_Wh_import", "energy_Wh_export", "power_W", "reactive_power_VAR") \
                and "total" not in phases:
            phases["total"] = sum(phases.values())
    assert reading == expected
    assert problems == []


def model_from(tmp_path: Path, quantities: str, extra: str = "") -> MeterModel:
    path = tmp_path / "meter.yaml"
    path.write_text(f"{extra}defaults: {{encoding: uint16, scale: 0.1}}\nquantities:\n{quantities}")
    return load_model(path)


def replies_for(model: MeterModel, words: dict[int, int]) -> dict[ReadRequest, list[int]]:
    return {r: [words.get(r.address + i, 0) for i in range(r.count)] for r in plan_reads(model)}


def test_total_is_the_sum_of_phases_when_the_meter_has_no_total(tmp_path: Path) -> None:
    model = model_from(tmp_path, "  power_W: {L1: {address: 0}, L2: {address: 1}, L3: {address: 2}}\n"
                                 "  energy_Wh_import: {L1: {address: 3}, L2: {address: 4}, L3: {address: 5}}\n")
    reading, problems = reading_from_replies(model, replies_for(model, {0: 11, 1: 22, 2: 1, 3: 1, 4: 2, 5: 0}))
    assert reading["power_W"] == {"L1": 1.1, "L2": 2.2, "L3": 0.1, "total": 3.4}  # decimal sum, not 3.4000000000000004
    assert reading["energy_Wh_import"]["total"] == 0.3
    assert problems == []


def test_missing_replies_leave_their_registers_out(tmp_path: Path) -> None:
    model = model_from(tmp_path, "  voltage_V: {L1: {address: 0}}\n  energy_Wh_import: {L1: {address: 100}, "
                                 "L2: {address: 101}}\n  power_W: {total: {address: 200}}\n")
    requests = plan_reads(model)
    assert [(r.address, r.count) for r in requests] == [(0, 1), (100, 2), (200, 1)]
    replies = {requests[0]: [2301], requests[1]: [5], requests[2]: [17]}  # second reply one word short
    reading, problems = reading_from_replies(model, replies)
    assert reading == {"voltage_V": {"L1": 230.1}, "power_W": {"total": 1.7}}
    assert problems == ["request fc 4 at 100: expected 2 registers, got 1",
                        "energy_Wh_import.L1 (fc 4, address 100): no reply",
                        "energy_Wh_import.L2 (fc 4, address 101): no reply"]
    reading, problems = reading_from_replies(model, {requests[0]: [2301]})
    assert reading == {"voltage_V": {"L1": 230.1}}
    assert "power_W.total (fc 4, address 200): no reply" in problems


def test_energy_without_a_total_is_left_out_when_a_phase_is_unreadable(tmp_path: Path) -> None:
    model = model_from(tmp_path, "  energy_Wh_import: {L1: {address: 0}, L2: {address: 1}}\n")
    reading, problems = reading_from_replies(model, replies_for(model, {0: 10, 1: 0xFFFF}))
    assert reading == {}
    assert problems == ["energy_Wh_import.L2 (fc 4, address 1): not available", "energy_Wh_import: no total, left out"]


def test_negative_energy_voltage_and_frequency_are_rejected(tmp_path: Path) -> None:
    model = model_from(tmp_path, "  energy_Wh_import: {total: {address: 0, encoding: int16}}\n"
                                 "  power_W: {total: {address: 1, encoding: int16}}\n")
    reading, problems = reading_from_replies(model, replies_for(model, {0: 0xFFF6, 1: 0xFFF6}))
    assert reading == {"power_W": {"total": -1.0}}  # negative power is import/export, allowed
    assert problems == ["energy_Wh_import.total (fc 4, address 0): negative value -1.0 rejected"]


def test_exponent_register_in_another_request(tmp_path: Path) -> None:
    model = model_from(tmp_path, "  energy_Wh_import: {total: {address: 418, encoding: uint32, scale: 1, "
                                 "exponent_address: 300}}\n", extra="max_gap: 0\n")
    assert [(r.address, r.count) for r in plan_reads(model)] == [(300, 1), (418, 2)]
    reading, problems = reading_from_replies(model, replies_for(model, {300: 0xFFFF, 418: 0, 419: 12345}))
    assert reading == {"energy_Wh_import": {"total": 1234.5}}
    requests = plan_reads(model)
    reading, problems = reading_from_replies(model, {requests[1]: [0, 12345]})
    assert reading == {} and problems == [
        "energy_Wh_import.total (fc 4, address 418): no reply for its exponent register 300"]


def test_shipped_models_batch_into_few_requests() -> None:
    assert [(r.function_code, r.address, r.count) for r in plan_reads(load_model("sdm630"))] == [(4, 0, 76)]
    assert [(r.function_code, r.address, r.count) for r in plan_reads(load_model("abb-b23"))] == [
        (3, 0x5000, 8), (3, 0x5B00, 45)]
    eem = plan_reads(load_model("eem-350"))
    assert all(r.count <= 11 for r in eem) and len(eem) == 4
