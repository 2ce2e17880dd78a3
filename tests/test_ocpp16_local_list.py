"""Local Authorization List, Authorization Cache and offline authorization.

The pure parts (hypothesis), their SQLite store, and a running station against a real CSMS peer on loopback
(the ``ocpp`` package's central system), taken offline by stopping that peer and restarted on the same state.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring
from hypothesis import given
from hypothesis import strategies as st
from ocpp.v16 import call
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import AuthorizationStatus
from ocpp16_lab import Csms, ocpp_station
from scenario import Lab

from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import to_rfc3339
from modules.ocpp16.auth_cache import AuthCache
from modules.ocpp16.auth_store import AuthStore
from modules.ocpp16.authorization import AuthFlags, TagInfo, decide, decide_offline, tag_key
from modules.ocpp16.local_list import ListLimits, LocalList, apply_update

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TAGS = st.sampled_from(["AA11", "aa11", "BB22", "CC33", "DD44", "EE55", "FF66", "GG77"])
STATUSES = st.sampled_from(["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"])
EXPIRIES = st.none() | st.integers(-3, 3).map(lambda hours: NOW + timedelta(hours=hours, minutes=1))
INFOS = st.builds(TagInfo, STATUSES, EXPIRIES, st.none() | st.just("FLEET"))
LIMITS = ListLimits(True, max_list_length=5, max_request_length=4)


def entry(id_tag: str, info: TagInfo | None) -> dict[str, Any]:
    return {"idTag": id_tag} if info is None else {"idTag": id_tag, "idTagInfo": info.to_ocpp()}


REQUESTS = st.builds(
    lambda version, kind, items: {"listVersion": version, "updateType": kind,
                                  "localAuthorizationList": [entry(tag, info) for tag, info in items]},
    st.integers(0, 6), st.sampled_from(["Full", "Differential"]),
    st.lists(st.tuples(TAGS, st.none() | INFOS), max_size=6))


# -- the Local Authorization List -------------------------------------------------------------------
@given(st.lists(REQUESTS, max_size=8))
def test_updates_follow_a_plain_dictionary_model(requests: list[dict[str, Any]]) -> None:
    current, model, version = LocalList(), {}, 0
    for request in requests:
        update = apply_update(current, request, LIMITS)
        items = request["localAuthorizationList"]
        keys = [tag_key(item["idTag"]) for item in items]
        full = request["updateType"] == "Full"
        expected = {} if full else dict(model)
        for item in items:
            if "idTagInfo" in item:
                expected[tag_key(item["idTag"])] = TagInfo.from_ocpp(item["idTagInfo"])
            else:
                expected.pop(tag_key(item["idTag"]), None)
        refusable = (len(items) > 4 or len(set(keys)) < len(keys) or len(expected) > 5
                     or (full and any("idTagInfo" not in item for item in items))
                     or (expected and request["listVersion"] == 0))
        if len(items) > 4:
            assert update.status == "Failed"  # the request size is checked first
        elif not full and request["listVersion"] <= version:
            assert update.status == "VersionMismatch"
        elif refusable:
            assert update.status == "Failed", update.reason
        else:
            assert update.status == "Accepted", update.reason
            model, version = expected, request["listVersion"] if expected else 0
        if not update.accepted:
            assert update.result is current  # a refused update changes nothing
        current = update.result
        assert {k: e.info for k, e in current.entries.items()} == model
        assert current.version == version
        assert (current.version == 0) == (len(current) == 0)  # version 0 = empty list


def test_full_then_differential_versions_and_removal() -> None:
    accepted, blocked = TagInfo("Accepted"), TagInfo("Blocked")
    full = apply_update(LocalList(), {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
        entry("AA11", accepted), entry("BB22", blocked)]}, LIMITS)
    assert (full.status, full.result.version, full.result.lookup("aa11")) == ("Accepted", 3, accepted)
    stale = apply_update(full.result, {"listVersion": 3, "updateType": "Differential",
                                       "localAuthorizationList": [entry("CC33", accepted)]}, LIMITS)
    assert stale.status == "VersionMismatch" and stale.result.lookup("CC33") is None
    newer = apply_update(full.result, {"listVersion": 4, "updateType": "Differential",
                                       "localAuthorizationList": [entry("BB22", None), entry("CC33", accepted)]},
                         LIMITS)
    assert newer.result.version == 4 and newer.result.lookup("BB22") is None and newer.result.lookup("CC33")
    emptied = apply_update(newer.result, {"listVersion": 9, "updateType": "Full"}, LIMITS)
    assert (emptied.status, emptied.result.version, len(emptied.result)) == ("Accepted", 0, 0)


def test_refusals_say_why() -> None:
    disabled = apply_update(LocalList(), {"listVersion": 1, "updateType": "Full"}, ListLimits(enabled=False))
    assert disabled.status == "NotSupported"
    too_many = apply_update(LocalList(), {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        entry(f"T{i}", TagInfo("Accepted")) for i in range(5)]}, LIMITS)
    assert too_many.status == "Failed" and "SendLocalListMaxLength is 4" in too_many.reason
    twice = apply_update(LocalList(), {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        entry("AA11", TagInfo("Accepted")), entry("aa11", TagInfo("Blocked"))]}, LIMITS)
    assert twice.status == "Failed" and "more than once" in twice.reason
    long_tag = apply_update(LocalList(), {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        entry("X" * 21, TagInfo("Accepted"))]}, LIMITS)
    assert long_tag.status == "Failed" and "longer than 20" in long_tag.reason
    bad_date = apply_update(LocalList(), {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "AA11", "idTagInfo": {"status": "Accepted", "expiryDate": "soon"}}]}, LIMITS)
    assert bad_date.status == "Failed" and "localAuthorizationList[0].idTagInfo.expiryDate" in bad_date.reason


# -- the Authorization Cache ------------------------------------------------------------------------
@given(st.lists(st.tuples(st.sampled_from(["store", "lookup"]), TAGS, INFOS, st.integers(0, 100)), max_size=30),
       st.integers(1, 4))
def test_cache_stays_within_capacity_and_keeps_the_newest(ops: list[tuple[str, str, TagInfo, int]],
                                                          capacity: int) -> None:
    cache = AuthCache(capacity)
    for op, tag, info, minutes in ops:
        now = NOW + timedelta(minutes=minutes)
        if op == "store":
            change = cache.store(tag, info, now)
            assert tag_key(tag) not in change.removed
            assert tag in cache
        else:
            found, _ = cache.lookup(tag, now)
            if found is not None and found.expiry is not None and found.expiry <= now:
                assert found.status != "Accepted"  # expired entries are never Accepted
        assert len(cache) <= capacity


def test_cache_evicts_invalid_entries_first_then_least_recently_used() -> None:
    cache = AuthCache(3)
    cache.store("OLD", TagInfo("Accepted"), NOW)
    cache.store("BLOCKED", TagInfo("Blocked"), NOW + timedelta(minutes=5))
    cache.store("MID", TagInfo("Accepted"), NOW + timedelta(minutes=1))
    assert cache.store("NEW1", TagInfo("Accepted"), NOW + timedelta(minutes=6)).removed == ("blocked",)
    cache.lookup("OLD", NOW + timedelta(minutes=7))  # OLD is now recently used, MID is the least
    assert cache.store("NEW2", TagInfo("Accepted"), NOW + timedelta(minutes=8)).removed == ("mid",)
    assert cache.clear() and len(cache) == 0


# -- the decision ------------------------------------------------------------------------------------
FLAGS = st.builds(AuthFlags, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans())


@given(FLAGS, st.booleans(), st.none() | INFOS, st.none() | INFOS)
def test_decision_rules(flags: AuthFlags, online: bool, list_info: TagInfo | None,
                        cache_info: TagInfo | None) -> None:
    answer = decide(flags, online=online, list_info=list_info, cache_info=cache_info, now=NOW)
    counted = list_info if flags.local_list_enabled and list_info else cache_info if flags.cache_enabled else None
    valid = counted is not None and counted.effective_status(NOW) == "Accepted"
    if online:
        if flags.local_pre_authorize and valid:
            assert answer is not None and answer.status == "Accepted"
        else:
            assert answer is None  # ask the CSMS
        return
    assert answer is not None
    if counted is not None and not valid:
        assert answer.status == counted.effective_status(NOW) != "Accepted"  # known, not valid: refused
    elif valid and flags.local_authorize_offline:
        assert answer.status == "Accepted" and answer.info == counted
    else:
        assert answer.status == ("Accepted" if flags.allow_offline_unknown else "Unknown")
    if counted is list_info and list_info is not None and flags.local_list_enabled:
        assert answer.source.startswith(("LocalAuthorizationList", "offline"))


def test_local_answer_carries_parent_and_expiry() -> None:
    info = TagInfo("Accepted", NOW + timedelta(days=1), "FLEET")
    answer = decide_offline(AuthFlags(), list_info=info, cache_info=TagInfo("Blocked"), now=NOW)
    assert answer.validator_result() == {"status": "Accepted", "parent_id": "FLEET",
                                         "expiry_time": to_rfc3339(NOW + timedelta(days=1)),
                                         "reason": "LocalAuthorizationList (LocalAuthorizeOffline): Accepted"}
    expired = decide_offline(AuthFlags(allow_offline_unknown=True), list_info=None,
                             cache_info=TagInfo("Accepted", NOW - timedelta(seconds=1)), now=NOW)
    assert expired.status == "Expired"


# -- the SQLite store --------------------------------------------------------------------------------
def test_store_keeps_list_version_and_cache_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "authorization.sqlite3"
    store = AuthStore.open(path)
    assert store.list_version == 0
    update = store.apply_list_update({"listVersion": 7, "updateType": "Full", "localAuthorizationList": [
        entry("AA11", TagInfo("Accepted", NOW, "FLEET"))]}, LIMITS)
    assert update.accepted
    store.remember("CC33", {"status": "Blocked"}, NOW)
    assert store.remember("aa11", {"status": "Blocked"}, NOW) is None  # in the local list: not cached
    store.close()
    again = AuthStore.open(path)
    assert again.list_version == 7
    assert again.lookup("aa11", NOW) == (TagInfo("Accepted", NOW, "FLEET"), None)
    assert again.lookup("CC33", NOW) == (None, TagInfo("Blocked"))
    again.clear_cache()
    again.close()
    assert AuthStore.open(path).lookup("CC33", NOW) == (None, None)


def test_store_drops_an_unreadable_row_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "authorization.sqlite3"
    AuthStore.open(path).remember("CC33", {"status": "Accepted"}, NOW)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO auth_cache VALUES ('dd44', 'DD44', ?, ?)",
                   (json.dumps({"status": "Maybe"}), to_rfc3339(NOW)))
    warnings: list[dict[str, Any]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append({"event": event, **fields})

    store = AuthStore.open(path, Log())
    assert store.lookup("CC33", NOW)[1] == TagInfo("Accepted") and store.lookup("DD44", NOW)[1] is None
    assert len(warnings) == 1 and "auth_cache['DD44'].status: 'Maybe'" in warnings[0]["problem"]


# -- a running station against a real CSMS peer ------------------------------------------------------
CONNECTION = "cp/ocpp/main/var/connection"
Phase = Callable[[BusProbe], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def station_wiring(broker: Broker, folder: Path, csms: Csms, ocpp_values: str = "") -> Path:
    modules = ocpp_station(folder, csms.port)
    with (folder / "ocpp16-initial.yaml").open("a") as initial:
        initial.write(ocpp_values)
    return write_wiring(folder, broker.port, modules)


async def online(probe: BusProbe) -> None:
    await probe.wait_for(CONNECTION, lambda p: json.loads(p)["connected"]
                         and json.loads(p)["registration"] == "Accepted")


async def offline(probe: BusProbe) -> None:
    await probe.wait_for(CONNECTION, lambda p: not json.loads(p)["connected"])


async def validate(probe: BusProbe, id_tag: str) -> dict[str, Any]:
    return await probe.call("ocpp", "auth_validator", "validate_token", {"id_token": id_tag, "token_type": "rfid"})


def in_station(wiring: Path, broker: Broker, *phases: Phase) -> None:
    """Each phase runs in a fresh start of the station (same state directory): the later ones see a restart."""

    async def main() -> None:
        for phase in phases:
            async with running_station(wiring), BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch(CONNECTION)
                await phase(probe)

    run(main(), timeout=60)


def test_local_list_and_cache_work_offline_and_survive_a_restart(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.port = free_port()
    later = to_rfc3339(datetime.now(UTC) + timedelta(days=2))
    earlier = to_rfc3339(datetime.now(UTC) - timedelta(days=1))
    csms.tag_info = lambda id_tag: IdTagInfo(  # type: ignore[method-assign]
        status=AuthorizationStatus.accepted, parent_id_tag="FLEET", expiry_date=later)
    wiring = station_wiring(broker, tmp_path, csms)
    expected_offline = {"LOCAL1": "Accepted", "local2": "Accepted", "CACHED1": "Accepted", "LOCALBLK": "Blocked",
                        "LOCALOLD": "Expired", "LOCALGONE": "Unknown", "STALE1": "Unknown", "NEVER": "Unknown"}

    async def send_list(version: int, kind: str, entries: list[dict[str, Any]]) -> str:
        request = call.SendLocalList(list_version=version, update_type=kind, local_authorization_list=entries)
        return str((await csms.peer.call(request)).status)

    async def list_version() -> int:
        return int((await csms.peer.call(call.GetLocalListVersion())).list_version)

    async def check_offline(probe: BusProbe) -> None:
        answers = {tag: await validate(probe, tag) for tag in expected_offline}
        assert {tag: answer["status"] for tag, answer in answers.items()} == expected_offline
        assert (answers["LOCAL1"]["parent_id"], answers["LOCAL1"]["expiry_time"]) == ("HOME", later)
        assert (answers["CACHED1"]["parent_id"], answers["CACHED1"]["expiry_time"]) == ("FLEET", later)

    async def first_run(probe: BusProbe) -> None:
        async with csms.running():
            await online(probe)
            assert await list_version() == 0
            assert await send_list(3, "Full", [
                {"idTag": "LOCAL1", "idTagInfo": {"status": "Accepted", "parentIdTag": "HOME", "expiryDate": later}},
                {"idTag": "LOCALBLK", "idTagInfo": {"status": "Blocked"}},
                {"idTag": "LOCALOLD", "idTagInfo": {"status": "Accepted", "expiryDate": earlier}},
                {"idTag": "LOCALGONE", "idTagInfo": {"status": "Accepted"}}]) == "Accepted"
            assert await list_version() == 3
            assert await send_list(3, "Differential", [
                {"idTag": "STALE1", "idTagInfo": {"status": "Accepted"}}]) == "VersionMismatch"
            assert await send_list(5, "Full", [{"idTag": "DUP1", "idTagInfo": {"status": "Accepted"}},
                                               {"idTag": "dup1", "idTagInfo": {"status": "Blocked"}}]) == "Failed"
            assert await list_version() == 3
            assert await send_list(4, "Differential", [
                {"idTag": "LOCALGONE"}, {"idTag": "LOCAL2", "idTagInfo": {"status": "Accepted"}}]) == "Accepted"
            assert await list_version() == 4
            answer = await validate(probe, "CACHED1")
            assert (answer["status"], answer["parent_id"], answer["expiry_time"]) == ("Accepted", "FLEET", later)
        await offline(probe)
        await check_offline(probe)

    async def after_restart(probe: BusProbe) -> None:
        await check_offline(probe)
        async with csms.running():
            await online(probe)
            assert await list_version() == 4
        assert csms.calls("Authorize") == [{"idTag": "CACHED1"}]  # everything else was answered locally

    in_station(wiring, broker, first_run, after_restart)


def test_the_answer_to_a_stop_by_tag_updates_the_cache(broker: Broker, tmp_path: Path) -> None:
    """StopTransaction.conf's idTagInfo goes into the Authorization Cache, as Authorize.conf's does: a tag the
    CSMS blocked while it charged is refused offline afterwards, not let in on its older Accepted."""
    csms = Csms()
    csms.port = free_port()
    status = {"now": AuthorizationStatus.accepted}
    csms.tag_info = lambda id_tag: IdTagInfo(status=status["now"])  # type: ignore[method-assign]
    wiring = station_wiring(broker, tmp_path, csms)

    async def charge_then_go_offline(probe: BusProbe) -> None:
        lab = Lab(probe)
        async with csms.running():
            await online(probe)
            await lab.plug(1)
            await lab.swipe("DRIVER1")
            await csms.wait_call("StartTransaction")
            await lab.wait_charger_state(1, "charging")
            status["now"] = AuthorizationStatus.blocked
            await lab.swipe("DRIVER1")  # the same tag stops its own transaction without asking the CSMS
            assert (await csms.wait_call("StopTransaction"))["idTag"] == "DRIVER1"
            # one CALL at a time: the triggered Heartbeat goes out only after the stop's answer was handled
            beats = len(csms.calls("Heartbeat"))
            await csms.peer.call(call.TriggerMessage(requested_message="Heartbeat"))
            await csms.wait_call("Heartbeat", count=beats + 1)
        await offline(probe)
        assert (await validate(probe, "DRIVER1"))["status"] == "Blocked"

    in_station(wiring, broker, charge_then_go_offline)


def test_local_pre_authorize_starts_without_asking_the_csms(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.port = free_port()
    wiring = station_wiring(broker, tmp_path, csms, "  LocalPreAuthorize: true\n")

    async def charge(probe: BusProbe) -> None:
        lab = Lab(probe)
        async with csms.running():
            await online(probe)
            await csms.peer.call(call.SendLocalList(list_version=1, update_type="Full", local_authorization_list=[
                {"idTag": "PRE1", "idTagInfo": {"status": "Accepted"}}]))
            await lab.plug(1)
            await lab.swipe("PRE1")
            assert (await csms.wait_call("StartTransaction"))["idTag"] == "PRE1"
            await lab.wait_charger_state(1, "charging")
            assert csms.calls("Authorize") == []

    in_station(wiring, broker, charge)


def test_clear_cache_disabled_cache_and_unknown_tags_offline(broker: Broker, tmp_path: Path) -> None:
    csms = Csms()
    csms.port = free_port()
    wiring = station_wiring(broker, tmp_path, csms)

    async def configure(key: str, value: str) -> None:
        assert (await csms.peer.call(call.ChangeConfiguration(key=key, value=value))).status == "Accepted"

    async def scenario(probe: BusProbe) -> None:
        lab = Lab(probe)
        async with csms.running():
            await online(probe)
            assert (await validate(probe, "CACHED1"))["status"] == "Accepted"
            assert (await validate(probe, "CACHED2"))["status"] == "Accepted"
            assert (await csms.peer.call(call.ClearCache())).status == "Accepted"
            assert (await validate(probe, "CACHED2"))["status"] == "Accepted"  # asked again, cached again
            await configure("AuthorizationCacheEnabled", "false")
            assert (await csms.peer.call(call.ClearCache())).status == "Rejected"
            assert (await validate(probe, "NOTCACHED"))["status"] == "Accepted"
            await configure("AuthorizationCacheEnabled", "true")
        await offline(probe)
        statuses = {tag: (await validate(probe, tag))["status"] for tag in ("CACHED1", "CACHED2", "NOTCACHED")}
        assert statuses == {"CACHED1": "Unknown", "CACHED2": "Accepted", "NOTCACHED": "Unknown"}
        async with csms.running():
            await online(probe)
            await configure("AllowOfflineTxForUnknownId", "true")
        await offline(probe)
        await lab.plug(1)
        await lab.swipe("STRANGER")
        await lab.wait_charger_state(1, "charging")

    in_station(wiring, broker, scenario)
