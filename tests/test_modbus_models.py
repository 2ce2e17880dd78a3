"""Meter models: every shipped model decodes a register image built by hand from the manufacturer's map,
and bad model files are refused with file, line, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargepoint.modbus.model import MODELS_DIR, QUANTITIES, ModelError, builtin_model_names, load_model
from chargepoint.modbus.plan import plan_reads, reading_from_replies

SHIPPED = ["abb-b23", "eem-350", "em24", "em340", "sdm120", "sdm630", "sdm72dm-v2"]

# float32 words, high word first, written out by hand
F230_0 = [0x4366, 0x0000]
F231_5 = [0x4367, 0x8000]
F10_0 = [0x4120, 0x0000]
F16_0 = [0x4180, 0x0000]
F2300_0 = [0x450F, 0xC000]
F50_0 = [0x4248, 0x0000]
F49_9 = [0x4247, 0x999A]
F1234_5 = [0x449A, 0x5000]
F12_5 = [0x4148, 0x0000]
F_MINUS_100 = [0xC2C8, 0x0000]
F0_75 = [0x3F40, 0x0000]

# register images: function code -> {address: words}, and the reading expected from them
IMAGES: dict[str, tuple[dict[int, dict[int, list[int]]], dict[str, dict[str, float]]]] = {
    "sdm120": (
        {4: {0x00: F230_0, 0x06: F10_0, 0x0C: F2300_0, 0x18: F_MINUS_100, 0x46: F49_9, 0x48: F1234_5, 0x4A: F0_75}},
        {"voltage_V": {"L1": 230.0}, "current_A": {"L1": 10.0}, "power_W": {"total": 2300.0},
         "reactive_power_VAR": {"total": -100.0}, "frequency_Hz": {"L1": 49.9},
         "energy_Wh_import": {"total": 1234500.0}, "energy_Wh_export": {"total": 750.0}},
    ),
    "sdm630": (
        {4: {0x00: F230_0, 0x02: F231_5, 0x04: F230_0, 0x06: F10_0, 0x08: F16_0, 0x0A: F10_0,
             0x0C: F2300_0, 0x0E: F2300_0, 0x10: F2300_0, 0x18: F_MINUS_100, 0x3C: F_MINUS_100,
             0x34: [0x45D7, 0xA000], 0x46: F50_0, 0x48: F1234_5, 0x4A: F12_5}},
        {"voltage_V": {"L1": 230.0, "L2": 231.5, "L3": 230.0}, "current_A": {"L1": 10.0, "L2": 16.0, "L3": 10.0},
         "power_W": {"L1": 2300.0, "L2": 2300.0, "L3": 2300.0, "total": 6900.0},
         "reactive_power_VAR": {"L1": -100.0, "L2": 0.0, "L3": 0.0, "total": -100.0},
         "frequency_Hz": {"L1": 50.0}, "energy_Wh_import": {"total": 1234500.0},
         "energy_Wh_export": {"total": 12500.0}},
    ),
    "sdm72dm-v2": (
        {4: {0x00: F230_0, 0x02: F231_5, 0x06: F16_0, 0x0C: F2300_0, 0x34: F2300_0, 0x46: F49_9, 0x48: F1234_5,
             0x4A: F12_5}},
        {"voltage_V": {"L1": 230.0, "L2": 231.5, "L3": 0.0}, "current_A": {"L1": 16.0, "L2": 0.0, "L3": 0.0},
         "power_W": {"L1": 2300.0, "L2": 0.0, "L3": 0.0, "total": 2300.0}, "frequency_Hz": {"L1": 49.9},
         "energy_Wh_import": {"total": 1234500.0}, "energy_Wh_export": {"total": 12500.0}},
    ),
    "abb-b23": (  # holding registers, integers high word first
        {3: {0x5000: [0, 0, 0x0001, 0xE240],  # 123456 x 0.01 kWh
             0x5004: [0, 0, 0, 0x0064],  # 100 x 0.01 kWh
             0x5B00: [0, 0x08FD], 0x5B02: [0, 0x0906], 0x5B04: [0xFFFF, 0xFFFF],  # 230.1 V, 231.0 V, n/a
             0x5B0C: [0, 0x04D2], 0x5B0E: [0, 0x0640], 0x5B10: [0, 0],  # 12.34 A, 16.00 A
             0x5B14: [0xFFFD, 0xB610], 0x5B16: [0xFFFD, 0xB610],  # -1500.00 W
             0x5B1C: [0, 0x2710], 0x5B1E: [0x7FFF, 0xFFFF],  # 100.00 var, n/a
             0x5B2C: [0x1388]}},  # 50.00 Hz
        {"energy_Wh_import": {"total": 1234560.0}, "energy_Wh_export": {"total": 1000.0},
         "voltage_V": {"L1": 230.1, "L2": 231.0}, "current_A": {"L1": 12.34, "L2": 16.0, "L3": 0.0},
         "power_W": {"total": -1500.0, "L1": -1500.0, "L2": 0.0, "L3": 0.0},
         "reactive_power_VAR": {"total": 100.0, "L2": 0.0, "L3": 0.0}, "frequency_Hz": {"L1": 50.0}},
    ),
    "em24": (  # int32 low word first
        {4: {0x00: [0x08FD, 0], 0x02: [0x0906, 0], 0x04: [0x08F2, 0],  # 230.1, 231.0, 229.0 V
             0x0C: [0x3E80, 0], 0x0E: [0x3E80, 0], 0x10: [0x3E80, 0],  # 16000 mA
             0x12: [0x8FC0, 0], 0x14: [0x8FC0, 0], 0x16: [0x8FC0, 0], 0x28: [0xAF40, 0x0001],  # 3680.0, 11040.0 W
             0x1E: [0xFFE7, 0xFFFF], 0x2C: [0xFFE7, 0xFFFF],  # -2.5 var
             0x42: [0xE240, 0x0001], 0x5C: [0x000A, 0]}},  # 12345.6 kWh, 1.0 kWh
        {"voltage_V": {"L1": 230.1, "L2": 231.0, "L3": 229.0}, "current_A": {"L1": 16.0, "L2": 16.0, "L3": 16.0},
         "power_W": {"L1": 3680.0, "L2": 3680.0, "L3": 3680.0, "total": 11040.0},
         "reactive_power_VAR": {"L1": -2.5, "L2": 0.0, "L3": 0.0, "total": -2.5},
         "energy_Wh_import": {"total": 12345600.0}, "energy_Wh_export": {"total": 1000.0}},
    ),
    "em340": (
        {4: {0x00: [0x08FD, 0], 0x0C: [0x3E80, 0], 0x12: [0x8FC0, 0], 0x28: [0x8FC0, 0], 0x2C: [0x0019, 0],
             0x34: [0xE240, 0x0001], 0x4E: [0x0005, 0]}},
        {"voltage_V": {"L1": 230.1, "L2": 0.0, "L3": 0.0}, "current_A": {"L1": 16.0, "L2": 0.0, "L3": 0.0},
         "power_W": {"L1": 3680.0, "L2": 0.0, "L3": 0.0, "total": 3680.0}, "reactive_power_VAR": {"total": 2.5},
         "energy_Wh_import": {"total": 12345600.0}, "energy_Wh_export": {"total": 500.0}},
    ),
    "eem-350": (
        {4: {0x00: [0x08FD, 0], 0x02: [0x08FD, 0], 0x04: [0x08FD, 0], 0x0C: [0x1F40, 0], 0x0E: [0x1F40, 0],
             0x10: [0x1F40, 0], 0x28: [0x6BD0, 0], 0x3E: [0x0457, 0]}},  # 230.1 V, 8.0 A, 2760.0 W, 111.1 kWh
        {"voltage_V": {"L1": 230.1, "L2": 230.1, "L3": 230.1}, "current_A": {"L1": 8.0, "L2": 8.0, "L3": 8.0},
         "power_W": {"total": 2760.0}, "energy_Wh_import": {"total": 111100.0}},
    ),
}


def read_image(name: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """What a poll of a meter holding the image gives: unset registers read as 0."""
    model = load_model(name)
    image = IMAGES[name][0]
    words: dict[tuple[int, int], int] = {}
    for function_code, registers in image.items():
        for address, values in registers.items():
            for offset, word in enumerate(values):
                words[(function_code, address + offset)] = word
    replies = {request: [words.get((request.function_code, request.address + offset), 0)
                         for offset in range(request.count)] for request in plan_reads(model)}
    return reading_from_replies(model, replies)


def test_every_shipped_model_is_listed_and_tested() -> None:
    assert builtin_model_names() == SHIPPED
    assert sorted(IMAGES) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_decodes_a_hand_built_register_image(name: str) -> None:
    reading, problems = read_image(name)
    assert reading == IMAGES[name][1]
    model = load_model(name)
    assert {register.quantity for register in model.registers} <= set(QUANTITIES)
    if name != "abb-b23":
        assert problems == []


def test_abb_not_available_markers_are_left_out_and_reported() -> None:
    reading, problems = read_image("abb-b23")
    assert "L3" not in reading["voltage_V"] and "L1" not in reading["reactive_power_VAR"]
    assert problems == ["voltage_V.L3 (fc 3, address 23300): not available",
                        "reactive_power_VAR.L1 (fc 3, address 23326): not available"]


def test_shipped_serial_defaults_follow_the_reference() -> None:
    assert load_model("sdm120").serial.baudrate == 2400
    sdm630 = load_model("sdm630")
    assert (sdm630.serial.baudrate, sdm630.serial.parity, sdm630.serial.stopbits, sdm630.serial.slave_id) == (
        9600, "N", 1, 1)
    assert load_model("eem-350").max_registers_per_read == 11
    assert load_model("sdm630").title == "Eastron SDM630 v1/v2"


def test_model_by_path_and_template_example(tmp_path: Path) -> None:
    template = tmp_path / "acme.yaml"
    template.write_text((MODELS_DIR / "TEMPLATE.yaml.example").read_text())
    model = load_model(template)
    assert model.name == "acme" and model.title == "ACME EM-3000 three-phase meter"
    exported = model.register("energy_Wh_export", "total")
    assert exported is not None and exported.exponent_address == 0x104
    assert load_model(str(MODELS_DIR / "sdm630.yaml")) == load_model("sdm630")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meter.yaml"
    path.write_text(text)
    return path


BAD_MODELS = [
    ("quantities:\n  voltage_V: {L4: {address: 0}}\n",
     r"meter.yaml:2: quantities.voltage_V.L4: unknown phase 'L4' for voltage_V; allowed: L1, L2, L3"),
    ("quantities:\n  voltage: {L1: {address: 0}}\n",
     r"meter.yaml:2: quantities.voltage: unknown quantity 'voltage' \(did you mean 'voltage_V'\?\)"),
    ("quantities:\n  voltage_V:\n    L1: {address: 0, encoding: float64}\n",
     r"meter.yaml:3: quantities.voltage_V.L1.encoding: 'float64' is not one of float32, .*"
     r"\(did you mean 'float32'\?\)"),
    ("defaults: {function_code: 6}\nquantities:\n  voltage_V: {L1: {address: 0}}\n",
     r"meter.yaml:1: defaults.function_code: 6 is not one of 3, 4"),
    ("quantities:\n  voltage_V:\n    L1: {address: 0}\n    L2: {address: 1}\n",
     r"meter.yaml:4: quantities.voltage_V.L2.address: register 1 overlaps voltage_V.L1 \(function code 4, "
     r"address 0, 2 registers\)"),
    ("quantities:\n  voltage_V:\n    L1: {address: 70000}\n",
     r"meter.yaml:3: quantities.voltage_V.L1.address: 70000 is out of range 0..65535"),
    ("quantities:\n  voltage_V:\n    L1: {address: 65535}\n",
     r"quantities.voltage_V.L1.address: float32 at 65535 would run past register 65535"),
    ("max_registers_per_read: 4\nquantities:\n  energy_Wh_import: {total: {address: 0, encoding: uint64}}\n"
     "  voltage_V: {L1: {address: 0x10}}\nmax_gap: -1\n",
     r"meter.yaml:5: max_gap: -1 is out of range 0..125"),
    ("max_registers_per_read: 200\nquantities:\n  voltage_V: {L1: {address: 0}}\n",
     r"meter.yaml:1: max_registers_per_read: 200 is out of range 4..125"),
    ("quantities:\n  voltage_V: {L1: {address: 0}\n", r"meter.yaml:3: invalid YAML"),
    ("quantities:\n  voltage_V: {L1: {address: 0, scael: 2}}\n",
     r"meter.yaml:2: quantities.voltage_V.L1.scael: unknown key 'scael' \(did you mean 'scale'\?\)"),
    ("quantities:\n  power_W: {total: {address: 0, unit: kWh}}\n",
     r"quantities.power_W.total.unit: 'kWh' is not one of W, kW"),
    ("quantities:\n  voltage_V: {L1: {address: 0, scale: 0}}\n",
     r"quantities.voltage_V.L1.scale: must be a non-zero number, not 0"),
    ("serial: {parity: X, slave_id: 0}\nquantities:\n  voltage_V: {L1: {address: 0}}\n",
     r"serial.parity: 'X' is not one of N, E, O"),
    ("quantities:\n  energy_Wh_import: {total: {address: 0, encoding: uint32, exponent_address: 1}}\n",
     r"quantities.energy_Wh_import.total.exponent_address: register 1 holds the value of energy_Wh_import.total"),
    ("quantities:\n  energy_Wh_import: {total: {address: 0, exponent_address: 4}}\n",
     r"exponent_address: not allowed with encoding float32"),
    ("title: x\n", r"meter.yaml: quantities: missing"),
    ("- 1\n- 2\n", r"a meter model must be a mapping"),
    ("quantities:\n  voltage_V: {L1: {address: 0}}\n  voltage_V: {L2: {address: 2}}\n", r"duplicate key 'voltage_V'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_MODELS)
def test_bad_model_files_name_file_line_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ModelError, match=message) as caught:
        load_model(path)
    assert all(str(path) in problem for problem in caught.value.problems)


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "quantities:\n  voltage_V: {L4: {address: 0}}\n  current_A: {L1: {address: -1}}\n")
    with pytest.raises(ModelError) as caught:
        load_model(path)
    assert len(caught.value.problems) == 2
    assert "quantities.current_A.L1.address: -1 is out of range" in caught.value.problems[1]


def test_unknown_builtin_name_and_missing_file() -> None:
    with pytest.raises(ModelError, match=r"unknown meter model 'sdm63' \(did you mean 'sdm630'\?\); built-in models"):
        load_model("sdm63")
    with pytest.raises(ModelError, match=r"nowhere\.yaml: no such file"):
        load_model("/nonexistent/nowhere.yaml")
