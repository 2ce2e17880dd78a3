"""Reservation rules as pure functions: reservations, EVSE states and the time in; statuses and changes out.

An EVSE-0 reservation ("any EVSE") claims no particular EVSE; instead the station always keeps at
least as many EVSEs free as there are EVSE-0 reservations. When exactly that many are left, those
EVSEs carry a reservation marker (``global_markers``) so that nobody else starts on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chargepoint.timestamps import parse_rfc3339, to_rfc3339

RESERVATION_STATUSES = ("Accepted", "Faulted", "Occupied", "Rejected", "Unavailable")
# charger states in which a session runs or an EV is connected
OCCUPIED_STATES = frozenset({"waiting_for_authorization", "preparing", "charging", "suspended_ev",
                             "suspended_evse", "finishing"})


@dataclass(frozen=True)
class Reservation:
    reservation_id: int
    evse_id: int
    id_token: str
    parent_id: str | None
    expiry_time: datetime

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reservation:
        """From reserve_now arguments or a stored row; raises ValueError naming the bad field."""
        try:
            expiry = parse_rfc3339(str(data["expiry_time"]))
        except ValueError as exc:
            raise ValueError(f"expiry_time {data['expiry_time']!r} is not an RFC 3339 timestamp") from exc
        return cls(int(data["reservation_id"]), int(data["evse_id"]), str(data["id_token"]),
                   data.get("parent_id"), expiry)

    def to_dict(self) -> dict[str, Any]:
        return {"reservation_id": self.reservation_id, "evse_id": self.evse_id, "id_token": self.id_token,
                "parent_id": self.parent_id, "expiry_time": to_rfc3339(self.expiry_time)}

    def matches(self, id_token: str | None, parent_id: str | None) -> bool:
        """The token itself, or a token of the same parent (group)."""
        return (id_token is not None and id_token == self.id_token) or (
            parent_id is not None and parent_id == self.parent_id)

    @property
    def any_evse(self) -> bool:
        return self.evse_id == 0


@dataclass(frozen=True)
class EvseStatus:
    evse_id: int
    charger_state: str = "idle"
    enabled: bool = True
    plugged: bool = False
    authorized: bool = False
    transaction_active: bool = False
    reservation_id: int | None = None

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EvseStatus:
        return cls(state["evse_id"], state["charger_state"], bool(state["enabled"]), bool(state["plugged"]),
                   bool(state["authorized"]), bool(state["transaction_active"]), state.get("reservation_id"))

    @property
    def faulted(self) -> bool:
        return self.charger_state == "faulted"

    @property
    def unavailable(self) -> bool:
        return not self.enabled or self.charger_state == "unavailable"

    @property
    def occupied(self) -> bool:
        return (self.plugged or self.authorized or self.transaction_active
                or self.charger_state in OCCUPIED_STATES)


def any_evse_reservations(reservations: Iterable[Reservation]) -> list[Reservation]:
    return sorted((r for r in reservations if r.any_evse), key=lambda r: r.reservation_id)


def free_evses(evses: Iterable[EvseStatus], reservations: Iterable[Reservation]) -> list[int]:
    """EVSEs that can serve an EVSE-0 reservation: available, no session, no EVSE-specific reservation.

    An EVSE that carries the marker of an EVSE-0 reservation still counts, plugged or not: the marker
    exists precisely to keep it for that reservation.
    """
    reservations = list(reservations)
    specific = {r.evse_id for r in reservations if not r.any_evse}
    any_ids = {r.reservation_id for r in reservations if r.any_evse}
    free = []
    for evse in evses:
        if evse.evse_id in specific or evse.faulted or evse.unavailable:
            continue
        if evse.authorized or evse.transaction_active:
            continue
        if evse.reservation_id in any_ids or (
                evse.reservation_id is None and evse.charger_state == "idle" and not evse.plugged):
            free.append(evse.evse_id)
    return sorted(free)


def reserve_status(request: Reservation, reservations: Iterable[Reservation], evses: Mapping[int, EvseStatus],
                   now: datetime, allow_any_evse: bool = True) -> str:
    """OCPP ReservationStatus for ``request``; ``reservations`` are the others in force (a reservation
    with the same id is being replaced and must not be among them)."""
    others = [r for r in reservations if r.reservation_id != request.reservation_id]
    if request.expiry_time <= now:
        return "Rejected"
    any_evse = any_evse_reservations(others)
    free = free_evses(evses.values(), others)
    if request.any_evse:
        if not allow_any_evse or not evses:
            return "Rejected"
        if len(free) > len(any_evse):
            return "Accepted"
        if all(e.faulted for e in evses.values()):
            return "Faulted"
        if all(e.faulted or e.unavailable for e in evses.values()):
            return "Unavailable"
        return "Occupied"
    evse = evses.get(request.evse_id)
    if evse is None:
        return "Rejected"
    if evse.faulted:
        return "Faulted"
    if evse.unavailable:
        return "Unavailable"
    any_ids = {r.reservation_id for r in any_evse}
    foreign_marker = evse.reservation_id not in (None, request.reservation_id, *any_ids)
    if evse.occupied or foreign_marker or any(r.evse_id == request.evse_id for r in others):
        return "Occupied"
    if request.evse_id in free and len(free) - 1 < len(any_evse):
        return "Occupied"
    return "Accepted"


def check(evse_id: int, id_token: str, parent_id: str | None, reservations: Iterable[Reservation],
          evses: Iterable[EvseStatus]) -> tuple[str, int | None]:
    """(status, reservation_id) as the reservation interface's check_reservation answers."""
    reservations = list(reservations)
    for reservation in reservations:
        if reservation.evse_id == evse_id:
            status = "reserved_for_token" if reservation.matches(id_token, parent_id) else "reserved_for_other_token"
            return status, reservation.reservation_id
    any_evse = any_evse_reservations(reservations)
    for reservation in any_evse:
        if reservation.matches(id_token, parent_id):
            return "reserved_for_token", reservation.reservation_id
    if any_evse:
        free = free_evses(evses, reservations)
        if evse_id in free and len(free) - 1 < len(any_evse):
            return "reserved_for_other_token", any_evse[0].reservation_id
    return "not_reserved", None


def global_markers(evses: Iterable[EvseStatus], reservations: Iterable[Reservation]) -> dict[int, int]:
    """EVSE id -> EVSE-0 reservation id for the EVSEs that must be marked reserved now.

    Only when the free EVSEs are no more than the EVSE-0 reservations: then every free EVSE is kept.
    """
    reservations = list(reservations)
    any_evse = any_evse_reservations(reservations)
    free = free_evses(evses, reservations)
    if not any_evse or len(free) > len(any_evse):
        return {}
    return {evse_id: reservation.reservation_id for evse_id, reservation in zip(free, any_evse, strict=False)}


def due(reservations: Iterable[Reservation], now: datetime) -> list[Reservation]:
    """The reservations expired at ``now`` (a reservation ends exactly at its expiry time)."""
    return sorted((r for r in reservations if r.expiry_time <= now), key=lambda r: r.reservation_id)


def next_expiry(reservations: Iterable[Reservation]) -> datetime | None:
    return min((r.expiry_time for r in reservations), default=None)


def used_by(event: Mapping[str, Any], reservations: Sequence[Reservation]) -> Reservation | None:
    """The reservation a ``transaction_started`` session event uses: by its reservation_id, else by token."""
    if event.get("type") != "transaction_started":
        return None
    evse_id = event["evse_id"]
    eligible = [r for r in reservations if r.evse_id in (0, evse_id)]
    for reservation in eligible:
        if event.get("reservation_id") == reservation.reservation_id:
            return reservation
    eligible.sort(key=lambda r: (r.any_evse, r.reservation_id))
    for reservation in eligible:
        if reservation.matches(event.get("id_token"), event.get("parent_id")):
            return reservation
    return None
