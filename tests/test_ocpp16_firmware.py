"""UpdateFirmware and GetDiagnostics through OCPP, end to end: the CSMS asks, the system module transfers over
real HTTP and FTP servers on 127.0.0.1, and the CSMS hears every step as a 1.6 status notification."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import signal
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, run, running_station, write_wiring
from ocpp.v16 import call
from ocpp16_lab import Csms, Lab, in_ocpp_station, ocpp_station
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from chargepoint.broker.launch import free_port
from chargepoint.busprobe import BusProbe

FIRMWARE = os.urandom(200_000)
LOG_TEXT = "2026-01-01T10:00:00.000Z ERROR evse_1: contactor feedback missing\n"
PAST = "2020-01-01T00:00:00Z"


@dataclass
class Transfers:
    """What the HTTP server saw: GETs with their time, uploads by path."""
    gets: list[tuple[str, float]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    busy_uploads: int = 0
    failures_left: dict[str, int] = field(default_factory=dict)

    def get_times(self, path: str) -> list[float]:
        return [at for got, at in self.gets if got == path]


class Handler(BaseHTTPRequestHandler):
    """GET /fw/<name>: the image; /flaky/<n>/<name>: 503 n times, then the image. PUT /upload/<name>: stored;
    PUT /busy/<name>: 503."""

    server: Any

    def do_GET(self) -> None:
        seen: Transfers = self.server.transfers
        seen.gets.append((self.path, time.monotonic()))
        if self.path.startswith("/flaky/"):
            left = seen.failures_left.setdefault(self.path, int(self.path.split("/")[2]))
            seen.failures_left[self.path] = left - 1
            self._answer(503 if left > 0 else 200, b"busy" if left > 0 else FIRMWARE)
        else:
            self._answer(200, FIRMWARE) if self.path.startswith("/fw/") else self._answer(404, b"")

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/busy/"):
            self.server.transfers.busy_uploads += 1
            return self._answer(503, b"")
        self.server.transfers.uploads[self.path] = body
        self._answer(201, b"")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http() -> Iterator[tuple[str, Transfers]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.transfers = Transfers()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.transfers  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """FTP URL (user and password in it) and the server's root: /fw/image.bin, a writable /incoming/."""
    root = tmp_path / "ftp_root"
    (root / "fw").mkdir(parents=True)
    (root / "incoming").mkdir()
    (root / "fw" / "image.bin").write_bytes(FIRMWARE)
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user("cp", "ftp-pass", str(root), perm="elradfmw")
    server = FTPServer(("127.0.0.1", 0), type("Handler", (FTPHandler,), {"authorizer": authorizer}))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"ftp://cp:ftp-pass@127.0.0.1:{server.address[1]}", root
    stop.set()
    thread.join(5)


def system_config(tmp_path: Path, **extra: Any) -> str:
    """Logs to bundle, PUT uploads, and an install hook that copies the image into tmp_path/installed."""
    (tmp_path / "installed").mkdir(exist_ok=True)
    (tmp_path / "station.log").write_text(LOG_TEXT)
    hook = ["sh", "-c", 'cp "$1" "$2/"', "install-hook", "{path}", str(tmp_path / "installed")]
    return json.dumps({"firmware_install_command": hook, "firmware_restart": "none", "network_timeout_s": 5,
                       "log_paths": [str(tmp_path / "station.log")], "http_upload_method": "PUT", **extra})


def statuses(csms: Csms, action: str, start: int = 0) -> list[str]:
    return [payload["status"] for payload in csms.calls(action)[start:]]


def position(csms: Csms, action: str, status: str | None = None, *, last: bool = False) -> int:
    """Index among all frames of the first (or last) CALL of ``action`` (with that status) from the station."""
    found = [i for i, frame in enumerate(csms.frames) if frame[0] == 2 and frame[2] == action
             and (status is None or frame[3].get("status") == status)]
    return found[-1 if last else 0]


def bundled_log(archive: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive)) as bundle:
        member = bundle.extractfile("station.log")
        assert member is not None
        return member.read().decode()


def test_update_firmware_over_http_and_diagnostics_over_http_and_ftp(
        broker: Broker, tmp_path: Path, http: tuple[str, Transfers], ftp: tuple[str, Path]) -> None:
    base, transfers = http
    ftp_url, ftp_root = ftp

    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        answer = await csms.peer.call(call.UpdateFirmware(location=f"{base}/fw/station-2.0.bin", retrieve_date=PAST,
                                                          retries=0))
        assert answer is not None  # an empty UpdateFirmware.conf, not a CALLERROR
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] in ("Installed", "InstallationFailed"))
        # the system waits for permission to install; with no transaction running the ocpp module gives it
        assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded", "Installing", "Installed"]
        assert (tmp_path / "installed" / "station-2.0.bin").read_bytes() == FIRMWARE

        diagnostics = await csms.peer.call(call.GetDiagnostics(location=f"{base}/upload/", retries=0))
        assert diagnostics.file_name.endswith(".tar.gz")
        await csms.wait_call("DiagnosticsStatusNotification", lambda p: p["status"] != "Uploading")
        assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "Uploaded"]
        assert bundled_log(transfers.uploads[f"/upload/{diagnostics.file_name}"]) == LOG_TEXT

        over_ftp = await csms.peer.call(call.GetDiagnostics(location=f"{ftp_url}/incoming/", retries=0))
        await csms.wait_call("DiagnosticsStatusNotification", lambda p: p["status"] != "Uploading", count=2)
        assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "Uploaded"] * 2
        assert bundled_log((ftp_root / "incoming" / over_ftp.file_name).read_bytes()) == LOG_TEXT
        assert "ftp-pass" not in json.dumps(csms.frames)

    in_ocpp_station(broker, tmp_path, scenario, with_system=True, system_config=system_config(tmp_path))


def test_firmware_waits_for_the_transaction_then_installs_restarts_and_reports_installed_after_boot(
        broker: Broker, tmp_path: Path, ftp: tuple[str, Path]) -> None:
    ftp_url, _ = ftp
    csms = Csms()
    config = system_config(tmp_path, firmware_restart="soft")

    async def main() -> None:
        async with csms.running():
            wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port, with_system=True,
                                                                      system_config=config))
            async with running_station(wiring) as manager, BusProbe("127.0.0.1", broker.port) as probe:
                lab = Lab(probe)
                await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
                await lab.plug(1)
                await lab.swipe("AA11")
                await csms.wait_call("StartTransaction")
                await lab.wait_charger_state(1, "charging")
                await csms.peer.call(call.UpdateFirmware(location=f"{ftp_url}/fw/image.bin", retrieve_date=PAST))
                await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "Downloaded")
                await asyncio.sleep(1.0)
                assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded"]
                assert not (tmp_path / "installed" / "image.bin").exists()  # not while charging
                await lab.swipe("AA11")
                await csms.wait_call("StopTransaction")
                await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "Installing")
                assert position(csms, "StopTransaction") < position(csms, "FirmwareStatusNotification", "Installing")
                await asyncio.wait_for(manager.stop_requested.wait(), 10)  # type: ignore[attr-defined]
            assert (tmp_path / "installed" / "image.bin").read_bytes() == FIRMWARE
            boots = len(csms.calls("BootNotification"))
            async with running_station(wiring):  # the station comes back with the new firmware
                await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "Installed")
                assert len(csms.calls("BootNotification")) == boots + 1
                assert position(csms, "BootNotification", last=True) < \
                    position(csms, "FirmwareStatusNotification", "Installed")
            assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded", "Installing",
                                                                    "Installed"]

    run(main(), timeout=60)


def test_while_an_install_waits_for_a_transaction_the_free_connectors_are_unavailable(
        broker: Broker, tmp_path: Path, ftp: tuple[str, Path]) -> None:
    """No new session may start on a free connector and delay the install further; when the install does not go
    ahead (here its hook fails) every connector is available again."""
    ftp_url, _ = ftp
    csms = Csms()
    config = json.dumps({"firmware_install_command": ["sh", "-c", "exit 3"], "firmware_restart": "none",
                         "network_timeout_s": 5})

    def status(connector: int, value: str) -> Any:
        return lambda p: (p["connectorId"], p["status"]) == (connector, value)

    async def main() -> None:
        async with csms.running():
            wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port, evse_count=2,
                                                                      with_system=True, system_config=config))
            async with running_station(wiring), BusProbe("127.0.0.1", broker.port) as probe:
                lab = Lab(probe, 2)
                await csms.wait_call("StatusNotification", status(2, "Available"))
                await lab.plug(1)
                await lab.swipe("AA11")
                await csms.wait_call("StartTransaction")
                await lab.wait_charger_state(1, "charging")
                await csms.peer.call(call.UpdateFirmware(location=f"{ftp_url}/fw/image.bin", retrieve_date=PAST))
                await csms.wait_call("StatusNotification", status(2, "Unavailable"), timeout=15)
                assert lab.state(2)["enabled"] is False and lab.state(1)["charger_state"] == "charging"
                await lab.swipe("AA11")
                await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "InstallationFailed")
                failed = position(csms, "FirmwareStatusNotification", "InstallationFailed")
                await csms.wait_call("StatusNotification", status(2, "Available"), count=2)
                assert [i for i, f in enumerate(csms.frames) if f[0] == 2 and f[2] == "StatusNotification"
                        and status(2, "Available")(f[3])][-1] > failed, "available again after the failed install"
                await lab.wait_charger_state(2, "idle")
                assert lab.state(1)["enabled"] is True and lab.state(2)["enabled"] is True

    run(main(), timeout=60)


def test_an_installed_firmware_is_reported_once_even_if_the_ocpp_module_restarts(
        broker: Broker, tmp_path: Path, ftp: tuple[str, Path]) -> None:
    """The system's retained Installed looks like news to an OCPP module that just started; the one the CSMS
    acknowledged before the module was killed is not sent again."""
    ftp_url, _ = ftp
    csms = Csms()
    config = system_config(tmp_path)  # firmware_restart none: Installed at once, retained

    async def main() -> None:
        async with csms.running():
            modules = ocpp_station(tmp_path, csms.port, with_system=True, system_config=config).replace(
                "    module: ocpp16\n", "    module: ocpp16\n    standalone: true\n")
            async with running_station(write_wiring(tmp_path, broker.port, modules), ready_timeout=20) as manager, \
                    BusProbe("127.0.0.1", broker.port) as probe:
                probe.watch("cp/ocpp/state")
                await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
                await csms.peer.call(call.UpdateFirmware(location=f"{ftp_url}/fw/image.bin", retrieve_date=PAST))
                await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "Installed")
                await asyncio.sleep(0.5)  # the acknowledgement is stored
                boots = len(csms.calls("BootNotification"))
                os.kill(manager._children["ocpp"].pid, signal.SIGKILL)  # type: ignore[attr-defined]
                await probe.wait_for("cp/ocpp/state", lambda p: p in (b"offline", b"failed"), 5)
                await probe.wait_for("cp/ocpp/state", lambda p: p == b"ready", 20)
                await csms.wait_call("BootNotification", count=boots + 1, timeout=20)
                await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1, count=2)
                await asyncio.sleep(1.0)
                assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded", "Installing",
                                                                        "Installed"]

    run(main(), timeout=60)


def test_retries_are_honoured_and_unreachable_servers_are_reported(
        broker: Broker, tmp_path: Path, http: tuple[str, Transfers]) -> None:
    base, transfers = http
    closed = free_port()  # nothing listens there

    async def scenario(csms: Csms, lab: Lab) -> None:
        await csms.wait_call("StatusNotification", lambda p: p["connectorId"] == 1)
        await csms.peer.call(call.UpdateFirmware(location=f"{base}/flaky/2/a.bin", retrieve_date=PAST, retries=2,
                                                 retry_interval=1))
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "Installed")
        times = transfers.get_times("/flaky/2/a.bin")
        assert len(times) == 3 and all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(times))
        assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded", "Installing", "Installed"]

        await csms.peer.call(call.UpdateFirmware(location=f"{base}/flaky/5/b.bin", retrieve_date=PAST, retries=1,
                                                 retry_interval=0))
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "DownloadFailed")
        assert len(transfers.get_times("/flaky/5/b.bin")) == 2  # one try and one retry, no more
        assert statuses(csms, "FirmwareStatusNotification", 4) == ["Downloading", "DownloadFailed"]

        await csms.peer.call(call.UpdateFirmware(location=f"ftp://127.0.0.1:{closed}/fw.bin", retrieve_date=PAST,
                                                 retries=0))
        await csms.wait_call("FirmwareStatusNotification", lambda p: p["status"] == "DownloadFailed", count=2)
        assert statuses(csms, "FirmwareStatusNotification", 6) == ["Downloading", "DownloadFailed"]

        await csms.peer.call(call.GetDiagnostics(location=f"{base}/busy/", retries=1, retry_interval=0))
        await csms.wait_call("DiagnosticsStatusNotification", lambda p: p["status"] == "UploadFailed")
        assert transfers.busy_uploads == 2
        unreachable = await csms.peer.call(call.GetDiagnostics(location=f"ftp://127.0.0.1:{closed}/up/", retries=0))
        assert unreachable.file_name  # accepted: the failure comes as a notification
        await csms.wait_call("DiagnosticsStatusNotification", lambda p: p["status"] == "UploadFailed", count=2)
        assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "UploadFailed"] * 2
        assert (tmp_path / "installed" / "a.bin").read_bytes() == FIRMWARE
        assert not (tmp_path / "installed" / "b.bin").exists()

    in_ocpp_station(broker, tmp_path, scenario, with_system=True, system_config=system_config(tmp_path))
