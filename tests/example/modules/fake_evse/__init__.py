"""Test-only EVSE: the evse interface over a tiny session model, recording every cmd it receives.

Plug-in and unplug come from the test through the ``control`` implementation. Authorized + plugged
starts a transaction at once. The reservation marker blocks other reservations and authorizations
without its id; like evse_manager, an authorization with its id clears it.
"""

from __future__ import annotations

import uuid
from typing import Any

from chargepoint import Module
from chargepoint.timestamps import utc_now


class FakeEvse(Module):
    async def init(self) -> None:
        self.evse_id: int = self.config["evse_id"]
        self.calls: list[dict[str, Any]] = []
        self.token: dict[str, Any] | None = None
        self.state: dict[str, Any] = {
            "evse_id": self.evse_id, "connector_id": 1, "charger_state": "idle", "cp_state": "A", "plugged": False,
            "enabled": True, "availability_source": None, "authorized": False, "relay_closed": False,
            "session_id": None, "transaction_active": False, "reservation_id": None, "active_errors": [],
        }
        evse = self.provides["evse"]
        for cmd in evse.interface.cmds:
            evse.serve(cmd, self._recording(cmd))
        control = self.provides["control"]
        control.serve("plug_in", self.plug_in)
        control.serve("unplug", self.unplug)
        control.serve("set_state", lambda changes: self._publish_state(**changes))
        control.serve("emit_session_event", lambda event: self._event(**event))
        control.serve("received", lambda: self.calls)
        control.serve("clear_received", self.calls.clear)
        self._publish_state()
        self._publish_session()

    def _recording(self, cmd: str) -> Any:
        handler = getattr(self, f"cmd_{cmd}", None)

        def record(**args: Any) -> Any:
            self.calls.append({"cmd": cmd, "args": args})
            return handler(**args) if handler is not None else _DEFAULT_RESULTS.get(cmd)

        return record

    # -- evse cmds --------------------------------------------------------------------------
    def cmd_get_info(self) -> dict[str, Any]:
        return {"evse_id": self.evse_id, "connector_id": 1, "connector_type": "type2_socket", "max_current_A": 32,
                "min_current_A": 6, "phases": 3, "nominal_voltage_V": 230, "has_powermeter": False}

    def cmd_authorize(self, id_token: str, token_type: str, parent_id: str | None,
                      reservation_id: int | None) -> bool:
        state = self.state
        if not state["enabled"] or state["authorized"] or state["transaction_active"]:
            return False
        if state["charger_state"] in ("faulted", "finishing"):
            return False
        if state["reservation_id"] is not None and reservation_id != state["reservation_id"]:
            return False
        self.token = {"id_token": id_token, "token_type": token_type, "parent_id": parent_id,
                      "reservation_id": reservation_id}
        if state["reservation_id"] is not None:
            self._event("reservation_ended", reservation_id=state["reservation_id"])
            state["reservation_id"] = None
        self._ensure_session()
        self._event("authorized", id_token=id_token, token_type=token_type, parent_id=parent_id,
                    reservation_id=reservation_id)
        if state["plugged"]:
            self._start_transaction()
        else:
            self._publish_state(authorized=True, charger_state="preparing")
        return True

    def cmd_withdraw_authorization(self) -> bool:
        if not self.state["authorized"] or self.state["transaction_active"]:
            return False
        self.token = None
        self._event("authorization_withdrawn")
        plugged = self.state["plugged"]
        if not plugged:
            self._event("session_finished")
        self._publish_state(authorized=False, charger_state="waiting_for_authorization" if plugged else "idle",
                            session_id=self.state["session_id"] if plugged else None)
        return True

    def cmd_stop_transaction(self, reason: str, id_token: str | None) -> bool:
        if not self.state["transaction_active"]:
            return False
        self._finish_transaction(reason, id_token)
        return True

    def cmd_reserve(self, reservation_id: int) -> str:
        state = self.state
        if state["charger_state"] == "faulted":
            return "Faulted"
        if not state["enabled"]:
            return "Unavailable"
        if state["reservation_id"] == reservation_id:
            return "Accepted"
        if state["plugged"] or state["authorized"] or state["reservation_id"] is not None:
            return "Occupied"
        self._event("reservation_started", reservation_id=reservation_id)
        self._publish_state(reservation_id=reservation_id, charger_state="reserved")
        return "Accepted"

    def cmd_cancel_reservation(self, reservation_id: int) -> bool:
        if self.state["reservation_id"] != reservation_id:
            return False
        self._event("reservation_ended", reservation_id=reservation_id)
        charger_state = self.state["charger_state"]
        self._publish_state(reservation_id=None, charger_state="idle" if charger_state == "reserved" else charger_state)
        return True

    def cmd_enable(self, source: str, priority: int) -> str:
        self._publish_state(enabled=True, charger_state="idle", availability_source=source)
        return "Accepted"

    def cmd_disable(self, source: str, priority: int) -> str:
        self._publish_state(enabled=False, charger_state="unavailable", availability_source=source)
        return "Accepted"

    # -- control ----------------------------------------------------------------------------
    def plug_in(self) -> None:
        self._ensure_session()
        self._publish_state(plugged=True, cp_state="B")
        if self.state["authorized"]:
            self._start_transaction()
        else:
            self._publish_state(charger_state="waiting_for_authorization")

    def unplug(self) -> None:
        if self.state["transaction_active"]:
            self._finish_transaction("EVDisconnected", None)
        if self.state["session_id"] is not None:
            self._event("session_finished")
        self.token = None
        marker = self.state["reservation_id"]
        self._publish_state(plugged=False, cp_state="A", authorized=False, relay_closed=False, session_id=None,
                            charger_state="reserved" if marker is not None else "idle")

    # -- the session model ------------------------------------------------------------------
    def _ensure_session(self) -> None:
        if self.state["session_id"] is None:
            self.state["session_id"] = uuid.uuid4().hex
            self._event("session_started")

    def _start_transaction(self) -> None:
        assert self.token is not None
        token = self.token
        self._event("transaction_started", id_token=token["id_token"], token_type=token["token_type"],
                    parent_id=token["parent_id"], reservation_id=token["reservation_id"], meter_Wh=0.0)
        self._publish_state(authorized=True, transaction_active=True, charger_state="charging", cp_state="C",
                            relay_closed=True)
        self._publish_session()

    def _finish_transaction(self, reason: str, stop_id_token: str | None) -> None:
        token = self.token or {}
        self._event("transaction_finished", id_token=token.get("id_token"), parent_id=token.get("parent_id"),
                    reason=reason, stop_id_token=stop_id_token, meter_Wh=1000.0)
        self._publish_state(transaction_active=False, authorized=False, relay_closed=False, charger_state="finishing")
        self._publish_session()

    def _event(self, kind: str | None = None, **fields: Any) -> None:
        if kind is None:
            kind = fields.pop("type")
        event = {"type": kind, "session_id": self.state["session_id"], "timestamp": utc_now(),
                 "evse_id": self.evse_id, "connector_id": 1, **fields}
        self.provides["evse"].publish("session_event", event)

    def _publish_state(self, **changes: Any) -> None:
        self.state.update(changes)
        self.provides["evse"].publish("state", {**self.state, "timestamp": utc_now()})

    def _publish_session(self) -> None:
        token = self.token or {}
        active = self.state["transaction_active"]
        self.provides["evse"].publish("session", {
            "evse_id": self.evse_id, "session_id": self.state["session_id"], "active": active,
            "started_at": None, "id_token": token.get("id_token"), "parent_id": token.get("parent_id"),
            "transaction_active": active, "transaction_started_at": None, "meter_start_Wh": None,
            "energy_Wh": None, "power_W": None, "timestamp": utc_now()})


_DEFAULT_RESULTS: dict[str, Any] = {
    "pause": False, "resume": False, "clear_availability": False, "force_unlock": "NotSupported",
    "set_max_current": 0.0,
}
