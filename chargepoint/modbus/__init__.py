"""Modbus power meters without I/O: meter models from YAML, register encodings, read planning, RTU frames.

- :mod:`chargepoint.modbus.model`: meter models (``models/*.yaml`` or an integrator's own file).
- :mod:`chargepoint.modbus.codec`: register words <-> values (float32, intN/uintN, Iskra T5/T6, exponents).
- :mod:`chargepoint.modbus.plan`: batched read requests and turning their replies into a powermeter reading.
- :mod:`chargepoint.modbus.rtu`: Modbus RTU frames (CRC-16, FC03/FC04, exceptions) and wire-time arithmetic.
"""
