"""A station for auth and reservation tests: token_manual, a table validator and fake EVSEs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring

from chargepoint.busprobe import BusProbe

TOKENS = ("{AAA: {status: Accepted, parent_id: FLEET}, BBB: {status: Accepted, parent_id: FLEET}, "
          "CCC: {status: Accepted, parent_id: OTHER}, BAD: {status: Blocked}, "
          "COP: {status: Accepted, parent_id: POLICE}}")
DEBOUNCE_S = 0.2


def station_yaml(evses: int = 1, reservation: bool = False, validators: str | None = None,
                 **auth_config: Any) -> str:
    """Wiring of a station: tokens, validator(s), ``evses`` fake EVSEs, auth, optionally reservation."""
    config = {"token_debounce_s": DEBOUNCE_S, "master_pass_group_id": "POLICE", **auth_config}
    evse_refs = ", ".join(f"evse_{n}.evse" for n in range(1, evses + 1))
    text = "  tokens: {module: token_manual}\n"
    text += validators or f"  validator:\n    module: table_validator\n    config: {{tokens: {TOKENS}}}\n"
    validator_refs = "[validator.main]" if validators is None else "[slow.main, validator.main]"
    for n in range(1, evses + 1):
        text += f"  evse_{n}: {{module: fake_evse, config: {{evse_id: {n}}}}}\n"
    text += (f"  auth:\n    module: auth\n    config: {json.dumps(config)}\n    connections:\n"
             f"      token_provider: [tokens.main]\n      token_validator: {validator_refs}\n"
             f"      evse_manager: [{evse_refs}]\n")
    if reservation:
        text += "      reservation: [reservation.main]\n"
        text += f"  reservation:\n    module: reservation\n    connections: {{evse_manager: [{evse_refs}]}}\n"
    return text


class Lab:
    """Drives the station like a test lab: swipe, plug, and watch auth's decisions and the EVSEs."""

    def __init__(self, probe: BusProbe) -> None:
        self.probe = probe
        self.decisions: list[dict[str, Any]] = []
        self.consumed = 0
        self.arrived = asyncio.Event()
        self.swiped: dict[str, float] = {}
        probe.watch("cp/auth/main/var/decision", self._on_decision)
        probe.watch("cp/auth/main/var/pending")
        probe.watch("cp/+/evse/var/state")

    def _on_decision(self, _topic: str, payload: bytes) -> None:
        self.decisions.append(json.loads(payload))
        self.arrived.set()

    async def decision(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next decision auth published."""

        async def wait() -> None:
            while len(self.decisions) <= self.consumed:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(wait(), timeout)
        self.consumed += 1
        return self.decisions[self.consumed - 1]

    async def swipe(self, id_token: str, connectors: list[int] | None = None, debounce: bool = True) -> None:
        """Present a token; unless ``debounce`` is False, first wait out auth's debounce window for it."""
        loop = asyncio.get_running_loop()
        if debounce and id_token in self.swiped:
            await asyncio.sleep(max(0.0, self.swiped[id_token] + DEBOUNCE_S + 0.05 - loop.time()))
        self.swiped[id_token] = loop.time()
        await self.probe.call("tokens", "input", "present_token", {"id_token": id_token, "connectors": connectors})

    async def plug(self, evse: int) -> None:
        await self.probe.call(f"evse_{evse}", "control", "plug_in")

    async def unplug(self, evse: int) -> None:
        await self.probe.call(f"evse_{evse}", "control", "unplug")

    async def cmds(self, evse: int) -> list[tuple[str, dict[str, Any]]]:
        calls = await self.probe.call(f"evse_{evse}", "control", "received")
        return [(call["cmd"], call["args"]) for call in calls]

    async def wait_state(self, evse: int, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        topic = f"cp/evse_{evse}/evse/var/state"
        return json.loads(await self.probe.wait_for(topic, lambda p: predicate(json.loads(p)), 5))

    async def charging(self, evse: int) -> None:
        await self.wait_state(evse, lambda s: s["transaction_active"])

    def pending(self) -> list[dict[str, Any]]:
        return json.loads(self.probe.latest("cp/auth/main/var/pending") or b"null")


def in_station(broker: Broker, tmp_path: Path, modules: str, scenario: Callable[[Any], Any],
               lab_class: Callable[[BusProbe], Lab] = Lab) -> None:
    """Run ``scenario(lab)`` in a station; the lab watches the bus from before the station starts."""
    path = write_wiring(tmp_path, broker.port, modules)

    async def main() -> None:
        async with BusProbe(broker.host, broker.port) as probe:
            lab = lab_class(probe)
            async with running_station(path):
                await scenario(lab)

    run(main(), 60)
