"""The polling logic of one Modbus meter, sans I/O: time and read outcomes go in, actions come out.

A poll cycle reads the batched requests of the meter's model one after the other. A failed read (no reply,
CRC error, exception reply, reply from the wrong slave, port gone) is repeated up to ``retries`` times; when
the last try fails too the cycle ends and ``communication_fault`` is raised. A finished cycle clears it.
While it is raised the meter is polled every ``fault_poll_interval_s`` (when that is longer than
``poll_interval_s``) with one try per read: a dead meter costs its line a timeout now and then, not
``retries + 1`` timeouts every poll, so the other meters on the line keep their intervals. The
decoded reading is checked before it is published: quantities the meter marks "not available" (NaN, all-FF)
and non-finite or out-of-range numbers are left out, and a reading whose import energy is unavailable or
whose energy registers went backwards is rejected as a whole. ``stale_data`` is raised when nothing was
published for ``stale_after_s`` and cleared by the next published reading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chargepoint.modbus.model import MeterModel
from chargepoint.modbus.plan import ReadRequest, plan_reads, reading_from_replies
from chargepoint.timestamps import to_rfc3339

COMMUNICATION_FAULT = "communication_fault"
STALE_DATA = "stale_data"
ENERGY_QUANTITIES = ("energy_Wh_import", "energy_Wh_export")
NON_NEGATIVE_QUANTITIES = frozenset({"energy_Wh_import", "energy_Wh_export", "voltage_V", "frequency_Hz"})


@dataclass(frozen=True)
class PollSettings:
    poll_interval_s: float = 1.0
    stale_after_s: float = 10.0
    retries: int = 2
    fault_poll_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.poll_interval_s > 0 or not self.stale_after_s > 0 or not self.fault_poll_interval_s > 0:
            raise ValueError("poll_interval_s, stale_after_s and fault_poll_interval_s must be > 0")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")


@dataclass(frozen=True)
class ReadFailure:
    """Why one read attempt failed; ``kind`` is timeout, crc, wrong_slave, exception, bad_reply or port."""

    kind: str
    message: str


# -- actions -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    """Send this request now; answer with ``read_done`` or ``read_failed``."""

    request: ReadRequest
    attempt: int  # 1 for the first try


@dataclass(frozen=True)
class Publish:
    reading: dict[str, Any]


@dataclass(frozen=True)
class RaiseError:
    error_type: str
    message: str


@dataclass(frozen=True)
class ClearError:
    error_type: str


@dataclass(frozen=True)
class Note:
    """A log line: ``level`` is a logger method name, ``event`` the message."""

    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = Read | Publish | RaiseError | ClearError | Note


def describe(request: ReadRequest) -> str:
    """``FC4 0x0000+80``: the request as a log or error message names it."""
    return f"FC{request.function_code} 0x{request.address:04X}+{request.count}"


class MeterPoller:
    """Poll cycles, retries, plausibility and the two errors of one meter.

    ``now`` is a monotonic clock in seconds. Call ``tick`` when ``deadline`` is reached (and whenever
    convenient); while a ``Read`` is outstanding, answer it before anything else.
    """

    def __init__(self, model: MeterModel, meter_id: str, settings: PollSettings, now: float) -> None:
        self.model = model
        self.meter_id = meter_id
        self.settings = settings
        self.requests: list[ReadRequest] = plan_reads(model)
        if not self.requests:
            raise ValueError(f"model {model.name!r} has no registers to read")
        self.next_poll_at = now
        self.last_published_at = now  # the staleness clock starts at start-up
        self.last_published: dict[str, Any] | None = None
        self.active_errors: set[str] = set()
        self._index: int | None = None  # request being read, None between cycles
        self._cycle_started_at = now
        self._attempt = 0
        self._replies: dict[ReadRequest, Sequence[int]] = {}
        self._problems: tuple[str, ...] = ()

    @property
    def reading_in_progress(self) -> bool:
        return self._index is not None

    @property
    def deadline(self) -> float:
        """When ``tick`` has something to do next (a poll is due or the data goes stale)."""
        candidates = [] if self.reading_in_progress else [self.next_poll_at]
        if STALE_DATA not in self.active_errors:
            candidates.append(self.last_published_at + self.settings.stale_after_s)
        return min(candidates, default=self.next_poll_at)

    def tick(self, now: float) -> list[Action]:
        actions = self._check_stale(now)
        if not self.reading_in_progress and now >= self.next_poll_at:
            interval = self.settings.poll_interval_s
            if COMMUNICATION_FAULT in self.active_errors:
                interval = max(interval, self.settings.fault_poll_interval_s)
            self._cycle_started_at = now
            self.next_poll_at = max(self.next_poll_at + interval, now)
            self._index, self._attempt, self._replies = 0, 1, {}
            actions.append(Read(self.requests[0], 1))
        return actions

    def read_done(self, now: float, read_at: datetime, words: Sequence[int]) -> list[Action]:
        """The outstanding read answered with ``words`` (``read_at``: wall-clock time of the reply)."""
        request = self._outstanding()
        if len(words) != request.count or any(not 0 <= word <= 0xFFFF for word in words):
            return self.read_failed(now, ReadFailure("bad_reply", f"{len(words)} registers instead of {request.count}"))
        self._replies[request] = tuple(words)
        assert self._index is not None
        if self._index + 1 < len(self.requests):
            self._index, self._attempt = self._index + 1, 1
            return [*self._check_stale(now), Read(self.requests[self._index], 1)]
        replies, self._index = self._replies, None
        actions: list[Action] = []
        if COMMUNICATION_FAULT in self.active_errors:
            self.active_errors.discard(COMMUNICATION_FAULT)
            self.next_poll_at = min(self.next_poll_at, self._cycle_started_at + self.settings.poll_interval_s)
            actions += [ClearError(COMMUNICATION_FAULT), Note("info", "meter answers again", {})]
        actions += self._finish_cycle(now, read_at, replies)
        return actions + self._check_stale(now)

    def read_failed(self, now: float, failure: ReadFailure) -> list[Action]:
        request = self._outstanding()
        fields = {"request": describe(request), "attempt": self._attempt, "kind": failure.kind,
                  "error": failure.message}
        if self._attempt <= self.settings.retries and COMMUNICATION_FAULT not in self.active_errors:
            self._attempt += 1
            return [Note("debug", "read failed, retrying", fields), *self._check_stale(now),
                    Read(request, self._attempt)]
        self._index = None
        already_failing = COMMUNICATION_FAULT in self.active_errors  # then one log line per outage is enough
        actions: list[Action] = [Note("debug" if already_failing else "warning", "read failed", fields)]
        if not already_failing:
            self.active_errors.add(COMMUNICATION_FAULT)
            tries = self.settings.retries + 1
            actions.append(RaiseError(COMMUNICATION_FAULT, f"{describe(request)}: {failure.message} "
                                                           f"({tries} {'try' if tries == 1 else 'tries'})"))
        return actions + self._check_stale(now)

    # -- inside --------------------------------------------------------------------------------------------

    def _outstanding(self) -> ReadRequest:
        if self._index is None:
            raise RuntimeError("no read is outstanding")
        return self.requests[self._index]

    def _check_stale(self, now: float) -> list[Action]:
        age = now - self.last_published_at
        if STALE_DATA in self.active_errors or age < self.settings.stale_after_s:
            return []
        self.active_errors.add(STALE_DATA)
        return [RaiseError(STALE_DATA, f"no good reading for {age:.1f} s (stale_after_s "
                                       f"{self.settings.stale_after_s:g})")]

    def _finish_cycle(self, now: float, read_at: datetime, replies: dict[ReadRequest, Sequence[int]]) -> list[Action]:
        quantities, problems = reading_from_replies(self.model, replies)
        quantities, dropped = _sanitized(quantities)
        actions: list[Action] = []
        all_problems = tuple(sorted({*problems, *dropped}))
        if all_problems != self._problems:
            self._problems = all_problems
            if all_problems:
                actions.append(Note("warning", "values not available, left out", {"values": ", ".join(all_problems)}))
            else:
                actions.append(Note("info", "all values available again", {}))
        rejection = self._implausible(quantities)
        if rejection is not None:
            return [*actions, Note("warning", "reading rejected", {"reason": rejection})]
        reading: dict[str, Any] = {"timestamp": to_rfc3339(read_at), "meter_id": self.meter_id, **quantities}
        self.last_published, self.last_published_at = reading, now
        actions.append(Publish(reading))
        if STALE_DATA in self.active_errors:
            self.active_errors.discard(STALE_DATA)
            actions.append(ClearError(STALE_DATA))
        return actions

    def _implausible(self, quantities: dict[str, dict[str, float]]) -> str | None:
        if "total" not in quantities.get("energy_Wh_import", {}):
            return "import energy not available"
        previous = self.last_published or {}
        for quantity in ENERGY_QUANTITIES:
            for phase, value in quantities.get(quantity, {}).items():
                before = previous.get(quantity, {}).get(phase)
                if before is not None and value < before:
                    return f"{quantity}.{phase} went backwards from {before:g} to {value:g}"
        return None


def _sanitized(quantities: dict[str, dict[str, float]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Drop non-finite values and negative ones where the interface allows none; name what was dropped."""
    kept: dict[str, dict[str, float]] = {}
    dropped: list[str] = []
    for quantity, phases in quantities.items():
        good = {}
        for phase, value in phases.items():
            if math.isfinite(value) and not (quantity in NON_NEGATIVE_QUANTITIES and value < 0):
                good[phase] = float(value)
            else:
                dropped.append(f"{quantity}.{phase}={value!r}")
        if quantity in ("power_W", "reactive_power_VAR", *ENERGY_QUANTITIES) and "total" not in good:
            dropped += [f"{quantity}.{phase}" for phase in good]  # the interface needs a total with phases
            continue
        if good:
            kept[quantity] = good
    return kept, dropped
