"""Carries out the log-upload state machine: bundle the logs once, upload with retries, clean up."""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.timestamps import parse_rfc3339, utc_now

from .bundle import BundleRequest, build_bundle
from .commands import fill_command, run_command
from .driver import Step, run_actions
from .jobs import Action, LogUpload, PublishStatus, StartAttempt, UploadPhase
from .locations import Location, LocationError, log_archive_name, parse_location, redact_text
from .transfer import TransferCancelled, TransferFailed, in_thread, upload

if TYPE_CHECKING:
    from . import System


@dataclass
class UploadContext:
    job: LogUpload
    request_id: int | None
    log_type: str
    file_name: str
    location: Location | None
    location_error: LocationError | None
    oldest: datetime | None
    latest: datetime | None
    archive: Path
    built: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[Any] | None = None


class UploadRunner:
    """The current log upload of the module (at most one) and the task that drives it."""

    def __init__(self, host: System, work_dir: Path) -> None:
        self.host = host
        self.work_dir = work_dir
        self.current: UploadContext | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        for leftover in work_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def publish_idle(self) -> None:
        body = {"status": "Idle", "request_id": None, "log_type": "diagnostics", "file_name": None,
                "timestamp": utc_now()}
        self.host.provides["main"].publish("log_upload_status", body)

    def start(self, location: str, log_type: str, oldest_time: str | None, latest_time: str | None,
              retries: int, retry_interval_s: int, request_id: int | None) -> dict[str, Any]:
        config = self.host.config
        previous = self.current
        replaced = previous is not None and not previous.job.finished
        if previous is not None:
            self.cancel(previous)
        try:
            parsed, error = parse_location(location), None
        except LocationError as exc:
            parsed, error = None, exc
        file_name = log_archive_name(config["log_file_prefix"], log_type, datetime.now(UTC),
                                     config["log_archive_format"])
        context = UploadContext(
            LogUpload(retries, retry_interval_s), request_id, log_type, file_name, parsed, error,
            parse_rfc3339(oldest_time) if oldest_time else None, parse_rfc3339(latest_time) if latest_time else None,
            self.work_dir / uuid.uuid4().hex / file_name,
        )
        self.current = context
        self.host.log.info("log upload accepted", request_id=request_id, log_type=log_type, file_name=file_name,
                           location=parsed.redacted if parsed else redact_text(location), replaced=replaced)
        context.task = self.host.spawn(self._run(context), name=f"{self.host.id}-log-upload")
        return {"status": "AcceptedCanceled" if replaced else "Accepted", "file_name": file_name}

    def cancel(self, context: UploadContext) -> None:
        context.cancel.set()
        if context.task is not None:
            context.task.cancel()

    async def _run(self, context: UploadContext) -> None:
        steps: dict[type, Step] = {StartAttempt: lambda action: self._attempt(context, action.attempt)}
        try:
            await run_actions(context.job.start(), context.job, lambda status: self._publish(context, status), steps)
        except Exception as exc:
            # A bug here must show up as a failed upload, not as a module restart.
            self.host.log.error("log upload failed unexpectedly", exc_info=True, request_id=context.request_id)
            context.job.phase = UploadPhase.FAILED
            self._publish(context, PublishStatus("UploadFailure", f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            if context.job.finished or context.cancel.is_set():
                shutil.rmtree(context.archive.parent, ignore_errors=True)

    async def _attempt(self, context: UploadContext, attempt: int) -> list[Action]:
        if context.location is None:
            error = context.location_error
            status = "NotSupportedOperation" if error is not None and error.kind == "unsupported" else "BadMessage"
            self.host.log.warning("log upload failed", request_id=context.request_id, error=str(error))
            return context.job.attempt_failed(status, str(error), permanent=True)
        if not context.built:
            try:
                members = await self._bundle(context)
            except OSError as exc:
                message = f"cannot write the log bundle {context.archive}: {exc.strerror or exc}"
                self.host.log.error("log upload failed", request_id=context.request_id, error=message)
                return context.job.attempt_failed("UploadFailure", message, permanent=True)
            context.built = True
            self.host.log.info("logs bundled", request_id=context.request_id, file_name=context.file_name,
                               members=",".join(members))
        self.host.log.info("log upload started", request_id=context.request_id, attempt=attempt,
                           location=context.location.redacted)
        try:
            target = await in_thread(upload, context.location, context.archive, self.host.transfer_settings,
                                     context.cancel)
        except TransferCancelled:
            return []
        except TransferFailed as exc:
            self.host.log.warning("log upload failed", request_id=context.request_id, attempt=attempt,
                                  error=exc.message)
            return context.job.attempt_failed(exc.upload_status, exc.message)
        self.host.log.info("logs uploaded", request_id=context.request_id, target=target)
        return context.job.uploaded(f"uploaded to {target}")

    async def _bundle(self, context: UploadContext) -> list[str]:
        config = self.host.config
        notes: list[str] = []
        output: bytes | None = None
        if self.host.log_command is not None:
            argv = fill_command(self.host.log_command, {"log_type": context.log_type})
            result = await run_command(argv, config["command_timeout_s"])
            output = result.output
            if not result.ok:
                notes.append(f"log_command: {result.message}")
        patterns = config["security_log_paths"] if context.log_type == "security" else config["log_paths"]
        request = BundleRequest(list(patterns), context.log_type, context.oldest, context.latest,
                                config["log_archive_format"], output, notes)
        members: list[str] = await in_thread(build_bundle, request, context.archive)
        return members

    def _publish(self, context: UploadContext, action: PublishStatus) -> None:
        if context is not self.current:
            return
        body: dict[str, Any] = {"status": action.status, "request_id": context.request_id,
                                "log_type": context.log_type, "file_name": context.file_name,
                                "timestamp": utc_now()}
        if action.message:
            body["message"] = action.message
        self.host.provides["main"].publish("log_upload_status", body)
        self.host.log.info("log upload status", status=action.status, request_id=context.request_id,
                           message=action.message)
