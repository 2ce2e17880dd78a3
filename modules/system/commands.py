"""Host commands from the configuration: parsing, placeholder filling (pure) and running them."""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from typing import Any


class CommandConfigError(ValueError):
    """A command in the configuration cannot be used."""


def parse_command(value: Any, where: str) -> list[str] | None:
    """A configured command (a list of arguments, or a string split like a shell would), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise CommandConfigError(f"config {where}: cannot split {value!r}: {exc}") from None
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = list(value)
    else:
        raise CommandConfigError(f"config {where}: expected a list of strings or a string")
    if not argv or not argv[0]:
        raise CommandConfigError(f"config {where}: the command is empty")
    return argv


def fill_command(argv: list[str], values: dict[str, str], append: str | None = None) -> list[str]:
    """Replace ``{name}`` in each argument with its value; only the given names are touched.

    ``append`` names a placeholder whose value is added as the last argument when no argument
    mentions it (so ``[my-installer]`` receives the firmware path too).
    """
    filled = []
    for argument in argv:
        for name, value in values.items():
            argument = argument.replace("{" + name + "}", value)
        filled.append(argument)
    if append is not None and not any("{" + append + "}" in argument for argument in argv):
        filled.append(values[append])
    return filled


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    message: str
    output: bytes = b""
    still_running: bool = False


def _tail(output: bytes, limit: int = 300) -> str:
    text = output.decode("utf-8", errors="replace").strip()
    lines = text.splitlines()
    return lines[-1][:limit] if lines else ""


async def run_command(argv: list[str], timeout_s: float, *, detach_after_s: float | None = None) -> CommandResult:
    """Run ``argv``; ok when it exits 0 within ``timeout_s``.

    With ``detach_after_s``, a command still running after that long counts as started (a reboot
    command may never return) and is left running.
    """
    try:
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return CommandResult(False, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    wait_s = timeout_s if detach_after_s is None else detach_after_s
    try:
        output, _ = await asyncio.wait_for(process.communicate(), wait_s)
    except TimeoutError:
        if detach_after_s is not None:
            return CommandResult(True, f"{argv[0]} still running after {wait_s:g} s", still_running=True)
        process.kill()
        await process.wait()
        return CommandResult(False, f"{argv[0]} did not finish within {timeout_s:g} s (killed)")
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    last_line = _tail(output)
    if process.returncode != 0:
        detail = f": {last_line}" if last_line else ""
        return CommandResult(False, f"{argv[0]} exited with status {process.returncode}{detail}", output)
    return CommandResult(True, last_line, output)
