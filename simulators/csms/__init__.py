"""A small OCPP 1.6-J central system for SIL and test labs (plain package, not a station module).

``serve_forever`` runs it until a stop event; ``chargepoint csms serve`` is the command-line front.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .api import HttpApi
from .policy import STEVE_PATH_PREFIX, Policy, PolicyError, Station, Tag, parse_stations, parse_tags
from .server import SENDABLE_ACTIONS, CentralSystem, CsmsError
from .store import Store

__all__ = ["SENDABLE_ACTIONS", "STEVE_PATH_PREFIX", "CentralSystem", "CsmsError", "HttpApi", "Policy", "PolicyError",
           "Station", "Store", "Tag", "parse_stations", "parse_tags", "serve_forever"]


async def serve_forever(policy: Policy, db: Path | None, stop: asyncio.Event, *, host: str = "127.0.0.1",
                        port: int = 9000, api_host: str = "127.0.0.1", api_port: int | None = 9001,
                        announce: bool = True) -> None:
    """Run the WebSocket server (and the HTTP API unless ``api_port`` is None) until ``stop`` is set."""
    store = Store(db)
    csms = CentralSystem(policy, store, host, port)
    await csms.start()
    api = HttpApi(csms, api_host, api_port) if api_port is not None else None
    if api is not None:
        api.start()
    if announce:
        print(f"csms: OCPP 1.6-J on {csms.url}<ChargePointId>", flush=True)
        if api is not None:
            print(f"csms: HTTP API on {api.url}", flush=True)
    try:
        await stop.wait()
    finally:
        if api is not None:
            api.close()
        await csms.close()
        store.close()
