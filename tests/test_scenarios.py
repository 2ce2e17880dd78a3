"""A simulated station driven like a test lab drives it: plug in, swipe, charge, stop, unplug.

Real modules only (board_simulator, evse_manager, token_manual, allowlist_validator, auth,
reservation) on a real broker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers import Broker, run, running_station, write_wiring
from scenario import Lab, station_modules

from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import to_rfc3339


async def start_charging(lab: Lab, token: str = "AA11", evse: int = 1) -> dict[str, object]:
    await lab.plug(evse)
    await lab.wait_charger_state(evse, "waiting_for_authorization")
    await lab.swipe(token)
    started = await lab.wait_event(evse, "transaction_started")
    await lab.wait_charger_state(evse, "charging")
    return started


def test_plug_then_swipe_charges_and_same_token_stops(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            started = await start_charging(lab)
            assert started["id_token"] == "AA11"
            assert lab.relay_closed(1)
            first = await lab.energy_Wh(1)
            await probe.wait_for("cp/board_1/powermeter/var/powermeter",
                                 lambda p: json.loads(p)["energy_Wh_import"]["total"] > first + 100)
            await lab.swipe("AA11")
            finished = await lab.wait_event(1, "transaction_finished")
            assert finished["reason"] == "Local"
            assert finished["meter_Wh"] >= started["meter_Wh"] + 100
            await lab.wait_charger_state(1, "finishing")
            assert not lab.relay_closed(1)
            await lab.unplug(1)
            await lab.wait_event(1, "session_finished")
            await lab.wait_charger_state(1, "idle")
            assert lab.kinds(1).count("transaction_started") == 1
            assert lab.kinds(1).count("transaction_finished") == 1

    run(scenario())


def test_swipe_then_plug(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await lab.swipe("CC33")
            await lab.wait_event(1, "authorized")
            assert not lab.relay_closed(1)
            await lab.plug(1)
            started = await lab.wait_event(1, "transaction_started")
            assert started["id_token"] == "CC33"
            await lab.wait_charger_state(1, "charging")

    run(scenario())


def test_connection_timeout_withdraws_authorization(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path).replace(
        "connection_timeout_s: 30", "connection_timeout_s: 1"))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await lab.swipe("CC33")
            await lab.wait_event(1, "authorized")
            await lab.wait_event(1, "authorization_withdrawn", timeout=5)
            await lab.plug(1)
            await lab.wait_charger_state(1, "waiting_for_authorization")
            assert "transaction_started" not in lab.kinds(1)

    run(scenario())


def test_stop_by_parent_id_and_not_by_a_stranger(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await start_charging(lab, "AA11")
            await lab.swipe("CC33")
            await lab.swipe("BLOCKED1")
            await probe.wait_for("cp/evse_1/evse/var/state", lambda p: True)
            assert lab.state(1)["transaction_active"], "a stranger's token stopped the transaction"
            await lab.swipe("BB22")
            finished = await lab.wait_event(1, "transaction_finished")
            assert finished["reason"] == "Local"
            assert finished.get("stop_id_token") == "BB22"

    run(scenario())


def test_master_pass_stops_any_transaction_but_starts_none(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path, auth_config=", master_pass_group_id: MASTERS"))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await lab.plug(1)
            await lab.wait_charger_state(1, "waiting_for_authorization")
            await lab.swipe("MASTER1")
            await lab.swipe("CC33")
            started = await lab.wait_event(1, "transaction_started")
            assert started["id_token"] == "CC33", "the master pass started a transaction"
            await lab.swipe("MASTER1")
            finished = await lab.wait_event(1, "transaction_finished")
            assert finished.get("stop_id_token") == "MASTER1"

    run(scenario())


def test_ev_pause_and_resume(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await start_charging(lab)
            await lab.ev_pause(1)
            await lab.wait_charger_state(1, "suspended_ev")
            paused = await lab.wait_event(1, "charging_paused")
            assert paused["paused_by"] == "ev"
            await lab.ev_resume(1)
            await lab.wait_charger_state(1, "charging")
            await lab.wait_event(1, "charging_resumed")
            assert lab.state(1)["transaction_active"]

    run(scenario())


def test_fault_during_charging_opens_relay_and_finishes_transaction(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await start_charging(lab)
            await lab.fault(1, "rcd")
            state = await lab.wait_charger_state(1, "faulted")
            assert "ground_failure" in state["active_errors"]
            finished = await lab.wait_event(1, "transaction_finished")
            assert finished["reason"] == "EmergencyStop"
            assert not lab.relay_closed(1)

    run(scenario())


def test_disable_while_charging_is_scheduled(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            await start_charging(lab)
            assert await lab.evse(1, "disable", source="csms", priority=5000) == "Scheduled"
            assert lab.state(1)["transaction_active"]
            await lab.swipe("AA11")
            await lab.wait_event(1, "transaction_finished")
            await lab.unplug(1)
            await lab.wait_charger_state(1, "unavailable")
            await lab.plug(1)
            await lab.swipe("AA11")
            await lab.wait_charger_state(1, "unavailable")
            assert lab.kinds(1).count("transaction_started") == 1

    run(scenario())


def test_reservation_honoured_refused_and_expired(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, station_modules(tmp_path))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe)
            soon = to_rfc3339(datetime.now(UTC) + timedelta(seconds=2))
            later = to_rfc3339(datetime.now(UTC) + timedelta(minutes=10))
            reserve = {"reservation_id": 7, "evse_id": 1, "id_token": "CC33", "expiry_time": later}
            assert await probe.call("reservation", "main", "reserve_now", reserve) == "Accepted"
            await lab.wait_charger_state(1, "reserved")
            await lab.plug(1)
            await lab.swipe("AA11")
            await lab.swipe("CC33")
            started = await lab.wait_event(1, "transaction_started")
            assert started["id_token"] == "CC33", "a reserved EVSE accepted another token"
            assert started.get("reservation_id") == 7
            occupied = {"reservation_id": 8, "evse_id": 1, "id_token": "AA11", "expiry_time": later}
            assert await probe.call("reservation", "main", "reserve_now", occupied) == "Occupied"
            await lab.swipe("CC33")
            await lab.wait_event(1, "transaction_finished")
            await lab.unplug(1)
            await lab.wait_charger_state(1, "idle")
            short = {"reservation_id": 9, "evse_id": 1, "id_token": "CC33", "expiry_time": soon}
            assert await probe.call("reservation", "main", "reserve_now", short) == "Accepted"
            await lab.wait_charger_state(1, "reserved")
            await lab.wait_charger_state(1, "idle", timeout=6)

    run(scenario())


def test_two_evses_one_reader_plug_events(broker: Broker, tmp_path: Path) -> None:
    path = two_evse_station(broker, tmp_path, "PlugEvents")

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            lab = Lab(probe, 2)
            await lab.plug(2)
            await lab.wait_charger_state(2, "waiting_for_authorization")
            await lab.swipe("AA11")
            started = await lab.wait_event(2, "transaction_started")
            assert started["id_token"] == "AA11"
            await lab.swipe("CC33")
            await lab.plug(1)
            assert (await lab.wait_event(1, "transaction_started"))["id_token"] == "CC33"

    run(scenario())


def two_evse_station(broker: Broker, tmp_path: Path, algorithm: str) -> Path:
    return write_wiring(tmp_path, broker.port,
                        station_modules(tmp_path, 2, auth_config=f", selection_algorithm: {algorithm}"))


@asynccontextmanager
async def both_plugged(broker: Broker, path: Path) -> AsyncIterator[tuple[Lab, BusProbe]]:
    """The station of ``path`` running, with an EV plugged into each of its two EVSEs."""
    async with running_station(path), BusProbe(broker.host, broker.port) as probe:
        lab = Lab(probe, 2)
        await lab.plug(1)
        await lab.plug(2)
        await lab.wait_charger_state(1, "waiting_for_authorization")
        await lab.wait_charger_state(2, "waiting_for_authorization")
        yield lab, probe


def test_two_evses_one_reader_find_first(broker: Broker, tmp_path: Path) -> None:
    path = two_evse_station(broker, tmp_path, "FindFirst")

    async def scenario() -> None:
        async with both_plugged(broker, path) as (lab, _probe):
            await lab.swipe("AA11")
            assert (await lab.wait_event(1, "transaction_started"))["id_token"] == "AA11"
            await lab.swipe("CC33")
            assert (await lab.wait_event(2, "transaction_started"))["id_token"] == "CC33"

    run(scenario())


def test_two_evses_one_reader_user_input(broker: Broker, tmp_path: Path) -> None:
    path = two_evse_station(broker, tmp_path, "UserInput")

    async def scenario() -> None:
        async with both_plugged(broker, path) as (lab, probe):
            probe.watch("cp/auth/main/var/pending")
            await lab.swipe("AA11")
            pending = await probe.wait_for("cp/auth/main/var/pending", lambda p: b"AA11" in p)
            assert json.loads(pending)[0]["waiting_for"] == "selection"
            assert sorted(json.loads(pending)[0]["evse_ids"]) == [1, 2]
            assert await probe.call("auth", "main", "select_connector", {"evse_id": 2, "id_token": "AA11"}) is True
            assert (await lab.wait_event(2, "transaction_started"))["id_token"] == "AA11"
            assert "transaction_started" not in lab.kinds(1)

    run(scenario())
