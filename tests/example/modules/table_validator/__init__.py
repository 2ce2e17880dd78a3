"""Test-only validator: answers ``validate_token`` from the ``tokens`` table of its config."""

from __future__ import annotations

import asyncio
from typing import Any

from chargepoint import Module


class TableValidator(Module):
    async def init(self) -> None:
        self.provides["main"].serve("validate_token", self.validate_token)

    async def validate_token(self, id_token: str, token_type: str) -> dict[str, Any]:
        await asyncio.sleep(self.config["delay_s"])
        entry = self.config["tokens"].get(id_token, {"status": self.config["unknown_status"]})
        return {"status": entry["status"], "parent_id": entry.get("parent_id"), "expiry_time": None,
                "reason": f"{self.id}: {id_token} is {entry['status']}"}
