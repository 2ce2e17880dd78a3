"""OCPP benchmark: validating + encoding a MeterValues CALL with 10 sampled values, our path against the ocpp package.

Our path: the OCA schema compiled by fastjsonschema (``modules/ocpp16/schemas.py``) and compact JSON
(``modules/ocpp16/rpc.encode_call``). Baseline, measured in the same run: the ``ocpp`` package's own
jsonschema validation (``ocpp.messages._validate_payload``, the synchronous core of the public
``validate_payload``, validators cached as the package does) and ``Call.to_json()``; also the public
``await validate_payload(...)``, which runs the same check in a thread executor. Prints µs per message
(median of interleaved rounds) and the ratio; goal ≥ 10x.
Then, in the same run, the station figures of ``bench/ocpp_station.py``: resident memory of config/sil.yaml with
OCPP booted (goal ≤ 60 MB), spawn -> BootNotification (goal ≤ 1 s), plug-in -> StatusNotification(Preparing)
as a multiple of the bus cmd round trip.
Usage: .venv/bin/python bench/ocpp.py [--messages 2000] [--starts 5] [--cycles 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# this file is named like the package it measures: keep its folder off the path so `import ocpp` finds the package
sys.path[:] = [str(ROOT), *(entry for entry in sys.path if Path(entry or ".").resolve() != BENCH)]

from ocpp.messages import Call, _validate_payload, validate_payload  # noqa: E402

from bench.ocpp_station import station_figures  # noqa: E402
from modules.ocpp16.rpc import encode_call  # noqa: E402

BATCHES = 7
MEASURANDS = [
    ("Energy.Active.Import.Register", "Wh", None), ("Power.Active.Import", "W", None),
    ("Current.Import", "A", "L1"), ("Current.Import", "A", "L2"), ("Current.Import", "A", "L3"),
    ("Voltage", "V", "L1-N"), ("Voltage", "V", "L2-N"), ("Voltage", "V", "L3-N"),
    ("Current.Offered", "A", None), ("SoC", "Percent", None),
]


def meter_values(counter: int) -> dict[str, Any]:
    sampled = []
    for measurand, unit, phase in MEASURANDS:
        value: dict[str, Any] = {"value": f"{1000 + counter % 97}.{counter % 10}", "context": "Sample.Periodic",
                                 "format": "Raw", "measurand": measurand, "location": "Outlet", "unit": unit}
        if phase:
            value["phase"] = phase
        sampled.append(value)
    return {"connectorId": 1, "transactionId": 4711,
            "meterValue": [{"timestamp": "2026-03-01T10:15:30.123Z", "sampledValue": sampled}]}


def ours(payload: dict[str, Any], message_id: str) -> str:
    return encode_call(message_id, "MeterValues", payload)


def ocpp_package(payload: dict[str, Any], message_id: str) -> str:
    message = Call(message_id, "MeterValues", payload)
    _validate_payload(message, "1.6")
    return message.to_json()


def batch_us(path: Callable[[dict[str, Any], str], str], payloads: list[dict[str, Any]], batch: int) -> float:
    """Mean µs per message over one pass through ``payloads``."""
    started = time.perf_counter()
    for index, payload in enumerate(payloads):
        path(payload, f"{batch}-{index}")
    return (time.perf_counter() - started) / len(payloads) * 1e6


def interleaved_us(payloads: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median µs per message of ours and of the baseline, and the median of the per-round ratios.

    The two paths run back to back in every round, so a machine that gets busier or quieter during the
    run shifts both alike.
    """
    for index, payload in enumerate(payloads[:50]):
        ours(payload, f"warm-{index}")
        ocpp_package(payload, f"warm-{index}")
    our_rounds, baseline_rounds = [], []
    for batch in range(BATCHES):
        our_rounds.append(batch_us(ours, payloads, batch))
        baseline_rounds.append(batch_us(ocpp_package, payloads, batch))
    ratios = [baseline / our for our, baseline in zip(our_rounds, baseline_rounds, strict=True)]
    return statistics.median(our_rounds), statistics.median(baseline_rounds), statistics.median(ratios)


async def ocpp_package_async_us(payloads: list[dict[str, Any]]) -> float:
    batches = []
    for batch in range(BATCHES):
        started = time.perf_counter()
        for index, payload in enumerate(payloads):
            message = Call(f"{batch}-{index}", "MeterValues", payload)
            await validate_payload(message, "1.6")
            message.to_json()
        batches.append((time.perf_counter() - started) / len(payloads) * 1e6)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per batch (default 2000)")
    parser.add_argument("--starts", type=int, default=5, help="station starts timed to BootNotification (default 5)")
    parser.add_argument("--cycles", type=int, default=100, help="plug/unplug cycles (default 100)")
    args = parser.parse_args()
    payloads = [meter_values(counter) for counter in range(args.messages)]
    assert ours(payloads[0], "x") == ocpp_package(payloads[0], "x"), "both paths must produce the same frame"
    our_us, baseline_us, ratio = interleaved_us(payloads)
    async_us = asyncio.run(ocpp_package_async_us(payloads[: max(1, args.messages // 4)]))
    print("MeterValues CALL with 10 sampled values: validate + encode, µs per message (median of "
          f"{BATCHES} interleaved rounds of {args.messages})")
    print(f"  ours (fastjsonschema + compact json)               {our_us:8.1f} µs")
    print(f"  ocpp package (jsonschema Draft4, sync core)        {baseline_us:8.1f} µs")
    print(f"  ocpp package (await validate_payload, executor)    {async_us:8.1f} µs")
    print(f"  ratio ocpp package / ours: {ratio:.1f}x (median of the per-round ratios; goal >= 10x); "
          f"with the executor: {async_us / our_us:.1f}x", flush=True)
    station_figures(args.starts, args.cycles)


if __name__ == "__main__":
    main()
