"""The pure parts of the system module: update and upload state machines, URLs, log windows, commands."""

from __future__ import annotations

import ftplib
import importlib
import ssl
import urllib.error
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.registry import ModuleRegistry, load_module_class

_info = ModuleRegistry().find("system")
assert _info is not None
load_module_class(_info)
jobs: Any = importlib.import_module("chargepoint_ext.system.jobs")
locations: Any = importlib.import_module("chargepoint_ext.system.locations")
commands: Any = importlib.import_module("chargepoint_ext.system.commands")
boot: Any = importlib.import_module("chargepoint_ext.system.boot")
transfer: Any = importlib.import_module("chargepoint_ext.system.transfer")

PublishStatus, Wait, StartAttempt, Install, Restart = (jobs.PublishStatus, jobs.Wait, jobs.StartAttempt,
                                                       jobs.Install, jobs.Restart)


def statuses(actions: list[Any]) -> list[str]:
    return [a.status for a in actions if isinstance(a, PublishStatus)]


# -- firmware update --------------------------------------------------------------------------

def test_firmware_update_happy_path_waits_for_permission_then_restarts() -> None:
    job = jobs.FirmwareUpdate(1, 60, install_allowed=False, restart_mode="soft")
    assert job.start(0) == [PublishStatus("Downloading"), StartAttempt(1)]
    assert job.progress(50, 100) == [PublishStatus("Downloading", progress_percent=50.0)]
    assert job.downloaded() == [PublishStatus("Downloaded", progress_percent=100.0)]
    assert job.timer_expired() == []
    accepted, actions = job.allow_installation()
    assert accepted and actions == [PublishStatus("Installing"), Install()]
    assert job.install_finished(True, "ok") == [PublishStatus("InstallRebooting", "ok"), Restart("soft")]
    assert job.finished
    assert job.allow_installation() == (False, [])


def test_firmware_update_scheduled_until_retrieve_time() -> None:
    job = jobs.FirmwareUpdate(0, 0, install_allowed=True, restart_mode="none")
    assert job.start(12.5) == [PublishStatus("DownloadScheduled"), Wait(12.5)]
    assert job.attempt_failed("too early") == []
    assert job.timer_expired() == [PublishStatus("Downloading"), StartAttempt(1)]
    assert job.downloaded() == [PublishStatus("Downloaded", progress_percent=100.0), PublishStatus("Installing"),
                                Install()]
    assert job.install_finished(True) == [PublishStatus("Installed")]


def test_firmware_retries_then_fails_with_the_last_reason() -> None:
    job = jobs.FirmwareUpdate(2, 7, install_allowed=True, restart_mode="soft")
    job.start(0)
    first = job.attempt_failed("HTTP 503")
    assert first == [PublishStatus("Downloading", "attempt 1 of 3 failed: HTTP 503; retrying in 7 s"), Wait(7)]
    assert job.timer_expired() == [PublishStatus("Downloading", "attempt 2 of 3"), StartAttempt(2)]
    job.attempt_failed("HTTP 503")
    assert job.timer_expired()[-1] == StartAttempt(3)
    assert job.attempt_failed("connection refused") == [PublishStatus("DownloadFailed", "connection refused")]
    assert job.timer_expired() == []


def test_firmware_permanent_failure_skips_retries_and_install_failure_is_reported() -> None:
    job = jobs.FirmwareUpdate(5, 1, install_allowed=False, restart_mode="soft")
    job.start(0)
    assert job.attempt_failed("unsupported URL scheme 'gopher'", permanent=True) == [
        PublishStatus("DownloadFailed", "unsupported URL scheme 'gopher'")]
    job = jobs.FirmwareUpdate(0, 0, install_allowed=False, restart_mode="soft")
    job.start(0)
    assert job.allow_installation() == (True, [])
    assert statuses(job.downloaded()) == ["Downloaded", "Installing"]
    assert not job.replaceable
    assert job.install_finished(False, "exit 3") == [PublishStatus("InstallationFailed", "exit 3")]
    with pytest.raises(ValueError, match="restart_mode"):
        jobs.FirmwareUpdate(0, 0, install_allowed=True, restart_mode="later")
    with pytest.raises(ValueError, match="negative"):
        jobs.FirmwareUpdate(-1, 0, install_allowed=True, restart_mode="none")


def test_progress_is_published_in_steps_and_only_when_the_size_is_known() -> None:
    job = jobs.FirmwareUpdate(0, 0, install_allowed=False, restart_mode="none")
    job.start(0)
    published = [a.progress_percent for n in range(0, 1001) for a in job.progress(n, 1000)]
    assert published == sorted(published) and len(published) == 11
    assert published[0] == 0.0 and published[-1] == 100.0
    assert job.progress(10, None) == [] and job.progress(10, 0) == []


FIRMWARE_EVENTS = st.lists(st.one_of(
    st.tuples(st.just("timer")), st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("progress"), st.integers(0, 200)), st.tuples(st.just("downloaded")),
    st.tuples(st.just("allow")), st.tuples(st.just("installed"), st.booleans()),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(retries=st.integers(0, 5), delay=st.sampled_from([0, 3.5]), allowed=st.booleans(),
       mode=st.sampled_from(jobs.RESTART_MODES), events=FIRMWARE_EVENTS)
def test_firmware_status_sequences_are_valid_and_attempts_bounded(retries: int, delay: float, allowed: bool,
                                                                   mode: str, events: list[tuple[Any, ...]]) -> None:
    job = jobs.FirmwareUpdate(retries, 1, install_allowed=allowed, restart_mode=mode)
    actions = job.start(delay)
    for event in events:
        finished_before = job.finished
        match event:
            case ("timer",):
                new = job.timer_expired()
            case ("fail", permanent):
                new = job.attempt_failed("boom", permanent=permanent)
            case ("progress", received):
                new = job.progress(received, 200)
            case ("downloaded",):
                new = job.downloaded()
            case ("allow",):
                new = job.allow_installation()[1]
            case _:
                new = job.install_finished(event[1])
        assert not (finished_before and new), "a finished update acts again"
        actions += new
    previous = "Idle"
    for status in statuses(actions):
        assert status in jobs.FIRMWARE_TRANSITIONS.get(previous, set()), f"{previous} -> {status}"
        previous = status
    attempts = [a.attempt for a in actions if isinstance(a, StartAttempt)]
    assert attempts == list(range(1, len(attempts) + 1))
    assert len(attempts) <= retries + 1
    assert sum(isinstance(a, Install) for a in actions) <= 1
    restarts = [a for a in actions if isinstance(a, Restart)]
    assert len(restarts) <= 1 and (not restarts or (mode != "none" and previous == "InstallRebooting"))


# -- log upload --------------------------------------------------------------------------------

def test_log_upload_retries_then_reports_the_failure_status() -> None:
    job = jobs.LogUpload(1, 2)
    assert job.start() == [PublishStatus("Uploading"), StartAttempt(1)]
    assert statuses(job.attempt_failed("PermissionDenied", "HTTP 403")) == ["Uploading"]
    assert job.timer_expired() == [PublishStatus("Uploading", "attempt 2 of 2"), StartAttempt(2)]
    assert job.attempt_failed("PermissionDenied", "HTTP 403") == [PublishStatus("PermissionDenied", "HTTP 403")]
    assert job.uploaded() == [] and job.finished
    with pytest.raises(ValueError, match="not an upload failure"):
        jobs.LogUpload(0, 0).attempt_failed("Uploaded", "x")


@settings(max_examples=300, deadline=None)
@given(retries=st.integers(0, 5), events=st.lists(st.one_of(
    st.just(("timer",)), st.tuples(st.just("fail"), st.sampled_from(sorted(jobs.UPLOAD_FAILURES)), st.booleans()),
    st.just(("uploaded",))), max_size=30))
def test_upload_status_sequences_are_valid_and_attempts_bounded(retries: int, events: list[tuple[Any, ...]]) -> None:
    job = jobs.LogUpload(retries, 0)
    actions = job.start()
    for event in events:
        finished_before = job.finished
        match event:
            case ("timer",):
                new = job.timer_expired()
            case ("fail", status, permanent):
                new = job.attempt_failed(status, "x", permanent=permanent)
            case _:
                new = job.uploaded()
        assert not (finished_before and new)
        actions += new
    previous = "Idle"
    for status in statuses(actions):
        assert status in jobs.UPLOAD_TRANSITIONS.get(previous, set()), f"{previous} -> {status}"
        previous = status
    assert len([a for a in actions if isinstance(a, StartAttempt)]) <= retries + 1


# -- locations -----------------------------------------------------------------------------------

def test_parse_location_keeps_credentials_out_of_the_url() -> None:
    location = locations.parse_location("ftp://diag:s3cr%40t@ftp.example.com:2121/up/")
    assert (location.scheme, location.host, location.port) == ("ftp", "ftp.example.com", 2121)
    assert (location.user, location.password) == ("diag", "s3cr@t")
    assert location.url == "ftp://ftp.example.com:2121/up/"
    assert location.redacted == "ftp://diag:***@ftp.example.com:2121/up/"
    assert location.is_directory and location.file_name == ""
    target = location.with_file_name("cp-diagnostics-20250314T092653Z.tar.gz")
    assert target.ftp_path == "up/cp-diagnostics-20250314T092653Z.tar.gz"
    assert target.with_file_name("other") == target
    assert locations.parse_location("HTTPS://[::1]:8443/fw/a%20b.bin?sig=1").url == "https://[::1]:8443/fw/a%20b.bin?sig=1"
    assert locations.parse_location("http://h/fw/a%20b.bin").file_name == "a b.bin"


@pytest.mark.parametrize(("text", "kind", "says"), [
    ("", "malformed", "empty"), ("firmware.bin", "malformed", "scheme://"), ("http://", "malformed", "no host"),
    ("http://host:99999/x", "malformed", "Port out of range"), ("http://host/a b", "malformed", "whitespace"),
    ("gopher://host/x", "unsupported", "use http, https, ftp"), ("file:///etc/passwd", "unsupported", "'file'"),
])
def test_bad_locations_say_why(text: str, kind: str, says: str) -> None:
    with pytest.raises(locations.LocationError) as caught:
        locations.parse_location(text)
    assert caught.value.kind == kind and says in str(caught.value)


@given(st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=4, max_size=20))
def test_passwords_never_show_in_redacted_urls(password: str) -> None:
    text = f"ftp://user:{password}@files.example.org/up/"
    assert password not in locations.parse_location(text).redacted
    assert password not in locations.redact_text(text)


@given(st.text(max_size=300))
def test_safe_file_names_stay_in_their_folder(name: str) -> None:
    safe = locations.safe_file_name(name, "fallback.bin")
    assert safe and "/" not in safe and not safe.startswith(".") and len(safe) <= locations.MAX_FILE_NAME


def test_firmware_and_archive_file_names() -> None:
    assert locations.firmware_file_name("https://h/fw/station-2.1.0.swu?token=x") == "station-2.1.0.swu"
    assert locations.firmware_file_name("ftp://h/../../etc/passwd") == "passwd"
    assert locations.firmware_file_name("http://h/%2e%2e%2fsecret") == "secret"
    assert locations.firmware_file_name("http://h/dir/") == "firmware.bin"
    assert locations.firmware_file_name("not a url") == "firmware.bin"
    moment = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
    assert locations.log_archive_name("cp7", "security", moment, "zip") == "cp7-security-20250314T092653Z.zip"


def test_log_lines_are_cut_to_the_window_with_their_continuation_lines() -> None:
    lines = ["header without time\n",
             "2025-03-14T09:00:00.000Z INFO a: early\n",
             "2025-03-14T10:00:00.000Z ERROR a: boom\n", "Traceback: line 1\n",
             "[2025-03-14 11:30:00+01:00] other format, 10:30 UTC\n",
             "2025-03-14T12:00:00.123456+0000 host journal line\n", "  continued\n"]
    oldest = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
    latest = datetime(2025, 3, 14, 11, 0, tzinfo=UTC)
    assert list(locations.lines_in_window(lines, oldest, latest)) == [lines[0], lines[2], lines[3], lines[4]]
    assert list(locations.lines_in_window(lines, None, None)) == lines
    assert locations.line_timestamp("2025-13-40T99:00:00Z bad") is None


@given(st.lists(st.integers(0, 100), max_size=30), st.integers(0, 100), st.integers(0, 100))
def test_windowed_lines_are_a_subsequence_within_bounds(minutes: list[int], low: int, high: int) -> None:
    lines = [f"2025-03-14T10:{m // 60 + 10:02d}:{m % 60:02d}Z entry {i}\n" for i, m in enumerate(minutes)]
    oldest = datetime(2025, 3, 14, 10, 10 + low // 60, low % 60, tzinfo=UTC)
    latest = datetime(2025, 3, 14, 10, 10 + high // 60, high % 60, tzinfo=UTC)
    kept = list(locations.lines_in_window(lines, oldest, latest))
    assert kept == [line for line in lines if oldest <= locations.line_timestamp(line) <= latest]


# -- commands, boot record, failure descriptions -------------------------------------------------

def test_commands_parse_and_fill_placeholders() -> None:
    assert commands.parse_command(None, "x") is None
    assert commands.parse_command("date -u -s '@{epoch}'", "set_time_command") == ["date", "-u", "-s", "@{epoch}"]
    assert commands.parse_command(["systemctl", "reboot"], "x") == ["systemctl", "reboot"]
    for bad, says in (("echo 'open", "cannot split"), ([], "empty"), ([1, 2], "list of strings"), ("  ", "empty")):
        with pytest.raises(commands.CommandConfigError, match=f"config reset_hard_command: .*{says}"):
            commands.parse_command(bad, "reset_hard_command")
    filled = commands.fill_command(["sh", "-c", "echo {time} ${HOME} > {out}"], {"time": "T", "out": "f"})
    assert filled == ["sh", "-c", "echo T ${HOME} > f"]
    assert commands.fill_command(["install-fw"], {"path": "/x/fw.bin"}, append="path") == ["install-fw", "/x/fw.bin"]
    assert commands.fill_command(["i", "--file={path}"], {"path": "/p"}, append="path") == ["i", "--file=/p"]


def test_boot_info_from_stored_records() -> None:
    assert boot.boot_info_from_record({}) == boot.BootInfo("power_up")
    assert boot.boot_info_from_record("garbage") == boot.BootInfo("power_up")
    assert boot.boot_info_from_record({"pending": None}) == boot.BootInfo("power_up")
    assert boot.boot_info_from_record({"pending": {"boot_reason": "remote_reset"}}) == boot.BootInfo("remote_reset")
    assert boot.boot_info_from_record({"pending": {"boot_reason": "reboot please"}}) == boot.BootInfo("unknown")
    record = {"pending": {"boot_reason": "firmware_update", "firmware": {"status": "Installed", "request_id": 4}}}
    assert boot.boot_info_from_record(record) == boot.BootInfo("firmware_update", "Installed", 4)


def test_transfer_failures_map_to_clear_messages_and_upload_statuses() -> None:
    location = locations.parse_location("https://user:pw@cs.example.com:8443/logs/")

    def described(exc: BaseException) -> tuple[str, str]:
        failure = transfer.describe_failure(exc, location, 30)
        assert "pw" not in failure.message
        return failure.upload_status, failure.message

    def http_error(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError(location.url, code, "Reason", Message(), None)

    assert described(http_error(403)) == ("PermissionDenied", f"HTTP 403 Reason from {location.redacted}")
    assert described(http_error(405))[0] == "NotSupportedOperation"
    assert described(http_error(500))[0] == "UploadFailure"
    assert described(urllib.error.URLError(ConnectionRefusedError(111, "refused"))) == (
        "UploadFailure", "connection refused by cs.example.com:8443")
    assert "TLS certificate verification failed" in described(urllib.error.URLError(
        ssl.SSLCertVerificationError(1, "certificate verify failed")))[1]
    assert described(ftplib.error_perm("530 Login incorrect."))[0] == "PermissionDenied"
    assert described(ftplib.error_perm("553 Could not create file."))[1] == (
        "FTP server cs.example.com:8443 refused: 553 Could not create file.")
    assert described(TimeoutError()) == ("UploadFailure", "no answer from cs.example.com:8443 within 30 s")
