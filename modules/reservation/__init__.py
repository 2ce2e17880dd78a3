"""reservation: the asyncio shell around the rules in ``core``, the SQLite store and the EVSE markers.

Every change is written to the store before it is acknowledged; changes run one at a time under a
lock because they call the EVSEs (``evse.reserve`` / ``evse.cancel_reservation``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import partial
from typing import Any

from chargepoint import Module
from chargepoint.module import RequiredConnection
from chargepoint.timestamps import utc_now

from . import core
from .core import EvseStatus, Reservation
from .store import ReservationStore, StorageError

MAX_TIMER_WAIT_S = 30.0  # re-check expiries at least this often (the wall clock may be set meanwhile)
# an authorization ended without a transaction: an EVSE that dropped its marker on authorize needs it back
AUTHORIZATION_ENDED = frozenset({"authorization_withdrawn", "plugin_timeout", "session_finished"})


class ReservationModule(Module):
    async def init(self) -> None:
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.is_ready = False
        self.storage_ok = True
        self.evses: dict[int, EvseStatus] = {}
        self.evse_by_id: dict[int, RequiredConnection] = {}
        self.reservations: dict[int, Reservation] = {}
        self.global_marked: dict[int, int] = {}  # EVSE id -> EVSE-0 reservation whose marker we placed there
        self.claimed: dict[int, int] = {}  # EVSE id -> reservation its current authorization uses
        self.store = ReservationStore(self.state_dir / "reservations.db")
        self._load()
        for evse in self.requires["evse_manager"]:
            evse.subscribe("state", partial(self._on_state, evse))
            evse.subscribe("session_event", self._on_session_event)
        main = self.provides["main"]
        main.serve("reserve_now", self.reserve_now)
        main.serve("cancel_reservation", self.cancel_reservation)
        main.serve("check_reservation", self.check_reservation)
        self._publish_list()
        self.spawn(self._expiry_timer(), name=f"{self.id}-expiry")

    async def ready(self) -> None:
        async with self.lock:
            self.is_ready = True
            for evse_id in list(self.evses):
                await self._sync_markers(evse_id)
            await self._reconcile()

    async def shutdown(self) -> None:
        self.store.close()

    def _load(self) -> None:
        try:
            self.store.open()
            loaded, problems = self.store.load()
        except StorageError as exc:
            self._storage_failed(str(exc))
            return
        for problem in problems:
            self.log.warning("stored reservation skipped", problem=problem)
        self.reservations = {r.reservation_id: r for r in loaded}
        for reservation in core.due(loaded, datetime.now(UTC)):
            self.log.info("reservation expired while stopped", reservation_id=reservation.reservation_id)
            self._forget(reservation, "expired")
        self.log.info("reservations loaded", count=len(self.reservations))

    # -- cmds -------------------------------------------------------------------------------
    async def reserve_now(self, reservation_id: int, evse_id: int, id_token: str, parent_id: str | None,
                          expiry_time: str) -> str:
        request = Reservation.from_dict({"reservation_id": reservation_id, "evse_id": evse_id, "id_token": id_token,
                                         "parent_id": parent_id, "expiry_time": expiry_time})
        async with self.lock:
            status = await self._reserve(request)
        self.log.info("reserve_now", reservation_id=reservation_id, evse=evse_id, id_token=id_token, status=status)
        return status

    async def cancel_reservation(self, reservation_id: int) -> str:
        async with self.lock:
            reservation = self.reservations.get(reservation_id)
            if reservation is None:
                self.log.info("cancel_reservation: no such reservation", reservation_id=reservation_id)
                return "Rejected"
            await self._end(reservation, "cancelled")
        return "Accepted"

    def check_reservation(self, evse_id: int, id_token: str, parent_id: str | None) -> dict[str, Any]:
        status, reservation_id = core.check(evse_id, id_token, parent_id, self._holding(), self.evses.values())
        return {"status": status, "reservation_id": reservation_id}

    def _holding(self) -> list[Reservation]:
        """The reservations that keep EVSEs free: an EVSE-0 reservation whose token is already
        authorized somewhere needs no other EVSE meanwhile."""
        claimed = set(self.claimed.values())
        return [r for r in self.reservations.values() if not (r.any_evse and r.reservation_id in claimed)]

    # -- changes (called with the lock held) ------------------------------------------------
    async def _reserve(self, request: Reservation) -> str:
        if not self.storage_ok:
            return "Rejected"
        status = core.reserve_status(request, self.reservations.values(), self.evses, datetime.now(UTC),
                                     self.config["allow_evse_zero"])
        if status != "Accepted":
            return status
        old = self.reservations.get(request.reservation_id)
        marked_now = False
        if not request.any_evse:
            if self.evses[request.evse_id].reservation_id == request.reservation_id:
                self.global_marked.pop(request.evse_id, None)
            else:
                other_marker = self.global_marked.pop(request.evse_id, None)
                if other_marker is not None:
                    await self._evse_call(request.evse_id, "cancel_reservation", reservation_id=other_marker)
                result = await self._evse_call(request.evse_id, "reserve", reservation_id=request.reservation_id)
                if result != "Accepted":
                    return str(result) if result in core.RESERVATION_STATUSES else "Rejected"
                marked_now = True
        try:
            self.store.put(request)
        except StorageError as exc:
            self._storage_failed(str(exc))
            if marked_now:
                await self._evse_call(request.evse_id, "cancel_reservation", reservation_id=request.reservation_id)
            return "Rejected"
        self.reservations[request.reservation_id] = request
        if old is not None and not old.any_evse and old.evse_id != request.evse_id:
            await self._evse_call(old.evse_id, "cancel_reservation", reservation_id=old.reservation_id)
        self._publish_update(request, "placed")
        self._publish_list()
        self.wake.set()
        await self._reconcile()
        return "Accepted"

    async def _end(self, reservation: Reservation, event: str, used_on_evse_id: int | None = None,
                   session_id: str | None = None) -> None:
        self._forget(reservation, event, used_on_evse_id, session_id)
        if not reservation.any_evse:
            await self._evse_call(reservation.evse_id, "cancel_reservation", reservation_id=reservation.reservation_id)
        for evse_id, marker in list(self.global_marked.items()):
            if marker == reservation.reservation_id:
                del self.global_marked[evse_id]
                await self._evse_call(evse_id, "cancel_reservation", reservation_id=marker)
        self._publish_list()
        await self._reconcile()

    def _forget(self, reservation: Reservation, event: str, used_on_evse_id: int | None = None,
                session_id: str | None = None) -> None:
        self.reservations.pop(reservation.reservation_id, None)
        self.claimed = {e: r for e, r in self.claimed.items() if r != reservation.reservation_id}
        try:
            self.store.delete(reservation.reservation_id)
        except StorageError as exc:
            self._storage_failed(str(exc))
        self._publish_update(reservation, event, used_on_evse_id, session_id)
        self.log.info(f"reservation {event}", reservation_id=reservation.reservation_id, evse=reservation.evse_id,
                      used_on=used_on_evse_id)

    async def _reconcile(self) -> None:
        """Place or clear the markers that keep EVSEs free for EVSE-0 reservations."""
        desired = core.global_markers(self.evses.values(), self._holding())
        for evse_id, marker in list(self.global_marked.items()):
            if desired.get(evse_id) != marker:
                del self.global_marked[evse_id]
                await self._evse_call(evse_id, "cancel_reservation", reservation_id=marker)
        for evse_id, marker in desired.items():
            if self.global_marked.get(evse_id) == marker:
                continue
            if self.evses[evse_id].reservation_id == marker:
                self.global_marked[evse_id] = marker
                continue
            result = await self._evse_call(evse_id, "reserve", reservation_id=marker)
            if result == "Accepted":
                self.global_marked[evse_id] = marker
            else:
                self.log.warning("EVSE refused the marker of an EVSE-0 reservation", evse=evse_id,
                                 reservation_id=marker, result=result)

    async def _sync_markers(self, evse_id: int) -> None:
        """After a start: put back the marker of this EVSE's reservation and clear markers of ended ones."""
        marker = self.evses[evse_id].reservation_id
        for reservation in self.reservations.values():
            if reservation.evse_id == evse_id and marker != reservation.reservation_id:
                result = await self._evse_call(evse_id, "reserve", reservation_id=reservation.reservation_id)
                self.log.info("reservation marker restored", evse=evse_id,
                              reservation_id=reservation.reservation_id, result=result)
                return
        if marker is None:
            return
        if marker not in self.reservations:
            await self._evse_call(evse_id, "cancel_reservation", reservation_id=marker)
        elif self.reservations[marker].any_evse:
            self.global_marked[evse_id] = marker

    # -- inputs -----------------------------------------------------------------------------
    def _on_state(self, connection: RequiredConnection, state: dict[str, Any]) -> None:
        status = EvseStatus.from_state(state)
        before = core.free_evses(self.evses.values(), self._holding())
        first = status.evse_id not in self.evses
        self.evses[status.evse_id] = status
        self.evse_by_id[status.evse_id] = connection
        if not self.is_ready:
            return
        if first:
            self.spawn(self._locked(partial(self._sync_markers, status.evse_id)))
        if core.free_evses(self.evses.values(), self._holding()) != before:
            self.spawn(self._locked(self._reconcile))

    def _on_session_event(self, event: dict[str, Any]) -> None:
        evse_id, kind = event["evse_id"], event["type"]
        reservation = core.used_by(event, list(self.reservations.values()))
        if reservation is not None:
            self.claimed.pop(evse_id, None)
            self.spawn(self._locked(partial(self._use, reservation, event)))
        elif kind == "authorized" and event.get("reservation_id") in self.reservations:
            self.claimed[evse_id] = event["reservation_id"]
            self.spawn(self._locked(self._reconcile))
        elif kind in AUTHORIZATION_ENDED:
            self.claimed.pop(evse_id, None)
            self.spawn(self._locked(partial(self._mark_again, evse_id)))

    async def _use(self, reservation: Reservation, event: dict[str, Any]) -> None:
        if self.reservations.get(reservation.reservation_id) == reservation:
            await self._end(reservation, "used", event["evse_id"], event.get("session_id"))

    async def _mark_again(self, evse_id: int) -> None:
        for reservation in list(self.reservations.values()):
            if reservation.evse_id == evse_id:
                result = await self._evse_call(evse_id, "reserve", reservation_id=reservation.reservation_id)
                self.log.info("reservation marker set again", evse=evse_id,
                              reservation_id=reservation.reservation_id, result=result)
        await self._reconcile()

    async def _locked(self, work: Any) -> None:
        async with self.lock:
            await work()

    async def _expiry_timer(self) -> None:
        while True:
            self.wake.clear()
            upcoming = core.next_expiry(self.reservations.values())
            timeout = None
            if upcoming is not None:
                timeout = min(MAX_TIMER_WAIT_S, max(0.0, (upcoming - datetime.now(UTC)).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            async with self.lock:
                for reservation in core.due(self.reservations.values(), datetime.now(UTC)):
                    await self._end(reservation, "expired")

    # -- outputs ----------------------------------------------------------------------------
    async def _evse_call(self, evse_id: int, cmd: str, **args: Any) -> Any:
        connection = self.evse_by_id.get(evse_id)
        if connection is None:
            self.log.warning("no EVSE with this id", evse=evse_id, cmd=cmd)
            return None
        return await connection.try_call(cmd, **args)

    def _storage_failed(self, message: str) -> None:
        if self.storage_ok:
            self.storage_ok = False
            self.provides["main"].raise_error("storage_fault", message)

    def _publish_list(self) -> None:
        ordered = sorted(self.reservations.values(), key=lambda r: r.reservation_id)
        self.provides["main"].publish("reservations", [r.to_dict() for r in ordered])

    def _publish_update(self, reservation: Reservation, event: str, used_on_evse_id: int | None = None,
                        session_id: str | None = None) -> None:
        update: dict[str, Any] = {"reservation_id": reservation.reservation_id, "evse_id": reservation.evse_id,
                                  "event": event, "timestamp": utc_now()}
        if event == "used":
            update["used_on_evse_id"] = used_on_evse_id
            update["session_id"] = session_id
        self.provides["main"].publish("reservation_update", update)
