"""The wiring-file loader and validator, driven by the YAML files in tests/data/wiring/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chargepoint.config import ConfigError, Connection, Problem, load_station_config
from chargepoint.validate import validate_file

WIRING = Path(__file__).parent / "data" / "wiring"
EXAMPLE = Path(__file__).parent / "example"

# file, line, fragment of the message
BROKEN = [
    ("yaml_syntax.yaml", 7, "invalid YAML: expected ',' or '}', but got ':' (while parsing a flow mapping on line 6)"),
    ("duplicate_id.yaml", 7, "duplicate module id 'counter_1' (first defined on line 5)"),
    ("duplicate_id.yaml", 9, "counter_1: config: duplicate key 'start'"),
    ("unknown_top_key.yaml", 7, "unknown top-level key 'setting' (did you mean 'settings'?)"),
    ("bad_settings.yaml", 3, "settings.mqtt: unknown key 'hots' (did you mean 'host'?)"),
    ("bad_settings.yaml", 4, "settings.mqtt.port: 70000 is greater than the maximum of 65535"),
    ("bad_settings.yaml", 5, "settings.mqtt.broker: 'internal' is not one of 'auto', 'external'"),
    ("bad_settings.yaml", 6, "settings.mqtt.prefix: 'cp/#' does not match"),
    ("bad_settings.yaml", 7, "settings: unknown key 'modul_paths' (did you mean 'module_paths'?)"),
    ("bad_settings.yaml", 8, "settings.interface_paths[1]: no such folder '"),
    ("bad_settings.yaml", 9, "settings.log_level: 'info' is not one of 'DEBUG', 'INFO', 'WARNING', 'ERROR' "
                             "(did you mean 'INFO'?)"),
    ("bad_settings.yaml", 10, "settings.validate_payloads: expected true or false, got 'yes'"),
    ("unknown_module.yaml", 6, "counter_1: unknown module 'example_countr' (did you mean 'example_counter'?)"),
    ("config_keys.yaml", 8, "counter_1: config: unknown key 'strat' (did you mean 'start'?)"),
    ("config_keys.yaml", 10, "counter_1: config.labels: unknown key 'unti' (did you mean 'unit'?)"),
    ("config_keys.yaml", 11, "counter_1: config.labels.precision: -1 is less than the minimum of 0"),
    ("config_keys.yaml", 15, "counter_2: config.start: expected an integer, got 'ten'"),
    ("config_keys.yaml", 17, "counter_2: config.labels.unit: expected a string, got 5"),
    ("config_keys.yaml", 20, "counter_3: config: expected a mapping, got a list"),
    ("connections.yaml", 9, "missing: missing required connection 'counter' (interface 'example_counter')"),
    ("connections.yaml", 16, "too_many: connections.counter: at most 1 connection allowed "
                             "(interface 'example_counter'), got 2"),
    ("connections.yaml", 20, "no_target: connections.counter[0]: no module 'countr_1' in active_modules "
                             "(did you mean 'counter_1'?)"),
    ("connections.yaml", 24, "no_impl: connections.counter[0]: module 'counter_1' (example_counter) does not "
                             "provide 'mian' (did you mean 'main'?)"),
    ("connections.yaml", 28, "mismatch: connections.counter[0]: mismatch.main has interface 'example_client', "
                             "but 'counter' requires 'example_counter'"),
    ("connections.yaml", 33, "unknown_req: connections: unknown requirement 'countr' (did you mean 'counter'?)"),
    ("connections.yaml", 38, "bad_syntax: connections.counter[0]: expected '<module_id>.<impl_id>', "
                             "got 'counter_1'"),
    ("connections.yaml", 39, "bad_syntax: connections.counter[1]: unknown key 'impl_id'"),
    ("connections.yaml", 40, "bad_syntax: connections: unknown requirement 'extra' (it requires: counter)"),
    ("connections.yaml", 40, "bad_syntax: connections.extra: expected a list"),
    ("instance_keys.yaml", 8, "both: both 'config' and 'config_module' given; use one"),
    ("instance_keys.yaml", 9, "invalid module id 'evse 1': use only letters, digits, '_' and '-'"),
    ("instance_keys.yaml", 11, "module id 'ready' is reserved"),
    ("instance_keys.yaml", 15, "options: standalone: expected true or false, got 'no'"),
    ("instance_keys.yaml", 16, "options: unknown key 'telemetry'"),
    ("instance_keys.yaml", 17, "nameless: missing 'module' (the module name)"),
    ("instance_keys.yaml", 19, "just_a_name: expected a mapping with at least 'module', got 'example_counter'"),
    ("manifests.yaml", 6, "bad_iface: module 'bad_interface': provides.main: unknown interface "
                          "'exmaple_counter' (did you mean 'example_counter'?)"),
    ("manifests.yaml", 8, "broken: module 'broken_manifest': "),
    ("manifests.yaml", 8, "requires.counter: missing 'interface'"),
    ("manifests.yaml", 9, "fan: config: missing required key 'port'"),
    ("manifests.yaml", 12, "fan: missing required connection 'counters' (interface 'example_counter')"),
    ("missing_file.yaml", None, "no such file"),
]

SEVERAL = [
    (4, "settings.mqtt.broker: 'extrenal' is not one of 'auto', 'external' (did you mean 'external'?)"),
    (8, "counter_1: config: unknown key 'limt' (did you mean 'limit'?)"),
    (10, "client_1: unknown module 'example_clent' (did you mean 'example_client'?)"),
    (14, "client_2: connections.counter: at most 1 connection allowed"),
]


@pytest.fixture(scope="module")
def problems() -> dict[str, list[Problem]]:
    files = {row[0] for row in BROKEN} | {"several.yaml"}
    return {name: validate_file(WIRING / name) for name in sorted(files)}


@pytest.mark.parametrize(("name", "line", "fragment"), BROKEN, ids=[f"{r[0]}:{r[1]}" for r in BROKEN])
def test_broken_file(problems: dict[str, list[Problem]], name: str, line: int | None, fragment: str) -> None:
    found = problems[name]
    assert any(p.line == line and fragment in p.message for p in found), "\n".join(map(str, found))


def test_every_problem_is_expected(problems: dict[str, list[Problem]]) -> None:
    """No unexpected extra problems (a single mistake must not cascade)."""
    expected = {(name, line) for name, line, _ in BROKEN}
    extra = [p for name, found in problems.items() if name != "several.yaml"
             for p in found if (name, p.line) not in expected]
    assert extra == []


def test_several_problems_are_all_reported(problems: dict[str, list[Problem]]) -> None:
    found = [(p.line, p.message) for p in problems["several.yaml"]]
    assert len(found) == len(SEVERAL)
    for (line, fragment), (found_line, message) in zip(SEVERAL, found, strict=True):
        assert (found_line, fragment) == (line, message[: len(fragment)])


def test_config_error_lists_every_problem() -> None:
    path = WIRING / "several.yaml"
    with pytest.raises(ConfigError) as info:
        load_station_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == len(SEVERAL) == len(info.value.problems)
    assert lines[0].startswith(f"{path}:4: settings.mqtt.broker: ")


def test_problem_format() -> None:
    assert str(Problem("a.yaml", 3, "bad")) == "a.yaml:3: bad"
    assert str(Problem("a.yaml", None, "bad")) == "a.yaml: bad"


def test_valid_file_loads_with_defaults() -> None:
    station = load_station_config(WIRING / "valid.yaml")
    assert station.path == (WIRING / "valid.yaml").resolve()
    modules = station.modules
    assert list(modules) == ["counter_1", "counter_2", "client_1", "client_2", "fan"]
    defaults = {"fail_init": False, "announce": False}
    assert modules["counter_1"].config == {"start": 5, "limit": 1000, "labels": {"unit": "kWh", "precision": 0},
                                           **defaults}
    assert modules["counter_2"].config == {"start": 0, "limit": 1000, "labels": {"unit": "count", "precision": 0},
                                           **defaults}
    assert modules["fan"].config == {"port": "/dev/ttyUSB0", "options": {"retries": 5, "backoff": {"max_s": 10}}}
    assert modules["client_1"].connections == {"counter": [Connection("counter_1", "main")]}
    assert modules["client_2"].connections == {"counter": [Connection("counter_2", "main")]}
    assert modules["fan"].connections == {"counters": [
        Connection("fan", "main"), Connection("counter_1", "main"), Connection("counter_2", "main")]}
    assert modules["counter_1"].connections == {}
    assert [m.standalone for m in modules.values()] == [False, False, False, True, False]


def test_default_settings_and_relative_paths() -> None:
    settings = load_station_config(WIRING / "valid.yaml").settings
    assert settings.state_dir == (WIRING / "var" / "valid").resolve()
    assert settings.module_paths == [(EXAMPLE / "modules").resolve(), (WIRING / "modules").resolve()]
    assert settings.interface_paths == [(EXAMPLE / "interfaces").resolve()]
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.prefix) == ("127.0.0.1", 1883, "cp")
    assert (settings.mqtt.broker, settings.mqtt.keepalive_s) == ("auto", 30)
    assert (settings.log_level, settings.validate_payloads) == ("INFO", True)


def test_explicit_settings_and_prefix_override() -> None:
    station = load_station_config(WIRING / "valid_settings.yaml")
    settings = station.settings
    assert settings.state_dir == (WIRING / "state").resolve()
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.prefix) == ("broker.local", 8883, "site1/cp")
    assert (settings.mqtt.broker, settings.mqtt.keepalive_s) == ("external", 10)
    assert (settings.log_level, settings.validate_payloads) == ("DEBUG", False)
    overridden = load_station_config(WIRING / "valid_settings.yaml", prefix_override="lab/7")
    assert overridden.settings.mqtt.prefix == "lab/7"
    with pytest.raises(ConfigError, match="prefix override 'a/#'"):
        load_station_config(WIRING / "valid_settings.yaml", prefix_override="a/#")


def test_valid_file_does_not_import_jsonschema() -> None:
    """The fast path (a valid file, on every station start) stays clear of jsonschema's import."""
    code = (
        "import sys; from chargepoint.config import load_station_config; "
        f"load_station_config({str(WIRING / 'valid.yaml')!r}); "
        "assert 'jsonschema' not in sys.modules, 'jsonschema imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
