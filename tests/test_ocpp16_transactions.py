"""Pure parts of the ocpp16 module shell: transaction book, Authorize mapping, message log masking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modules.ocpp16.message_log import MessageLog, masked, render_html
from modules.ocpp16.rpc import CallResult, Timeout
from modules.ocpp16.schemas import validate_request
from modules.ocpp16.tokens import authorize_answer
from modules.ocpp16.transactions import TransactionBook, TransactionEventError


def event(kind: str, session: str = "s1", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "session_id": session, "evse_id": 1, "connector_id": 1,
            "timestamp": "2026-01-01T10:00:00.000Z", **fields}


def test_start_then_stop_carries_the_csms_transaction_id() -> None:
    book = TransactionBook()
    start = book.started(event("transaction_started", id_token="AA11", meter_Wh=1000.4, reservation_id=3))
    assert start == {"connectorId": 1, "idTag": "AA11", "meterStart": 1000, "timestamp": "2026-01-01T10:00:00.000Z",
                     "reservationId": 3}
    validate_request("StartTransaction", start)
    assert book.start_answered("s1", 42) is None
    assert book.by_transaction_id(42) is not None
    stop = book.finished(event("transaction_finished", meter_Wh=2500.6, reason="Local", stop_id_token="AA11"))
    assert stop == {"meterStop": 2501, "timestamp": "2026-01-01T10:00:00.000Z", "reason": "Local",
                    "idTag": "AA11", "transactionId": 42}
    validate_request("StopTransaction", stop)
    assert book.running() == []


def test_stop_before_the_start_was_answered_waits_for_the_id() -> None:
    book = TransactionBook()
    book.started(event("transaction_started", id_token="AA11", meter_Wh=0))
    assert book.finished(event("transaction_finished", meter_Wh=10, reason="EVDisconnected")) is None
    assert book.start_answered("s1", 7) == {"meterStop": 10, "timestamp": "2026-01-01T10:00:00.000Z",
                                            "reason": "EVDisconnected", "transactionId": 7}


@pytest.mark.parametrize("bad", [
    event("transaction_started", id_token="X" * 21, meter_Wh=0),
    event("transaction_started", id_token="AA11", meter_Wh=-1),
    event("transaction_started", id_token="AA11", meter_Wh=None),
    event("transaction_started", session=None, id_token="AA11", meter_Wh=0),
])
def test_bad_start_events_are_refused_and_change_nothing(bad: dict[str, Any]) -> None:
    book = TransactionBook()
    with pytest.raises(TransactionEventError):
        book.started(bad)
    assert book.running() == []


@given(st.lists(st.tuples(st.sampled_from(["start", "answer", "stop"]), st.integers(0, 3)), max_size=40))
def test_no_stop_ever_goes_out_without_the_csms_id(steps: list[tuple[str, int]]) -> None:
    book, answered, stops = TransactionBook(), {}, []
    for action, n in steps:
        session = f"s{n}"
        if action == "start":
            try:
                book.started(event("transaction_started", session, id_token="T", meter_Wh=n))
            except TransactionEventError:
                continue
        elif action == "answer" and book.session(session) and session not in answered:
            answered[session] = 100 + n
            stop = book.start_answered(session, 100 + n)
            stops += [stop] if stop else []
        elif action == "stop":
            stop = book.finished(event("transaction_finished", session, meter_Wh=n, reason="Local"))
            stops += [stop] if stop else []
    for stop in stops:
        assert stop["transactionId"] >= 100
        validate_request("StopTransaction", stop)
    assert len({s["transactionId"] for s in stops}) == len(stops)


def test_authorize_answers_map_to_validator_results() -> None:
    accepted = authorize_answer(CallResult("m", "Authorize", {"idTagInfo": {
        "status": "Accepted", "parentIdTag": "FLEET", "expiryDate": "2030-01-01T12:00:00+02:00"}}))
    assert (accepted["status"], accepted["parent_id"], accepted["expiry_time"]) == \
        ("Accepted", "FLEET", "2030-01-01T10:00:00.000Z")
    assert authorize_answer(CallResult("m", "Authorize", {"idTagInfo": {"status": "Blocked"}}))["status"] == "Blocked"
    assert authorize_answer(Timeout("m", "Authorize"))["status"] == "Unknown"
    assert authorize_answer(CallResult("m", "Authorize", {}))["status"] == "Unknown"


def test_message_log_masks_the_authorization_key_and_rotates(tmp_path: Path) -> None:
    frame = '[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"sup3r-s3cret-key!!"}]'
    assert "sup3r" not in masked(frame)
    assert masked('[2,"1","Heartbeat",{}]') == '[2,"1","Heartbeat",{}]'
    log = MessageLog(tmp_path / "m.jsonl", max_bytes=300)
    for _ in range(5):
        log.write("in", frame)
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines and all(line["direction"] == "in" and line["time"].endswith("Z") for line in lines)
    assert (tmp_path / "m.jsonl.1").exists()
    assert "sup3r" not in "".join(p.read_text() for p in tmp_path.iterdir())


def test_message_log_renders_as_html(tmp_path: Path) -> None:
    log = MessageLog(tmp_path / "m.jsonl")
    log.write("out", '[2,"7","Authorize",{"idTag":"<b>"}]')
    log.write("in", '[4,"7","NotImplemented","",{}]')
    page = render_html([*(tmp_path / "m.jsonl").read_text().splitlines(), "not json"])
    assert page.count("<tr") == 4 and "&lt;b&gt;" in page and "<b>" not in page
    assert '<tr class="CALLERROR"><td>' in page and "<td>Authorize</td>" in page and "unreadable" in page
