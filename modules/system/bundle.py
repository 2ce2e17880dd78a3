"""Collecting log files into one archive (tar.gz or zip) for upload; blocking, run in a thread."""

from __future__ import annotations

import glob
import io
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .locations import lines_in_window, safe_file_name


@dataclass
class BundleRequest:
    patterns: list[str]
    log_type: str
    oldest: datetime | None
    latest: datetime | None
    archive_format: str
    command_output: bytes | None = None
    notes: list[str] = field(default_factory=list)


def expand_patterns(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """The files the patterns (paths or globs) name, in order and without repeats; and the patterns that match none."""
    found: dict[Path, None] = {}
    missing: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            missing.append(pattern)
        found.update(dict.fromkeys(files))
    return list(found), missing


def _filtered(path: Path, request: BundleRequest) -> bytes:
    if request.oldest is None and request.latest is None:
        return path.read_bytes()
    text = path.read_text(encoding="utf-8", errors="replace")
    return "".join(lines_in_window(text.splitlines(keepends=True), request.oldest, request.latest)).encode()


def build_bundle(request: BundleRequest, archive: Path) -> list[str]:
    """Write the archive; return the member names. Unreadable files are noted in ``MANIFEST.txt``."""
    members: dict[str, bytes] = {}
    files, missing = expand_patterns(request.patterns)
    notes = list(request.notes)
    notes += [f"no file matches {pattern}" for pattern in missing]
    for path in files:
        name = _unique(safe_file_name(path.name, "log.txt"), members)
        try:
            members[name] = _filtered(path, request)
        except OSError as exc:
            notes.append(f"cannot read {path}: {exc.strerror or exc}")
    if request.command_output is not None:
        members[_unique("command-output.log", members)] = _window_bytes(request.command_output, request)
    window = f"{_show(request.oldest)} .. {_show(request.latest)}"
    manifest = [f"log_type: {request.log_type}", f"window: {window}",
                f"files: {', '.join(str(p) for p in files) or 'none'}", *notes]
    members["MANIFEST.txt"] = ("\n".join(manifest) + "\n").encode()
    archive.parent.mkdir(parents=True, exist_ok=True)
    if request.archive_format == "zip":
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name, data in members.items():
                bundle.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                bundle.addfile(info, io.BytesIO(data))
    return list(members)


def _window_bytes(data: bytes, request: BundleRequest) -> bytes:
    text = data.decode("utf-8", errors="replace")
    return "".join(lines_in_window(text.splitlines(keepends=True), request.oldest, request.latest)).encode()


def _unique(name: str, taken: dict[str, bytes]) -> str:
    candidate, index = name, 1
    while candidate in taken or candidate == "MANIFEST.txt":
        index += 1
        candidate = f"{index}-{name}"
    return candidate


def _show(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "open"
