"""Pure model of a charge controller board, the EV plugged into it and its meter.

No clock, no I/O: every event takes ``now`` (monotonic seconds) and first integrates the energy
drawn since the previous event; the shell reads :meth:`BoardModel.board_view`, :meth:`ev_view` and
:meth:`meter_view` afterwards and publishes what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chargepoint.iec61851 import MIN_CURRENT_A, current_for_duty_cycle

FAULT_KINDS = ("diode_fault", "ventilation_required", "rcd", "overcurrent", "cp_short", "lock_fault", "relay_welded")
EV_FAULTS = frozenset({"diode_fault", "ventilation_required"})
"""Faults of the car itself: they need an EV plugged in and leave with it."""
PROTECTIVE_ERRORS = frozenset({"diode_fault", "ventilation_required", "rcd", "overcurrent", "cp_short"})
"""Board errors on which the board opens the relay by itself (unless it is welded)."""
CABLE_AMPACITIES = (13, 20, 32, 63, 70)
PHASE_NAMES = ("L1", "L2", "L3")
FREQUENCY_HZ = 50.0


@dataclass(frozen=True)
class BoardSettings:
    """The module configuration the model needs (see manifest.yaml)."""

    phases: int = 3
    nominal_voltage_V: float = 230.0
    max_current_A: float = 32.0
    pp_ampacity_A: int | None = 32
    has_lock: bool = True
    supports_ventilation: bool = False
    time_scale: float = 1.0
    ev_max_current_A: float = 32.0
    ev_phases: int = 3


@dataclass
class Ev:
    max_current_A: float
    phases: int
    cable_ampacity_A: int | None
    energy_to_full_Wh: float | None = None
    wants_ventilation: bool = False
    paused: bool = False
    energy_Wh: float = 0.0

    @property
    def full(self) -> bool:
        return self.energy_to_full_Wh is not None and self.energy_Wh >= self.energy_to_full_Wh


@dataclass(frozen=True)
class BoardView:
    cp_state: str
    relay_closed: bool
    relay_phases: int
    lock_state: str
    pp_ampacity_A: int | None
    errors: dict[str, str]


@dataclass(frozen=True)
class EvView:
    plugged: bool
    cp_state: str
    requesting_power: bool
    paused: bool
    max_current_A: float
    phases: int
    current_A: float
    energy_Wh: float
    faults: tuple[str, ...]


@dataclass(frozen=True)
class MeterView:
    voltage_V: tuple[float, ...]
    current_A: tuple[float, ...]
    power_W: tuple[float, ...]
    energy_Wh: tuple[float, ...]


@dataclass
class BoardModel:
    settings: BoardSettings
    last_time: float
    enabled: bool = True
    duty_percent: float | None = None
    relay_commanded: bool = False
    relay_closed: bool = False
    relay_phases: int = 0
    locked: bool = False
    ev: Ev | None = None
    faults: dict[str, str] = field(default_factory=dict)
    energy_Wh: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    # -- derived state ------------------------------------------------------------------
    @property
    def offered_current_A(self) -> float:
        return 0.0 if self.duty_percent is None else current_for_duty_cycle(self.duty_percent)

    @property
    def ev_requesting(self) -> bool:
        """S2 closed: the EV is ready, not paused or full, and sees a PWM it can charge with."""
        ev = self.ev
        return ev is not None and not ev.paused and not ev.full and self.offered_current_A > 0

    @property
    def cp_state(self) -> str:
        if "cp_short" in self.faults:
            return "E"
        if not self.enabled:
            return "F"
        if self.ev is None:
            return "A"
        if "diode_fault" in self.faults:
            return "F"
        if self.ev_requesting:
            return "D" if self.ev.wants_ventilation or "ventilation_required" in self.faults else "C"
        return "B"

    def board_errors(self) -> dict[str, str]:
        """Active board errors (type -> message): injected faults, and ventilation asked for but missing."""
        errors = {kind: message for kind, message in self.faults.items() if kind != "ventilation_required"}
        if self.cp_state == "D" and not self.settings.supports_ventilation:
            errors["ventilation_required"] = "EV requests ventilation (CP state D); this station has none"
        return errors

    def phase_currents(self) -> tuple[float, float, float]:
        """Current per phase the EV draws: only through a closed relay, in CP state C or D."""
        ev = self.ev
        if ev is None or not self.relay_closed or self.cp_state not in ("C", "D"):
            return (0.0, 0.0, 0.0)
        amps = min(self.offered_current_A, ev.max_current_A)
        active = min(self.relay_phases, ev.phases, self.settings.phases)
        return tuple(amps if index < active else 0.0 for index in range(3))  # type: ignore[return-value]

    def board_view(self) -> BoardView:
        cable = None if self.ev is None or self.settings.pp_ampacity_A is None else self.ev.cable_ampacity_A
        return BoardView(self.cp_state, self.relay_closed, self.relay_phases,
                         "locked" if self.locked else "unlocked", cable, self.board_errors())

    def ev_view(self) -> EvView:
        ev = self.ev
        if ev is None:
            return EvView(False, self.cp_state, False, False, self.settings.ev_max_current_A,
                          self.settings.ev_phases, 0.0, 0.0, tuple(sorted(self.faults)))
        return EvView(True, self.cp_state, self.ev_requesting, ev.paused or ev.full, ev.max_current_A, ev.phases,
                      max(self.phase_currents()), ev.energy_Wh, tuple(sorted(self.faults)))

    def meter_view(self) -> MeterView:
        count = self.settings.phases
        volts = self.settings.nominal_voltage_V
        currents = self.phase_currents()[:count]
        return MeterView((volts,) * count, currents, tuple(volts * amps for amps in currents),
                         tuple(self.energy_Wh[:count]))

    def next_change_at(self) -> float | None:
        """When the EV becomes full at the present power, so the shell can wake up right then."""
        ev = self.ev
        power = sum(self.meter_view().power_W)
        if ev is None or ev.energy_to_full_Wh is None or power <= 0:
            return None
        remaining_Wh = max(0.0, ev.energy_to_full_Wh - ev.energy_Wh)
        return self.last_time + remaining_Wh * 3600.0 / power / self.settings.time_scale

    # -- time ---------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Integrate the energy drawn since the last event (scaled by time_scale); never goes back."""
        elapsed_s = max(0.0, now - self.last_time) * self.settings.time_scale
        self.last_time = max(self.last_time, now)
        power = self.meter_view().power_W
        added = [watts * elapsed_s / 3600.0 for watts in power]
        total = sum(added)
        if total <= 0:
            return
        ev = self.ev
        assert ev is not None  # power flows only into an EV
        full_at = ev.energy_to_full_Wh
        if full_at is not None and ev.energy_Wh + total >= full_at:
            share = max(0.0, full_at - ev.energy_Wh) / total
            added = [value * share for value in added]
        for index, value in enumerate(added):
            self.energy_Wh[index] += value
        ev.energy_Wh = full_at if full_at is not None and ev.energy_Wh + total >= full_at else ev.energy_Wh + total
        self._enforce_safety()

    def _enforce_safety(self) -> None:
        """The board opens the relay itself without an EV, in E/F and on protective errors.

        A welded relay stays closed whatever happens; once repaired it follows its command again.
        """
        if not self.relay_closed or "relay_welded" in self.faults:
            return
        if self.cp_state in ("A", "E", "F") or PROTECTIVE_ERRORS & self.board_errors().keys():
            self.relay_commanded = False
        if not self.relay_commanded:
            self.relay_closed = False
            self.relay_phases = 0

    # -- board side ---------------------------------------------------------------------
    def enable(self, now: float, enabled: bool) -> None:
        self.advance(now)
        self.enabled = enabled
        if not enabled:
            self.duty_percent = None
        self._enforce_safety()

    def set_pwm(self, now: float, duty_percent: float) -> None:
        if not 0.0 <= duty_percent <= 100.0:
            raise ValueError(f"duty cycle {duty_percent} % outside 0-100 %")
        self.advance(now)
        self.duty_percent = float(duty_percent)
        self._enforce_safety()

    def pwm_off(self, now: float) -> None:
        self.advance(now)
        self.duty_percent = None
        self._enforce_safety()

    def allow_power_on(self, now: float, allowed: bool, phases: int = 3) -> bool:
        """Open at once (unless welded); close only in C/D without an active error. True if it happened."""
        self.advance(now)
        if not allowed:
            self.relay_commanded = False
            self._enforce_safety()
            return not self.relay_closed
        blocking = self.board_errors().keys() - {"lock_fault"}
        if self.cp_state not in ("C", "D") or blocking:
            return False
        self.relay_commanded = True
        self.relay_closed = True
        self.relay_phases = max(1, min(phases, self.settings.phases))
        return True

    def set_lock(self, now: float, locked: bool) -> bool:
        if not self.settings.has_lock:
            raise ValueError("this board has no connector lock (has_lock: false)")
        self.advance(now)
        if "lock_fault" in self.faults:
            return False
        self.locked = locked
        return True

    # -- EV side ------------------------------------------------------------------------
    def plug_in(self, now: float, max_current_A: float | None = None, phases: int | None = None,
                cable_ampacity_A: int | None = None, energy_to_full_Wh: float | None = None,
                ventilation: bool = False) -> bool:
        """Connect an EV; None takes the configured value. False when one is already plugged in."""
        if phases is not None and not 1 <= phases <= 3:
            raise ValueError(f"phases {phases}: must be 1, 2 or 3")
        if max_current_A is not None and not 0 <= max_current_A <= 80:
            raise ValueError(f"max_current_A {max_current_A}: must be 0-80 A")
        if cable_ampacity_A is not None and cable_ampacity_A not in CABLE_AMPACITIES:
            raise ValueError(f"cable_ampacity_A {cable_ampacity_A}: must be one of {CABLE_AMPACITIES}")
        if energy_to_full_Wh is not None and not energy_to_full_Wh > 0:
            raise ValueError(f"energy_to_full_Wh {energy_to_full_Wh}: must be more than 0")
        self.advance(now)
        if self.ev is not None:
            return False
        cable = cable_ampacity_A if cable_ampacity_A is not None else self.settings.pp_ampacity_A
        self.ev = Ev(
            max_current_A=self.settings.ev_max_current_A if max_current_A is None else float(max_current_A),
            phases=self.settings.ev_phases if phases is None else phases,
            cable_ampacity_A=None if self.settings.pp_ampacity_A is None else cable,
            energy_to_full_Wh=energy_to_full_Wh,
            wants_ventilation=ventilation,
        )
        return True

    def unplug(self, now: float) -> bool:
        self.advance(now)
        if self.ev is None:
            return False
        self.ev = None
        for kind in EV_FAULTS:
            self.faults.pop(kind, None)
        self._enforce_safety()
        return True

    def set_paused(self, now: float, paused: bool) -> bool:
        self.advance(now)
        if self.ev is None:
            return False
        self.ev.paused = paused
        self._enforce_safety()
        return True

    def set_ev_max_current(self, now: float, current_A: float) -> None:
        if not 0 <= current_A <= 80:
            raise ValueError(f"current_A {current_A}: must be 0-80 A")
        self.advance(now)
        if self.ev is None:
            raise ValueError("no EV plugged in")
        self.ev.max_current_A = float(current_A)

    # -- faults -------------------------------------------------------------------------
    def inject_fault(self, now: float, kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        if kind in EV_FAULTS and self.ev is None:
            raise ValueError(f"{kind} is a fault of the EV: plug one in first")
        self.advance(now)
        if kind not in self.faults:
            self.faults[kind] = self._fault_message(kind)
        self._enforce_safety()

    def clear_fault(self, now: float, kind: str | None = None) -> None:
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        self.advance(now)
        for each in [kind] if kind is not None else list(self.faults):
            self.faults.pop(each, None)
        self._enforce_safety()

    def _fault_message(self, kind: str) -> str:
        if kind == "overcurrent":
            offered = self.offered_current_A
            drawn = max(offered, MIN_CURRENT_A) * 1.2
            return f"EV drew {drawn:.1f} A with {offered:g} A offered (simulated)"
        return {
            "diode_fault": "CP negative level -3.1 V, expected -12 V (simulated)",
            "ventilation_required": "EV requests ventilation (CP state D); this station has none",
            "rcd": "residual current 30 mA AC (simulated)",
            "cp_short": "control pilot shorted to PE (simulated)",
            "lock_fault": "connector lock does not move (simulated)",
            "relay_welded": "relay contacts welded (simulated)",
        }[kind]
