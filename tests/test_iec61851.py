"""Control pilot duty cycle arithmetic per IEC 61851-1 Annex A."""

from hypothesis import given
from hypothesis import strategies as st

from chargepoint.iec61851 import current_for_duty_cycle, duty_cycle_for_current


def test_known_points() -> None:
    assert duty_cycle_for_current(6) == 10.0
    assert duty_cycle_for_current(16) == 26.66
    assert duty_cycle_for_current(32) == 53.33
    assert duty_cycle_for_current(52) == 85.0
    assert duty_cycle_for_current(80) == 96.0
    assert duty_cycle_for_current(5.9) == 0.0
    assert current_for_duty_cycle(5.0) == 0.0
    assert current_for_duty_cycle(9.0) == 6.0
    assert current_for_duty_cycle(50.0) == 30.0
    assert current_for_duty_cycle(90.0) == 65.0
    assert current_for_duty_cycle(100.0) == 0.0


@given(st.floats(min_value=6.0, max_value=80.0))
def test_round_trip_never_offers_more_than_asked(current: float) -> None:
    offered = current_for_duty_cycle(duty_cycle_for_current(current))
    assert offered <= current + 0.01
    assert current - offered <= 1.6  # 51-52.5 A cannot be expressed: 51 A is offered
