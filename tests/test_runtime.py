"""Modules wired over a real broker: cmds, vars, errors, ready sequencing, failures and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import COUNTER_AND_CLIENT, COUNTER_STANDALONE_AND_CLIENT, Broker, run, running_station, write_wiring

from chargepoint import CmdError
from chargepoint.busprobe import BusProbe


async def call_via_client(probe: BusProbe, cmd: str, args: dict[str, Any] | None = None,
                          timeout_s: float | None = None) -> dict[str, Any]:
    """Let the client module call the counter through the framework and report the outcome."""
    return await probe.call("client", "main", "call_counter",
                            {"cmd": cmd, "args": args or {}, "timeout_s": timeout_s}, timeout=10)


def test_cmd_round_trip_vars_and_ready_hook(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await probe.call("client", "main", "add_via_counter", {"a": 2}) == 2
            assert await probe.call("client", "main", "add_via_counter", {"a": 5}) == 7
            assert await call_via_client(probe, "add", {"a": 1, "b": 2}) == {"result": 10}
            assert await call_via_client(probe, "echo", {"value": {"nested": [1, "x"]}}) == {
                "result": {"nested": [1, "x"]}}
            await asyncio.sleep(0.2)
            totals = await probe.call("client", "main", "seen_totals")
            assert totals[-3:] == [2, 7, 10]
            assert await probe.call("client", "main", "ready_called") is True

    run(scenario())


def test_handler_exception_gives_handler_error_and_module_keeps_serving(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            outcome = await call_via_client(probe, "fail", {"message": "relay welded"})
            assert outcome["error"]["code"] == "handler_error"
            assert "RuntimeError: relay welded" in outcome["error"]["message"]
            assert await probe.call("counter", "main", "add", {"a": 3}) == 3

    run(scenario())


def test_timeout_and_per_call_override(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcome = await call_via_client(probe, "slow", {"seconds": 3})
            assert outcome["error"]["code"] == "timeout"
            assert "within 1 s" in outcome["error"]["message"]
            assert loop.time() - started < 2.5
            assert await call_via_client(probe, "slow", {"seconds": 0.3}, timeout_s=0.1) == {
                "error": {"code": "timeout", "message": "counter.main did not answer slow within 0.1 s"}}
            assert await call_via_client(probe, "slow", {"seconds": 1.2}, timeout_s=3) == {"result": 1.2}

    run(scenario())


def test_schema_violations_both_ways_and_unknown_cmds(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            caller_side = await call_via_client(probe, "add", {"a": "two"})
            assert caller_side["error"]["code"] == "invalid_args"
            missing = await call_via_client(probe, "add", {})
            assert missing["error"]["code"] == "invalid_args"
            with pytest.raises(CmdError) as server_side:
                await probe.call("counter", "main", "add", {"a": 1, "unexpected": True})
            assert server_side.value.code == "invalid_args"
            bad_result = await call_via_client(probe, "bad_result")
            assert bad_result["error"]["code"] == "invalid_result"
            assert (await call_via_client(probe, "no_such_cmd"))["error"]["code"] == "unknown_cmd"
            with pytest.raises(CmdError) as unserved:
                await probe.call("counter", "main", "not_served")
            assert unserved.value.code == "unknown_cmd"
            with pytest.raises(CmdError) as not_in_interface:
                await probe.call("counter", "main", "no_such_cmd")
            assert not_in_interface.value.code == "unknown_cmd"
            assert await probe.call("counter", "main", "add", {"a": 4}) == 4

    run(scenario())


def test_retained_state_seen_by_late_subscriber(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path):
            async with BusProbe(broker.host, broker.port) as probe:
                await probe.call("counter", "main", "add", {"a": 42})
            async with BusProbe(broker.host, broker.port) as late:
                late.watch("cp/counter/main/var/total")
                late.watch("cp/counter/state")
                late.watch("cp/ready")
                await late.wait_for("cp/counter/main/var/total", lambda p: json.loads(p) == 42, 5)
                await late.wait_for("cp/counter/state", lambda p: p == b"ready", 5)
                await late.wait_for("cp/ready", lambda p: p == b"true", 5)

    run(scenario())


def test_errors_raise_and_clear_reach_requiring_module(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            probe.watch("cp/counter/main/error/overflow")
            await probe.call("counter", "main", "add", {"a": 150})
            raised = await probe.wait_for("cp/counter/main/error/overflow", lambda p: json.loads(p)["active"])
            assert "total 150 above 100" in json.loads(raised)["message"]
            await probe.call("counter", "main", "add", {"a": -100})
            await probe.wait_for("cp/counter/main/error/overflow", lambda p: not json.loads(p)["active"])
            await asyncio.sleep(0.2)
            seen = await probe.call("client", "main", "seen_errors")
            assert [(e["type"], e["active"]) for e in seen][-2:] == [("overflow", True), ("overflow", False)]

    run(scenario())


def test_nested_config_defaults_reach_the_module(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, "  counter:\n    module: example_counter\n    config: {start: 7}\n")

    async def scenario() -> None:
        async with running_station(path) as manager, BusProbe(broker.host, broker.port) as probe:
            assert await probe.call("counter", "main", "add", {"a": 1}) == 8
            assert manager.station.modules["counter"].config["labels"] == {"unit": "count", "precision": 0}

    run(scenario())


def test_broker_restart_mid_run(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path):
            async with BusProbe(broker.host, broker.port) as probe:
                assert await probe.call("client", "main", "add_via_counter", {"a": 9}) == 9
            await asyncio.to_thread(broker.restart, 0.5)
            async with BusProbe(broker.host, broker.port) as probe:
                probe.watch("cp/counter/main/var/total")
                probe.watch("cp/ready")
                # Retained values come back from the modules themselves (the broker kept nothing).
                await probe.wait_for("cp/counter/main/var/total", lambda p: json.loads(p) == 9, 15)
                await probe.wait_for("cp/ready", lambda p: p == b"true", 15)
                for _ in range(50):
                    outcome = await call_via_client(probe, "add", {"a": 1})
                    if "result" in outcome:
                        break
                    await asyncio.sleep(0.2)
                assert outcome == {"result": 10}

    run(scenario())


def test_standalone_module_in_its_own_process(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_STANDALONE_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path, ready_timeout=20) as manager, \
                BusProbe(broker.host, broker.port) as probe:
            assert "counter" in manager._children
            assert manager._children["counter"].pid is not None
            assert await probe.call("client", "main", "add_via_counter", {"a": 11}) == 11
            outcome = await call_via_client(probe, "fail")
            assert outcome["error"]["code"] == "handler_error"

    run(scenario())


def test_crash_restarts_only_that_module(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            probe.watch("cp/counter/main/var/started_at")
            probe.watch("cp/counter/state")
            first = await probe.wait_for("cp/counter/main/var/started_at", lambda p: True)
            states: list[bytes] = []
            probe.watch("cp/counter/state", lambda _t, p: states.append(p))
            await probe.call("counter", "main", "crash")
            await probe.wait_for("cp/counter/state", lambda p: p == b"failed", 5)
            # While the counter is down the client still serves, and calling the counter says why.
            assert (await call_via_client(probe, "add", {"a": 1}))["error"]["code"] == "not_ready"
            assert await probe.call("client", "main", "ready_called") is True
            await probe.wait_for("cp/counter/main/var/started_at", lambda p: p != first, 10)
            await probe.wait_for("cp/counter/state", lambda p: p == b"ready", 10)
            assert b"failed" in states and states[-1] == b"ready"
            assert await probe.call("client", "main", "add_via_counter", {"a": 3}) == 3

    run(scenario())


def test_event_published_during_init_reaches_module_that_subscribes_later(broker: Broker, tmp_path: Path) -> None:
    # The client is listed first but the counter may finish init before the client subscribes:
    # non-retained events are held until the station is ready, so none is missed.
    modules = """\
  client:
    module: example_client
    connections:
      counter: [counter.main]
  counter:
    module: example_counter
    config: {announce: true}
"""
    path = write_wiring(tmp_path, broker.port, modules)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            for _ in range(50):
                if await probe.call("client", "main", "seen_added"):
                    break
                await asyncio.sleep(0.1)
            assert await probe.call("client", "main", "seen_added") == [{"a": 0, "b": 0}]

    run(scenario())


def test_module_failing_in_init_is_retried_with_backoff_while_others_serve(broker: Broker, tmp_path: Path) -> None:
    modules = """\
  broken:
    module: example_counter
    config: {fail_init: true}
  counter:
    module: example_counter
"""
    path = write_wiring(tmp_path, broker.port, modules)

    async def scenario() -> None:
        from chargepoint.config import load_station_config
        from chargepoint.manager import Manager

        manager = Manager(load_station_config(path))
        task = asyncio.create_task(manager.run(install_signal_handlers=False))
        try:
            async with BusProbe(broker.host, broker.port) as probe:
                failures: list[bytes] = []
                probe.watch("cp/broken/state", lambda _t, p: failures.append(p))
                await probe.wait_state("counter", "ready")
                assert await probe.call("counter", "main", "add", {"a": 1}) == 1
                await asyncio.sleep(2.0)
                # Back-off 0.5 s, 1 s, ...: two or three attempts in two seconds, not dozens.
                assert 2 <= failures.count(b"failed") <= 4, failures
                assert not manager.station_ready
                with pytest.raises(CmdError) as not_ready:
                    await probe.call("broken", "main", "add", {"a": 1})
                assert not_ready.value.code in ("not_ready", "timeout")
        finally:
            manager.stop_requested.set()
            await asyncio.wait_for(task, 15)

    run(scenario())


def test_killed_standalone_module_goes_offline_and_is_restarted(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_STANDALONE_AND_CLIENT)

    async def scenario() -> None:
        async with running_station(path, ready_timeout=20) as manager, \
                BusProbe(broker.host, broker.port) as probe:
            states: list[bytes] = []
            probe.watch("cp/counter/state", lambda _t, p: states.append(p))
            await probe.wait_state("counter", "ready")
            first_pid = manager._children["counter"].pid
            os.kill(first_pid, signal.SIGKILL)
            await probe.wait_for("cp/counter/state", lambda p: p in (b"offline", b"failed"), 10)
            await probe.wait_for("cp/counter/state", lambda p: p == b"ready", 15)
            assert b"offline" in states
            assert manager._children["counter"].pid != first_pid
            assert await probe.call("client", "main", "add_via_counter", {"a": 5}) == 5

    run(scenario())


def test_validation_can_be_switched_off_and_defaults_still_apply(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, COUNTER_AND_CLIENT)
    path.write_text(path.read_text().replace("settings:\n", "settings:\n  validate_payloads: false\n"))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await probe.call("counter", "main", "add", {"a": 2}) == 2
            with pytest.raises(CmdError) as unchecked:
                await probe.call("counter", "main", "add", {"a": "two"})
            # Not rejected as invalid_args: without validation the handler itself fails.
            assert unchecked.value.code == "handler_error"

    run(scenario())
