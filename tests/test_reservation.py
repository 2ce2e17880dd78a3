"""reservation in a running station with auth, fake EVSEs and the real broker; persistence in real SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from auth_lab import Lab, in_station, station_yaml
from helpers import Broker

from chargepoint import CmdError
from chargepoint.timestamps import to_rfc3339

UPDATES = "cp/reservation/main/var/reservation_update"
LIST = "cp/reservation/main/var/reservations"


def expiry(seconds: float) -> str:
    return to_rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


class Desk(Lab):
    """A lab that also places reservations and records reservation updates."""

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.updates: list[dict[str, Any]] = []
        probe.watch(UPDATES, lambda _t, p: self.updates.append(json.loads(p)))
        probe.watch(LIST)

    async def reserve(self, reservation_id: int, evse_id: int, id_token: str, seconds: float = 600,
                      parent_id: str | None = None) -> str:
        return await self.probe.call("reservation", "main", "reserve_now", {
            "reservation_id": reservation_id, "evse_id": evse_id, "id_token": id_token, "parent_id": parent_id,
            "expiry_time": expiry(seconds)})

    async def cancel(self, reservation_id: int) -> str:
        return await self.probe.call("reservation", "main", "cancel_reservation", {"reservation_id": reservation_id})

    async def received(self, evse: int, call: tuple[str, dict[str, Any]]) -> None:
        """Wait until ``evse`` has received ``call`` (cmd, args)."""

        async def wait() -> None:
            while call not in await self.cmds(evse):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(wait(), 5)

    async def listed(self, ids: list[int]) -> None:
        await self.probe.wait_for(LIST, lambda p: [r["reservation_id"] for r in json.loads(p)] == ids)

    async def update(self, event: str, reservation_id: int, timeout: float = 5.0) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for update in self.updates:
                    if (update["event"], update["reservation_id"]) == (event, reservation_id):
                        return update
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(wait(), timeout)


def in_desk(broker: Broker, tmp_path: Path, modules: str, scenario: Any) -> None:
    in_station(broker, tmp_path, modules, scenario, Desk)


def test_reservation_honoured_for_its_token_and_parent(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        assert await desk.reserve(11, 1, "AAA", parent_id="FLEET") == "Accepted"
        await desk.update("placed", 11)
        await desk.listed([11])
        await desk.wait_state(1, lambda s: (s["charger_state"], s["reservation_id"]) == ("reserved", 11))
        await desk.swipe("CCC")  # someone else: EVSE 1 is taken by the reservation, EVSE 2 is free
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 2)
        await desk.swipe("BBB")  # same parent as the reservation
        accepted = await desk.decision()
        assert (accepted["decision"], accepted["evse_id"]) == ("accepted", 1)
        assert ("authorize", {"id_token": "BBB", "token_type": "rfid", "parent_id": "FLEET",
                              "reservation_id": 11}) in await desk.cmds(1)
        await desk.plug(1)
        used = await desk.update("used", 11)
        assert (used["used_on_evse_id"], used["evse_id"]) == (1, 1) and used["session_id"]
        await desk.listed([])

    in_desk(broker, tmp_path, station_yaml(2, reservation=True), scenario)


def test_reservation_outlives_an_authorization_that_timed_out(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        assert await desk.reserve(11, 1, "AAA") == "Accepted"
        await desk.wait_state(1, lambda s: s["reservation_id"] == 11)
        await desk.swipe("AAA")
        assert (await desk.decision())["decision"] == "accepted"
        await desk.wait_state(1, lambda s: s["authorized"] and s["reservation_id"] is None)  # the EVSE drops it
        assert (await desk.decision())["decision"] == "withdrawn"  # no car within 1 s
        await desk.wait_state(1, lambda s: (s["charger_state"], s["reservation_id"]) == ("reserved", 11))
        await desk.listed([11])
        await desk.swipe("CCC")
        assert (await desk.decision())["decision"] == "rejected"

    in_desk(broker, tmp_path, station_yaml(1, reservation=True, connection_timeout_s=1), scenario)


def test_reservation_refused_and_cancelled(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        await desk.plug(1)
        await desk.swipe("AAA")
        await desk.charging(1)
        assert await desk.reserve(1, 1, "BBB") == "Occupied"
        await desk.probe.call("evse_2", "control", "set_state", {"changes": {"charger_state": "faulted"}})
        await desk.wait_state(2, lambda s: s["charger_state"] == "faulted")
        assert await desk.reserve(1, 2, "BBB") == "Faulted"
        await desk.probe.call("evse_3", "evse", "disable", {"source": "local_api", "priority": 10})
        await desk.wait_state(3, lambda s: not s["enabled"])
        assert await desk.reserve(1, 3, "BBB") == "Unavailable"
        assert await desk.reserve(1, 0, "BBB") == "Occupied"  # no EVSE is free
        assert await desk.reserve(1, 7, "BBB") == "Rejected"
        await desk.probe.call("evse_3", "evse", "enable", {"source": "local_api", "priority": 10})
        await desk.wait_state(3, lambda s: s["enabled"])
        assert await desk.reserve(1, 3, "BBB", seconds=-5) == "Rejected"
        with pytest.raises(CmdError) as bad:
            await desk.probe.call("reservation", "main", "reserve_now", {
                "reservation_id": 1, "evse_id": 3, "id_token": "BBB", "expiry_time": "next tuesday"})
        assert bad.value.code == "invalid_args" and "expiry_time" in bad.value.message
        assert await desk.cancel(1) == "Rejected"
        assert [cmd for cmd, _ in await desk.cmds(3)] == ["disable", "enable"]
        assert await desk.reserve(1, 3, "BBB") == "Accepted"
        assert await desk.cancel(1) == "Accepted"
        await desk.update("cancelled", 1)
        await desk.listed([])
        assert [cmd for cmd, _ in await desk.cmds(3)][-2:] == ["reserve", "cancel_reservation"]
        await desk.wait_state(3, lambda s: s["charger_state"] == "idle")

    in_desk(broker, tmp_path, station_yaml(3, reservation=True), scenario)


def test_reservation_expires_and_frees_the_evse(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        assert await desk.reserve(5, 1, "AAA", seconds=1.0) == "Accepted"
        await desk.swipe("CCC")
        refused = await desk.decision()
        assert (refused["decision"], refused["reason"]) == ("rejected", "reserved for another token")
        expired = await desk.update("expired", 5, timeout=5)
        assert expired["evse_id"] == 1
        await desk.listed([])
        await desk.wait_state(1, lambda s: s["reservation_id"] is None)
        assert ("cancel_reservation", {"reservation_id": 5}) in await desk.cmds(1)
        await desk.swipe("CCC")
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 1)

    in_desk(broker, tmp_path, station_yaml(1, reservation=True), scenario)


def test_evse_zero_keeps_one_evse_for_the_token(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        assert await desk.reserve(9, 0, "AAA") == "Accepted"
        assert await desk.reserve(10, 0, "BBB") == "Accepted"
        assert await desk.reserve(12, 0, "COP") == "Occupied"
        assert await desk.cancel(10) == "Accepted"
        await desk.swipe("CCC")  # takes EVSE 1; EVSE 2 is now the last free one and gets marked
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 1)
        await desk.wait_state(2, lambda s: s["reservation_id"] == 9)
        await desk.swipe("BAD")
        assert (await desk.decision())["decision"] == "rejected"
        await desk.swipe("BBB")
        assert (await desk.decision())["decision"] == "rejected"
        await desk.swipe("AAA")
        accepted = await desk.decision()
        assert (accepted["decision"], accepted["evse_id"]) == ("accepted", 2)
        assert ("authorize", {"id_token": "AAA", "token_type": "rfid", "parent_id": "FLEET",
                              "reservation_id": 9}) in await desk.cmds(2)
        await desk.plug(2)
        assert (await desk.update("used", 9))["used_on_evse_id"] == 2

    in_desk(broker, tmp_path, station_yaml(2, reservation=True), scenario)


def test_evse_zero_holder_authorized_frees_the_other_evses(broker: Broker, tmp_path: Path) -> None:
    async def scenario(desk: Desk) -> None:
        await desk.plug(1)
        await desk.swipe("CCC")
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 1)
        await desk.charging(1)
        assert await desk.reserve(9, 0, "AAA") == "Accepted"
        await desk.swipe("AAA")  # authorized on EVSE 2, the car is still on its way
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 2)
        await desk.swipe("BBB")  # so EVSE 3 need not be kept for reservation 9
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 3)
        await desk.plug(2)
        assert (await desk.update("used", 9))["used_on_evse_id"] == 2
        assert "reserve" not in [cmd for cmd, _ in await desk.cmds(3)]

    in_desk(broker, tmp_path, station_yaml(3, reservation=True), scenario)


def test_reservations_survive_a_station_restart(broker: Broker, tmp_path: Path) -> None:
    async def before(desk: Desk) -> None:
        assert await desk.reserve(1, 1, "AAA", seconds=600) == "Accepted"
        assert await desk.reserve(2, 2, "BBB", seconds=2.0) == "Accepted"
        await desk.listed([1, 2])

    async def after(desk: Desk) -> None:
        await desk.update("expired", 2)  # expired while the station was down: dropped at start
        await desk.listed([1])
        [kept] = json.loads(desk.probe.latest(LIST) or b"[]")
        assert (kept["evse_id"], kept["id_token"]) == (1, "AAA")
        await desk.received(1, ("reserve", {"reservation_id": 1}))  # the marker is put back on the fresh EVSE
        await desk.swipe("CCC")
        assert ((await desk.decision())["decision"], desk.decisions[-1]["evse_id"]) == ("accepted", 2)

    modules = station_yaml(2, reservation=True)
    in_desk(broker, tmp_path, modules, before)
    assert (tmp_path / "state" / "reservation" / "reservations.db").is_file()
    asyncio.run(asyncio.sleep(2.1))  # reservation 2 expires while the station is down
    in_desk(broker, tmp_path, modules, after)


def test_unwritable_store_raises_storage_fault_and_rejects(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "state" / "reservation" / "reservations.db").mkdir(parents=True)

    async def scenario(desk: Desk) -> None:
        topic = "cp/reservation/main/error/storage_fault"
        desk.probe.watch(topic)
        fault = json.loads(await desk.probe.wait_for(topic, lambda p: json.loads(p)["active"]))
        assert "reservations.db" in fault["message"]
        assert await desk.reserve(1, 1, "AAA") == "Rejected"
        assert "reserve" not in [cmd for cmd, _ in await desk.cmds(1)]

    in_desk(broker, tmp_path, station_yaml(1, reservation=True), scenario)
