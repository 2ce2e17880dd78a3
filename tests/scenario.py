"""Driving a simulated station the way a test lab does: plug, swipe, watch states and session events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from chargepoint.busprobe import BusProbe

ALLOWLIST = """\
tokens:
  - {id_token: AA11, parent_id: FLEET1}
  - {id_token: BB22, parent_id: FLEET1}
  - {id_token: CC33}
  - {id_token: BLOCKED1, blocked: true}
  - {id_token: MASTER1, parent_id: MASTERS}
"""


def evse_pair(index: int, *, time_scale: float = 3600.0, evse_config: str = "") -> str:
    """Wiring of board_<i> (simulated board, EV and meter) and evse_<i> (its EVSE manager)."""
    return (
        f"  board_{index}:\n    module: board_simulator\n"
        f"    config: {{evse_id: {index}, time_scale: {time_scale}, meter_interval_s: 0.2}}\n"
        f"  evse_{index}:\n    module: evse_manager\n"
        f"    config: {{evse_id: {index}, connector_id: 1{evse_config}}}\n"
        f"    connections:\n      board: [board_{index}.board]\n      powermeter: [board_{index}.powermeter]\n"
    )


def station_modules(folder: Path, evse_count: int = 1, *, auth_config: str = "", evse_config: str = "",
                    with_reservation: bool = True) -> str:
    """A complete simulated station: boards, EVSE managers, manual tokens, allow-list, auth, reservation."""
    allowlist = folder / "allowlist.yaml"
    allowlist.write_text(ALLOWLIST)
    evses = ", ".join(f"evse_{i}.evse" for i in range(1, evse_count + 1))
    text = "".join(evse_pair(i, evse_config=evse_config) for i in range(1, evse_count + 1))
    text += (
        "  tokens:\n    module: token_manual\n"
        f"  allowlist:\n    module: allowlist_validator\n    config: {{file: {allowlist}}}\n"
        f"  auth:\n    module: auth\n    config: {{connection_timeout_s: 30, token_debounce_s: 0{auth_config}}}\n"
        "    connections:\n      token_provider: [tokens.main]\n      token_validator: [allowlist.main]\n"
        f"      evse_manager: [{evses}]\n"
    )
    if with_reservation:
        text += "      reservation: [reservation.main]\n"
        text += f"  reservation:\n    module: reservation\n    connections:\n      evse_manager: [{evses}]\n"
    return text


class Lab:
    """A BusProbe with the vocabulary of a test lab."""

    def __init__(self, probe: BusProbe, evse_count: int = 1) -> None:
        self.probe = probe
        self.events: dict[int, list[dict[str, Any]]] = {i: [] for i in range(1, evse_count + 1)}
        for i in range(1, evse_count + 1):
            probe.watch(f"cp/evse_{i}/evse/var/state")
            probe.watch(f"cp/evse_{i}/evse/var/session_event",
                        lambda _t, p, i=i: self.events[i].append(json.loads(p)))
            probe.watch(f"cp/board_{i}/board/var/relay_state")
            probe.watch(f"cp/board_{i}/powermeter/var/powermeter")

    async def plug(self, evse: int, **ev: Any) -> None:
        await self.probe.call(f"board_{evse}", "ev", "plug_in", ev)

    async def unplug(self, evse: int) -> None:
        await self.probe.call(f"board_{evse}", "ev", "unplug")

    async def ev_pause(self, evse: int) -> None:
        await self.probe.call(f"board_{evse}", "ev", "pause")

    async def ev_resume(self, evse: int) -> None:
        await self.probe.call(f"board_{evse}", "ev", "resume")

    async def fault(self, evse: int, kind: str) -> None:
        await self.probe.call(f"board_{evse}", "ev", "fault", {"kind": kind})

    async def swipe(self, token: str, **extra: Any) -> None:
        await self.probe.call("tokens", "input", "present_token", {"id_token": token, **extra})

    async def evse(self, evse: int, cmd: str, **args: Any) -> Any:
        return await self.probe.call(f"evse_{evse}", "evse", cmd, args)

    def state(self, evse: int) -> dict[str, Any]:
        payload = self.probe.latest(f"cp/evse_{evse}/evse/var/state")
        return json.loads(payload) if payload else {}

    async def wait_charger_state(self, evse: int, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        topic = f"cp/evse_{evse}/evse/var/state"
        payload = await self.probe.wait_for(topic, lambda p: json.loads(p)["charger_state"] in states, timeout)
        return json.loads(payload)

    async def wait_event(self, evse: int, kind: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first session event of type ``kind`` at index ``after`` or later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events[evse][after:]:
                if event["type"] == kind:
                    return event
            if loop.time() > deadline:
                seen = [e["type"] for e in self.events[evse]]
                raise TimeoutError(f"evse {evse}: no {kind} within {timeout} s; events: {seen}")
            await asyncio.sleep(0.02)

    def kinds(self, evse: int) -> list[str]:
        return [event["type"] for event in self.events[evse]]

    def relay_closed(self, evse: int) -> bool:
        payload = self.probe.latest(f"cp/board_{evse}/board/var/relay_state")
        return bool(payload and json.loads(payload).get("closed"))

    async def energy_Wh(self, evse: int) -> float:
        payload = await self.probe.wait_for(f"cp/board_{evse}/powermeter/var/powermeter", lambda p: True, 5)
        return float(json.loads(payload)["energy_Wh_import"]["total"])
