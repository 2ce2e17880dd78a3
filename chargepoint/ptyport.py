"""A pseudo-terminal pair as a serial port, for the simulators of serial devices (Modbus meters, PN532).

The simulator keeps the master side; a driver opens the slave side (or a stable symlink to it) as its
serial device. Closing both sides is what a pulled-out USB adapter looks like to the driver.
"""

from __future__ import annotations

import os
import pty
import tty
from pathlib import Path


def open_pty(link: Path | None) -> tuple[int, int, str]:
    """(master fd, slave fd, slave path) of a new raw pair; ``link``, if given, is moved to the slave at once."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo or line editing before the driver configures the port
    slave_path = os.ttyname(slave)
    if link is not None:
        link.parent.mkdir(parents=True, exist_ok=True)
        spare = link.with_name(link.name + ".new")
        spare.unlink(missing_ok=True)
        spare.symlink_to(slave_path)
        spare.replace(link)  # atomic: a driver never sees the link missing while it is replugged
    return master, slave, slave_path


def close_pty(link: Path | None, *fds: int | None) -> None:
    """Remove ``link`` and close the given descriptors (None ones are skipped)."""
    if link is not None:
        link.unlink(missing_ok=True)
    for fd in fds:
        if fd is not None:
            os.close(fd)
