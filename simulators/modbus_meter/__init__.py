"""Simulated Modbus RTU/TCP power meters: a pure slave core (:mod:`.slave`), the pty/TCP shell (:mod:`.line`),
a command-line runner (``python -m simulators.modbus_meter``) and the ``modbus_meter`` station module."""

from .module import ModbusMeterSimulator

module_class = ModbusMeterSimulator

__all__ = ["ModbusMeterSimulator", "module_class"]
