"""Every OCPP frame with its direction and UTC time, as JSON lines in a size-rotated file.

The AuthorizationKey never reaches the file: a ChangeConfiguration of that key is written with its value
replaced by ``***``. ``python -m modules.ocpp16.message_log FILE > log.html`` renders a file (oldest rotated
part first when given several) as one HTML page a person can open in a browser.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from chargepoint.timestamps import utc_now

_SECRET_VALUE = re.compile(r'("value"\s*:\s*)"(?:[^"\\]|\\.)*"')


def masked(frame: str) -> str:
    """The frame with the value of a ChangeConfiguration(AuthorizationKey) replaced."""
    if "authorizationkey" not in frame.lower():
        return frame
    return _SECRET_VALUE.sub(r'\1"***"', frame)


class MessageLog:
    """Appends through one open, line-buffered file (a line reaches the kernel at once, so a killed process
    keeps every line it wrote) and tracks the size in memory instead of asking the file system per frame."""

    def __init__(self, path: Path, max_bytes: int = 1 << 20, keep: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = None
        self._size = 0

    def write(self, direction: str, frame: str) -> None:
        record: dict[str, Any] = {"time": utc_now(), "direction": direction, "frame": masked(frame)}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            if self._file is None:
                self._open()
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self.close()
                self._rotate()
                self._open()
            assert self._file is not None
            self._file.write(line)
            self._size += len(line.encode("utf-8"))
        except OSError:
            self.close()  # the message log must never stop OCPP; the next frame tries again

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._size = self._file.tell()

    def _rotate(self) -> None:
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


_KIND = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR"}


def render_html(lines: Iterable[str]) -> str:
    """One HTML page with a row per frame (time, direction, kind, action, frame); bad lines are shown as such."""
    actions: dict[str, str] = {}
    rows = []
    for line in lines:
        try:
            record = json.loads(line)
            frame = json.loads(record["frame"])
            kind = _KIND.get(frame[0], "?")
            if kind == "CALL":
                actions[frame[1]] = frame[2]
            action = actions.get(frame[1], "") if kind != "CALL" else frame[2]
            cells = [record["time"], "station → CSMS" if record["direction"] == "out" else "CSMS → station",
                     kind, action, record["frame"]]
        except (ValueError, KeyError, TypeError, IndexError):
            cells = ["", "", "unreadable", "", line.strip()]
        rows.append(f'<tr class="{html.escape(cells[2])}">' + "".join(
            f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>OCPP message log</title><style>"
            "body{font-family:sans-serif}td{padding:2px 8px;vertical-align:top}td:last-child{font-family:monospace;"
            "word-break:break-all}tr.CALLERROR{background:#fdd}tr.CALL{background:#eef}</style></head><body>"
            "<table><tr><th>time (UTC)</th><th>direction</th><th>kind</th><th>action</th><th>frame</th></tr>"
            + "".join(rows) + "</table></body></html>\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m modules.ocpp16.message_log FILE [FILE...] > log.html")
    sys.stdout.write(render_html(line for name in sys.argv[1:]
                                 for line in Path(name).read_text(encoding="utf-8").splitlines()))
