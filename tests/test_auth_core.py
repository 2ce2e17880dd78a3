"""auth's pure core: validation priority, EVSE selection, stop rules, master pass, connection timeout."""

from __future__ import annotations

import importlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.registry import ModuleRegistry, load_module_class

load_module_class(ModuleRegistry().find("auth"))  # type: ignore[arg-type]
core = importlib.import_module("chargepoint_ext.auth.core")
model = importlib.import_module("chargepoint_ext.auth.model")
Token, Validation, ReservationCheck = model.Token, model.Validation, model.ReservationCheck
Authorize, StopTransaction, Withdraw, Decision = model.Authorize, model.StopTransaction, model.Withdraw, model.Decision
CheckReservations, Validate, Ignored = model.CheckReservations, model.Validate, model.Ignored

ACCEPTED = Validation("Accepted", None, "v1")
CHARGER_STATES = ["idle", "waiting_for_authorization", "preparing", "charging", "suspended_ev", "suspended_evse",
                  "finishing", "faulted", "unavailable", "reserved"]


def state(evse_id: int, charger_state: str = "idle", **changes: Any) -> dict[str, Any]:
    plugged = charger_state not in ("idle", "reserved", "unavailable", "faulted")
    running = charger_state in ("charging", "suspended_ev", "suspended_evse")
    return {"evse_id": evse_id, "charger_state": charger_state, "plugged": plugged, "enabled": True,
            "authorized": running, "transaction_active": running, "reservation_id": None, **changes}


def make(n: int = 1, use_reservations: bool = False, **settings_: Any) -> Any:
    auth = core.AuthCore(core.AuthSettings(**settings_), use_reservations=use_reservations)
    for evse_id in range(1, n + 1):
        auth.on_evse_state(evse_id - 1, state(evse_id), 0.0)
    return auth


def running(auth: Any, evse_id: int, id_token: str, parent_id: str | None = None) -> None:
    auth.on_evse_state(evse_id - 1, state(evse_id, "charging"), 0.0)
    auth.on_session_event({"type": "transaction_started", "evse_id": evse_id, "id_token": id_token,
                           "parent_id": parent_id})


def present(auth: Any, token: Any, validation: Any = ACCEPTED, now: float = 0.0,
            reservations: dict[int, Any] | None = None) -> list[Any]:
    """on_token, then on_validated and reservation checks as the shell would do; every action in order."""
    actions = auth.on_token(token, now)
    done: list[Any] = []
    while actions:
        action = actions.pop(0)
        done.append(action)
        if isinstance(action, Validate):
            actions += auth.on_validated(token, action.preset or validation, now)
        elif isinstance(action, CheckReservations):
            checks = {(t, e): (reservations or {}).get(e, model.NOT_RESERVED) for t, _, e in action.pairs}
            actions += auth.on_reservation_checks(action, checks, now)
    return done


def authorize_all(auth: Any, actions: list[Any], now: float = 0.0, ok: bool = True) -> list[Any]:
    """Answer every Authorize with ``ok``; return the decisions that follow."""
    follow: list[Any] = []
    for action in actions:
        if isinstance(action, Authorize):
            follow += auth.on_authorize_result(action, ok, now)
    return follow


def of(kind: type, actions: list[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


# -- validation priority --------------------------------------------------------------------

def test_first_definite_answer_by_priority_wins() -> None:
    unknown, blocked = Validation("Unknown", None, "v1"), Validation("Blocked", None, "v2")
    assert core.decide_validation([None, Validation("Accepted", None, "v2")]) is None
    assert core.decide_validation([unknown, blocked, ACCEPTED]) == blocked
    assert core.decide_validation([ACCEPTED, None]) == ACCEPTED
    assert core.decide_validation([unknown, unknown]).status == "Unknown"


answers = st.lists(st.one_of(st.none(), st.sampled_from(["Accepted", "Blocked", "Expired", "Invalid",
                                                         "ConcurrentTx", "Unknown"]).map(Validation)), min_size=1)


@given(answers)
def test_validation_waits_only_for_better_ranked_validators(given_answers: list[Any]) -> None:
    decided = core.decide_validation(given_answers)
    definite = [i for i, a in enumerate(given_answers) if a is not None and a.status != "Unknown"]
    first_none = next((i for i, a in enumerate(given_answers) if a is None), None)
    if definite and (first_none is None or definite[0] < first_none):
        assert decided is given_answers[definite[0]]
    elif first_none is not None:
        assert decided is None
    else:
        assert decided.status == "Unknown"


# -- start ----------------------------------------------------------------------------------

def test_swipe_authorizes_the_free_evse_and_plug_in_ends_the_timeout() -> None:
    auth = make(1, connection_timeout_s=30)
    actions = present(auth, Token("AAA"))
    assert of(Authorize, actions) == [Authorize(1, Token("AAA"), None, None)]
    decisions = authorize_all(auth, actions)
    assert [d.decision for d in decisions] == ["accepted"]
    assert auth.next_deadline() == 30.0
    auth.on_evse_state(0, state(1, "preparing", plugged=True, authorized=True), 5.0)
    assert auth.next_deadline() is None
    assert auth.tick(31.0) == []


def test_connection_timeout_withdraws_exactly_at_the_deadline() -> None:
    auth = make(1, connection_timeout_s=30)
    authorize_all(auth, present(auth, Token("AAA")), now=0.0)
    assert auth.tick(29.999) == []
    [withdraw] = auth.tick(30.0)
    assert isinstance(withdraw, Withdraw) and withdraw.evse_id == 1
    assert withdraw.on_success.decision == "withdrawn" and "30 s" in withdraw.on_success.reason
    assert auth.tick(60.0) == []


def test_rejected_and_unknown_tokens_start_nothing() -> None:
    auth = make(1)
    for status in ("Blocked", "Expired", "Invalid", "ConcurrentTx", "Unknown"):
        actions = present(auth, Token(f"T{status}"), Validation(status, None, "v1"))
        assert of(Authorize, actions) == []
        assert [d.decision for d in of(Decision, actions)] == ["rejected"]
        assert of(Decision, actions)[0].status == status


def test_prevalidated_token_skips_validators() -> None:
    auth = make(1)
    [validate] = auth.on_token(Token("REMOTE", "central", prevalidated=True, request_id=7, parent_id="P"), 0.0)
    assert validate.preset == Validation("Accepted", "P", "provider", "prevalidated")
    actions = present(make(1), Token("OTHER"))
    assert of(Validate, actions)[0].preset is None


def test_duplicate_presentation_is_debounced_but_remote_starts_are_not() -> None:
    auth = make(2, debounce_s=1.0)
    present(auth, Token("AAA"), now=0.0)
    assert isinstance(auth.on_token(Token("AAA"), 0.5)[0], Ignored)
    assert isinstance(auth.on_token(Token("AAA"), 1.2)[0], Ignored)  # still held on the reader: window slides
    assert of(Validate, present(auth, Token("R", "central", request_id=1), now=2.0))
    assert of(Validate, present(auth, Token("R", "central", request_id=2), now=2.1))


def test_token_connectors_restrict_the_choice() -> None:
    auth = make(3)
    actions = present(auth, Token("AAA", connectors=(3,)))
    assert [a.evse_id for a in of(Authorize, actions)] == [3]
    actions = present(auth, Token("BBB", connectors=(9,)))
    assert [d.decision for d in of(Decision, actions)] == ["no_evse_available"]


def test_find_first_takes_the_first_free_evse_in_wiring_order() -> None:
    auth = make(3)
    auth.on_evse_state(0, state(1, "charging"), 0.0)
    auth.on_evse_state(2, state(3, "waiting_for_authorization"), 0.0)
    assert [a.evse_id for a in of(Authorize, present(auth, Token("AAA")))] == [2]


def test_refused_authorization_falls_back_to_the_next_free_evse() -> None:
    auth = make(2)
    first = of(Authorize, present(auth, Token("AAA")))
    assert [a.evse_id for a in first] == [1]
    follow = auth.on_authorize_result(first[0], False, 0.0)
    assert [a.evse_id for a in of(Authorize, follow)] == [2]
    assert [d.decision for d in authorize_all(auth, follow)] == ["accepted"]


def test_plug_events_prefers_the_latest_plug_in_else_waits_for_one() -> None:
    auth = make(3, selection_algorithm="PlugEvents", connection_timeout_s=10)
    auth.on_evse_state(1, state(2, "waiting_for_authorization"), 1.0)
    auth.on_evse_state(2, state(3, "waiting_for_authorization"), 2.0)
    assert [a.evse_id for a in of(Authorize, present(auth, Token("AAA"), now=3.0))] == [3]
    auth = make(2, selection_algorithm="PlugEvents", connection_timeout_s=10)
    actions = present(auth, Token("BBB"), now=0.0)
    assert [d.decision for d in of(Decision, actions)] == ["awaiting_plug_in"]
    assert auth.pending_view() == [("BBB", (1, 2), "plug_in", 10.0)]
    plugged = auth.on_evse_state(1, state(2, "waiting_for_authorization"), 4.0)
    assert [a.evse_id for a in of(Authorize, plugged)] == [2]
    assert auth.pending_view() == []


def test_plug_events_gives_up_after_the_connection_timeout() -> None:
    auth = make(1, selection_algorithm="PlugEvents", connection_timeout_s=10)
    present(auth, Token("BBB"))
    assert auth.tick(9.0) == []
    [decision] = auth.tick(10.0)
    assert decision.decision == "withdrawn" and decision.evse_id is None
    assert auth.on_evse_state(0, state(1, "waiting_for_authorization"), 11.0) == []


def test_user_input_waits_for_a_choice_among_free_evses() -> None:
    auth = make(3, selection_algorithm="UserInput")
    auth.on_evse_state(0, state(1, "charging"), 0.0)
    actions = present(auth, Token("AAA"))
    assert [d.decision for d in of(Decision, actions)] == ["awaiting_selection"]
    assert auth.pending_view()[0][1] == (2, 3)
    assert auth.select(1, None, 1.0) == []  # not offered
    chosen = auth.select(3, "AAA", 1.0)
    assert [a.evse_id for a in of(Authorize, chosen)] == [3]
    single = make(1, selection_algorithm="UserInput")
    assert [a.evse_id for a in of(Authorize, present(single, Token("BBB")))] == [1]


# -- stop -----------------------------------------------------------------------------------

def test_same_token_stops_its_transaction_without_validation() -> None:
    auth = make(2)
    running(auth, 2, "AAA", "FLEET")
    [stop] = auth.on_token(Token("AAA"), 5.0)
    assert isinstance(stop, StopTransaction) and stop.evse_id == 2
    assert stop.on_success.decision == "stop_transaction" and stop.on_success.status is None


def test_transaction_owner_comes_from_the_authorization_when_the_event_lacks_it() -> None:
    auth = make(1)
    authorize_all(auth, present(auth, Token("AAA"), Validation("Accepted", "FLEET", "v1")))
    auth.on_evse_state(0, state(1, "charging"), 1.0)
    assert (auth.evses[1].tx_token, auth.evses[1].tx_parent) == ("AAA", "FLEET")
    assert auth.grants == {}
    actions = present(auth, Token("BBB"), Validation("Accepted", "FLEET", "v1"), now=2.0)
    assert [a.evse_id for a in of(StopTransaction, actions)] == [1]


def test_parent_id_stops_when_no_evse_is_free() -> None:
    auth = make(1)
    running(auth, 1, "AAA", "FLEET")
    actions = present(auth, Token("BBB"), Validation("Accepted", "FLEET", "v1"))
    assert [a.evse_id for a in of(StopTransaction, actions)] == [1]


def test_parent_id_prefers_starting_on_a_free_evse_unless_configured_otherwise() -> None:
    auth = make(2)
    running(auth, 1, "AAA", "FLEET")
    actions = present(auth, Token("BBB"), Validation("Accepted", "FLEET", "v1"))
    assert of(StopTransaction, actions) == [] and [a.evse_id for a in of(Authorize, actions)] == [2]
    auth = make(2, prioritize_authorization=False)
    running(auth, 1, "AAA", "FLEET")
    actions = present(auth, Token("BBB"), Validation("Accepted", "FLEET", "v1"))
    assert [a.evse_id for a in of(StopTransaction, actions)] == [1] and of(Authorize, actions) == []


def test_wrong_token_cannot_stop() -> None:
    auth = make(1)
    running(auth, 1, "AAA", "FLEET")
    actions = present(auth, Token("CCC"), Validation("Accepted", "OTHER", "v1"))
    assert of(StopTransaction, actions) == []
    assert [d.decision for d in of(Decision, actions)] == ["no_evse_available"]
    blocked = present(auth, Token("DDD"), Validation("Blocked", "FLEET", "v1"))
    assert of(StopTransaction, blocked) == []


def test_master_pass_stops_every_running_transaction_and_starts_none() -> None:
    auth = make(3, master_pass_group_id="POLICE")
    running(auth, 1, "AAA")
    running(auth, 3, "BBB")
    actions = present(auth, Token("COP"), Validation("Accepted", "POLICE", "v1"))
    assert [a.evse_id for a in of(StopTransaction, actions)] == [1, 3] and of(Authorize, actions) == []
    idle = make(1, master_pass_group_id="POLICE")
    actions = present(idle, Token("COP"), Validation("Accepted", "POLICE", "v1"))
    assert of(Authorize, actions) == [] and [d.decision for d in of(Decision, actions)] == ["rejected"]


def test_presenting_again_before_plug_in_withdraws() -> None:
    auth = make(1, debounce_s=0.5)
    authorize_all(auth, present(auth, Token("AAA"), now=0.0))
    [withdraw] = auth.on_token(Token("AAA"), 2.0)
    assert isinstance(withdraw, Withdraw) and withdraw.on_success.reason == "presented again"
    assert auth.next_deadline() is None


# -- reservations ---------------------------------------------------------------------------

def test_reservation_checks_decide_which_evse_a_token_may_take() -> None:
    auth = make(2, use_reservations=True)
    auth.on_evse_state(0, state(1, "reserved", reservation_id=5), 0.0)
    other = ReservationCheck("reserved_for_other_token", 5)
    actions = present(auth, Token("CCC"), reservations={1: other})
    assert [a.evse_id for a in of(Authorize, actions)] == [2]
    auth = make(2, use_reservations=True)
    auth.on_evse_state(0, state(1, "reserved", reservation_id=5), 0.0)
    mine = ReservationCheck("reserved_for_token", 5)
    actions = present(auth, Token("AAA"), reservations={1: mine})
    assert of(Authorize, actions) == [Authorize(1, Token("AAA"), None, 5)]


def test_reserved_evse_is_closed_without_an_answer_from_the_reservation_module() -> None:
    auth = make(1)
    auth.on_evse_state(0, state(1, "reserved", reservation_id=5), 0.0)
    [decision] = of(Decision, present(auth, Token("AAA")))
    assert (decision.decision, decision.reason) == ("rejected", "reserved for another token")


# -- properties -----------------------------------------------------------------------------

evse_states = st.lists(
    st.tuples(st.sampled_from(CHARGER_STATES), st.booleans(), st.sampled_from([None, "AAA", "BBB", "CCC"]),
              st.sampled_from([None, "FLEET", "OTHER", "POLICE"])),
    min_size=1, max_size=4)
tokens = st.sampled_from(["AAA", "BBB", "CCC", "COP"])
validations = st.tuples(st.sampled_from(["Accepted", "Blocked", "Invalid", "Unknown"]),
                        st.sampled_from([None, "FLEET", "OTHER", "POLICE"]))


def station(states: list[tuple[str, bool, str | None, str | None]], **settings_: Any) -> Any:
    auth = core.AuthCore(core.AuthSettings(**settings_))
    for index, (charger_state, enabled, tx_token, tx_parent) in enumerate(states):
        auth.on_evse_state(index, state(index + 1, charger_state, enabled=enabled), 0.0)
        if auth.evses[index + 1].transaction_active and tx_token is not None:
            auth.on_session_event({"type": "transaction_started", "evse_id": index + 1, "id_token": tx_token,
                                   "parent_id": tx_parent})
    return auth


@settings(max_examples=300)
@given(evse_states, tokens, validations, st.sampled_from(core.SELECTION_ALGORITHMS), st.booleans())
def test_stop_and_start_rules_hold_for_any_station(states: list[Any], id_token: str, answer: tuple[str, Any],
                                                   algorithm: str, prioritize: bool) -> None:
    auth = station(states, selection_algorithm=algorithm, master_pass_group_id="POLICE",
                   prioritize_authorization=prioritize)
    # without a reservation module a reserved EVSE is closed to everybody
    views = {v.evse_id: (v.transaction_active, v.tx_token, v.tx_parent, v.open and v.charger_state != "reserved")
             for v in auth.evses.values()}
    status, parent = answer
    actions = present(auth, Token(id_token), Validation(status, parent, "v1"))
    master = status == "Accepted" and parent == "POLICE"
    for stop in of(StopTransaction, actions):
        active, tx_token, tx_parent = views[stop.evse_id][:3]
        assert active
        same_parent = parent is not None and tx_parent == parent
        assert tx_token == id_token or (status == "Accepted" and (master or same_parent))
    for start in of(Authorize, actions):
        assert not master, "a master-pass token never starts a transaction"
        assert status == "Accepted" or start.token.prevalidated
        assert views[start.evse_id][3], "only a free EVSE is authorized"
    if algorithm == "FindFirst" and of(Authorize, actions):
        assert of(Authorize, actions)[0].evse_id == min(e for e, v in views.items() if v[3])
    assert len(of(Decision, actions)) + len(of(StopTransaction, actions)) + len(of(Authorize, actions)) >= 1


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["token", "plug", "unplug", "tick", "ok", "refuse"]),
                          st.integers(1, 3), st.floats(0, 5)), max_size=25))
def test_no_evse_is_ever_authorized_twice_and_grants_expire(steps: list[tuple[str, int, float]]) -> None:
    auth = make(3, selection_algorithm="PlugEvents", connection_timeout_s=10, debounce_s=0)
    now, in_flight = 0.0, []
    for kind, evse_id, dt in steps:
        now += dt
        if kind == "token":
            in_flight += of(Authorize, present(auth, Token(f"T{evse_id}"), now=now))
        elif kind in ("plug", "unplug"):
            charger_state = "waiting_for_authorization" if kind == "plug" else "idle"
            in_flight += of(Authorize, auth.on_evse_state(evse_id - 1, state(evse_id, charger_state), now))
        elif kind == "tick":
            auth.tick(now)
        elif in_flight:
            auth.on_authorize_result(in_flight.pop(0), kind == "ok", now)
        targets = [a.evse_id for a in in_flight] + list(auth.grants)
        assert len(targets) == len(set(targets))
        for grant in auth.grants.values():
            assert grant.deadline is None or grant.deadline <= now + 10
    auth.tick(now + 10.0)
    assert all(g.deadline is None for g in auth.grants.values())
    assert auth.pending == []
