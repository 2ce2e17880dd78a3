"""token_manual: turns ``present_token`` cmd calls into token events on the token_provider interface."""

from __future__ import annotations

from typing import Any

from chargepoint import Module
from chargepoint.timestamps import utc_now


class TokenManual(Module):
    async def init(self) -> None:
        self.provides["input"].serve("present_token", self.present_token)

    def present_token(self, id_token: str, token_type: str, connectors: list[int] | None) -> dict[str, Any]:
        if self.config["uppercase"]:
            id_token = id_token.upper()
        timestamp = utc_now()
        token: dict[str, Any] = {"id_token": id_token, "token_type": token_type,
                                 "source": self.config["source"], "timestamp": timestamp}
        if connectors is not None:
            token["connectors"] = connectors
        self.provides["main"].publish("token", token)
        self.log.info("token presented", id_token=id_token, token_type=token_type)
        return {"id_token": id_token, "timestamp": timestamp}
