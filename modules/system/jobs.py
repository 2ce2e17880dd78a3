"""The firmware-update and log-upload state machines (pure).

Each job takes events (a timer expired, an attempt failed or succeeded, installation allowed, the
install hook finished) and returns the actions for the shell to carry out: publish a status, wait,
start a transfer attempt, run the install hook, restart. No I/O and no clock: waiting is an action.
Statuses use the OCPP spelling of the ``system`` interface (security-extension FirmwareStatus,
UploadLogStatus).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class PublishStatus:
    status: str
    message: str = ""
    progress_percent: float | None = None


@dataclass(frozen=True)
class Wait:
    """Sleep this long, then feed ``timer_expired()``."""

    seconds: float


@dataclass(frozen=True)
class StartAttempt:
    """Start transfer attempt number ``attempt`` (1-based); feed its outcome back."""

    attempt: int


@dataclass(frozen=True)
class Install:
    """Run the install hook on the downloaded file; feed ``install_finished()``."""


@dataclass(frozen=True)
class Restart:
    """Restart the station (``soft``) or the host (``hard``) to activate the new firmware."""

    mode: str


Action = PublishStatus | Wait | StartAttempt | Install | Restart

# Which firmware status may follow which (Idle is the state before the first status of a job).
FIRMWARE_TRANSITIONS: dict[str, set[str]] = {
    "Idle": {"DownloadScheduled", "Downloading"},
    "DownloadScheduled": {"Downloading"},
    "Downloading": {"Downloading", "Downloaded", "DownloadFailed"},
    "Downloaded": {"Installing"},
    "Installing": {"Installed", "InstallationFailed", "InstallRebooting"},
}
UPLOAD_FAILURES = {"UploadFailure", "BadMessage", "NotSupportedOperation", "PermissionDenied"}
UPLOAD_TRANSITIONS: dict[str, set[str]] = {
    "Idle": {"Uploading"},
    "Uploading": {"Uploading", "Uploaded"} | UPLOAD_FAILURES,
}
RESTART_MODES = ("soft", "hard", "none")
PROGRESS_STEP_PERCENT = 10


class Retries:
    """Attempt bookkeeping shared by both jobs: at most ``1 + retries`` attempts."""

    def __init__(self, retries: int, retry_interval_s: float) -> None:
        if retries < 0 or retry_interval_s < 0:
            raise ValueError("retries and retry_interval_s must not be negative")
        self.max_attempts = retries + 1
        self.interval_s = retry_interval_s
        self.started = 0

    def start_next(self) -> StartAttempt:
        self.started += 1
        return StartAttempt(self.started)

    @property
    def left(self) -> bool:
        return self.started < self.max_attempts

    def failure_note(self, reason: str) -> str:
        return f"attempt {self.started} of {self.max_attempts} failed: {reason}; retrying in {self.interval_s:g} s"


class FirmwarePhase(Enum):
    NEW = "new"
    SCHEDULED = "scheduled"
    DOWNLOADING = "downloading"
    RETRY_WAIT = "retry_wait"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    INSTALLED = "installed"
    FAILED = "failed"


FIRMWARE_FINAL = {FirmwarePhase.REBOOTING, FirmwarePhase.INSTALLED, FirmwarePhase.FAILED}


class FirmwareUpdate:
    """One update: (scheduled) → downloading with retries → downloaded → installing → installed."""

    def __init__(self, retries: int, retry_interval_s: float, *, install_allowed: bool, restart_mode: str) -> None:
        if restart_mode not in RESTART_MODES:
            raise ValueError(f"restart_mode must be one of {RESTART_MODES}, not {restart_mode!r}")
        self.retries = Retries(retries, retry_interval_s)
        self.install_allowed = install_allowed
        self.restart_mode = restart_mode
        self.phase = FirmwarePhase.NEW
        self._progress_step = -1

    @property
    def finished(self) -> bool:
        return self.phase in FIRMWARE_FINAL

    @property
    def replaceable(self) -> bool:
        """A new update may cancel this one (never while the install hook runs)."""
        return self.phase not in {FirmwarePhase.INSTALLING, FirmwarePhase.REBOOTING}

    def start(self, seconds_until_retrieve: float) -> list[Action]:
        if self.phase is not FirmwarePhase.NEW:
            return []
        if seconds_until_retrieve > 0:
            self.phase = FirmwarePhase.SCHEDULED
            return [PublishStatus("DownloadScheduled"), Wait(seconds_until_retrieve)]
        return self._attempt()

    def timer_expired(self) -> list[Action]:
        if self.phase in {FirmwarePhase.SCHEDULED, FirmwarePhase.RETRY_WAIT}:
            return self._attempt()
        return []

    def _attempt(self) -> list[Action]:
        self.phase = FirmwarePhase.DOWNLOADING
        self._progress_step = -1
        attempt = self.retries.start_next()
        note = "" if attempt.attempt == 1 else f"attempt {attempt.attempt} of {self.retries.max_attempts}"
        return [PublishStatus("Downloading", note), attempt]

    def progress(self, received_bytes: int, total_bytes: int | None) -> list[Action]:
        """Publish progress in steps of 10 % while downloading (nothing when the size is unknown)."""
        if self.phase is not FirmwarePhase.DOWNLOADING or not total_bytes or total_bytes <= 0:
            return []
        percent = max(0.0, min(100.0, 100.0 * received_bytes / total_bytes))
        step = int(percent // PROGRESS_STEP_PERCENT)
        if step <= self._progress_step:
            return []
        self._progress_step = step
        return [PublishStatus("Downloading", progress_percent=round(percent, 1))]

    def attempt_failed(self, reason: str, *, permanent: bool = False) -> list[Action]:
        """A download attempt failed; ``permanent`` (e.g. a malformed URL) skips the retries."""
        if self.phase is not FirmwarePhase.DOWNLOADING:
            return []
        if permanent or not self.retries.left:
            self.phase = FirmwarePhase.FAILED
            return [PublishStatus("DownloadFailed", reason)]
        self.phase = FirmwarePhase.RETRY_WAIT
        return [PublishStatus("Downloading", self.retries.failure_note(reason)), Wait(self.retries.interval_s)]

    def downloaded(self) -> list[Action]:
        if self.phase is not FirmwarePhase.DOWNLOADING:
            return []
        self.phase = FirmwarePhase.DOWNLOADED
        actions: list[Action] = [PublishStatus("Downloaded", progress_percent=100.0)]
        if self.install_allowed:
            actions += self._install()
        return actions

    def allow_installation(self) -> tuple[bool, list[Action]]:
        """Installation allowed: at once if downloaded, else as soon as the download completes."""
        if self.phase is FirmwarePhase.DOWNLOADED:
            return True, self._install()
        if self.phase in {FirmwarePhase.NEW, FirmwarePhase.SCHEDULED, FirmwarePhase.DOWNLOADING,
                          FirmwarePhase.RETRY_WAIT}:
            self.install_allowed = True
            return True, []
        return False, []

    def _install(self) -> list[Action]:
        self.phase = FirmwarePhase.INSTALLING
        return [PublishStatus("Installing"), Install()]

    def install_finished(self, ok: bool, message: str = "") -> list[Action]:
        if self.phase is not FirmwarePhase.INSTALLING:
            return []
        if not ok:
            self.phase = FirmwarePhase.FAILED
            return [PublishStatus("InstallationFailed", message)]
        if self.restart_mode == "none":
            self.phase = FirmwarePhase.INSTALLED
            return [PublishStatus("Installed", message)]
        self.phase = FirmwarePhase.REBOOTING
        return [PublishStatus("InstallRebooting", message), Restart(self.restart_mode)]


class UploadPhase(Enum):
    NEW = "new"
    UPLOADING = "uploading"
    RETRY_WAIT = "retry_wait"
    UPLOADED = "uploaded"
    FAILED = "failed"


class LogUpload:
    """One log upload: uploading with retries → Uploaded, or a failure status."""

    def __init__(self, retries: int, retry_interval_s: float) -> None:
        self.retries = Retries(retries, retry_interval_s)
        self.phase = UploadPhase.NEW

    @property
    def finished(self) -> bool:
        return self.phase in {UploadPhase.UPLOADED, UploadPhase.FAILED}

    def start(self) -> list[Action]:
        if self.phase is not UploadPhase.NEW:
            return []
        return self._attempt()

    def timer_expired(self) -> list[Action]:
        return self._attempt() if self.phase is UploadPhase.RETRY_WAIT else []

    def _attempt(self) -> list[Action]:
        self.phase = UploadPhase.UPLOADING
        attempt = self.retries.start_next()
        note = "" if attempt.attempt == 1 else f"attempt {attempt.attempt} of {self.retries.max_attempts}"
        return [PublishStatus("Uploading", note), attempt]

    def attempt_failed(self, status: str, reason: str, *, permanent: bool = False) -> list[Action]:
        """An attempt failed with ``status`` (one of UPLOAD_FAILURES), reported once no retry is left."""
        if status not in UPLOAD_FAILURES:
            raise ValueError(f"not an upload failure status: {status!r}")
        if self.phase is not UploadPhase.UPLOADING:
            return []
        if permanent or not self.retries.left:
            self.phase = UploadPhase.FAILED
            return [PublishStatus(status, reason)]
        self.phase = UploadPhase.RETRY_WAIT
        return [PublishStatus("Uploading", self.retries.failure_note(reason)), Wait(self.retries.interval_s)]

    def uploaded(self, message: str = "") -> list[Action]:
        if self.phase is not UploadPhase.UPLOADING:
            return []
        self.phase = UploadPhase.UPLOADED
        return [PublishStatus("Uploaded", message)]
