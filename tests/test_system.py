"""The system module in a running station, against real HTTP, HTTPS and FTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, run, running_station, write_wiring
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from chargepoint import CmdError
from chargepoint.broker.launch import free_port
from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import to_rfc3339

FIRMWARE = os.urandom(300_000)
FINAL_FIRMWARE = {"Downloaded", "DownloadFailed", "Installed", "InstallationFailed", "InstallRebooting"}
FINAL_UPLOAD = {"Uploaded", "UploadFailure", "BadMessage", "NotSupportedOperation", "PermissionDenied"}
FTP_USER, FTP_PASSWORD = "diag", "s3cret"


# -- loopback servers --------------------------------------------------------------------------

@dataclass
class HttpLog:
    gets: list[tuple[str, float]] = field(default_factory=list)
    uploads: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    failures_left: dict[str, int] = field(default_factory=dict)


class Handler(BaseHTTPRequestHandler):
    """/fw/* serves FIRMWARE; /flaky/<n>/* fails n times with 503 first; /upload/* records PUT and POST
    bodies; /forbidden/* answers 403, /noput/* 405; anything else 404."""

    server: Any

    def do_GET(self) -> None:
        log: HttpLog = self.server.log
        log.gets.append((self.path, time.time()))
        if self.path.startswith("/flaky/"):
            left = log.failures_left.setdefault(self.path, int(self.path.split("/")[2]))
            if left > 0:
                log.failures_left[self.path] = left - 1
                return self._answer(503, b"busy")
            return self._answer(200, FIRMWARE)
        if self.path.startswith("/fw/"):
            return self._answer(200, FIRMWARE)
        self._answer(404, b"no such file")

    def _receive(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/forbidden/"):
            return self._answer(403, b"")
        if self.path.startswith("/noput/"):
            return self._answer(405, b"")
        self.server.log.uploads.append((self.command, self.path, dict(self.headers), body))
        self._answer(201, b"")

    do_PUT = do_POST = _receive

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class HttpServer:
    base: str
    log: HttpLog


def serve_http(tls: ssl.SSLContext | None = None) -> Iterator[HttpServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.log = HttpLog()  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}",
                         server.log)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http() -> Iterator[HttpServer]:
    yield from serve_http()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make the self-signed certificate for the HTTPS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def https(tls_files: tuple[Path, Path]) -> Iterator[HttpServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    yield from serve_http(context)


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An FTP server with FIRMWARE at /fw/ftp.bin and a writable /incoming/ for user diag."""
    root = tmp_path / "ftp_root"
    (root / "fw").mkdir(parents=True)
    (root / "incoming").mkdir()
    (root / "fw" / "ftp.bin").write_bytes(FIRMWARE)
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmw")
    handler = type("LoopbackFTPHandler", (FTPHandler,), {"authorizer": authorizer, "auth_failed_timeout": 0.05})
    server = FTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False)
        server.close_all()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"ftp://{FTP_USER}:{FTP_PASSWORD}@127.0.0.1:{server.address[1]}", root
    finally:
        stop.set()
        thread.join(5)


# -- station helpers --------------------------------------------------------------------------

def module(module_id: str, **config: Any) -> str:
    return f"  {module_id}:\n    module: system\n    config: {json.dumps(config)}\n"


def in_seconds(seconds: float) -> str:
    return to_rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


class Watcher:
    """Every value of the system vars, per module and var, as the bus delivered them."""

    def __init__(self, probe: BusProbe, *module_ids: str) -> None:
        self.probe = probe
        self.seen: dict[str, list[dict[str, Any]]] = {}
        for module_id in module_ids:
            for var in ("firmware_update_status", "log_upload_status"):
                topic = f"cp/{module_id}/main/var/{var}"
                probe.watch(topic, lambda t, p: self.seen.setdefault(t, []).append(json.loads(p)))

    async def final(self, module_id: str, var: str, request_id: int, until: set[str] | None = None,
                    timeout: float = 15) -> list[dict[str, Any]]:
        """Wait for a final status (or one of ``until``) of ``request_id``; return all its statuses in order."""
        topic = f"cp/{module_id}/main/var/{var}"
        finals = until or (FINAL_FIRMWARE if var == "firmware_update_status" else FINAL_UPLOAD)

        def done(payload: bytes) -> bool:
            body = json.loads(payload)
            return body["request_id"] == request_id and body["status"] in finals

        await self.probe.wait_for(topic, done, timeout)
        return [s for s in self.seen.get(topic, []) if s["request_id"] == request_id]

    async def firmware(self, module_id: str, request_id: int, **args: Any) -> tuple[str, list[dict[str, Any]]]:
        args = {"retrieve_time": in_seconds(-1), "retry_interval_s": 0, "request_id": request_id, **args}
        result = await self.probe.call(module_id, "main", "update_firmware", args)
        return result, await self.final(module_id, "firmware_update_status", request_id)

    async def upload(self, module_id: str, request_id: int, **args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        result = await self.probe.call(module_id, "main", "upload_logs", {"retry_interval_s": 0,
                                                                           "request_id": request_id, **args})
        return result, (await self.final(module_id, "log_upload_status", request_id))[-1]


def names(statuses: list[dict[str, Any]]) -> list[str]:
    """Status names with repeated Downloading/Uploading (progress, retries) collapsed."""
    collapsed: list[str] = []
    for status in statuses:
        if not collapsed or collapsed[-1] != status["status"]:
            collapsed.append(status["status"])
    return collapsed


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


# -- firmware ---------------------------------------------------------------------------------

def test_firmware_downloads_over_http_https_and_ftp_then_installs_when_allowed(
        broker: Broker, tmp_path: Path, http: HttpServer, https: HttpServer, ftp: tuple[str, Path],
        tls_files: tuple[Path, Path]) -> None:
    installed = tmp_path / "installed"
    installed.mkdir()
    hook = ["sh", "-c", 'cp "$1" "$2/$(basename "$1")"', "install-hook", "{path}", str(installed)]
    path = write_wiring(tmp_path, broker.port,
                        module("system", tls_ca_file=str(tls_files[0]), firmware_install_command=hook,
                               firmware_restart="none", network_timeout_s=5)
                        + module("plain", install_firmware_at_once=True, firmware_restart="none",
                                 network_timeout_s=5))
    download_dir = tmp_path / "state" / "system" / "firmware"

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            watcher = Watcher(probe, "system", "plain")
            result, statuses = await watcher.firmware("system", 1, location=f"{http.base}/fw/station-1.2.bin")
            assert result == "Accepted"
            assert names(statuses) == ["Downloading", "Downloaded"]
            progress = [s["progress_percent"] for s in statuses if "progress_percent" in s]
            assert progress == sorted(progress) and progress[-1] == 100.0 and len(progress) > 2
            assert (download_dir / "station-1.2.bin").read_bytes() == FIRMWARE
            assert not (installed / "station-1.2.bin").exists()  # waits for allow_firmware_installation
            assert await probe.call("system", "main", "allow_firmware_installation") is True
            statuses = await watcher.final("system", "firmware_update_status", 1, {"Installed", "InstallationFailed"})
            assert names(statuses) == ["Downloading", "Downloaded", "Installing", "Installed"]
            assert (installed / "station-1.2.bin").read_bytes() == FIRMWARE
            assert await probe.call("system", "main", "allow_firmware_installation") is False

            # allowed while still downloading: installs as soon as the download completes
            args = {"location": f"{https.base}/fw/secure.bin", "retrieve_time": in_seconds(-1), "request_id": 2}
            assert await probe.call("system", "main", "update_firmware", args) == "Accepted"
            assert await probe.call("system", "main", "allow_firmware_installation") is True
            statuses = await watcher.final("system", "firmware_update_status", 2, {"Installed", "InstallationFailed"})
            assert names(statuses)[-2:] == ["Installing", "Installed"]
            assert (installed / "secure.bin").read_bytes() == FIRMWARE

            ftp_url, _ = ftp
            _, statuses = await watcher.firmware("system", 3, location=f"{ftp_url}/fw/ftp.bin")
            assert names(statuses) == ["Downloading", "Downloaded"]
            assert (download_dir / "ftp.bin").read_bytes() == FIRMWARE
            assert all(FTP_PASSWORD not in json.dumps(s) for s in statuses)

            # without tls_ca_file the self-signed server is not trusted; without a hook nothing installs
            _, statuses = await watcher.firmware("plain", 4, location=f"{https.base}/fw/secure.bin", retries=0)
            assert names(statuses) == ["Downloading", "DownloadFailed"]
            assert "TLS certificate verification failed" in statuses[-1]["message"]
            await watcher.firmware("plain", 5, location=f"{http.base}/fw/plain.bin")
            statuses = await watcher.final("plain", "firmware_update_status", 5, {"Installed", "InstallationFailed"})
            assert names(statuses) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
            assert "no firmware_install_command configured" in statuses[-1]["message"]
            assert (tmp_path / "state" / "plain" / "firmware" / "plain.bin").read_bytes() == FIRMWARE
            assert no_partial_files(tmp_path / "state")

    run(scenario())


def test_firmware_failures_retry_then_report_download_failed(broker: Broker, tmp_path: Path,
                                                             http: HttpServer) -> None:
    failing_hook = ["sh", "-c", "echo disk full >&2; exit 3"]
    path = write_wiring(tmp_path, broker.port,
                        module("system", firmware_install_command=failing_hook, install_firmware_at_once=True,
                               firmware_restart="none", network_timeout_s=5))
    download_dir = tmp_path / "state" / "system" / "firmware"

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            watcher = Watcher(probe, "system")
            await watcher.firmware("system", 1, location=f"{http.base}/flaky/2/a.bin", retries=2)
            statuses = await watcher.final("system", "firmware_update_status", 1, {"Installed", "InstallationFailed"})
            assert names(statuses) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
            assert [g for g, _ in http.log.gets].count("/flaky/2/a.bin") == 3
            assert "attempt 1 of 3 failed: HTTP 503" in statuses[1]["message"]
            assert statuses[-1]["message"] == "sh exited with status 3: disk full"

            _, statuses = await watcher.firmware("system", 2, location=f"{http.base}/flaky/2/b.bin", retries=1)
            assert names(statuses) == ["Downloading", "DownloadFailed"]
            assert [g for g, _ in http.log.gets].count("/flaky/2/b.bin") == 2  # never more than 1 + retries
            assert statuses[-1]["message"].startswith("HTTP 503")

            _, statuses = await watcher.firmware("system", 3, location=f"{http.base}/missing.bin", retries=0)
            assert statuses[-1]["status"] == "DownloadFailed" and "HTTP 404" in statuses[-1]["message"]
            assert not (download_dir / "missing.bin").exists() and no_partial_files(download_dir)

            closed = free_port()
            _, statuses = await watcher.firmware("system", 4, location=f"http://127.0.0.1:{closed}/fw.bin", retries=2)
            assert names(statuses) == ["Downloading", "DownloadFailed"]
            assert statuses[-1]["message"] == f"connection refused by 127.0.0.1:{closed}"
            assert sum("failed: connection refused" in s.get("message", "") for s in statuses) == 2

            for request_id, location, says in ((5, "gopher://127.0.0.1/fw.bin", "unsupported URL scheme 'gopher'"),
                                               (6, "http://", "no host")):
                result, statuses = await watcher.firmware("system", request_id, location=location, retries=3)
                assert result == "Accepted"
                assert names(statuses) == ["Downloading", "DownloadFailed"] and says in statuses[-1]["message"]

            # a scheduled update is replaced by a new one; the replaced one never downloads
            far = {"location": f"{http.base}/fw/never.bin", "retrieve_time": in_seconds(60), "request_id": 7}
            assert await probe.call("system", "main", "update_firmware", far) == "Accepted"
            retrieve_time = in_seconds(1)
            soon = {"location": f"{http.base}/fw/soon.bin", "retrieve_time": retrieve_time, "request_id": 8}
            assert await probe.call("system", "main", "update_firmware", soon) == "AcceptedCanceled"
            statuses = await watcher.final("system", "firmware_update_status", 8)
            assert names(statuses)[:3] == ["DownloadScheduled", "Downloading", "Downloaded"]
            gets = dict(http.log.gets)
            assert "/fw/never.bin" not in gets
            assert gets["/fw/soon.bin"] >= datetime.fromisoformat(retrieve_time).timestamp()

    run(scenario())


# -- log upload -------------------------------------------------------------------------------

LOG_LINES = ["2025-03-14T08:00:00.000Z INFO evse_1: too early\n",
             "2025-03-14T09:30:00.000Z ERROR evse_1: relay weld suspected\n", "  detail line\n",
             "2025-03-14T11:00:00.000Z INFO evse_1: too late\n"]


def multipart_file(body: bytes, content_type: str) -> tuple[str, bytes]:
    """(file name, content) of the single file part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].encode()
    part = body.split(b"--" + boundary)[1]
    head, content = part.split(b"\r\n\r\n", 1)
    file_name = head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
    return file_name, content.removesuffix(b"\r\n")


def test_logs_upload_over_http_post_put_and_ftp(broker: Broker, tmp_path: Path, http: HttpServer,
                                               ftp: tuple[str, Path]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "station.log").write_text("".join(LOG_LINES))
    command = ["sh", "-c", "echo 2025-03-14T09:45:00Z command says {log_type}"]
    path = write_wiring(tmp_path, broker.port,
                        module("system", log_paths=[str(logs / "*.log"), str(logs / "absent.log")],
                               log_file_prefix="cp7", network_timeout_s=5)
                        + module("putter", log_paths=[str(logs / "station.log")], http_upload_method="PUT",
                                 log_archive_format="zip", log_command=command, network_timeout_s=5))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            watcher = Watcher(probe, "system", "putter")
            result, final = await watcher.upload("system", 1, location=f"{http.base}/upload/",
                                                 oldest_time="2025-03-14T09:00:00Z", latest_time="2025-03-14T10:00:00Z")
            assert result["status"] == "Accepted"
            assert result["file_name"].startswith("cp7-diagnostics-") and result["file_name"].endswith("Z.tar.gz")
            assert final["status"] == "Uploaded" and final["file_name"] == result["file_name"]
            method, target, headers, body = http.log.uploads[-1]
            assert (method, target) == ("POST", "/upload/")
            file_name, archive = multipart_file(body, headers["Content-Type"])
            assert file_name == result["file_name"]
            with tarfile.open(fileobj=io.BytesIO(archive)) as bundle:
                assert bundle.extractfile("station.log").read().decode() == "".join(LOG_LINES[1:3])  # type: ignore[union-attr]
                manifest = bundle.extractfile("MANIFEST.txt").read().decode()  # type: ignore[union-attr]
            assert f"no file matches {logs / 'absent.log'}" in manifest

            result, final = await watcher.upload("putter", 2, location=f"{http.base}/upload/", log_type="security")
            assert final["status"] == "Uploaded" and result["file_name"].endswith(".zip")
            method, target, _, body = http.log.uploads[-1]
            assert (method, target) == ("PUT", f"/upload/{result['file_name']}")
            with zipfile.ZipFile(io.BytesIO(body)) as bundle:
                assert bundle.read("command-output.log").decode().strip().endswith("command says security")
                assert "station.log" not in bundle.namelist()  # security logs come from security_log_paths

            ftp_url, ftp_root = ftp
            result, final = await watcher.upload("system", 3, location=f"{ftp_url}/incoming/")
            assert final["status"] == "Uploaded" and FTP_PASSWORD not in final["message"]
            with tarfile.open(ftp_root / "incoming" / result["file_name"]) as bundle:
                assert bundle.extractfile("station.log").read().decode() == "".join(LOG_LINES)  # type: ignore[union-attr]
            assert not any((tmp_path / "state" / "system" / "log_uploads").iterdir())

    run(scenario())


def test_log_upload_failures_have_the_right_status(broker: Broker, tmp_path: Path, http: HttpServer,
                                                   ftp: tuple[str, Path]) -> None:
    path = write_wiring(tmp_path, broker.port, module("system", network_timeout_s=5)
                        + module("putter", http_upload_method="PUT", network_timeout_s=5))
    ftp_url, _ = ftp
    wrong_password = ftp_url.replace(FTP_PASSWORD, "wrong")
    closed = free_port()
    cases = [("system", f"{http.base}/forbidden/", "PermissionDenied", "HTTP 403"),
             ("putter", f"{http.base}/noput/", "NotSupportedOperation", "HTTP 405"),
             ("system", f"{wrong_password}/incoming/", "PermissionDenied", "530"),
             ("system", "sftp://127.0.0.1/up/", "NotSupportedOperation", "unsupported URL scheme 'sftp'"),
             ("system", "http://:80/up/", "BadMessage", "no host"),
             ("system", f"http://127.0.0.1:{closed}/up/", "UploadFailure", f"connection refused by 127.0.0.1:{closed}")]

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            watcher = Watcher(probe, "system", "putter")
            for request_id, (module_id, location, status, says) in enumerate(cases, start=1):
                result, final = await watcher.upload(module_id, request_id, location=location, retries=1)
                assert result["status"] == "Accepted"
                assert (final["status"], says in final["message"]) == (status, True), final
            statuses = watcher.seen["cp/system/main/var/log_upload_status"]
            refused = [s for s in statuses if s["request_id"] == len(cases)]
            assert [s["status"] for s in refused] == ["Uploading", "Uploading", "Uploading", "UploadFailure"]
            assert "wrong" not in json.dumps(statuses)

    run(scenario())


# -- reset, time, boot reason -----------------------------------------------------------------

async def boot_reason(probe: BusProbe, module_id: str) -> str:
    reason: str = await probe.call(module_id, "main", "get_boot_reason")
    topic = f"cp/{module_id}/main/var/boot_reason"
    probe.watch(topic)
    await probe.wait_for(topic, lambda p: json.loads(p) == reason, 5)
    return reason


def test_set_time_and_hard_reset_run_their_commands_or_refuse(broker: Broker, tmp_path: Path) -> None:
    clock, reboots = tmp_path / "clock", tmp_path / "reboots"
    path = write_wiring(tmp_path, broker.port,
                        module("host", set_time_command=["sh", "-c", f"echo {{time}} {{epoch}} > {clock}"],
                               reset_hard_command=f"sh -c 'echo hard >> {reboots}'")
                        + module("locked")
                        + module("broken", set_time_command=["false"], reset_hard_command=["sh", "-c", "exit 4"]))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            for module_id in ("host", "locked", "broken"):
                assert await boot_reason(probe, module_id) == "power_up"
            assert await probe.call("host", "main", "set_system_time", {"time": "2025-03-14T09:26:53Z"}) is True
            assert clock.read_text() == "2025-03-14T09:26:53Z 1741944413\n"
            assert await probe.call("locked", "main", "set_system_time", {"time": "2025-03-14T09:26:53Z"}) is False
            assert await probe.call("broken", "main", "set_system_time", {"time": "2025-03-14T09:26:53Z"}) is False
            with pytest.raises(CmdError) as caught:
                await probe.call("host", "main", "set_system_time", {"time": "2025-03-14T10:26:53+01:00"})
            assert caught.value.code == "invalid_args"

            assert await probe.call("host", "main", "reset", {"type": "hard", "requested_by": "csms"}) is True
            assert reboots.read_text() == "hard\n"
            assert await probe.call("locked", "main", "reset", {"type": "hard"}) is False
            assert await probe.call("broken", "main", "reset", {"type": "hard"}) is False

        # the station comes back (as after the reboot): host reports the reset, the others a power-up
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await boot_reason(probe, "host") == "remote_reset"
            assert await boot_reason(probe, "locked") == "power_up"
            assert await boot_reason(probe, "broken") == "power_up"

    run(scenario())


def test_soft_reset_restarts_the_station_and_the_boot_reason_survives(broker: Broker, tmp_path: Path) -> None:
    path = write_wiring(tmp_path, broker.port, module("system"))

    async def scenario() -> None:
        async with running_station(path) as manager, BusProbe(broker.host, broker.port) as probe:
            requests: list[dict[str, Any]] = []
            probe.watch("cp/manager/restart", lambda _t, p: requests.append(json.loads(p)))
            assert await boot_reason(probe, "system") == "power_up"
            assert await probe.call("system", "main", "reset", {"type": "soft"}) is True
            await probe.wait_for("cp/manager/restart", lambda p: True, 5)
            assert requests[0]["module_id"] == "system" and "soft reset" in requests[0]["reason"]
            await asyncio.wait_for(manager.stop_requested.wait(), 5)  # type: ignore[attr-defined]
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await boot_reason(probe, "system") == "local_reset"
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await boot_reason(probe, "system") == "power_up"

    run(scenario())


def test_installed_firmware_restarts_the_station_and_is_reported_after_boot(broker: Broker, tmp_path: Path,
                                                                           http: HttpServer) -> None:
    path = write_wiring(tmp_path, broker.port, module("system", firmware_install_command=["true"],
                                                      install_firmware_at_once=True))

    async def scenario() -> None:
        async with running_station(path) as manager, BusProbe(broker.host, broker.port) as probe:
            watcher = Watcher(probe, "system")
            probe.watch("cp/manager/restart")
            _, statuses = await watcher.firmware("system", 9, location=f"{http.base}/fw/new.bin")
            statuses = await watcher.final("system", "firmware_update_status", 9, {"InstallRebooting"})
            assert names(statuses) == ["Downloading", "Downloaded", "Installing", "InstallRebooting"]
            restart = await probe.wait_for("cp/manager/restart", lambda p: True, 5)
            assert json.loads(restart)["reason"] == "firmware update installed"
            await asyncio.wait_for(manager.stop_requested.wait(), 5)  # type: ignore[attr-defined]
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            assert await boot_reason(probe, "system") == "firmware_update"
            topic = "cp/system/main/var/firmware_update_status"
            probe.watch(topic)
            status = json.loads(await probe.wait_for(topic, lambda p: json.loads(p)["status"] == "Installed", 5))
            assert status["request_id"] == 9

    run(scenario())
