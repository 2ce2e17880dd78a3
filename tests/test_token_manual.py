"""token_manual over a real broker: a presented token becomes a token event for auth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Broker, run, running_station, write_wiring

from chargepoint import CmdError
from chargepoint.busprobe import BusProbe

TOKENS = "  tokens:\n    module: token_manual\n    config: {source: lab_desk}\n"


def test_present_token_publishes_token_event(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, TOKENS)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            seen: list[dict[str, object]] = []
            probe.watch("cp/tokens/main/var/token", lambda _t, p: seen.append(json.loads(p)))
            await probe.wait_state("tokens", "ready")
            result = await probe.call("tokens", "input", "present_token", {"id_token": "04a1b2c3", "connectors": [2]})
            assert result["id_token"] == "04A1B2C3"
            await probe.wait_for("cp/tokens/main/var/token", lambda p: True, 5)
            assert seen[-1]["id_token"] == "04A1B2C3"
            assert seen[-1]["source"] == "lab_desk"
            assert seen[-1]["token_type"] == "rfid"
            assert seen[-1]["connectors"] == [2]
            assert str(seen[-1]["timestamp"]).endswith("Z")
            with pytest.raises(CmdError) as empty:
                await probe.call("tokens", "input", "present_token", {"id_token": ""})
            assert empty.value.code == "invalid_args"

    run(scenario())
