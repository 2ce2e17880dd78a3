"""allowlist_validator: answers ``validate_token`` from a local file, reloaded when it changes."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargepoint import Module

from .allowlist import AllowList, AllowListError, file_format, parse_allowlist

FileSignature = tuple[int, int, int]  # mtime_ns, size, inode: a rewrite or an atomic replace changes one


class AllowlistValidator(Module):
    async def init(self) -> None:
        configured = Path(self.config["file"]).expanduser()
        # Relative paths follow the wiring file, like every other path in it.
        self.path = configured if configured.is_absolute() else self.config_dir / configured
        self.format = file_format(self.path)
        self.allowlist: AllowList | None = None
        self._signature: FileSignature | None = None
        self._problem: str | None = None
        self.reload()
        self.provides["main"].serve("validate_token", self.validate_token)

    async def ready(self) -> None:
        self.spawn(self._watch(), name=f"{self.id}-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config["reload_interval_s"])
            self.reload()

    def validate_token(self, id_token: str, token_type: str) -> dict[str, Any]:
        if self.allowlist is None:
            answer = {"status": "Unknown", "parent_id": None, "expiry_time": None,
                      "reason": f"no allow-list loaded: {self._problem}"}
        else:
            answer = self.allowlist.decide(id_token, datetime.now(UTC), self.config["unlisted_status"])
        self.log.info("token validated", id_token=id_token, token_type=token_type, status=answer["status"],
                      reason=answer["reason"])
        return answer

    def reload(self) -> None:
        """Load the file if it changed since the last look; on any problem keep the last good list."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            self._reject(f"{self.path}: cannot read: {exc.strerror}")
            self._signature = None
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            text = self.path.read_text(encoding="utf-8")
            allowlist = parse_allowlist(text, self.format, str(self.path))
        except AllowListError as exc:
            self._reject(str(exc))
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._reject(f"{self.path}: cannot read: {exc}")
            return
        self.allowlist, self._problem = allowlist, None
        self.provides["main"].clear_error("backend_unavailable")
        self.log.info("allow-list loaded", file=str(self.path), tokens=len(allowlist.entries))

    def _reject(self, problem: str) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        kept = "none loaded yet" if self.allowlist is None else f"{len(self.allowlist.entries)} tokens"
        self.log.error("allow-list rejected, last good list kept", problem=problem, kept=kept)
        if self.allowlist is None:
            self.provides["main"].raise_error("backend_unavailable", f"allow-list unusable: {problem}")
