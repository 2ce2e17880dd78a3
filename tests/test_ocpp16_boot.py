"""The registration core: when Boot goes out, what is held, what the CSMS may ask (OCPP 1.6 §4.2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modules.ocpp16.boot import (
    ApplyCsmsTime,
    ApplyHeartbeatInterval,
    BootCore,
    HoldSession,
    RegistrationChanged,
    ReleaseSession,
    SendBoot,
    SendStatusSnapshot,
)

NOW = "2026-11-22T09:00:00Z"


def test_first_connection_holds_the_session_and_sends_boot() -> None:
    core = BootCore(10)
    assert core.on_connected(0) == [HoldSession(), SendBoot()]
    assert not core.may_send and core.answers_csms_calls


def test_accepted_releases_applies_interval_and_time() -> None:
    core = BootCore(10)
    core.on_connected(0)
    actions = core.on_boot_answered("Accepted", 300, NOW, 1)
    assert actions == [RegistrationChanged("Accepted"), ApplyHeartbeatInterval(300), ReleaseSession(),
                       SendStatusSnapshot(), ApplyCsmsTime(NOW)]
    assert core.may_send and core.retry_at is None


def test_pending_retries_after_the_interval_and_answers_calls() -> None:
    core = BootCore(10)
    core.on_connected(0)
    assert core.on_boot_answered("Pending", 30, NOW, 5) == [RegistrationChanged("Pending")]
    assert core.answers_csms_calls and not core.may_send
    assert core.poll(34.9) == []
    assert core.poll(35) == [SendBoot()]
    assert core.poll(36) == []


def test_rejected_answers_nothing_and_retries_after_the_interval() -> None:
    core = BootCore(10)
    core.on_connected(0)
    core.on_boot_answered("Rejected", 0, NOW, 2)
    assert not core.answers_csms_calls
    assert core.retry_at == 12  # interval 0: the configured fallback


def test_reconnect_after_accepted_sends_statuses_not_boot() -> None:
    core = BootCore(10)
    core.on_connected(0)
    core.on_boot_answered("Accepted", 0, NOW, 1)
    core.on_disconnected()
    assert not core.may_send
    assert core.on_connected(50) == [ReleaseSession(), SendStatusSnapshot()]
    assert core.may_send


def test_failed_boot_is_retried_but_a_failed_triggered_boot_changes_nothing() -> None:
    core = BootCore(10)
    core.on_connected(0)
    core.on_boot_failed(3)
    assert core.retry_at == 13
    core.poll(13)
    core.on_boot_answered("Accepted", 60, NOW, 14)
    assert core.on_triggered() == [SendBoot()]
    assert core.on_boot_answered("Accepted", 90, NOW, 15) == [ApplyHeartbeatInterval(90), ApplyCsmsTime(NOW)]
    assert core.on_boot_failed(20) == [] and core.retry_at is None
    assert core.on_boot_answered("Rejected", 60, NOW, 21) == []
    assert core.registration == "Accepted" and core.may_send


def test_unknown_status_counts_as_a_failed_boot() -> None:
    core = BootCore(10)
    core.on_connected(0)
    assert core.on_boot_answered("Maybe", 60, NOW, 1) == []
    assert core.registration == "Unknown" and core.retry_at == 11


EVENTS = st.lists(st.one_of(
    st.just(("connect",)), st.just(("disconnect",)), st.just(("abort",)), st.just(("fail",)),
    st.just(("trigger",)), st.tuples(st.just("poll"), st.floats(0, 100)),
    st.tuples(st.just("answer"), st.sampled_from(["Accepted", "Pending", "Rejected"]), st.integers(0, 60)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_registration_rules_hold_for_any_sequence(events: list[tuple]) -> None:
    core = BootCore(10)
    now = 0.0
    ever_accepted = False
    for event in events:
        now += 1
        was_accepted = core.accepted_once
        if event[0] == "connect":
            actions = core.on_connected(now)
            assert (SendBoot() in actions) == (not was_accepted), "Boot on connect only until Accepted"
        elif event[0] == "disconnect":
            core.on_disconnected()
            assert not core.may_send
            assert core.retry_at is None
            continue
        elif event[0] == "abort":
            actions = core.on_boot_aborted()
        elif event[0] == "fail":
            actions = core.on_boot_failed(now)
        elif event[0] == "trigger":
            actions = core.on_triggered()
            assert actions == ([SendBoot()] if core.connected else [])
        elif event[0] == "poll":
            now += event[1]
            actions = core.poll(now)
            assert not (actions and was_accepted), "no Boot retries once Accepted"
        else:
            actions = core.on_boot_answered(event[1], event[2], NOW, now)
            ever_accepted |= event[1] == "Accepted"
        assert (ReleaseSession() in actions) <= core.accepted_once, "released only after an Accepted Boot"
        if event[0] == "answer" and was_accepted:
            assert ReleaseSession() not in actions and SendStatusSnapshot() not in actions
        assert core.accepted_once == ever_accepted
        assert core.may_send == (core.connected and ever_accepted)
        if ever_accepted:
            assert core.registration == "Accepted" and core.answers_csms_calls and core.retry_at is None
        if core.retry_at is not None:
            assert core.retry_at > now - 100 and core.connected
