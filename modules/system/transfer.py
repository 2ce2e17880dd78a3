"""Blocking HTTP(S) and FTP transfers, run by the module in a thread executor.

Standard library only (urllib, ftplib, ssl). Every failure becomes a :class:`TransferFailed` with a
message an integrator can act on and the OCPP upload status it maps to; a download never leaves a
partial file under its final name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ftplib
import http.client
import os
import socket
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .locations import Location

CHUNK_BYTES = 64 * 1024
ProgressCallback = Callable[[int, int | None], None]


class TransferFailed(Exception):
    """A transfer failed; ``upload_status`` is the OCPP UploadLogStatus it maps to."""

    def __init__(self, message: str, upload_status: str = "UploadFailure") -> None:
        super().__init__(message)
        self.message = message
        self.upload_status = upload_status


class TransferCancelled(Exception):
    """The job was replaced or the module stops; the transfer gave up at the next chunk."""


@dataclass(frozen=True)
class TransferSettings:
    timeout_s: float
    ca_file: str | None = None
    http_upload_method: str = "POST"


def _ssl_context(settings: TransferSettings) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransferFailed(f"cannot load tls_ca_file {settings.ca_file!r}: {exc}") from None


def _http_request(location: Location, method: str, data: Any = None,
                  headers: dict[str, str] | None = None) -> urllib.request.Request:
    request = urllib.request.Request(location.url, data=data, method=method, headers=headers or {})
    if location.user is not None:
        credentials = f"{location.user}:{location.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    return request


def _open_http(request: urllib.request.Request, settings: TransferSettings) -> http.client.HTTPResponse:
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_ssl_context(settings)))
    return opener.open(request, timeout=settings.timeout_s)  # type: ignore[no-any-return]


def describe_failure(exc: BaseException, location: Location, timeout_s: float) -> TransferFailed:
    """Turn any exception of a transfer into a clear message and the upload status it maps to."""
    where = f"{location.host}:{location.port}" if location.port else location.host
    if isinstance(exc, TransferFailed):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        status = {401: "PermissionDenied", 403: "PermissionDenied", 405: "NotSupportedOperation",
                  501: "NotSupportedOperation"}.get(exc.code, "UploadFailure")
        return TransferFailed(f"HTTP {exc.code} {exc.reason} from {location.redacted}", status)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return describe_failure(exc.reason, location, timeout_s)
    if isinstance(exc, urllib.error.URLError):
        return TransferFailed(f"cannot reach {where}: {exc.reason}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return TransferFailed(f"TLS certificate verification failed for {where}: {detail} "
                              "(set tls_ca_file to the CA that signed the server certificate)")
    if isinstance(exc, ssl.SSLError):
        return TransferFailed(f"TLS error with {where}: {getattr(exc, 'reason', None) or exc}")
    if isinstance(exc, ftplib.error_perm):
        reply = str(exc)
        status = "PermissionDenied" if reply.startswith(("530", "532")) else "UploadFailure"
        return TransferFailed(f"FTP server {where} refused: {reply}", status)
    if isinstance(exc, ftplib.Error | EOFError):
        return TransferFailed(f"FTP error with {where}: {exc or type(exc).__name__}")
    if isinstance(exc, ConnectionRefusedError):
        return TransferFailed(f"connection refused by {where}")
    if isinstance(exc, socket.gaierror):
        return TransferFailed(f"cannot resolve host {location.host!r}: {exc.strerror}")
    if isinstance(exc, TimeoutError):
        return TransferFailed(f"no answer from {where} within {timeout_s:g} s")
    if isinstance(exc, http.client.HTTPException):
        return TransferFailed(f"HTTP protocol error with {where}: {type(exc).__name__} {exc}")
    if isinstance(exc, OSError):
        return TransferFailed(f"{where}: {exc.strerror or exc}")
    return TransferFailed(f"{where}: {type(exc).__name__}: {exc}")


def download(location: Location, destination: Path, settings: TransferSettings, on_progress: ProgressCallback,
             cancel: threading.Event) -> int:
    """Fetch ``location`` into ``destination``; return its size.

    The data goes to a hidden ``.part`` file in the same folder, is flushed to disk, and only
    then renamed to ``destination``, so the final name always holds a complete image.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            if location.scheme == "ftp":
                size = _ftp_download(location, sink, settings, on_progress, cancel)
            else:
                size = _http_download(location, sink, settings, on_progress, cancel)
            sink.flush()
            os.fsync(sink.fileno())
        if cancel.is_set():
            raise TransferCancelled()
        os.replace(part, destination)
        return size
    except TransferCancelled:
        raise
    except BaseException as exc:
        _close_error_response(exc)
        raise describe_failure(exc, location, settings.timeout_s) from None
    finally:
        part.unlink(missing_ok=True)


def _http_download(location: Location, sink: BinaryIO, settings: TransferSettings, on_progress: ProgressCallback,
                   cancel: threading.Event) -> int:
    with _open_http(_http_request(location, "GET"), settings) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        while chunk := response.read(CHUNK_BYTES):
            if cancel.is_set():
                raise TransferCancelled()
            sink.write(chunk)
            received += len(chunk)
            on_progress(received, total)
    if total is not None and received != total:
        raise TransferFailed(f"incomplete download from {location.redacted}: {received} of {total} bytes")
    return received


def _ftp_connect(location: Location, settings: TransferSettings) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=settings.timeout_s)
    try:
        ftp.connect(location.host, location.port or 21)
        ftp.login(location.user or "anonymous", location.password or "anonymous@")
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp


def _ftp_download(location: Location, sink: BinaryIO, settings: TransferSettings, on_progress: ProgressCallback,
                  cancel: threading.Event) -> int:
    ftp = _ftp_connect(location, settings)
    received = 0
    try:
        try:
            total = ftp.size(location.ftp_path)
        except ftplib.Error:
            total = None

        def write(chunk: bytes) -> None:
            nonlocal received
            if cancel.is_set():
                raise TransferCancelled()
            sink.write(chunk)
            received += len(chunk)
            on_progress(received, total)

        ftp.retrbinary(f"RETR {location.ftp_path}", write, CHUNK_BYTES)
        ftp.quit()
    finally:
        ftp.close()
    return received


def upload(location: Location, path: Path, settings: TransferSettings, cancel: threading.Event) -> str:
    """Send the file at ``path`` to ``location`` (a directory URL gets the file name appended).

    Returns where it went (credentials redacted).
    """
    target = location.with_file_name(path.name)
    try:
        if target.scheme == "ftp":
            _ftp_upload(target, path, settings, cancel)
        elif settings.http_upload_method == "PUT":
            _http_put(target, path, settings, cancel)
        else:
            _http_post(location, path, settings, cancel)
            return location.redacted
    except TransferCancelled:
        raise
    except BaseException as exc:
        _close_error_response(exc)
        raise describe_failure(exc, target, settings.timeout_s) from None
    return target.redacted


def _close_error_response(exc: BaseException) -> None:
    """An HTTPError is also the open response of the failed request; release its socket."""
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()


class _CancellableReader:
    """A readable stream over parts (bytes or files) that stops when the job is cancelled."""

    def __init__(self, parts: list[bytes | IO[bytes]], cancel: threading.Event) -> None:
        self._parts = parts
        self._cancel = cancel

    def read(self, size: int = -1) -> bytes:
        if self._cancel.is_set():
            raise TransferCancelled()
        while self._parts:
            head = self._parts[0]
            if isinstance(head, bytes):
                chunk, rest = (head, b"") if size < 0 else (head[:size], head[size:])
                if rest:
                    self._parts[0] = rest
                else:
                    self._parts.pop(0)
            else:
                chunk = head.read(size)
                if not chunk:
                    self._parts.pop(0)
                    continue
            if chunk:
                return chunk
        return b""


def _send(request: urllib.request.Request, settings: TransferSettings) -> None:
    with _open_http(request, settings) as response:
        response.read()


def _http_put(target: Location, path: Path, settings: TransferSettings, cancel: threading.Event) -> None:
    with path.open("rb") as source:
        headers = {"Content-Length": str(path.stat().st_size), "Content-Type": _content_type(path)}
        _send(_http_request(target, "PUT", _CancellableReader([source], cancel), headers), settings)


def _http_post(target: Location, path: Path, settings: TransferSettings, cancel: threading.Event) -> None:
    boundary = f"chargepoint-{uuid.uuid4().hex}"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {_content_type(path)}\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    with path.open("rb") as source:
        headers = {"Content-Length": str(len(head) + path.stat().st_size + len(tail)),
                   "Content-Type": f"multipart/form-data; boundary={boundary}"}
        _send(_http_request(target, "POST", _CancellableReader([head, source, tail], cancel), headers), settings)


def _ftp_upload(target: Location, path: Path, settings: TransferSettings, cancel: threading.Event) -> None:
    ftp = _ftp_connect(target, settings)
    try:
        with path.open("rb") as source:
            ftp.storbinary(f"STOR {target.ftp_path}", source, CHUNK_BYTES,
                           callback=lambda _chunk: _raise_if(cancel))
        ftp.quit()
    finally:
        ftp.close()


def _raise_if(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise TransferCancelled()


def _content_type(path: Path) -> str:
    return "application/zip" if path.suffix == ".zip" else "application/gzip"


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking transfer in a daemon thread (a stalled socket never holds up the process exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome, failure = func(*args), None
        except BaseException as exc:
            outcome, failure = None, exc
        # RuntimeError: the event loop closed while the transfer ran; nobody waits for it any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome, failure)

    threading.Thread(target=work, name=f"transfer-{func.__name__}", daemon=True).start()
    return await future
