"""Run an emulated PN532: ``python -m simulators.pn532 [--link PATH]``.

Prints the serial port to configure in ``rfid_pn532`` (the link, or the pty's slave path) on the first
line of stdout, then reads commands from stdin, one per line: ``present UID``, ``remove``, ``garble``,
``mute``, ``unmute``, ``unplug``, ``replug``, ``quit``.
"""

from __future__ import annotations

import argparse
import sys

from .emulator import Pn532Emulator

HELP = "commands: present UID | remove | garble | mute | unmute | unplug | replug | quit"


def execute(emulator: Pn532Emulator, line: str) -> bool:
    """Carry out one command line; False when the emulator should stop."""
    words = line.split()
    if not words:
        return True
    name, args = words[0].lower(), words[1:]
    simple = {"remove": emulator.remove, "garble": emulator.garble_next, "mute": emulator.mute,
              "unmute": emulator.unmute, "unplug": emulator.unplug, "replug": emulator.replug}
    if name in ("quit", "exit"):
        return False
    if name == "present" and len(args) == 1:
        emulator.present(args[0])
    elif name in simple and not args:
        simple[name]()
    else:
        raise ValueError(f"unknown command {line.strip()!r}; {HELP}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.pn532", description=__doc__.splitlines()[0])
    parser.add_argument("--link", help="symlink kept pointing at the current pty (needed to follow a replug)")
    args = parser.parse_args(argv)
    with Pn532Emulator(link=args.link) as emulator:
        print(emulator.port, flush=True)
        print(HELP, file=sys.stderr, flush=True)
        for line in sys.stdin:
            try:
                if not execute(emulator, line):
                    break
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                continue
            print("ok", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
