"""system: reset, system time, firmware update, log upload and the boot reason of the station's host.

The logic of updates and uploads lives in ``jobs.py`` (pure state machines); ``firmware.py`` and
``uploads.py`` carry out their actions; ``transfer.py`` does the blocking HTTP(S)/FTP work in
threads. See docs/system.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chargepoint import Module
from chargepoint.timestamps import parse_rfc3339

from .boot import BootInfo, BootRecord
from .commands import CommandConfigError, fill_command, parse_command, run_command
from .firmware import RESTART_DELAY_S, FirmwareRunner
from .transfer import TransferSettings
from .uploads import UploadRunner

HARD_RESET_STARTED_AFTER_S = 3.0

# (configuration object of a station run, its boot info); see _boot_info_once.
_BOOT_BY_STATION_RUN: list[tuple[object, BootInfo]] = []


def _boot_info_once(station_run: object, record: BootRecord) -> BootInfo:
    """Read the boot record once per station start.

    The manager restarts a failed module inside the same station run (same configuration object);
    that restart must not turn the boot reason into power_up. A soft reset re-executes the process
    and a new run loads its configuration afresh, so both read the stored record again.
    """
    for run, info in _BOOT_BY_STATION_RUN:
        if run is station_run:
            return info
    info = record.consume()
    _BOOT_BY_STATION_RUN.append((station_run, info))
    return info


class System(Module):
    async def init(self) -> None:
        config = self.config
        self.hard_reset_command = parse_command(config["reset_hard_command"], "reset_hard_command")
        self.set_time_command = parse_command(config["set_time_command"], "set_time_command")
        self.install_command = parse_command(config["firmware_install_command"], "firmware_install_command")
        self.log_command = parse_command(config["log_command"], "log_command")
        if config["firmware_restart"] == "hard" and self.hard_reset_command is None:
            raise CommandConfigError("config firmware_restart: 'hard' needs reset_hard_command (it is null)")
        if config["tls_ca_file"] is not None and not Path(config["tls_ca_file"]).is_file():
            self.log.warning("tls_ca_file not found; HTTPS transfers will fail", tls_ca_file=config["tls_ca_file"])
        self.transfer_settings = TransferSettings(config["network_timeout_s"], config["tls_ca_file"],
                                                  config["http_upload_method"])
        download_dir = config["firmware_download_dir"]
        self.firmware = FirmwareRunner(self, Path(download_dir) if download_dir else self.state_dir / "firmware")
        self.uploads = UploadRunner(self, self.state_dir / "log_uploads")
        self.boot_record = BootRecord(self.state_dir)
        self.boot = _boot_info_once(self.config, self.boot_record)

        main = self.provides["main"]
        main.publish("boot_reason", self.boot.reason)
        if self.boot.firmware_status == "Installed":
            self.firmware.publish_installed_after_restart(self.boot.firmware_request_id)
        else:
            self.firmware.publish_idle()
        self.uploads.publish_idle()
        main.serve("reset", self.reset)
        main.serve("set_system_time", self.set_system_time)
        main.serve("update_firmware", self.firmware.start)
        main.serve("allow_firmware_installation", self.firmware.allow_installation)
        main.serve("upload_logs", self.uploads.start)
        main.serve("get_boot_reason", lambda: self.boot.reason)
        self.log.info("system started", boot_reason=self.boot.reason, hard_reset=self.hard_reset_command is not None,
                      set_time=self.set_time_command is not None, install_hook=self.install_command is not None)

    async def shutdown(self) -> None:
        if self.firmware.current is not None:
            self.firmware.current.cancel.set()
        if self.uploads.current is not None:
            self.uploads.current.cancel.set()

    async def reset(self, type: str, requested_by: str) -> bool:
        """Soft: store the boot reason, then ask the manager to restart the station. Hard: run the host command."""
        if self.firmware.installing:
            self.log.warning("reset refused: a firmware install is running", type=type, requested_by=requested_by)
            return False
        boot_reason = "remote_reset" if requested_by == "csms" else "local_reset"
        if type == "soft":
            self.boot_record.set_pending(boot_reason)
            self.log.info("soft reset", requested_by=requested_by)
            self.spawn(self._restart_station_soon(f"soft reset requested by {requested_by}"))
            return True
        if self.hard_reset_command is None:
            self.log.warning("hard reset refused: reset_hard_command is not configured", requested_by=requested_by)
            return False
        previous = self.boot_record.read_pending()
        self.boot_record.set_pending(boot_reason)
        ok, _ = await self.run_hard_reset()
        if not ok:
            self.boot_record.restore_pending(previous)
        return ok

    async def _restart_station_soon(self, reason: str) -> None:
        await asyncio.sleep(RESTART_DELAY_S)  # let the reply to the caller go out first
        self.request_station_restart(reason)

    async def run_hard_reset(self) -> tuple[bool, str]:
        """Run reset_hard_command; a command still running after a few seconds counts as started."""
        assert self.hard_reset_command is not None
        self.log.info("hard reset", command=self.hard_reset_command[0])
        result = await run_command(self.hard_reset_command, HARD_RESET_STARTED_AFTER_S,
                                   detach_after_s=HARD_RESET_STARTED_AFTER_S)
        if result.ok:
            self.log.info("hard reset command started", result=result.message)
        else:
            self.log.error("hard reset failed", error=result.message)
        return result.ok, result.message

    async def set_system_time(self, time: str) -> bool:
        if self.set_time_command is None:
            self.log.warning("set_system_time refused: set_time_command is not configured", time=time)
            return False
        epoch = str(int(parse_rfc3339(time).timestamp()))
        argv = fill_command(self.set_time_command, {"time": time, "epoch": epoch})
        result = await run_command(argv, self.config["command_timeout_s"])
        if result.ok:
            self.log.info("system time set", time=time)
        else:
            self.log.error("setting the system time failed", time=time, error=result.message)
        return result.ok
