"""The module's config turned into line and meter settings: model defaults fill what the config leaves out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargepoint.modbus.model import MeterModel, builtin_model_names, load_model

from .poller import PollSettings

SERIAL = "serial"
TCP = "tcp"


class SettingsError(ValueError):
    """The config cannot work; the message says which key and why."""


@dataclass(frozen=True)
class LineSettings:
    """Everything the meters sharing one line must agree on."""

    kind: str  # "serial" (Modbus RTU) or "tcp"
    port: str | None = None  # serial device
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    host: str | None = None
    tcp_port: int = 502
    timeout_s: float = 0.5
    inter_request_delay_ms: float = 0.0

    @property
    def name(self) -> str:
        """``/dev/ttyUSB0`` or ``192.0.2.7:502``: how logs and errors name the line."""
        return self.port if self.kind == SERIAL else f"{self.host}:{self.tcp_port}"  # type: ignore[return-value]

    def same_line(self, other: LineSettings) -> bool:
        """Both name one serial device (also through a symlink such as /dev/serial/by-id/...) or one TCP server."""
        if self.kind != other.kind:
            return False
        if self.kind == TCP:
            return (self.host, self.tcp_port) == (other.host, other.tcp_port)
        assert self.port is not None and other.port is not None
        return (os.path.abspath(self.port) == os.path.abspath(other.port)
                or os.path.realpath(self.port) == os.path.realpath(other.port))

    def describe(self) -> str:
        if self.kind == TCP:
            return f"Modbus TCP {self.name}"
        return f"{self.name} {self.baudrate} 8{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class MeterSettings:
    model: MeterModel
    meter_id: str
    slave_id: int
    line: LineSettings
    poll: PollSettings
    explicit: frozenset[str]  # line keys set in the config, not taken from the model's defaults


LINE_FIELDS = ("baudrate", "parity", "stopbits", "timeout_s", "inter_request_delay_ms")


def resolve_model(name_or_path: str, config_dir: Path) -> MeterModel:
    """A built-in model by name, else a model YAML file (relative paths from ``config_dir``)."""
    if name_or_path in builtin_model_names():
        return load_model(name_or_path)
    path = Path(name_or_path)
    if ("/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))) and not path.is_absolute():
        return load_model(config_dir / path)
    return load_model(name_or_path)


def meter_settings(config: dict[str, Any], module_id: str, config_dir: Path) -> MeterSettings:
    """Check ``config`` (defaults already filled in by the manifest) and merge in the model's defaults."""
    port, host = config.get("port"), config.get("host")
    if (port is None) == (host is None):
        raise SettingsError("give either port (Modbus RTU on a serial line) or host (Modbus TCP), "
                            f"not {'both' if port else 'neither'}")
    model = resolve_model(config["model"], config_dir)
    serial = model.serial
    explicit = frozenset(key for key in LINE_FIELDS if config.get(key) is not None)
    if port is not None:
        if not Path(port).is_absolute():
            port = str(config_dir / port)
        line = LineSettings(SERIAL, port=port,
                            baudrate=_pick(config, "baudrate", serial.baudrate),
                            parity=_pick(config, "parity", serial.parity),
                            stopbits=_pick(config, "stopbits", serial.stopbits),
                            timeout_s=float(config["timeout_s"]),
                            inter_request_delay_ms=float(config["inter_request_delay_ms"]))
    else:
        for key in ("baudrate", "parity", "stopbits"):
            if config.get(key) is not None:
                raise SettingsError(f"{key}: only for a serial line (port), not for Modbus TCP (host)")
        line = LineSettings(TCP, host=host, tcp_port=int(config["tcp_port"]), timeout_s=float(config["timeout_s"]),
                            inter_request_delay_ms=float(config["inter_request_delay_ms"]))
    try:
        poll = PollSettings(float(config["poll_interval_s"]), float(config["stale_after_s"]), int(config["retries"]),
                            float(config["fault_poll_interval_s"]))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    slave_id = config.get("slave_id")
    return MeterSettings(model=model, meter_id=config.get("meter_id") or module_id,
                         slave_id=int(slave_id if slave_id is not None else serial.slave_id),
                         line=line, poll=poll, explicit=explicit)


def _pick(config: dict[str, Any], key: str, model_default: Any) -> Any:
    value = config.get(key)
    return model_default if value is None else value


def line_conflict(mine: MeterSettings, owner: str, theirs: LineSettings) -> str | None:
    """Why ``mine`` cannot share the line already opened by module ``owner`` with ``theirs``, or None."""
    differences = []
    for key in LINE_FIELDS:
        a, b = getattr(mine.line, key), getattr(theirs, key)
        if a != b:
            source = "" if key in mine.explicit else " (model default)"
            differences.append(f"{key} {a!r}{source} but {owner} uses {b!r}")
    if not differences:
        return None
    return (f"{mine.line.name} is shared with {owner}: " + "; ".join(differences)
            + ". Meters on one line must use the same line settings: set them in the config of every meter "
              "on this line")
