"""The sans-I/O OCPP-J RPC session: framing, correlation, one outstanding CALL, timeouts, error mapping.

The session is driven with text frames and times only; frames are cross-checked with the ``ocpp`` package's
own parser and validator (the library the simulated CSMS and the test peer are built on).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from ocpp.exceptions import FormatViolationError, OccurenceConstraintViolationError
from ocpp.messages import Call as LibraryCall
from ocpp.messages import CallResult as LibraryCallResult
from ocpp.messages import unpack, validate_payload

from modules.ocpp16.rpc import (
    CallAborted,
    CallError,
    CallResult,
    IncomingCall,
    MessageIds,
    ProtocolError,
    Requeued,
    RpcSession,
    Timeout,
    encode_call,
)
from modules.ocpp16.schemas import ERROR_CODES, PayloadError

BOOT = {"chargePointVendor": "chargepoint", "chargePointModel": "SIL"}
BOOT_ACCEPTED = {"status": "Accepted", "currentTime": "2026-03-01T10:00:00Z", "interval": 300}
NOW = "2026-03-01T10:00:00Z"


def result(message_id: str, payload: dict[str, Any]) -> str:
    return json.dumps([3, message_id, payload])


def call(message_id: str, action: str, payload: Any) -> str:
    return json.dumps([2, message_id, action, payload])


def sent(session: RpcSession, now: float = 0.0) -> list[list[Any]]:
    return [json.loads(frame) for frame in session.frames_to_send(now)]


def started(session: RpcSession, action: str = "Heartbeat", payload: dict[str, Any] | None = None,
            now: float = 0.0) -> str:
    message_id = session.send_call(action, {} if payload is None else payload)
    assert [frame[1] for frame in sent(session, now)] == [message_id]
    return message_id


# -- our CALLs ------------------------------------------------------------------------------------------
def test_a_call_goes_out_as_a_compact_frame_and_its_result_comes_back_as_an_event() -> None:
    session = RpcSession()
    message_id = session.send_call("BootNotification", BOOT)
    frames = session.frames_to_send(0.0)
    assert frames == [f'[2,"{message_id}","BootNotification",{{"chargePointVendor":"chargepoint",'
                      f'"chargePointModel":"SIL"}}]']
    assert session.in_flight == (message_id, "BootNotification")
    events = session.receive(result(message_id, BOOT_ACCEPTED), 0.5)
    assert events == [CallResult(message_id, "BootNotification", BOOT_ACCEPTED)]
    assert session.in_flight is None


def test_only_one_call_is_outstanding_the_next_goes_out_after_the_answer() -> None:
    session = RpcSession()
    first = session.send_call("Heartbeat", {})
    second = session.send_call("Authorize", {"idTag": "AB12"})
    third = session.send_call("Heartbeat", {})
    assert [frame[1] for frame in sent(session)] == [first]
    assert sent(session, 1.0) == []
    session.receive(result(first, {"currentTime": NOW}), 1.0)
    assert [frame[1:3] for frame in sent(session, 1.0)] == [[second, "Authorize"]]
    session.receive(json.dumps([4, second, "InternalError", "db down", {}]), 2.0)
    assert [frame[1] for frame in sent(session, 2.0)] == [third]
    assert session.queued == 0


def test_message_ids_are_unique_across_sessions_and_carry_the_process_prefix() -> None:
    ids = [RpcSession().send_call("Heartbeat", {}) for _ in range(50)]
    session = RpcSession()
    ids += [session.send_call("Heartbeat", {}) for _ in range(50)]
    assert len(set(ids)) == 100
    assert len({message_id.rsplit("-", 1)[0] for message_id in ids}) == 1
    assert all(len(message_id) <= 36 for message_id in ids)
    assert MessageIds().prefix != MessageIds().prefix


def test_a_call_times_out_after_the_configured_time_and_a_late_answer_is_dropped() -> None:
    session = RpcSession(call_timeout_s=10.0)
    first = started(session, now=100.0)
    second = session.send_call("Heartbeat", {}, timeout_s=2.0)
    assert session.next_deadline() == 110.0
    assert session.poll(109.9) == []
    assert session.poll(110.0) == [Timeout(first, "Heartbeat")]
    assert [frame[1] for frame in sent(session, 110.0)] == [second]
    late = session.receive(result(first, {"currentTime": NOW}), 110.5)
    assert len(late) == 1 and isinstance(late[0], ProtocolError) and "timed out" in late[0].reason
    assert session.in_flight == (second, "Heartbeat")
    # an answer arriving after the deadline, before anyone polled, is late too
    events = session.receive(result(second, {"currentTime": NOW}), 112.5)
    assert events[0] == Timeout(second, "Heartbeat")
    assert isinstance(events[1], ProtocolError)


def test_a_result_for_an_unknown_id_is_a_protocol_error_not_a_crash() -> None:
    session = RpcSession()
    mine = started(session)
    events = session.receive(result("someone-else", {"currentTime": NOW}), 1.0)
    assert events == [ProtocolError("CALLRESULT matches no outstanding CALL; ignored", "someone-else")]
    assert session.frames_to_send(1.0) == []
    assert session.in_flight == (mine, "Heartbeat")


def test_an_invalid_outgoing_payload_raises_in_the_caller_and_nothing_is_queued() -> None:
    session = RpcSession()
    with pytest.raises(PayloadError) as caught:
        session.send_call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Plugged"})
    assert caught.value.code == "PropertyConstraintViolation" and caught.value.field == "status"
    with pytest.raises(PayloadError):
        session.send_call("Heartbeat", {"bogus": 1})
    assert session.queued == 0 and session.frames_to_send(0.0) == []


def test_an_infinite_number_in_our_confirmation_never_reaches_the_wire() -> None:
    session = RpcSession()
    profile = {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}]}}}
    incoming = session.receive(call("gc1", "GetCompositeSchedule", {"connectorId": 1, "duration": 60}), 0.0)
    assert isinstance(incoming[0], IncomingCall)
    schedule = {"status": "Accepted", "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": float("inf")}]}}
    with pytest.raises(ValueError):
        session.reply("gc1", schedule)
    assert session.frames_to_send(0.0) == [] and session.awaiting_reply == 1
    assert isinstance(session.receive(call("sp1", "SetChargingProfile", profile), 0.0)[0], IncomingCall)


# -- hold, urgent, cancel, reconnect ----------------------------------------------------------------------
def test_while_held_only_urgent_calls_go_out_and_answers_still_flow() -> None:
    session = RpcSession()
    session.hold()
    status = session.send_call("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"})
    boot = session.send_call("BootNotification", BOOT, urgent=True)
    assert [frame[1] for frame in sent(session)] == [boot]
    # SteVe asks for the configuration before the Boot is answered
    assert session.receive(call("steve-1", "GetConfiguration", {}), 0.1) == [IncomingCall("steve-1", "GetConfiguration",
                                                                                         {})]
    assert session.reply("steve-1", {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False,
                                                           "value": "300"}]})
    assert [frame[:2] for frame in sent(session, 0.2)] == [[3, "steve-1"]]
    session.receive(result(boot, {**BOOT_ACCEPTED, "status": "Pending"}), 0.3)
    assert sent(session, 0.3) == []
    session.release()
    assert [frame[1] for frame in sent(session, 0.4)] == [status]


def test_a_queued_call_can_be_cancelled_but_not_the_one_on_the_wire() -> None:
    session = RpcSession()
    first = started(session)
    second = session.send_call("Heartbeat", {})
    assert not session.cancel(first)
    assert session.cancel(second) and session.queued == 0
    assert not session.cancel(second)


def test_reconnect_requeues_the_outstanding_call_under_a_new_id() -> None:
    session = RpcSession()
    boot = session.send_call("BootNotification", BOOT, urgent=True)
    status = session.send_call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
    sent(session)
    session.receive(call("csms-1", "Reset", {"type": "Soft"}), 0.1)
    session.receive(call("csms-2", "Reset", {"type": "Bogus"}), 0.1)  # its CALLERROR is still in the outbox
    events = session.reset_connection(requeue=True)
    assert len(events) == 1 and isinstance(events[0], Requeued)
    assert (events[0].old_message_id, events[0].action) == (boot, "BootNotification")
    new_id = events[0].message_id
    assert new_id != boot
    assert not session.reply("csms-1", {"status": "Accepted"})
    frames = sent(session, 5.0)
    assert frames == [[2, new_id, "BootNotification", BOOT]]
    late = session.receive(result(boot, BOOT_ACCEPTED), 5.1)
    assert "timed out or was dropped" in late[0].reason
    assert session.receive(result(new_id, BOOT_ACCEPTED), 5.2)[0] == CallResult(new_id, "BootNotification",
                                                                                 BOOT_ACCEPTED)
    assert [frame[1] for frame in sent(session, 5.3)] == [status]


def test_reconnect_can_abort_the_outstanding_call_instead() -> None:
    session = RpcSession()
    heartbeat = started(session)
    assert session.reset_connection(requeue=False) == [CallAborted(heartbeat, "Heartbeat")]
    assert session.in_flight is None and session.queued == 0
    assert session.reset_connection(requeue=False) == []


# -- the CSMS's CALLs -----------------------------------------------------------------------------------
def test_crossing_calls_are_answered_while_ours_is_pending() -> None:
    session = RpcSession()
    mine = session.send_call("MeterValues", {"connectorId": 1, "meterValue": [
        {"timestamp": NOW, "sampledValue": [{"value": "10", "unit": "Wh"}]}]})
    sent(session)
    events = session.receive(call("r1", "RemoteStopTransaction", {"transactionId": 9}), 1.0)
    assert events == [IncomingCall("r1", "RemoteStopTransaction", {"transactionId": 9})]
    assert session.reply("r1", {"status": "Accepted"})
    assert sent(session, 1.1) == [[3, "r1", {"status": "Accepted"}]]
    assert not session.reply("r1", {"status": "Accepted"})
    assert session.receive(result(mine, {}), 1.2) == [CallResult(mine, "MeterValues", {})]


def test_our_confirmation_is_validated_and_an_invalid_one_raises_and_keeps_the_call_open() -> None:
    session = RpcSession()
    session.receive(call("c1", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "30"}), 0.0)
    with pytest.raises(PayloadError, match="status"):
        session.reply("c1", {"status": "Done"})
    assert session.frames_to_send(0.0) == [] and session.awaiting_reply == 1
    assert session.reply("c1", {"status": "Accepted"})


def test_reply_error_sends_the_16_spellings_only() -> None:
    session = RpcSession()
    session.receive(call("d1", "DataTransfer", {"vendorId": "acme"}), 0.0)
    with pytest.raises(ValueError, match="FormatViolation"):
        session.reply_error("d1", "FormatViolation")
    assert session.reply_error("d1", "InternalError", "x" * 400, {"where": "handler"})
    [frame] = sent(session)
    assert frame[:3] == [4, "d1", "InternalError"] and len(frame[3]) == 255 and frame[4] == {"where": "handler"}
    assert not session.reply_error("d1", "InternalError")


def test_a_repeated_id_of_an_unanswered_call_is_ignored_without_a_second_answer() -> None:
    session = RpcSession()
    session.receive(call("dup", "ClearCache", {}), 0.0)
    events = session.receive(call("dup", "Reset", {"type": "Hard"}), 0.1)
    assert isinstance(events[0], ProtocolError) and events[0].answered_with is None
    assert session.frames_to_send(0.1) == []
    session.reply("dup", {"status": "Accepted"})
    assert session.receive(call("dup", "ClearCache", {}), 0.2) == [IncomingCall("dup", "ClearCache", {})]


MALFORMED_CALLS = [
    ('[2,"m1","Reset",{"type":"Hard"', "FormationViolation"),  # not JSON, id recovered
    ('[2, "m\\"1", "Reset", {', "FormationViolation"),
    ('[2,"m1","Reset",{"type":NaN}]', "FormationViolation"),
    ('[2,"m1","Reset"]', "FormationViolation"),
    ('[2,"m1","Reset",{"type":"Hard"},{}]', "FormationViolation"),
    ('[2,"m1",7,{}]', "FormationViolation"),
    ('[2,"m1","Reset",[]]', "FormationViolation"),
    ('[2,"m1","Reset",{"type":"Hard","when":"now"}]', "FormationViolation"),
    ('[2,"m1","Reset",{}]', "OccurenceConstraintViolation"),
    ('[2,"m1","Reset",{"type":1}]', "TypeConstraintViolation"),
    ('[2,"m1","Reset",{"type":"Medium"}]', "PropertyConstraintViolation"),
    ('[2,"m1","ChangeConfiguration",{"key":"' + "K" * 51 + '","value":"1"}]', "PropertyConstraintViolation"),
    ('[2,"m1","ReserveNow",{"connectorId":1,"expiryDate":"soon","idTag":"A","reservationId":1}]',
     "PropertyConstraintViolation"),
    ('[2,"m1","BrewCoffee",{}]', "NotImplemented"),
    ('[2,"m1","SetChargingProfile",{}]', "NotSupported"),
]


@pytest.mark.parametrize(("frame", "code"), MALFORMED_CALLS)
def test_a_malformed_csms_call_is_answered_with_the_right_callerror_and_nothing_else(frame: str, code: str) -> None:
    session = RpcSession(supported_actions={"Reset", "ChangeConfiguration", "ReserveNow", "GetConfiguration"})
    events = session.receive(frame, 0.0)
    assert len(events) == 1 and isinstance(events[0], ProtocolError) and events[0].answered_with == code
    [answer] = sent(session)
    assert answer[:3] == [4, events[0].message_id, code] and answer[4] == {}
    assert events[0].message_id in ('m1', 'm"1') and answer[3]
    assert session.awaiting_reply == 0


@pytest.mark.parametrize("frame", [
    "hello", '{"2":"m1"}', "[]", "[5,\"m1\",{}]", '["2","m1","Heartbeat",{}]', "[2.0,\"m1\",\"Heartbeat\",{}]",
    "[2,7,\"Heartbeat\",{}]", "[2]", "[true,\"m1\"]", '[3,"m1",{"a":', "[[[[" * 3000,
])
def test_frames_without_a_usable_call_id_or_type_are_dropped_unanswered(frame: str) -> None:
    session = RpcSession()
    events = session.receive(frame, 0.0)
    assert len(events) == 1 and isinstance(events[0], ProtocolError) and events[0].answered_with is None
    assert session.frames_to_send(0.0) == []


def test_a_null_payload_is_read_as_empty() -> None:
    session = RpcSession()
    assert session.receive('[2,"n1","ClearCache",null]', 0.0) == [IncomingCall("n1", "ClearCache", {})]


# -- the CSMS's answers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("received", "code"), [
    ("FormationViolation", "FormationViolation"), ("FormatViolation", "FormationViolation"),
    ("OccurenceConstraintViolation", "OccurenceConstraintViolation"),
    ("OccurrenceConstraintViolation", "OccurenceConstraintViolation"), ("NotImplemented", "NotImplemented"),
    ("notsupported", "NotSupported"), ("MessageTypeNotSupported", "GenericError"), ("Teapot", "GenericError"),
])
def test_callerror_codes_are_read_in_both_spellings_and_unknown_ones_kept(received: str, code: str) -> None:
    session = RpcSession()
    mine = started(session)
    [event] = session.receive(json.dumps([4, mine, received, "why", {"k": 1}]), 1.0)
    assert event == CallError(mine, "Heartbeat", code, "why", {"k": 1}, received)


@pytest.mark.parametrize(("tail", "description", "details"), [
    ([], "", {}), ([None, None], "None", {}), ([5, [1]], "5", {"value": [1]}), (["d", {}, "extra"], "d", {}),
])
def test_sloppy_callerrors_still_end_our_call(tail: list[Any], description: str, details: dict[str, Any]) -> None:
    session = RpcSession()
    mine = started(session)
    [event] = session.receive(json.dumps([4, mine, "GenericError", *tail]), 1.0)
    assert isinstance(event, CallError) and event.details == details
    assert event.description == (description if description != "None" else "null")
    assert session.in_flight is None


def test_a_callresult_breaking_its_schema_is_delivered_with_the_problem() -> None:
    session = RpcSession()
    mine = started(session, "Authorize", {"idTag": "AB12"})
    [event] = session.receive(result(mine, {"idTagInfo": {"status": "Okay"}}), 1.0)
    assert isinstance(event, CallResult) and event.problem is not None
    assert (event.problem.code, event.problem.field) == ("PropertyConstraintViolation", "idTagInfo.status")
    assert event.payload == {"idTagInfo": {"status": "Okay"}}


def test_a_callresult_with_extra_fields_or_a_zone_less_time_is_accepted_as_is() -> None:
    session = RpcSession()
    mine = started(session, "BootNotification", BOOT)
    sloppy = {"status": "Accepted", "currentTime": "2026-03-01T10:00:00", "interval": 60, "tenant": "t1"}
    assert session.receive(result(mine, sloppy), 1.0) == [CallResult(mine, "BootNotification", sloppy)]


def test_a_callresult_whose_payload_is_not_an_object_is_flagged() -> None:
    session = RpcSession()
    mine = started(session)
    [event] = session.receive(json.dumps([3, mine, "ok"]), 1.0)
    assert isinstance(event, CallResult) and event.problem is not None and event.problem.code == "FormationViolation"


# -- interoperability with the ocpp package ------------------------------------------------------------------
def test_frames_we_send_are_accepted_by_the_ocpp_package() -> None:
    session = RpcSession()
    meter = {"connectorId": 1, "transactionId": 5, "meterValue": [{"timestamp": NOW, "sampledValue": [
        {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}
    session.send_call("MeterValues", meter)
    [frame] = session.frames_to_send(0.0)
    parsed = unpack(frame)
    assert isinstance(parsed, LibraryCall) and parsed.payload == meter
    asyncio.run(validate_payload(parsed, "1.6"))
    session.receive(LibraryCall("lib-1", "GetLocalListVersion", {}).to_json(), 0.1)
    session.reply("lib-1", {"listVersion": 3})
    answer = unpack(session.frames_to_send(0.2)[0])
    assert isinstance(answer, LibraryCallResult) and answer.unique_id == "lib-1"
    answer.action = "GetLocalListVersion"
    asyncio.run(validate_payload(answer, "1.6"))


def test_callerrors_built_by_the_ocpp_package_are_understood() -> None:
    session = RpcSession()
    mine = started(session, "BootNotification", BOOT)
    request = LibraryCall(mine, "BootNotification", BOOT)
    frame = request.create_call_error(FormatViolationError(details={"cause": "bad"})).to_json()
    [event] = session.receive(frame, 1.0)
    assert isinstance(event, CallError) and (event.code, event.original_code) == ("FormationViolation",
                                                                                 "FormatViolation")
    assert event.details == {"cause": "bad"}
    other = started(session)
    frame = LibraryCall(other, "Heartbeat", {}).create_call_error(OccurenceConstraintViolationError()).to_json()
    assert session.receive(frame, 2.0)[0].code == "OccurenceConstraintViolation"


def test_encode_call_validates_then_encodes_compactly() -> None:
    assert encode_call("i1", "Authorize", {"idTag": "Ä1"}) == '[2,"i1","Authorize",{"idTag":"Ä1"}]'
    with pytest.raises(PayloadError):
        encode_call("i1", "Authorize", {"idTag": 1})


# -- properties ------------------------------------------------------------------------------------------------
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
ACTIONS = st.sampled_from(["Reset", "ClearCache", "GetConfiguration", "Heartbeat", "RemoteStartTransaction", "Nope",
                           ""])
FRAMES = st.one_of(
    st.text(max_size=40),
    JSON_VALUES.map(json.dumps),
    st.tuples(st.sampled_from([2, 3, 4, 5, "2", None, 2.0]), st.lists(JSON_VALUES, max_size=5))
    .map(lambda parts: json.dumps([parts[0], *parts[1]])),
    st.tuples(st.text(max_size=40), ACTIONS, JSON_VALUES).map(lambda parts: json.dumps([2, *parts])),
    st.tuples(st.text(max_size=40), ACTIONS, JSON_VALUES).map(lambda parts: json.dumps([2, *parts])[:-2]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAMES, min_size=1, max_size=5))
def test_malformed_frames_never_raise_and_get_at_most_one_callerror_each(frames: list[str]) -> None:
    session = RpcSession(supported_actions={"Reset", "ClearCache", "GetConfiguration"})
    for text in frames:
        events = session.receive(text, 0.0)
        answers = [json.loads(frame) for frame in session.frames_to_send(0.0)]
        assert len(answers) <= 1
        if answers:
            [answer] = answers
            assert answer[0] == 4 and answer[2] in ERROR_CODES and isinstance(answer[3], str) and answer[4] == {}
            assert [event.answered_with for event in events if isinstance(event, ProtocolError)] == [answer[2]]
        for event in events:
            if isinstance(event, IncomingCall):
                assert session.reply_error(event.message_id, "NotSupported")
                session.frames_to_send(0.0)


class OneCallAtATime(RuleBasedStateMachine):
    """Random interleavings of queueing, sending, answers, junk, crossing calls, time and reconnects."""

    def __init__(self) -> None:
        super().__init__()
        self.session = RpcSession(call_timeout_s=5.0)
        self.now = 0.0
        self.queued: set[str] = set()  # ids whose CALL has not ended yet
        self.ended: dict[str, str] = {}  # id -> how it ended
        self.on_wire: list[str] = []  # ids that went out in CALL frames, in order
        self.unanswered: set[str] = set()  # ids on the wire without an answer or timeout

    def take(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, CallResult | CallError | Timeout | CallAborted):
                assert event.message_id in self.queued, event
                self.queued.remove(event.message_id)
                self.ended[event.message_id] = type(event).__name__
                self.unanswered.discard(event.message_id)
            elif isinstance(event, Requeued):
                assert event.old_message_id in self.queued and event.message_id not in self.ended
                self.queued.remove(event.old_message_id)
                self.ended[event.old_message_id] = "Requeued"
                self.unanswered.discard(event.old_message_id)
                self.queued.add(event.message_id)
            elif isinstance(event, IncomingCall):
                self.session.reply_error(event.message_id, "NotSupported")

    @rule(urgent=st.booleans())
    def queue_call(self, urgent: bool) -> None:
        message_id = self.session.send_call("Heartbeat", {}, urgent=urgent)
        assert message_id not in self.queued and message_id not in self.ended
        self.queued.add(message_id)

    @rule()
    def send(self) -> None:
        for text in self.session.frames_to_send(self.now):
            frame = json.loads(text)
            if frame[0] == 2:
                assert frame[1] not in self.on_wire
                self.on_wire.append(frame[1])
                self.unanswered.add(frame[1])

    @precondition(lambda self: self.on_wire)
    @rule(kind=st.sampled_from(["result", "error", "bad-result"]), pick=st.integers(0, 50))
    def answer(self, kind: str, pick: int) -> None:
        message_id = self.on_wire[pick % len(self.on_wire)]
        text = {"result": result(message_id, {"currentTime": NOW}),
                "error": json.dumps([4, message_id, "FormatViolation", "", {}]),
                "bad-result": json.dumps([3, message_id, {"currentTime": 5}])}[kind]
        self.take(self.session.receive(text, self.now))

    @rule(text=FRAMES)
    def junk(self, text: str) -> None:
        self.take(self.session.receive(text, self.now))

    @rule(action=ACTIONS, message_id=st.text(min_size=1, max_size=6))
    def crossing_call(self, action: str, message_id: str) -> None:
        self.take(self.session.receive(call(message_id, action, {}), self.now))

    @rule(seconds=st.floats(0, 8))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.take(self.session.poll(self.now))

    @rule(requeue=st.booleans())
    def reconnect(self, requeue: bool) -> None:
        self.take(self.session.reset_connection(requeue=requeue))
        self.unanswered.clear()

    @rule(hold=st.booleans())
    def hold_or_release(self, hold: bool) -> None:
        if hold:
            self.session.hold()
        else:
            self.session.release()

    @invariant()
    def at_most_one_call_outstanding(self) -> None:
        assert len(self.unanswered) <= 1
        in_flight = self.session.in_flight
        assert self.unanswered == ({in_flight[0]} if in_flight else set())

    def teardown(self) -> None:
        """Drain: every queued call ends exactly once, in a result, an error or a timeout."""
        self.session.release()
        for _ in range(len(self.queued) * 2 + 2):
            self.send()
            self.now += 5.0
            self.take(self.session.poll(self.now))
        assert not self.queued
        assert set(self.on_wire) <= set(self.ended)
        assert len(self.on_wire) == len(set(self.on_wire))


OneCallAtATime.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestOneCallAtATime = OneCallAtATime.TestCase


def test_a_number_too_large_for_a_float_makes_the_call_unparsable() -> None:
    session = RpcSession()
    profile = {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1}]}}}
    text = call("big", "SetChargingProfile", profile).replace('"limit": 1', '"limit": 1e999')
    [event] = session.receive(text, 0.0)
    assert isinstance(event, ProtocolError) and event.answered_with == "FormationViolation"
