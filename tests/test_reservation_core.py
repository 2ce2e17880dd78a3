"""The reservation rules: OCPP ReservationStatus, EVSE 0, matching by token or parent, expiry, markers."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.registry import ModuleRegistry, load_module_class

load_module_class(ModuleRegistry().find("reservation"))  # type: ignore[arg-type]
core = importlib.import_module("chargepoint_ext.reservation.core")
Reservation, EvseStatus = core.Reservation, core.EvseStatus

NOW = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def reservation(reservation_id: int, evse_id: int, id_token: str = "AAA", parent_id: str | None = None,
                expiry: datetime = LATER) -> Any:
    return Reservation(reservation_id, evse_id, id_token, parent_id, expiry)


def evses(*states: str, **overrides: Any) -> dict[int, Any]:
    result = {}
    for index, charger_state in enumerate(states, start=1):
        fields: dict[str, Any] = {"charger_state": charger_state}
        if charger_state in ("waiting_for_authorization", "charging", "finishing"):
            fields["plugged"] = True
        if charger_state == "charging":
            fields.update(authorized=True, transaction_active=True)
        if charger_state == "unavailable":
            fields["enabled"] = False
        fields.update(overrides.get(f"evse_{index}", {}))
        result[index] = EvseStatus(index, **fields)
    return result


def test_reserve_specific_evse_statuses() -> None:
    station = evses("idle", "charging", "faulted", "unavailable", "waiting_for_authorization")
    assert core.reserve_status(reservation(1, 1), [], station, NOW) == "Accepted"
    assert core.reserve_status(reservation(1, 2), [], station, NOW) == "Occupied"
    assert core.reserve_status(reservation(1, 3), [], station, NOW) == "Faulted"
    assert core.reserve_status(reservation(1, 4), [], station, NOW) == "Unavailable"
    assert core.reserve_status(reservation(1, 5), [], station, NOW) == "Occupied"
    assert core.reserve_status(reservation(1, 9), [], station, NOW) == "Rejected"
    assert core.reserve_status(reservation(1, 1, expiry=NOW), [], station, NOW) == "Rejected"


def test_an_evse_holds_one_reservation_but_the_same_id_replaces_itself() -> None:
    station = evses("idle", "idle", evse_1={"charger_state": "reserved", "reservation_id": 7})
    placed = [reservation(7, 1)]
    assert core.reserve_status(reservation(8, 1, "BBB"), placed, station, NOW) == "Occupied"
    assert core.reserve_status(reservation(7, 1, "BBB"), placed, station, NOW) == "Accepted"
    assert core.reserve_status(reservation(7, 2, "BBB"), placed, station, NOW) == "Accepted"


def test_evse_zero_needs_a_free_evse_per_reservation() -> None:
    station = evses("idle", "idle", "charging")
    assert core.reserve_status(reservation(1, 0), [], station, NOW) == "Accepted"
    assert core.reserve_status(reservation(2, 0), [reservation(1, 0)], station, NOW) == "Accepted"
    two = [reservation(1, 0), reservation(2, 0)]
    assert core.reserve_status(reservation(3, 0), two, station, NOW) == "Occupied"
    assert core.reserve_status(reservation(3, 1), [reservation(1, 0)], station, NOW) == "Accepted"
    assert core.reserve_status(reservation(3, 1), two, station, NOW) == "Occupied"
    assert core.reserve_status(reservation(1, 0), [], station, NOW, allow_any_evse=False) == "Rejected"
    assert core.reserve_status(reservation(1, 0), [], evses("faulted", "faulted"), NOW) == "Faulted"
    assert core.reserve_status(reservation(1, 0), [], evses("faulted", "unavailable"), NOW) == "Unavailable"


def test_check_by_token_and_parent() -> None:
    placed = [reservation(5, 1, "AAA", "FLEET")]
    station = evses("reserved", "idle", evse_1={"reservation_id": 5}).values()
    assert core.check(1, "AAA", None, placed, station) == ("reserved_for_token", 5)
    assert core.check(1, "BBB", "FLEET", placed, station) == ("reserved_for_token", 5)
    assert core.check(1, "CCC", "OTHER", placed, station) == ("reserved_for_other_token", 5)
    assert core.check(1, "CCC", None, placed, station) == ("reserved_for_other_token", 5)
    assert core.check(2, "CCC", None, placed, station) == ("not_reserved", None)
    no_parent = [reservation(6, 2, "AAA", None)]
    assert core.check(2, "CCC", None, no_parent, station) == ("reserved_for_other_token", 6)


def test_check_keeps_the_last_free_evse_for_an_evse_zero_reservation() -> None:
    placed = [reservation(9, 0, "AAA")]
    both_free = evses("idle", "idle").values()
    assert core.check(1, "CCC", None, placed, both_free) == ("not_reserved", None)
    one_free = evses("charging", "idle").values()
    assert core.check(2, "CCC", None, placed, one_free) == ("reserved_for_other_token", 9)
    assert core.check(2, "AAA", None, placed, one_free) == ("reserved_for_token", 9)
    assert core.check(1, "CCC", None, placed, evses("waiting_for_authorization", "idle").values())[0] == "not_reserved"


def test_markers_appear_only_when_free_evses_run_short() -> None:
    placed = [reservation(9, 0)]
    assert core.global_markers(evses("idle", "idle").values(), placed) == {}
    assert core.global_markers(evses("charging", "idle").values(), placed) == {2: 9}
    marked = evses("charging", "reserved", evse_2={"reservation_id": 9, "plugged": True})
    assert core.global_markers(marked.values(), placed) == {2: 9}
    assert core.global_markers(evses("charging", "idle").values(), []) == {}


def test_expiry_is_exact() -> None:
    placed = [reservation(1, 1, expiry=LATER), reservation(2, 1, expiry=LATER + timedelta(seconds=1))]
    assert core.due(placed, LATER - timedelta(microseconds=1)) == []
    assert [r.reservation_id for r in core.due(placed, LATER)] == [1]
    assert core.next_expiry(placed) == LATER
    assert core.next_expiry([]) is None


@given(st.lists(st.integers(-10_000, 10_000), max_size=8), st.integers(-10_000, 10_000))
def test_a_reservation_is_due_from_its_expiry_on(offsets_ms: list[int], now_ms: int) -> None:
    placed = [reservation(i, 1, expiry=NOW + timedelta(milliseconds=ms)) for i, ms in enumerate(offsets_ms)]
    now = NOW + timedelta(milliseconds=now_ms)
    assert [r.reservation_id for r in core.due(placed, now)] == [i for i, ms in enumerate(offsets_ms) if ms <= now_ms]
    if placed:
        assert core.next_expiry(placed) == NOW + timedelta(milliseconds=min(offsets_ms))


def test_used_by_reservation_id_or_token() -> None:
    placed = [reservation(3, 0, "AAA", "FLEET"), reservation(4, 2, "BBB")]
    started = {"type": "transaction_started", "evse_id": 2, "id_token": "ZZZ", "reservation_id": 3}
    assert core.used_by(started, placed).reservation_id == 3
    assert core.used_by({**started, "reservation_id": None, "id_token": "BBB"}, placed).reservation_id == 4
    assert core.used_by({**started, "reservation_id": None, "parent_id": "FLEET"}, placed).reservation_id == 3
    assert core.used_by({**started, "evse_id": 1, "reservation_id": 4}, placed) is None
    assert core.used_by({**started, "type": "authorized"}, placed) is None


def test_from_dict_rejects_bad_timestamps_with_the_field_name() -> None:
    data = {"reservation_id": 1, "evse_id": 1, "id_token": "AAA", "expiry_time": "tomorrow"}
    with pytest.raises(ValueError, match="expiry_time 'tomorrow'"):
        Reservation.from_dict(data)
    good = Reservation.from_dict({**data, "expiry_time": "2025-03-14T10:00:00Z"})
    assert good.to_dict()["expiry_time"] == "2025-03-14T10:00:00.000Z"


# -- properties -----------------------------------------------------------------------------

station_states = st.lists(st.sampled_from(["idle", "idle", "charging", "waiting_for_authorization", "faulted",
                                           "unavailable"]), min_size=1, max_size=5)
requests = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.sampled_from(["AAA", "BBB", "CCC"])),
                    max_size=12)


@settings(max_examples=300)
@given(station_states, requests, st.sampled_from(["AAA", "BBB", "CCC", "DDD"]))
def test_evse_zero_reservations_never_exceed_free_evses(states: list[str], given_requests: list[Any],
                                                        stranger: str) -> None:
    station = evses(*states)
    placed: dict[int, Any] = {}
    for reservation_id, evse_id, id_token in given_requests:
        request = reservation(reservation_id, evse_id, id_token)
        if core.reserve_status(request, placed.values(), station, NOW) == "Accepted":
            placed[reservation_id] = request
        any_evse = core.any_evse_reservations(placed.values())
        assert len(any_evse) <= len(core.free_evses(station.values(), placed.values()))
        specific = [r.evse_id for r in placed.values() if not r.any_evse]
        assert len(specific) == len(set(specific)), "one reservation per EVSE"
    # a token without a reservation may take an EVSE only if the EVSE-0 reservations keep enough free ones
    any_evse = core.any_evse_reservations(placed.values())
    for evse_id in station:
        status, _ = core.check(evse_id, stranger, None, placed.values(), station.values())
        if any(r.matches(stranger, None) for r in placed.values()):
            continue
        if status == "not_reserved" and evse_id in core.free_evses(station.values(), placed.values()):
            taken = {**station, evse_id: EvseStatus(evse_id, "charging", plugged=True, authorized=True,
                                                    transaction_active=True)}
            assert len(core.free_evses(taken.values(), placed.values())) >= len(any_evse)


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["AAA", "BBB"]), st.sampled_from([None, "G1", "G2"])),
                max_size=6), st.integers(1, 3), st.sampled_from(["AAA", "BBB", "CCC"]),
       st.sampled_from([None, "G1", "G2"]))
def test_reserved_for_token_only_when_the_reservation_matches(entries: list[Any], evse_id: int, id_token: str,
                                                               parent_id: str | None) -> None:
    placed = {i: reservation(i, e, t, p) for i, (e, t, p) in enumerate(entries)}
    status, reservation_id = core.check(evse_id, id_token, parent_id, placed.values(),
                                        evses("idle", "idle", "idle").values())
    if status == "reserved_for_token":
        assert placed[reservation_id].matches(id_token, parent_id)
        assert placed[reservation_id].evse_id in (0, evse_id)
    own = [r for r in placed.values() if r.evse_id == evse_id]
    if own:
        assert reservation_id in {r.reservation_id for r in own}
        assert (status == "reserved_for_token") == own[0].matches(id_token, parent_id)
