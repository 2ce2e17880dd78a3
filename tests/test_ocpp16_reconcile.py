"""Lost transaction events made up for from the retained evse ``session`` var: the decision, its grace periods,
the closed sessions on disk, and a real station whose ocpp16 process is killed while the EV unplugs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring
from hypothesis import given, settings
from hypothesis import strategies as st
from scenario import Lab
from test_ocpp16_with_csms import csms_running, ocpp_station

from chargepoint.busprobe import BusProbe
from modules.ocpp16.queue_store import QueueStore
from modules.ocpp16.reconcile import Fix, GracePeriods, MissedFinish, MissedStart, reconcile
from modules.ocpp16.transactions import CLOSED_SESSIONS_KEPT, Transaction, TransactionBook, TransactionEventError

T0 = "2026-01-01T10:00:00.000Z"


def started(book: TransactionBook, session: str = "s1", evse: int = 1, at: str = T0, meter: int = 1000) -> None:
    book.started({"type": "transaction_started", "session_id": session, "evse_id": evse, "connector_id": evse,
                  "timestamp": at, "id_token": "AA11", "meter_Wh": meter})


def var(session: str | None = "s1", *, active: bool = True, evse: int = 1, started_at: str | None = T0,
        meter_start: float | None = 1000, energy: float | None = 0, at: str = "2026-01-01T10:30:00.000Z",
        id_token: str | None = "AA11", session_started_at: str | None = None) -> dict[str, Any]:
    """``started_at``: the transaction's start (and the session's, unless ``session_started_at``)."""
    return {"evse_id": evse, "session_id": session, "active": active,
            "started_at": session_started_at or started_at, "id_token": id_token,
            "parent_id": None, "transaction_active": active, "transaction_started_at": started_at,
            "meter_start_Wh": meter_start, "energy_Wh": energy, "power_W": None, "timestamp": at}


def apply(book: TransactionBook, fixes: list[Fix]) -> list[tuple[str, dict[str, Any]]]:
    """What the module shell does with the fixes (without the queue): the messages it would queue."""
    messages: list[tuple[str, dict[str, Any]]] = []
    for fix in fixes:
        try:
            if isinstance(fix, MissedFinish):
                messages += book.finished(fix.event)
            elif (start := book.resumed(fix.event)) is not None:
                messages.append(("StartTransaction", start))
        except TransactionEventError:
            pass
    return messages


def test_a_missed_finish_is_stopped_with_the_energy_and_time_of_the_var() -> None:
    book = TransactionBook()
    started(book)
    fixes = reconcile(book, var(active=False, energy=2500.4), book.closed)
    assert [type(f) for f in fixes] == [MissedFinish]
    assert apply(book, fixes) == [("StopTransaction", {"meterStop": 3500, "timestamp": "2026-01-01T10:30:00.000Z",
                                                       "reason": "Other"})]
    assert book.running() == [] and reconcile(book, var(active=False, energy=2500.4), book.closed) == []


def test_a_missed_finish_never_reports_less_than_a_queued_sample() -> None:
    book = TransactionBook()
    started(book)
    book.sampled("s1", 4000.0, "2026-01-01T10:40:00.000Z")
    [(_, stop)] = apply(book, reconcile(book, var(active=False, energy=500), book.closed))
    assert (stop["meterStop"], stop["timestamp"]) == (4000, "2026-01-01T10:40:00.000Z")


def test_a_new_transaction_on_the_connector_stops_the_old_one_where_the_new_one_began() -> None:
    book = TransactionBook()
    started(book, "s1")
    fixes = reconcile(book, var("s2", started_at="2026-01-01T11:00:00.000Z", meter_start=2000), book.closed)
    assert [(type(f), f.session_id) for f in fixes] == [(MissedFinish, "s1"), (MissedStart, "s2")]
    messages = apply(book, fixes)
    assert messages == [
        ("StopTransaction", {"meterStop": 2000, "timestamp": "2026-01-01T11:00:00.000Z", "reason": "Other"}),
        ("StartTransaction", {"connectorId": 1, "idTag": "AA11", "meterStart": 2000,
                              "timestamp": "2026-01-01T11:00:00.000Z"})]
    assert [tx.session_id for tx in book.running()] == ["s2"]


def test_a_later_session_without_a_transaction_stops_the_old_one_at_its_last_sample() -> None:
    """The finish was lost and the next driver plugged in but never started charging: the old transaction
    must not stay open at the CSMS until somebody charges on that connector again."""
    book = TransactionBook()
    started(book, "s1")
    book.sampled("s1", 1800.0, "2026-01-01T10:50:00.000Z")
    later = var("s2", active=False, started_at=None, meter_start=None, energy=None,
                session_started_at="2026-01-01T11:00:00.000Z")
    fixes = reconcile(book, later, book.closed)
    assert [(type(f), f.session_id) for f in fixes] == [(MissedFinish, "s1")]
    assert apply(book, fixes) == [
        ("StopTransaction", {"meterStop": 1800, "timestamp": "2026-01-01T11:00:00.000Z", "reason": "Other"})]
    assert reconcile(book, later, book.closed) == []


def test_a_missed_start_is_rebuilt_from_the_var_once() -> None:
    book = TransactionBook()
    messages = apply(book, reconcile(book, var("s9", evse=2, meter_start=1500.2), book.closed))
    assert messages == [("StartTransaction", {"connectorId": 2, "idTag": "AA11", "meterStart": 1500,
                                              "timestamp": T0})]
    assert reconcile(book, var("s9", evse=2), book.closed) == [], "known now: nothing more"


def test_vars_without_a_session_or_transaction_and_agreeing_vars_change_nothing() -> None:
    book = TransactionBook()
    started(book)
    assert reconcile(book, var(None, active=False, started_at=None, meter_start=None, energy=None), book.closed) == []
    assert reconcile(book, var("s2", active=False, started_at=None, session_started_at="2026-01-01T09:00:00.000Z"),
                     book.closed) == [], "an older session without a transaction: a stale var"
    assert reconcile(book, var("s1"), book.closed) == []


def test_a_stale_var_never_starts_a_closed_session_nor_stops_a_newer_transaction() -> None:
    book = TransactionBook()
    started(book, "old")
    apply(book, reconcile(book, var("old", active=False), book.closed))
    book.close("old")
    assert reconcile(book, var("old"), book.closed) == [], "closed: its StopTransaction was delivered"
    started(book, "new", at="2026-01-01T12:00:00.000Z")
    assert reconcile(book, var("older", started_at="2026-01-01T09:00:00.000Z"), book.closed) == []
    assert [tx.session_id for tx in book.running()] == ["new"]


def test_each_disagreement_waits_its_own_grace_period_and_is_handed_out_once() -> None:
    book = TransactionBook()
    started(book, "s1")
    grace = GracePeriods(3.0)
    finish = reconcile(book, var(active=False), book.closed)
    assert grace.seen(1, finish, 0.0) == 3.0
    assert grace.due(1, finish, 2.9) == []
    assert grace.due(1, finish, 3.0) == finish
    assert grace.due(1, finish, 9.0) == [] and grace.next_due(1) is None, "never twice, even if applying failed"
    late = GracePeriods(3.0)
    start = reconcile(TransactionBook(), var("s5", evse=2), ())
    assert late.seen(2, start, 10.0) == 13.0
    assert late.due(2, [], 13.0) == [], "the late transaction_started arrived meanwhile: the book agrees"
    assert late.next_due(2) is None


def test_a_disagreement_that_appears_later_gets_the_full_grace_period() -> None:
    book = TransactionBook()
    started(book, "s1")
    grace = GracePeriods(3.0)
    finish = reconcile(book, var(active=False), book.closed)
    grace.seen(1, finish, 0.0)
    both = finish + reconcile(book, var("s2", evse=1, started_at="2026-01-01T11:00:00.000Z"), ())[1:]
    grace.seen(1, both, 2.9)
    assert grace.due(1, both, 3.0) == finish
    assert grace.next_due(1) == 5.9 and grace.due(1, both, 5.9) == both[1:]


SESSIONS = [f"s{i}" for i in range(5)]
TIMES = [f"2026-01-01T1{h}:00:00.000Z" for h in range(4)]
vars_ = st.builds(
    var, st.sampled_from([*SESSIONS, None]), active=st.booleans(), evse=st.integers(1, 2),
    started_at=st.sampled_from([*TIMES, None]), meter_start=st.one_of(st.none(), st.integers(0, 10_000)),
    energy=st.one_of(st.none(), st.integers(0, 10_000)), at=st.sampled_from(TIMES),
    id_token=st.sampled_from(["AA11", None, "X" * 21]), session_started_at=st.sampled_from([*TIMES, None]))
steps = st.lists(st.one_of(vars_, st.just("deliver")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(initial=st.lists(st.tuples(st.sampled_from(SESSIONS), st.integers(1, 2), st.sampled_from(TIMES)),
                        max_size=3),
       closed=st.sets(st.sampled_from(SESSIONS)), steps=steps)
def test_no_var_sequence_ever_starts_a_closed_or_known_session_or_stops_one_not_running(
        initial: list[tuple[str, int, str]], closed: set[str], steps: list[Any]) -> None:
    book = TransactionBook(closed=sorted(closed))
    ever_started = set(closed)
    for session, evse, at in initial:
        if session not in ever_started:
            started(book, session, evse, at)
            ever_started.add(session)
    for step in steps:
        if step == "deliver":  # every queued StopTransaction answered: those sessions close
            for tx in book.all():
                if tx.finished:
                    book.close(tx.session_id)
            continue
        fixes = reconcile(book, step, book.closed)
        if step["session_id"] is None:
            assert fixes == []
        for fix in fixes:
            if isinstance(fix, MissedFinish):
                tx = book.session(fix.session_id)
                assert tx is not None and not tx.finished, "a Stop only for a transaction running in the book"
            else:
                assert fix.session_id not in book.closed and book.session(fix.session_id) is None
        for action, _ in apply(book, fixes):
            if action == "StartTransaction":
                assert fixes[-1].session_id not in ever_started, "one StartTransaction per session, ever"
                ever_started.add(fixes[-1].session_id)
        assert not set(book.closed) & {tx.session_id for tx in book.all()}


def test_closed_sessions_survive_reopening_the_database_and_stay_bounded(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    store = QueueStore(path)
    store.write(transactions=[Transaction("a", 1, "AA11", 0, T0), Transaction("b", 1, "AA11", 0, T0)])
    store.write(forget=["a"])
    store.close()
    store = QueueStore(path)
    assert [tx.session_id for tx in store.load_transactions()] == ["b"]
    assert store.load_closed_sessions() == ["a"]
    book = TransactionBook(store.load_transactions(), store.load_closed_sessions())
    assert "a" in book.closed
    for first in range(0, CLOSED_SESSIONS_KEPT + 200, 150):
        store.write(forget=[f"x{i}" for i in range(first, first + 150)])
    store.write(forget=["a"])  # closed again: now the newest
    store.close()
    closed = QueueStore(path).load_closed_sessions()
    assert len(closed) == CLOSED_SESSIONS_KEPT and closed[-1] == "a" and closed[-2] == "x1199"
    assert closed[0] == "x201" and "x200" not in closed, "the oldest closings went first"


# -- a real station: the ocpp16 process is killed while the EV unplugs -----------------------------------

def test_a_finish_missed_while_ocpp16_was_down_still_reaches_the_csms_once(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        async with csms_running(tmp_path) as csms:
            modules = ocpp_station(tmp_path, csms.server.url.rstrip("/")).replace(
                "    module: ocpp16\n", "    module: ocpp16\n    standalone: true\n")
            async with running_station(write_wiring(tmp_path, broker.port, modules), ready_timeout=20) as manager, \
                    BusProbe("127.0.0.1", broker.port) as probe:
                order: list[str] = []  # ocpp16's states and the EVSE's session events, as the bus delivered them
                probe.watch("cp/ocpp/main/var/connection")
                probe.watch("cp/ocpp/state", lambda _t, p: order.append(p.decode()))
                probe.watch("cp/evse_1/evse/var/session_event", lambda _t, p: order.append(json.loads(p)["type"]))
                lab = Lab(probe)
                await probe.wait_for("cp/ocpp/main/var/connection",
                                     lambda p: json.loads(p)["registration"] == "Accepted", 15)
                await lab.plug(1)
                await lab.swipe("CARD1")
                await lab.wait_charger_state(1, "charging")
                answer = await csms.wait_message("StartTransaction", lambda m: m["type"] == "CALLRESULT")
                transaction_id = answer["payload"]["transactionId"]
                [start] = [m["payload"] for m in await csms.messages("StartTransaction") if m["direction"] == "in"]
                await csms.wait_message("MeterValues", lambda m: m["direction"] == "in"  # the station stored the id
                                        and m["payload"].get("transactionId") == transaction_id)
                os.kill(manager._children["ocpp"].pid, signal.SIGKILL)  # type: ignore[attr-defined]
                await probe.wait_for("cp/ocpp/state", lambda p: p in (b"offline", b"failed"), 5)
                await lab.unplug(1)
                finished = await lab.wait_event(1, "transaction_finished")
                down = max(i for i, entry in enumerate(order) if entry in ("offline", "failed"))
                assert "starting" not in order[down:order.index("transaction_finished")], \
                    f"ocpp16 was back before the finish was published: {order}"
                await probe.wait_for("cp/ocpp/state", lambda p: p == b"ready", 15)
                stop = await csms.wait_message("StopTransaction", lambda m: m["direction"] == "in", timeout=15)
                await asyncio.sleep(1.0)  # no second stop follows
                stops = [m["payload"] for m in await csms.messages("StopTransaction") if m["direction"] == "in"]
                assert len(stops) == 1 and stops[0]["transactionId"] == transaction_id
                assert stop["payload"]["reason"] == "Other"
                assert stop["payload"]["meterStop"] >= start["meterStart"]
                # the var's register at the finish, or a MeterValues queued after the restart (the book's clamp)
                assert stop["payload"]["meterStop"] >= finished["meter_Wh"] - 1, (stop, finished)
                [record] = [t for t in await csms.transactions() if t["transactionId"] == transaction_id]
                assert record["open"] is False and record["problems"] == []

    run(main(), timeout=45)
