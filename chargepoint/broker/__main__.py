"""Run the embedded broker as a process: ``python -m chargepoint.broker --host H --port N``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from chargepoint.broker.embedded import EmbeddedBroker


async def _serve(host: str, port: int) -> None:
    broker = EmbeddedBroker(host, port)
    await broker.start()
    print(f"listening {host}:{broker.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m chargepoint.broker",
                                     description="Embedded MQTT 3.1.1 broker (QoS 0/1, retained, wills).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="port to bind, 0 for any (default 1883)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args.host, args.port))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
