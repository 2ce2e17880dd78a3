"""Pure parts of the ocpp16 module shell: transaction book, Authorize mapping, message log masking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modules.ocpp16.message_log import MessageLog, masked, render_html
from modules.ocpp16.rpc import CallResult, Timeout
from modules.ocpp16.schemas import validate_request
from modules.ocpp16.tokens import authorize_answer
from modules.ocpp16.transactions import CLOSED_SESSIONS_KEPT, TransactionBook, TransactionEventError


def event(kind: str, session: str = "s1", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "session_id": session, "evse_id": 1, "connector_id": 1,
            "timestamp": "2026-01-01T10:00:00.000Z", **fields}


def test_start_and_stop_payloads_leave_the_id_to_the_queue() -> None:
    book = TransactionBook()
    start = book.started(event("transaction_started", id_token="AA11", meter_Wh=1000.4, reservation_id=3))
    assert start == {"connectorId": 1, "idTag": "AA11", "meterStart": 1000, "timestamp": "2026-01-01T10:00:00.000Z",
                     "reservationId": 3}
    validate_request("StartTransaction", start)
    book.start_answered("s1", 42)
    assert book.by_transaction_id(42) is not None
    messages = book.finished(event("transaction_finished", meter_Wh=2500.6, reason="Local", stop_id_token="AA11"))
    assert messages == [("StopTransaction", {"meterStop": 2501, "timestamp": "2026-01-01T10:00:00.000Z",
                                             "reason": "Local", "idTag": "AA11"})]
    validate_request("StopTransaction", {**messages[0][1], "transactionId": 42})
    assert book.running() == [] and book.finished(event("transaction_finished", meter_Wh=1, reason="Local")) == []
    book.close("s1")
    assert book.all() == []


def test_a_power_loss_stop_never_reports_less_or_earlier_than_meter_values_already_queued() -> None:
    book = TransactionBook()
    book.started(event("transaction_started", id_token="AA11", meter_Wh=1000))
    book.sampled("s1", 1800.0, "2026-01-01T10:20:00.000Z")
    book.sampled("s1", 1750.0, "2026-01-01T10:19:00.000Z")  # out of order: changes nothing
    stop = book.finished(event("transaction_finished", meter_Wh=1500, reason="PowerLoss",
                               timestamp="2026-01-01T10:10:00.000Z"))[0][1]
    assert stop["meterStop"] == 1800 and stop["timestamp"] == "2026-01-01T10:20:00.000Z"


def test_a_stop_after_the_last_sample_keeps_its_own_time_and_value() -> None:
    book = TransactionBook()
    book.started(event("transaction_started", id_token="AA11", meter_Wh=1000))
    book.sampled("s1", 1800.0, "2026-01-01T10:20:00.000Z")
    stop = book.finished(event("transaction_finished", meter_Wh=1900, reason="Local",
                               timestamp="2026-01-01T10:21:00.000Z"))[0][1]
    assert stop["meterStop"] == 1900 and stop["timestamp"] == "2026-01-01T10:21:00.000Z"


def test_a_finish_the_book_never_saw_rebuilds_the_start_from_the_event() -> None:
    book = TransactionBook()
    messages = book.finished(event("transaction_finished", id_token="AA11", meter_Wh=900, reason="PowerLoss",
                                   transaction_started_at="2026-01-01T09:00:00.000Z", meter_start_Wh=1000))
    assert [action for action, _ in messages] == ["StartTransaction", "StopTransaction"]
    assert messages[0][1]["timestamp"] == "2026-01-01T09:00:00.000Z" and messages[0][1]["meterStart"] == 1000
    assert messages[1][1]["meterStop"] == 1000, "meterStop never below meterStart"
    with pytest.raises(TransactionEventError):
        book.finished(event("transaction_finished", "s2", id_token="AA11", meter_Wh=5, reason="PowerLoss"))


def test_resumed_transaction_unknown_to_the_book_is_started() -> None:
    book = TransactionBook()
    resumed = event("session_resumed", id_token="AA11", meter_Wh=1500, transaction_started_at="2026-01-01T09:00:00Z",
                    meter_start_Wh=1000)
    assert book.resumed(resumed)["meterStart"] == 1000
    assert book.resumed(resumed) is None, "a known transaction is not started twice"


def test_a_closed_session_never_starts_again_whatever_event_comes_late() -> None:
    """After its StopTransaction was delivered (or its Start dropped), a late or repeated event about the session
    would be a second transaction at the CSMS: it is refused and the book stays as it was."""
    book = TransactionBook()
    book.started(event("transaction_started", id_token="AA11", meter_Wh=1000))
    book.finished(event("transaction_finished", meter_Wh=1500, reason="Local"))
    book.close("s1")
    book.started(event("transaction_started", "s2", id_token="AA11", meter_Wh=0))
    book.close("s2")  # its StartTransaction was dropped
    start_facts = {"id_token": "AA11", "meter_Wh": 1500, "transaction_started_at": "2026-01-01T09:00:00Z",
                   "meter_start_Wh": 1000}
    for session in ("s1", "s2"):
        for kind in ("transaction_started", "session_resumed", "transaction_finished"):
            with pytest.raises(TransactionEventError, match="already closed"):
                getattr(book, {"transaction_started": "started", "session_resumed": "resumed",
                               "transaction_finished": "finished"}[kind])(event(kind, session, **start_facts))
    assert book.all() == [] and list(book.closed) == ["s1", "s2"]


def test_the_closed_sessions_in_memory_keep_the_newest() -> None:
    book = TransactionBook(closed=[f"old{i}" for i in range(CLOSED_SESSIONS_KEPT)])
    book.started(event("transaction_started", "new", id_token="AA11", meter_Wh=0))
    book.close("new")
    assert len(book.closed) == CLOSED_SESSIONS_KEPT and "new" in book.closed and "old0" not in book.closed


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
