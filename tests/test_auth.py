"""auth in a running station: token_manual as reader, a table validator, fake EVSEs, the real broker."""

from __future__ import annotations

import json
from pathlib import Path

from auth_lab import TOKENS, Lab, in_station, station_yaml
from helpers import Broker


def test_start_and_stop_by_the_same_token(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.swipe("AAA")
        accepted = await lab.decision()
        assert (accepted["decision"], accepted["evse_id"], accepted["parent_id"]) == ("accepted", 1, "FLEET")
        await lab.swipe("AAA", debounce=False)  # a second read within the debounce window is ignored
        await lab.plug(1)
        await lab.charging(1)
        await lab.swipe("AAA")
        stop = await lab.decision()
        assert (stop["decision"], stop["evse_id"]) == ("stop_transaction", 1)
        await lab.wait_state(1, lambda s: not s["transaction_active"])
        assert [cmd for cmd, _ in await lab.cmds(1)] == ["authorize", "stop_transaction"]
        assert (await lab.cmds(1))[1][1] == {"reason": "Local", "id_token": "AAA"}

    in_station(broker, tmp_path, station_yaml(), scenario)


def test_connection_timeout_withdraws_the_authorization(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.swipe("AAA")
        assert (await lab.decision())["decision"] == "accepted"
        await lab.wait_state(1, lambda s: s["authorized"])
        withdrawn = await lab.decision(timeout=5)
        assert (withdrawn["decision"], withdrawn["evse_id"]) == ("withdrawn", 1)
        assert "connection timeout (1 s)" in withdrawn["reason"]
        await lab.wait_state(1, lambda s: not s["authorized"])
        assert [cmd for cmd, _ in await lab.cmds(1)] == ["authorize", "withdraw_authorization"]
        await lab.plug(1)  # too late: the car waits for a new authorization
        await lab.wait_state(1, lambda s: s["charger_state"] == "waiting_for_authorization")

    in_station(broker, tmp_path, station_yaml(connection_timeout_s=1), scenario)


def test_parent_id_stops_wrong_tokens_do_not_master_pass_does(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.plug(1)
        await lab.swipe("COP")  # master pass with nothing to stop: starts nothing
        refused = await lab.decision()
        assert (refused["decision"], refused["status"]) == ("rejected", "Accepted")
        await lab.swipe("AAA")
        assert (await lab.decision())["decision"] == "accepted"
        await lab.charging(1)
        for wrong, decision in (("CCC", "no_evse_available"), ("BAD", "rejected")):
            await lab.swipe(wrong)
            assert (await lab.decision())["decision"] == decision
        assert "stop_transaction" not in [cmd for cmd, _ in await lab.cmds(1)]
        await lab.swipe("BBB")  # same parent id FLEET
        stop = await lab.decision()
        assert (stop["decision"], stop["id_token"], stop["parent_id"]) == ("stop_transaction", "BBB", "FLEET")
        await lab.unplug(1)
        await lab.plug(1)
        await lab.swipe("CCC")
        assert (await lab.decision())["decision"] == "accepted"
        await lab.charging(1)
        await lab.swipe("COP")
        assert (await lab.decision())["decision"] == "stop_transaction"
        stops = [args for cmd, args in await lab.cmds(1) if cmd == "stop_transaction"]
        assert stops == [{"reason": "Local", "id_token": "BBB"}, {"reason": "Local", "id_token": "COP"}]

    in_station(broker, tmp_path, station_yaml(), scenario)


def test_two_evses_one_reader_find_first(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.swipe("AAA")
        assert (await lab.decision())["evse_id"] == 1
        await lab.swipe("CCC")
        assert (await lab.decision())["evse_id"] == 2
        await lab.swipe("BBB")
        assert (await lab.decision())["decision"] == "no_evse_available"
        await lab.swipe("DDD", connectors=[2])  # unknown to the validator
        assert (await lab.decision())["decision"] == "rejected"

    in_station(broker, tmp_path, station_yaml(2), scenario)


def test_two_evses_one_reader_plug_events(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.plug(2)
        await lab.swipe("AAA")
        assert ((await lab.decision())["decision"], lab.decisions[-1]["evse_id"]) == ("accepted", 2)
        await lab.swipe("CCC")
        assert (await lab.decision())["decision"] == "awaiting_plug_in"
        await lab.probe.wait_for("cp/auth/main/var/pending", lambda p: json.loads(p) != [])
        assert [(p["id_token"], p["evse_ids"], p["waiting_for"]) for p in lab.pending()] == [("CCC", [1], "plug_in")]
        await lab.plug(1)
        accepted = await lab.decision()
        assert (accepted["decision"], accepted["id_token"], accepted["evse_id"]) == ("accepted", "CCC", 1)
        await lab.charging(1)
        await lab.probe.wait_for("cp/auth/main/var/pending", lambda p: json.loads(p) == [])

    in_station(broker, tmp_path, station_yaml(2, selection_algorithm="PlugEvents"), scenario)


def test_two_evses_one_reader_user_input(broker: Broker, tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.swipe("AAA")
        assert (await lab.decision())["decision"] == "awaiting_selection"
        await lab.probe.wait_for("cp/auth/main/var/pending", lambda p: json.loads(p) != [])
        [waiting] = lab.pending()
        assert (waiting["evse_ids"], waiting["waiting_for"]) == ([1, 2], "selection")
        assert waiting["expires_at"].endswith("Z")
        assert await lab.probe.call("auth", "main", "select_connector", {"evse_id": 2}) is True
        assert ((await lab.decision())["decision"], lab.decisions[-1]["evse_id"]) == ("accepted", 2)
        assert await lab.probe.call("auth", "main", "select_connector", {"evse_id": 1}) is False
        await lab.swipe("CCC")  # only EVSE 1 is left: no choice to make
        assert ((await lab.decision())["decision"], lab.decisions[-1]["evse_id"]) == ("accepted", 1)
        assert await lab.probe.call("auth", "main", "withdraw_authorization", {"evse_id": 2}) == 1
        assert ((await lab.decision())["decision"], lab.decisions[-1]["evse_id"]) == ("withdrawn", 2)
        await lab.wait_state(2, lambda s: not s["authorized"])

    in_station(broker, tmp_path, station_yaml(2, selection_algorithm="UserInput"), scenario)


def test_validators_asked_in_parallel_first_definite_by_priority(broker: Broker, tmp_path: Path) -> None:
    slow = ("  slow:\n    module: table_validator\n"
            "    config: {delay_s: 0.5, tokens: {CCC: {status: Blocked}}}\n"
            f"  validator:\n    module: table_validator\n    config: {{tokens: {TOKENS}}}\n")

    async def scenario(lab: Lab) -> None:
        await lab.swipe("CCC")  # the slower, better-ranked validator blocks it
        blocked = await lab.decision()
        assert (blocked["decision"], blocked["status"]) == ("rejected", "Blocked")
        await lab.swipe("AAA")  # unknown to the first one: the second decides
        accepted = await lab.decision()
        assert (accepted["decision"], accepted["parent_id"]) == ("accepted", "FLEET")
        await lab.probe.call("auth", "main", "set_master_pass_group_id", {"group_id": "FLEET"})
        await lab.plug(1)
        await lab.charging(1)
        await lab.swipe("BBB")  # FLEET is now the master-pass group
        assert (await lab.decision())["decision"] == "stop_transaction"

    in_station(broker, tmp_path, station_yaml(validators=slow), scenario)
