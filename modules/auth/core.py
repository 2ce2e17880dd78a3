"""Auth decisions as a pure state machine: tokens, validation results, EVSE states and time in; actions out.

Nothing here reads a clock or talks to the bus. ``now`` is a monotonic time in seconds given by the
caller. The module shell (``__init__.py``) carries out the actions and feeds the results of those
that need one (validation, reservation checks, ``evse.authorize``) back in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .model import (
    NOT_RESERVED,
    Action,
    Attempt,
    Authorize,
    AuthSettings,
    CheckReservations,
    Decision,
    EvseView,
    Grant,
    Ignored,
    Pending,
    PlugIn,
    ReservationCheck,
    Selection,
    StopTransaction,
    Token,
    UserChoice,
    Validate,
    Validation,
    Withdraw,
)

SELECTION_ALGORITHMS = ("FindFirst", "PlugEvents", "UserInput")
DEFINITE_STATUSES = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})

Checks = Mapping[tuple[str, int], ReservationCheck]


def decide_validation(answers: Sequence[Validation | None]) -> Validation | None:
    """The answer that decides, given the answers in priority order (``None``: still asking).

    The first definite answer wins, but only once every validator before it has answered; when
    all answered and none was definite the result is ``Unknown``.
    """
    for answer in answers:
        if answer is None:
            return None
        if answer.status in DEFINITE_STATUSES:
            return answer
    reasons = "; ".join(a.reason for a in answers if a is not None and a.reason)
    return Validation("Unknown", None, None, reasons or "no validator gave a definite answer")


def usable(view: EvseView, check: ReservationCheck, busy: bool) -> bool:
    """Whether ``view`` can take a new authorization for the token that ``check`` was made for."""
    if busy or not view.open or check.status == "reserved_for_other_token":
        return False
    # a reserved EVSE only for the reservation's token (unknown when no reservation module answers)
    return view.charger_state != "reserved" or check.status == "reserved_for_token"


class AuthCore:
    def __init__(self, settings: AuthSettings, use_reservations: bool = False) -> None:
        self.settings = settings
        self.use_reservations = use_reservations
        self.evses: dict[int, EvseView] = {}
        self.grants: dict[int, Grant] = {}
        self.pending: list[Pending] = []
        self.validating: set[str] = set()
        self.authorizing: dict[int, Attempt] = {}
        self.last_seen: dict[str, float] = {}

    # -- observations -----------------------------------------------------------------------
    def on_evse_state(self, order: int, state: Mapping[str, Any], now: float) -> list[Action]:
        evse_id = int(state["evse_id"])
        view = self.evses.setdefault(evse_id, EvseView(evse_id, order))
        was_plugged = view.plugged
        view.update(state)
        if view.plugged and not was_plugged:
            view.plugged_at = now
        elif not view.plugged:
            view.plugged_at = None
        if not view.transaction_active:
            view.tx_token = view.tx_parent = None
        grant = self.grants.get(evse_id)
        if grant is not None:
            if view.transaction_active:
                self._transaction_started(view, None, None)
            elif view.plugged:
                grant.deadline = None
            elif grant.deadline is None:
                grant.deadline = now + self.settings.connection_timeout_s
        return self._plug_in_actions(view, now)

    def on_session(self, session: Mapping[str, Any]) -> None:
        view = self.evses.get(int(session["evse_id"]))
        if view is not None and session.get("transaction_active") and session.get("id_token"):
            view.tx_token = session["id_token"]
            view.tx_parent = session.get("parent_id")

    def on_session_event(self, event: Mapping[str, Any]) -> list[Action]:
        view = self.evses.get(int(event["evse_id"]))
        if view is None:
            return []
        kind = event["type"]
        if kind == "transaction_started":
            view.transaction_active = True
            self._transaction_started(view, event.get("id_token"), event.get("parent_id"))
        elif kind == "transaction_finished":
            view.transaction_active = False
            view.tx_token = view.tx_parent = None
        elif kind in ("authorization_withdrawn", "plugin_timeout", "session_finished"):
            grant = self.grants.pop(view.evse_id, None)
            if grant is not None and kind != "session_finished":
                return [self._decision("withdrawn", grant.selection, view.evse_id,
                                       f"the EVSE ended the authorization ({kind})")]
        return []

    def _transaction_started(self, view: EvseView, id_token: str | None, parent_id: str | None) -> None:
        """Remember who started the transaction (the event's token, else the token auth authorized)."""
        grant = self.grants.pop(view.evse_id, None)
        granted = grant.selection if grant is not None else None
        view.tx_token = id_token or view.tx_token or (granted.token.id_token if granted else None)
        same_token = granted is not None and granted.token.id_token == view.tx_token
        view.tx_parent = parent_id or view.tx_parent or (granted.parent_id if granted and same_token else None)

    # -- tokens -----------------------------------------------------------------------------
    def on_token(self, token: Token, now: float) -> list[Action]:
        if not token.is_remote_start:
            last = self.last_seen.get(token.id_token)
            self.last_seen[token.id_token] = now
            if last is not None and now - last < self.settings.debounce_s:
                return [Ignored(token, f"presented again within {self.settings.debounce_s:g} s")]
        if token.id_token in self.validating:
            return [Ignored(token, "already being validated")]
        allowed = self.allowed(token)
        if not token.is_remote_start:
            own = [v.evse_id for v in allowed if v.transaction_active and v.tx_token == token.id_token]
            if own:
                selection = Selection(token, Validation(None))
                return [self._stop(selection, evse_id, "presented by the token that started it") for evse_id in own]
            withdrawn = self._withdraw_matching(None, token.id_token, "presented again")
            if withdrawn:
                return withdrawn
        self.validating.add(token.id_token)
        preset = Validation("Accepted", token.parent_id, "provider", "prevalidated") if token.prevalidated else None
        return [Validate(token, preset)]

    def on_validated(self, token: Token, validation: Validation, now: float) -> list[Action]:
        self.validating.discard(token.id_token)
        validation = replace(validation, parent_id=validation.parent_id or token.parent_id)
        selection = Selection(token, validation)
        if validation.status != "Accepted":
            reason = validation.reason or f"validation answered {validation.status}"
            return [self._decision("rejected", selection, None, reason)]
        allowed = self.allowed(token)
        parent = validation.parent_id
        master = self.settings.master_pass_group_id
        if master is not None and parent == master:
            running = [v.evse_id for v in allowed if v.transaction_active]
            if not running:
                reason = "master-pass tokens stop transactions, never start one"
                return [self._decision("rejected", selection, None, reason)]
            return [self._stop(selection, evse_id, "master pass") for evse_id in running]
        if parent is not None and not token.is_remote_start:
            stops = tuple(v.evse_id for v in allowed if v.transaction_active and v.tx_parent == parent)
            if stops and not self.settings.prioritize_authorization:
                return [self._stop(selection, evse_id, "same parent id") for evse_id in stops]
            selection = replace(selection, parent_stops=stops)
        candidates = [v.evse_id for v in allowed if v.open and not self._busy(v.evse_id)]
        return self._with_checks(selection, [(token.id_token, parent, e) for e in candidates], now)

    def on_reservation_checks(self, action: CheckReservations, checks: Checks, now: float) -> list[Action]:
        context = action.context
        if isinstance(context, Selection):
            return self._select(context, checks, now)
        if isinstance(context, PlugIn):
            return self._assign_plug_in(context.evse_id, checks)
        if isinstance(context, UserChoice):
            return self._choose(context, checks)
        raise TypeError(f"unknown reservation check context {context!r}")

    def on_authorize_result(self, action: Authorize, ok: bool, now: float) -> list[Action]:
        attempt = self.authorizing.pop(action.evse_id)
        selection = attempt.selection
        if ok:
            view = self.evses[action.evse_id]
            deadline = None if view.plugged else now + self.settings.connection_timeout_s
            self.grants[action.evse_id] = Grant(selection, action.reservation_id, deadline)
            if view.transaction_active:
                self._transaction_started(view, None, None)
            return [self._decision("accepted", selection, action.evse_id, "authorized")]
        fallback = [(e, r) for e, r in attempt.fallback if not self._busy(e)]
        if fallback:
            return self._authorize(selection, fallback)
        return self._nothing_free(selection, "no_evse_available", f"EVSE {action.evse_id} refused the authorization")

    # -- cmds -------------------------------------------------------------------------------
    def select(self, evse_id: int, id_token: str | None, now: float) -> list[Action]:
        """UserInput: the user picked ``evse_id`` for a waiting token (the oldest when ``id_token`` is None)."""
        for pending in self.pending:
            if pending.waiting_for == "selection" and id_token in (None, pending.selection.token.id_token):
                if evse_id not in pending.evse_ids:
                    return []
                token = pending.selection.token
                choice = UserChoice(evse_id, token.id_token)
                return self._with_checks(choice, [(token.id_token, pending.selection.parent_id, evse_id)], now)
        return []

    def withdraw(self, evse_id: int | None, id_token: str | None) -> list[Action]:
        return self._withdraw_matching(evse_id, id_token, "withdrawn on request")

    # -- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        timeout = self.settings.connection_timeout_s
        for evse_id, grant in list(self.grants.items()):
            if grant.deadline is not None and now >= grant.deadline:
                del self.grants[evse_id]
                decision = self._decision("withdrawn", grant.selection, evse_id,
                                          f"no car plugged in within the connection timeout ({timeout:g} s)")
                actions.append(Withdraw(evse_id, decision))
        for pending in [p for p in self.pending if now >= p.deadline]:
            self.pending.remove(pending)
            what = "plug-in" if pending.waiting_for == "plug_in" else "EVSE selection"
            actions.append(self._decision("withdrawn", pending.selection, None,
                                          f"no {what} within the connection timeout ({timeout:g} s)"))
        for id_token, seen in list(self.last_seen.items()):
            if now - seen >= self.settings.debounce_s:
                del self.last_seen[id_token]
        return actions

    def next_deadline(self) -> float | None:
        deadlines = [g.deadline for g in self.grants.values() if g.deadline is not None]
        deadlines += [p.deadline for p in self.pending]
        return min(deadlines, default=None)

    def pending_view(self) -> list[tuple[str, tuple[int, ...], str, float]]:
        return [(p.selection.token.id_token, p.evse_ids, p.waiting_for, p.deadline) for p in self.pending]

    # -- internals --------------------------------------------------------------------------
    def ordered(self) -> list[EvseView]:
        return sorted(self.evses.values(), key=lambda v: v.order)

    def allowed(self, token: Token) -> list[EvseView]:
        """The known EVSEs the token may be used on, in wiring order."""
        views = self.ordered()
        if token.connectors is None:
            return views
        return [v for v in views if v.evse_id in token.connectors]

    def _busy(self, evse_id: int) -> bool:
        return evse_id in self.grants or evse_id in self.authorizing

    def _with_checks(self, context: Selection | PlugIn | UserChoice,
                     pairs: Sequence[tuple[str, str | None, int]], now: float) -> list[Action]:
        if self.use_reservations and pairs:
            return [CheckReservations(context, tuple(pairs))]
        return self.on_reservation_checks(CheckReservations(context, ()), {}, now)

    def _usable(self, views: Iterable[EvseView], id_token: str, checks: Checks) -> list[tuple[int, int | None]]:
        result = []
        for view in views:
            check = checks.get((id_token, view.evse_id), NOT_RESERVED)
            if usable(view, check, self._busy(view.evse_id)):
                reservation_id = check.reservation_id if check.status == "reserved_for_token" else None
                result.append((view.evse_id, reservation_id))
        return result

    def _select(self, selection: Selection, checks: Checks, now: float) -> list[Action]:
        token = selection.token
        candidates = self._usable(self.allowed(token), token.id_token, checks)
        algorithm = self.settings.selection_algorithm
        if algorithm == "PlugEvents":
            plugged = [c for c in candidates if self.evses[c[0]].plugged]
            plugged.sort(key=lambda c: -(self.evses[c[0]].plugged_at or 0.0))
            if plugged:
                return self._authorize(selection, plugged)
            if candidates:
                return self._wait(selection, candidates, "plug_in", now)
        elif algorithm == "UserInput" and len(candidates) > 1:
            return self._wait(selection, candidates, "selection", now)
        elif candidates:
            return self._authorize(selection, candidates)
        if any(v.open and not self._busy(v.evse_id) for v in self.allowed(token)):
            return self._nothing_free(selection, "rejected", "reserved for another token")
        return self._nothing_free(selection, "no_evse_available", "no free EVSE")

    def _nothing_free(self, selection: Selection, decision: str, reason: str) -> list[Action]:
        """The token got no EVSE: it stops by parent id if that was its alternative, else ``decision``."""
        if selection.parent_stops:
            return [self._stop(selection, e, "same parent id") for e in selection.parent_stops]
        return [self._decision(decision, selection, None, reason)]

    def _authorize(self, selection: Selection, candidates: list[tuple[int, int | None]]) -> list[Action]:
        evse_id, reservation_id = candidates[0]
        self.authorizing[evse_id] = Attempt(selection, candidates[1:])
        token = selection.token
        return [Authorize(evse_id, token, selection.parent_id, reservation_id)]

    def _wait(self, selection: Selection, candidates: list[tuple[int, int | None]], waiting_for: str,
              now: float) -> list[Action]:
        evse_ids = tuple(e for e, _ in candidates)
        self.pending.append(Pending(selection, evse_ids, waiting_for, now + self.settings.connection_timeout_s))
        decision = "awaiting_plug_in" if waiting_for == "plug_in" else "awaiting_selection"
        return [self._decision(decision, selection, None, f"waiting for {waiting_for.replace('_', '-')}")]

    def _plug_in_actions(self, view: EvseView, now: float) -> list[Action]:
        if not view.plugged or not view.open or self._busy(view.evse_id):
            return []
        waiting = [p for p in self.pending if p.waiting_for == "plug_in" and view.evse_id in p.evse_ids]
        if not waiting:
            return []
        pairs = [(p.selection.token.id_token, p.selection.parent_id, view.evse_id) for p in waiting]
        return self._with_checks(PlugIn(view.evse_id), pairs, now)

    def _assign_plug_in(self, evse_id: int, checks: Checks) -> list[Action]:
        view = self.evses[evse_id]
        for pending in [p for p in self.pending if p.waiting_for == "plug_in" and evse_id in p.evse_ids]:
            token = pending.selection.token
            found = self._usable([view], token.id_token, checks)
            if found and view.plugged:
                self.pending.remove(pending)
                return self._authorize(pending.selection, found)
        return []

    def _choose(self, choice: UserChoice, checks: Checks) -> list[Action]:
        for pending in self.pending:
            if pending.waiting_for == "selection" and pending.selection.token.id_token == choice.id_token:
                found = self._usable([self.evses[choice.evse_id]], choice.id_token, checks)
                if not found:
                    return []
                self.pending.remove(pending)
                return self._authorize(pending.selection, found)
        return []

    def _withdraw_matching(self, evse_id: int | None, id_token: str | None, reason: str) -> list[Action]:
        actions: list[Action] = []
        for grant_evse, grant in list(self.grants.items()):
            view = self.evses.get(grant_evse)
            if view is not None and view.transaction_active:
                continue
            if evse_id in (None, grant_evse) and id_token in (None, grant.selection.token.id_token):
                del self.grants[grant_evse]
                actions.append(Withdraw(grant_evse, self._decision("withdrawn", grant.selection, grant_evse, reason)))
        for pending in list(self.pending):
            on_evse = evse_id is None or evse_id in pending.evse_ids
            if on_evse and id_token in (None, pending.selection.token.id_token):
                self.pending.remove(pending)
                actions.append(self._decision("withdrawn", pending.selection, None, reason))
        return actions

    def _stop(self, selection: Selection, evse_id: int, why: str) -> StopTransaction:
        token = selection.token
        success = self._decision("stop_transaction", selection, evse_id, why)
        failure = self._decision("rejected", selection, evse_id, "no transaction to stop")
        return StopTransaction(evse_id, token, success, failure)

    @staticmethod
    def _decision(kind: str, selection: Selection, evse_id: int | None, reason: str) -> Decision:
        validation = selection.validation
        return Decision(kind, selection.token, validation.status, validation.parent_id, evse_id, reason)
