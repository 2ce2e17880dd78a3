"""Soak: the fault-injection driver of tests/fault_lab.py for many iterations; prints what it checked.

Each iteration runs a fresh station (`chargepoint run`, its own process and state directory) against the recording
CSMS on a broker this script starts, drives ``--rounds`` sessions with random faults (kill -9, CSMS down / silent /
CALLERROR / dropped socket, broker restart), drains the queue and checks the CSMS's recording. Seeded:
``--seed S`` replays the same choices. Exit status 1 when anything was lost, duplicated or out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

# bench/ocpp.py would shadow the ocpp package: the tests folder takes the script folder's place on the path
sys.path[0] = str(Path(__file__).resolve().parent.parent / "tests")

from fault_lab import run_fault_iterations  # noqa: E402
from helpers import Broker  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5, help="stations to run (each with --rounds sessions)")
    parser.add_argument("--rounds", type=int, default=8, help="sessions with a random fault per iteration")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="seed of the first iteration")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop starting iterations after this long")
    parser.add_argument("--evses", type=int, default=2, help="EVSEs per station")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    print(f"soak seed={args.seed} iterations={args.iterations} rounds={args.rounds} evses={args.evses}", flush=True)
    broker = Broker()
    broker.start()
    started = time.monotonic()
    kills = transactions = lost = duplicated = violations = iterations = 0
    try:
        for iteration in range(args.iterations):
            if args.minutes and time.monotonic() - started > args.minutes * 60:
                break
            seed = args.seed + iteration
            with tempfile.TemporaryDirectory(prefix="chargepoint-soak-") as folder:
                report, driver = asyncio.run(run_fault_iterations(Path(folder), broker, seed, args.rounds,
                                                                  evse_count=args.evses))
            iterations += 1
            kills += driver.station.kills
            transactions += report.transactions
            lost += report.lost
            duplicated += report.duplicated
            violations += len(report.violations)
            print(f"  iteration {iteration} seed={seed}: {report.summary()}", flush=True)
            for violation in report.violations:
                print(f"    {violation}")
    finally:
        broker.stop()
    print(f"iterations={iterations} kill_-9_iterations_run={kills} transactions_checked={transactions} "
          f"lost={lost} duplicated={duplicated} rule_violations={violations}")
    return 1 if lost or duplicated or violations else 0


if __name__ == "__main__":
    sys.exit(main())
