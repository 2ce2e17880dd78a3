"""The transactional queue core and its SQLite store: order, ids, retries, size bound, restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.queuecli import _read as read_queue_for_cli
from modules.ocpp16.queue_store import DELETE_BATCH, QueueStore, delivered_mark_path
from modules.ocpp16.schemas import PayloadError
from modules.ocpp16.transactions import Transaction
from modules.ocpp16.tx_queue import (
    Delivered,
    Dropped,
    OrphanMessageError,
    QueuedMessage,
    Retrying,
    TransactionQueue,
)

START = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-01-01T10:00:00Z"}
STOP = {"meterStop": 10, "timestamp": "2026-01-01T11:00:00Z"}
METER = {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T10:30:00Z", "sampledValue": [{"value": "5"}]}]}


def test_stop_waits_behind_its_start_and_gets_the_csms_id() -> None:
    queue = TransactionQueue()
    queue.add("StartTransaction", START, "s1")
    queue.add("MeterValues", METER, "s1")
    queue.add("StopTransaction", STOP, "s1")
    head = queue.next_to_send(0)
    assert head is not None and head.action == "StartTransaction"
    queue.sent(head)
    assert queue.next_to_send(0) is None, "one message out at a time"
    assert queue.delivered({"transactionId": 77, "idTagInfo": {"status": "Accepted"}}) == [Delivered(head, 77)]
    for action in ("MeterValues", "StopTransaction"):
        message = queue.next_to_send(0)
        assert message is not None and message.action == action
        assert json.loads(queue.outgoing_payload(message))["transactionId"] == 77
        queue.sent(message)
        queue.delivered({})
    assert len(queue) == 0 and queue.transaction_ids == {}


def test_failed_deliveries_back_off_then_drop_the_transaction() -> None:
    queue = TransactionQueue()
    queue.add("StartTransaction", START, "s1")
    queue.add("StopTransaction", STOP, "s1")
    queue.add("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": "2026-01-01T10:00:00Z"})
    start = queue.next_to_send(0)
    queue.sent(start)
    assert isinstance(queue.failed(100, 3, 30)[0], Retrying)
    assert queue.next_to_send(129) is None and queue.next_time() == 130
    queue.sent(queue.next_to_send(130))
    queue.failed(130, 3, 30)
    assert queue.next_time() == 190, "interval times the attempts"
    queue.sent(queue.next_to_send(190))
    effects = queue.failed(190, 3, 30)
    assert [type(e) for e in effects] == [Dropped, Dropped]
    assert [m.action for m in effects[1].messages] == ["StopTransaction"]
    assert [m.action for m in queue.messages] == ["SecurityEventNotification"]


def test_a_dropped_connection_costs_no_attempt() -> None:
    queue = TransactionQueue()
    queue.add("StartTransaction", START, "s1")
    queue.sent(queue.next_to_send(0))
    queue.aborted()
    assert queue.messages[0].attempts == 0 and queue.next_to_send(0) is queue.messages[0]


def test_the_size_bound_thins_meter_values_never_start_or_stop() -> None:
    queue = TransactionQueue(max_messages=10)
    queue.add("StartTransaction", START, "s1")
    dropped = []
    for _ in range(30):
        _, thinned = queue.add("MeterValues", METER, "s1")
        dropped += list(thinned.messages) if thinned else []
    queue.add("StopTransaction", STOP, "s1")
    actions = [m.action for m in queue.messages]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
    assert len(queue) <= 11 and all(m.action == "MeterValues" for m in dropped)
    assert [m.seq for m in queue.messages] == sorted(m.seq for m in queue.messages)


def test_store_keeps_messages_and_transactions_across_a_reopen(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite3")
    queue = TransactionQueue()
    start, _ = queue.add("StartTransaction", START, "s1")
    stop, _ = queue.add("StopTransaction", STOP, "s1")
    tx = Transaction("s1", 1, "T", 0, "2026-01-01T10:00:00Z", 5)
    store.write(add=[(start, "2026-01-01T10:00:00Z"), (stop, "2026-01-01T11:00:00Z")], transactions=[tx])
    store.write(delete=[start.seq], attempts=[(stop.seq, 2)])
    store.close()
    again = QueueStore(tmp_path / "q.sqlite3")
    messages = again.load_messages()
    assert [(m.action, m.attempts, m.payload) for m in messages] == [("StopTransaction", 2, STOP)]
    assert again.load_transactions() == [tx]
    assert again.summary()[0]["action"] == "StopTransaction"
    assert again.last_seq() == stop.seq
    restored = TransactionQueue.restore([], {"s1": 5}, last_seq=again.last_seq())
    new, _ = restored.add("MeterValues", METER, "s1")
    assert new.seq > stop.seq, "sequence numbers continue after a restart"


def _stored_meter_values(store: QueueStore, count: int, last_seq: int = 0) -> list[int]:
    queue = TransactionQueue.restore([], {"s1": 5}, 10_000, last_seq)
    rows = [(queue.add("MeterValues", METER, "s1")[0], "2026-01-01T10:30:00Z") for _ in range(count)]
    store.write(add=rows)
    return [m.seq for m, _ in rows]


def test_an_answered_message_is_never_loaded_again_even_if_the_process_dies_before_its_delete(
        tmp_path: Path) -> None:
    """Answers are recorded in the delivered mark and the rows deleted in batches; a station killed in
    between must not send them again after its restart, nor show them in ``chargepoint ocpp queue``."""
    path = tmp_path / "q.sqlite3"
    store = QueueStore(path)
    seqs = _stored_meter_values(store, 5)
    for seq in seqs[:3]:
        store.delivered(seq)
    rows = store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert rows == 5, "the deletes wait for a batch (nothing was flushed yet)"
    assert read_queue_for_cli(path, everything=True)["types"][0]["count"] == 2
    assert [m["seq"] for m in read_queue_for_cli(path, everything=True)["messages"]] == seqs[3:]
    after_kill = QueueStore(path)  # the first one never closed: as after kill -9
    assert [m.seq for m in after_kill.load_messages()] == seqs[3:]
    assert after_kill.summary()[0]["count"] == 2
    assert after_kill.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2, "deleted when opened"


def test_delivered_rows_are_deleted_in_batches_and_when_the_queue_rests(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite3")
    seqs = _stored_meter_values(store, DELETE_BATCH + 3)
    count = lambda: store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]  # noqa: E731
    for seq in seqs[:DELETE_BATCH]:
        store.delivered(seq)
    assert count() == 3
    store.delivered(seqs[DELETE_BATCH])
    assert count() == 3
    store.flush_delivered()
    assert count() == 2
    store.close()
    assert [m.seq for m in QueueStore(tmp_path / "q.sqlite3").load_messages()] == seqs[-2:]


def test_a_database_made_anew_beside_an_old_mark_loses_nothing(tmp_path: Path) -> None:
    """An integrator who deletes the queue database but not its mark: new messages number above the mark."""
    path = tmp_path / "q.sqlite3"
    store = QueueStore(path)
    seqs = _stored_meter_values(store, 4)
    for seq in seqs:
        store.delivered(seq)
    store.close()
    for leftover in tmp_path.glob("q.sqlite3*"):
        if leftover != delivered_mark_path(path):
            leftover.unlink()
    fresh = QueueStore(path)
    assert fresh.last_seq() == seqs[-1]
    new = _stored_meter_values(fresh, 2, fresh.last_seq())
    fresh.close()
    assert [m.seq for m in QueueStore(path).load_messages()] == new


def test_a_torn_or_foreign_mark_counts_as_nothing_delivered(tmp_path: Path) -> None:
    """A mark that fails its check sends the queue again (a CSMS sees repeats), never skips a message."""
    path = tmp_path / "q.sqlite3"
    store = QueueStore(path)
    seqs = _stored_meter_values(store, 3)
    store.delivered(seqs[0])  # and the process dies before the batch delete
    mark = delivered_mark_path(path)
    mark.write_bytes(bytes([seqs[2], 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]))  # seq 3 with a wrong check
    assert [m.seq for m in QueueStore(path).load_messages()] == seqs
    assert read_queue_for_cli(path, everything=False)["types"][0]["count"] == 3


def test_a_payload_the_schema_refuses_is_never_queued_and_a_stored_one_is_set_apart() -> None:
    queue = TransactionQueue(transaction_ids={"s1": 5})
    with pytest.raises(PayloadError):
        queue.add("MeterValues", {"connectorId": 1, "meterValue": []}, "s1")  # minItems 1
    with pytest.raises(ValueError, match="transactionId"):
        queue.add("MeterValues", {**METER, "transactionId": 9}, "s1")
    assert len(queue) == 0 and queue.last_seq == 0
    good = QueuedMessage(1, "MeterValues", METER, "s1")
    bad = QueuedMessage(2, "StopTransaction", {"meterStop": "ten", "timestamp": "2026-01-01T11:00:00Z"}, "s1")
    restored = TransactionQueue.restore([good, bad], {"s1": 5})
    assert [m.seq for m in restored.messages] == [1] and [m.seq for m, _ in restored.refused] == [2]
    assert "meterStop" in restored.refused[0][1]
    assert json.loads(restored.outgoing_payload(good)) == {**METER, "transactionId": 5}
    assert restored.add("MeterValues", METER, "s1")[0].seq == 3, "a refused message's number is not reused"
    broken_start = QueuedMessage(4, "StartTransaction", {**START, "meterStart": -1.5}, "s2")
    its_meter = QueuedMessage(5, "MeterValues", METER, "s2")
    other = QueuedMessage(6, "MeterValues", METER, "s1")
    restored = TransactionQueue.restore([broken_start, its_meter, other], {"s1": 5})
    assert [m.seq for m in restored.messages] == [6], "nothing of a session whose Start cannot go"
    assert [(m.seq, why) for m, why in restored.refused][1] == (5, "its StartTransaction was refused")
    for stored in (json.dumps(METER, indent=1), json.dumps(METER, separators=(",", ":"))):  # edited, or as written
        restored = TransactionQueue.restore([QueuedMessage(7, "MeterValues", METER, "s1", text=stored)], {"s1": 5})
        assert json.loads(restored.outgoing_payload(restored.messages[0])) == {**METER, "transactionId": 5}


STEPS = st.lists(st.one_of(
    st.tuples(st.just("start"), st.integers(0, 3)), st.tuples(st.just("meter"), st.integers(0, 3)),
    st.tuples(st.just("stop"), st.integers(0, 3)),
    st.tuples(st.just("send"), st.sampled_from(["ok", "ok", "ok", "error", "abort"])),
    st.tuples(st.just("restart"), st.just(0)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_whatever_happens_messages_go_in_order_with_real_ids(steps: list[tuple[str, int]]) -> None:
    queue, now, next_id = TransactionQueue(max_messages=8), 0.0, 100
    state: dict[str, str] = {}  # session -> started | stopped
    delivered: list[tuple[int, str, str | None, dict]] = []
    ids: dict[str, int] = {}

    def send(outcome: str) -> None:
        nonlocal next_id
        message = queue.next_to_send(now)
        if message is None:
            return
        payload = json.loads(queue.outgoing_payload(message))
        assert payload.get("transactionId", 1) > 0, "never -1 or 0"
        assert {k: v for k, v in payload.items() if k != "transactionId"} == message.payload, "the payload queued"
        if message.action != "StartTransaction":
            assert payload["transactionId"] == ids[message.session_id], "the id the CSMS gave"
        queue.sent(message)
        if outcome == "abort":
            queue.aborted()
        elif outcome == "error":
            for effect in queue.failed(now, 3, 1):
                if isinstance(effect, Dropped) and any(m.action == "StopTransaction" for m in effect.messages):
                    state[message.session_id] = "stop dropped after its attempts"
        else:
            assert message.seq == min(m.seq for m in queue.messages), "delivered in sequence order (the mark)"
            answer = {"transactionId": next_id} if message.action == "StartTransaction" else {}
            for effect in queue.delivered(answer):
                if isinstance(effect, Delivered) and effect.transaction_id is not None:
                    ids[message.session_id] = effect.transaction_id
                    next_id += 1
            delivered.append((message.seq, message.action, message.session_id, payload))

    for kind, n in steps:
        now += 1
        session = f"s{n}"
        if kind == "start" and session not in state:
            queue.add("StartTransaction", START, session)
            state[session] = "started"
        elif kind in ("meter", "stop") and state.get(session) == "started":
            try:
                queue.add("MeterValues" if kind == "meter" else "StopTransaction", METER if kind == "meter" else STOP,
                          session)
            except OrphanMessageError:
                assert session not in queue.transaction_ids
                state[session] = "dropped"
                continue
            if kind == "stop":
                state[session] = "stopped"
        elif kind == "send":
            send(n)  # type: ignore[arg-type]
        elif kind == "restart":
            queue = TransactionQueue.restore(list(queue.messages), dict(queue.transaction_ids), 8, queue.last_seq)
    for _ in range(500):  # the CSMS comes back and answers everything
        now += 10
        send("ok")
    assert len(queue) == 0
    seqs = [seq for seq, *_ in delivered]
    assert seqs == sorted(seqs), "delivered strictly in order"
    starts = [s for _, a, s, _ in delivered if a == "StartTransaction"]
    stops = [s for _, a, s, _ in delivered if a == "StopTransaction"]
    assert len(starts) == len(set(starts)) and len(stops) == len(set(stops)), "nothing twice"
    for session in stops:
        assert session in starts, "a stop only after its start"
    for session, how in state.items():
        if session in starts:
            assert (session in stops) == (how == "stopped")
