"""Carries out the firmware-update state machine: waits, downloads, the install hook, the restart."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.timestamps import parse_rfc3339, utc_now

from .commands import fill_command, run_command
from .driver import Step, run_actions
from .jobs import Action, FirmwarePhase, FirmwareUpdate, Install, PublishStatus, Restart, StartAttempt
from .locations import Location, LocationError, firmware_file_name, parse_location, redact_text
from .transfer import TransferCancelled, TransferFailed, download, in_thread

if TYPE_CHECKING:
    from . import System

RESTART_DELAY_S = 0.5


@dataclass
class FirmwareContext:
    job: FirmwareUpdate
    request_id: int | None
    location_text: str
    location: Location | None
    location_error: LocationError | None
    path: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class FirmwareRunner:
    """The current firmware update of the module (at most one) and the tasks that drive it."""

    def __init__(self, host: System, download_dir: Path) -> None:
        self.host = host
        self.download_dir = download_dir
        self.current: FirmwareContext | None = None
        for leftover in download_dir.glob(".*.part"):
            leftover.unlink(missing_ok=True)

    @property
    def installing(self) -> bool:
        return self.current is not None and self.current.job.phase is FirmwarePhase.INSTALLING

    def publish_idle(self) -> None:
        self._publish_raw("Idle", None, "", None)

    def publish_installed_after_restart(self, request_id: int | None) -> None:
        self._publish_raw("Installed", request_id, "installed; the station restarted with the new firmware", None)

    def start(self, location: str, retrieve_time: str, retries: int, retry_interval_s: int,
              request_id: int | None) -> str:
        """Accept a new update (replacing one in progress); ``Rejected`` while an install runs."""
        config = self.host.config
        previous = self.current
        if previous is not None and not previous.job.replaceable:
            self.host.log.warning("firmware update rejected: an install is running",
                                  request_id=request_id, running_request_id=previous.request_id)
            return "Rejected"
        replaced = previous is not None and not previous.job.finished
        if previous is not None:
            self.cancel(previous)
        try:
            parsed, error = parse_location(location), None
        except LocationError as exc:
            parsed, error = None, exc
        job = FirmwareUpdate(retries, retry_interval_s, install_allowed=config["install_firmware_at_once"],
                             restart_mode=config["firmware_restart"])
        context = FirmwareContext(job, request_id, location, parsed, error,
                                  self.download_dir / firmware_file_name(location))
        self.current = context
        delay = 0.0
        if error is None:
            delay = max(0.0, (parse_rfc3339(retrieve_time) - datetime.now(UTC)).total_seconds())
        self.host.log.info("firmware update accepted", request_id=request_id,
                           location=parsed.redacted if parsed else redact_text(location),
                           retrieve_time=retrieve_time, retries=retries, retry_interval_s=retry_interval_s,
                           replaced=replaced)
        self._drive(context, job.start(delay))
        return "AcceptedCanceled" if replaced else "Accepted"

    def allow_installation(self) -> bool:
        context = self.current
        if context is None:
            return False
        accepted, actions = context.job.allow_installation()
        self.host.log.info("firmware installation allowed", request_id=context.request_id, accepted=accepted)
        if actions:
            self._drive(context, actions)
        return accepted

    def cancel(self, context: FirmwareContext) -> None:
        context.cancel.set()
        for task in context.tasks:
            task.cancel()

    def _drive(self, context: FirmwareContext, actions: list[Action]) -> None:
        task = self.host.spawn(self._run(context, actions), name=f"{self.host.id}-firmware")
        context.tasks.add(task)
        task.add_done_callback(context.tasks.discard)

    async def _run(self, context: FirmwareContext, actions: list[Action]) -> None:
        steps: dict[type, Step] = {
            StartAttempt: lambda action: self._download(context, action.attempt),
            Install: lambda action: self._install(context),
            Restart: lambda action: self._restart(context, action.mode),
        }
        try:
            await run_actions(actions, context.job, lambda status: self._publish(context, status), steps)
        except Exception as exc:
            # A bug here must show up as a failed update, not as a module restart in the middle of it.
            self.host.log.error("firmware update failed unexpectedly", exc_info=True, request_id=context.request_id)
            status = "InstallationFailed" if context.job.phase is FirmwarePhase.INSTALLING else "DownloadFailed"
            context.job.phase = FirmwarePhase.FAILED
            self._publish(context, PublishStatus(status, f"internal error: {type(exc).__name__}: {exc}"))

    async def _download(self, context: FirmwareContext, attempt: int) -> list[Action]:
        if context.location is None:
            message = str(context.location_error)
            self.host.log.warning("firmware download failed", request_id=context.request_id, error=message)
            return context.job.attempt_failed(message, permanent=True)
        loop = asyncio.get_running_loop()

        def progress(received: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self._progress, context, received, total)

        self.host.log.info("firmware download started", request_id=context.request_id, attempt=attempt,
                           location=context.location.redacted)
        try:
            size = await in_thread(download, context.location, context.path, self.host.transfer_settings,
                                   progress, context.cancel)
        except TransferCancelled:
            return []
        except TransferFailed as exc:
            self.host.log.warning("firmware download failed", request_id=context.request_id, attempt=attempt,
                                  error=exc.message)
            return context.job.attempt_failed(exc.message)
        self.host.log.info("firmware downloaded", request_id=context.request_id, path=str(context.path),
                           size_bytes=size)
        return context.job.downloaded()

    def _progress(self, context: FirmwareContext, received: int, total: int | None) -> None:
        if context is self.current:
            for action in context.job.progress(received, total):
                if isinstance(action, PublishStatus):
                    self._publish(context, action)

    async def _install(self, context: FirmwareContext) -> list[Action]:
        host = self.host
        if host.install_command is None:
            message = f"no firmware_install_command configured; the image stays at {context.path}"
            host.log.warning("firmware not installed", request_id=context.request_id, reason=message)
            return context.job.install_finished(False, message)
        argv = fill_command(host.install_command, {"path": str(context.path),
                                                   "request_id": str(context.request_id or "")}, append="path")
        previous = host.boot_record.read_pending()
        host.boot_record.set_pending("firmware_update", context.request_id, firmware_installed=True)
        host.log.info("firmware install started", request_id=context.request_id, command=argv[0],
                      path=str(context.path))
        result = await run_command(argv, host.config["firmware_install_timeout_s"])
        if not result.ok:
            host.boot_record.restore_pending(previous)
            host.log.warning("firmware installation failed", request_id=context.request_id, error=result.message)
            return context.job.install_finished(False, result.message)
        host.log.info("firmware installed", request_id=context.request_id, output=result.message)
        return context.job.install_finished(True, result.message)

    async def _restart(self, context: FirmwareContext, mode: str) -> None:
        await asyncio.sleep(RESTART_DELAY_S)
        if mode == "soft":
            self.host.log.info("restarting the station for the new firmware", request_id=context.request_id)
            self.host.request_station_restart("firmware update installed")
            return
        ok, message = await self.host.run_hard_reset()
        if not ok:
            self._publish(context, PublishStatus("Installed", f"installed, but the restart failed: {message}"))

    def _publish(self, context: FirmwareContext, action: PublishStatus) -> None:
        if context is not self.current:
            return
        self._publish_raw(action.status, context.request_id, action.message, action.progress_percent)
        if action.progress_percent is None or action.status != "Downloading":
            self.host.log.info("firmware status", status=action.status, request_id=context.request_id,
                               message=action.message)

    def _publish_raw(self, status: str, request_id: int | None, message: str, progress: float | None) -> None:
        body: dict[str, Any] = {"status": status, "request_id": request_id, "timestamp": utc_now()}
        if progress is not None:
            body["progress_percent"] = progress
        if message:
            body["message"] = message
        self.host.provides["main"].publish("firmware_update_status", body)
