"""Batched reads of a meter model, and the powermeter reading made from their replies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from chargepoint.modbus.codec import decode
from chargepoint.modbus.model import MeterModel, Register

#: quantities the powermeter interface requires a "total" for; computed from the phases when no register has it
SUMMED = ("energy_Wh_import", "energy_Wh_export", "power_W", "reactive_power_VAR")
#: quantities the powermeter interface requires to be >= 0
NON_NEGATIVE = ("energy_Wh_import", "energy_Wh_export", "voltage_V", "frequency_Hz")

Reading = dict[str, dict[str, float]]


@dataclass(frozen=True)
class ReadRequest:
    """One FC03/FC04 read: ``count`` registers from ``address``; ``registers`` are the values whose words it holds."""

    function_code: int
    address: int
    count: int
    registers: tuple[Register, ...]

    @property
    def end(self) -> int:
        """First address after the request."""
        return self.address + self.count


def plan_reads(model: MeterModel) -> list[ReadRequest]:
    """As few requests as ``max_registers_per_read`` and ``max_gap`` allow, covering values and exponents.

    Per function code, spans sorted by address are merged while the request stays within
    ``max_registers_per_read`` and the unused hole between two spans is at most ``max_gap``; a register is
    never split over two requests.
    """
    spans: dict[tuple[int, int, int], list[Register]] = {}
    for register in model.registers:
        spans.setdefault((register.function_code, register.address, register.count), []).append(register)
        if register.exponent_address is not None:
            spans.setdefault((register.function_code, register.exponent_address, 1), [])
    requests: list[ReadRequest] = []
    current: tuple[int, int, int, list[Register]] | None = None  # fc, start, end, registers
    for (function_code, address, count), registers in sorted(spans.items(), key=lambda item: item[0]):
        end = address + count
        if current is not None:
            fc, start, current_end, held = current
            if (fc == function_code and address - current_end <= model.max_gap
                    and max(end, current_end) - start <= model.max_registers_per_read):
                current = (fc, start, max(end, current_end), held + registers)
                continue
            requests.append(ReadRequest(fc, start, current_end - start, tuple(held)))
        current = (function_code, address, end, list(registers))
    if current is not None:
        fc, start, end, held = current
        requests.append(ReadRequest(fc, start, end - start, tuple(held)))
    return requests


def reading_from_replies(model: MeterModel, replies: Mapping[ReadRequest, Sequence[int]]) -> tuple[Reading, list[str]]:
    """The reading (``{"voltage_V": {"L1": 230.1}, ...}``) and the problems met making it.

    ``replies`` maps each request that was answered to its words; a request left out (no reply) or answered with
    the wrong number of words leaves its registers missing. Problems name registers that were missing, "not
    available" or negative where the interface forbids it. Energies and powers get a ``total`` summed from the
    phases when the model has no total register; such a quantity is left out when its total cannot be had (the
    interface requires it), as is any quantity with nothing readable.
    """
    words: dict[tuple[int, int], int] = {}
    problems: list[str] = []
    for request, reply in replies.items():
        if len(reply) != request.count:
            problems.append(f"request fc {request.function_code} at {request.address}: expected {request.count} "
                            f"registers, got {len(reply)}")
            continue
        for offset, word in enumerate(reply):
            words[(request.function_code, request.address + offset)] = word
    reading: Reading = {}
    for register in model.registers:
        value = _value(register, words, problems)
        if value is not None:
            reading.setdefault(register.quantity, {})[register.phase] = value
    for quantity in SUMMED:
        phases = reading.get(quantity)
        if phases is None or "total" in phases:
            continue
        modelled = [r.phase for r in model.registers if r.quantity == quantity]
        if "total" not in modelled and all(phase in phases for phase in modelled):
            phases["total"] = float(sum(Decimal(repr(value)) for value in phases.values()))
        else:
            problems.append(f"{quantity}: no total, left out")
            del reading[quantity]
    return reading, problems


def _value(register: Register, words: Mapping[tuple[int, int], int], problems: list[str]) -> float | None:
    where = f"{register.key} (fc {register.function_code}, address {register.address})"
    addresses = range(register.address, register.address + register.count)
    if any((register.function_code, address) not in words for address in addresses):
        problems.append(f"{where}: no reply")
        return None
    exponent = None
    if register.exponent_address is not None:
        exponent = words.get((register.function_code, register.exponent_address))
        if exponent is None:
            problems.append(f"{where}: no reply for its exponent register {register.exponent_address}")
            return None
    value = decode(register, [words[(register.function_code, address)] for address in addresses], exponent)
    if value is None:
        problems.append(f"{where}: not available")
    elif value < 0 and register.quantity in NON_NEGATIVE:
        problems.append(f"{where}: negative value {value} rejected")
        return None
    return value
