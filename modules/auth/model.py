"""The values auth's core works on: tokens, validation answers, EVSE views, and the actions it asks for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# EVSEs in these charger states can take a new authorization (reserved ones only for their token)
FREE_STATES = frozenset({"idle", "waiting_for_authorization", "reserved"})


@dataclass
class AuthSettings:
    selection_algorithm: str = "FindFirst"
    connection_timeout_s: float = 30.0
    master_pass_group_id: str | None = None
    prioritize_authorization: bool = True
    debounce_s: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AuthSettings:
        return cls(
            selection_algorithm=config["selection_algorithm"],
            connection_timeout_s=float(config["connection_timeout_s"]),
            master_pass_group_id=config["master_pass_group_id"],
            prioritize_authorization=config["prioritize_authorization_over_stopping_transaction"],
            debounce_s=float(config["token_debounce_s"]),
        )


@dataclass(frozen=True)
class Token:
    id_token: str
    token_type: str = "rfid"
    source: str = "test"
    connectors: tuple[int, ...] | None = None
    parent_id: str | None = None
    prevalidated: bool = False
    request_id: int | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Token:
        """From a ``token_provider.token`` payload (already schema-checked by the runtime)."""
        connectors = event.get("connectors")
        return cls(
            id_token=event["id_token"],
            token_type=event["token_type"],
            source=event["source"],
            connectors=None if connectors is None else tuple(connectors),
            parent_id=event.get("parent_id"),
            prevalidated=bool(event.get("prevalidated", False)),
            request_id=event.get("request_id"),
        )

    @property
    def is_remote_start(self) -> bool:
        """A remote start (it carries a request id) never stops a transaction and is never debounced."""
        return self.request_id is not None


@dataclass(frozen=True)
class Validation:
    """A validator's answer; ``status`` None means nobody was asked."""

    status: str | None
    parent_id: str | None = None
    validator: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class ReservationCheck:
    status: str  # not_reserved | reserved_for_token | reserved_for_other_token
    reservation_id: int | None = None


NOT_RESERVED = ReservationCheck("not_reserved")


@dataclass
class EvseView:
    """What auth knows about one EVSE, from its ``state``, ``session`` and ``session_event`` vars."""

    evse_id: int
    order: int
    known: bool = False
    charger_state: str = "unavailable"
    plugged: bool = False
    enabled: bool = False
    authorized: bool = False
    transaction_active: bool = False
    reservation_id: int | None = None
    plugged_at: float | None = None
    tx_token: str | None = None
    tx_parent: str | None = None

    def update(self, state: Mapping[str, Any]) -> None:
        self.known = True
        self.charger_state = state["charger_state"]
        self.plugged = bool(state["plugged"])
        self.enabled = bool(state["enabled"]) and self.charger_state != "unavailable"
        self.authorized = bool(state["authorized"])
        self.transaction_active = bool(state["transaction_active"])
        self.reservation_id = state.get("reservation_id")

    @property
    def open(self) -> bool:
        """Could take a new authorization, reservations aside."""
        return (self.known and self.enabled and not self.authorized and not self.transaction_active
                and self.charger_state in FREE_STATES)


# -- what the core keeps between events ---------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """A validated token looking for an EVSE; ``parent_stops`` are transactions it may stop instead."""

    token: Token
    validation: Validation
    parent_stops: tuple[int, ...] = ()

    @property
    def parent_id(self) -> str | None:
        return self.validation.parent_id


@dataclass(frozen=True)
class PlugIn:
    evse_id: int


@dataclass(frozen=True)
class UserChoice:
    evse_id: int
    id_token: str


@dataclass
class Grant:
    """An authorization handed to an EVSE that has not started a transaction yet."""

    selection: Selection
    reservation_id: int | None
    deadline: float | None  # connection timeout; None while a car is plugged in


@dataclass
class Pending:
    """A valid token waiting for a plug-in (PlugEvents) or for the user's choice (UserInput)."""

    selection: Selection
    evse_ids: tuple[int, ...]
    waiting_for: str
    deadline: float


@dataclass
class Attempt:
    selection: Selection
    fallback: list[tuple[int, int | None]] = field(default_factory=list)


# -- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Publish ``auth.decision``."""

    decision: str
    token: Token
    status: str | None
    parent_id: str | None
    evse_id: int | None
    reason: str

    def payload(self, timestamp: str) -> dict[str, Any]:
        return {
            "decision": self.decision, "id_token": self.token.id_token, "token_type": self.token.token_type,
            "source": self.token.source, "status": self.status, "parent_id": self.parent_id,
            "evse_id": self.evse_id, "request_id": self.token.request_id, "reason": self.reason,
            "timestamp": timestamp,
        }


@dataclass(frozen=True)
class Ignored:
    """Nothing to do (duplicate presentation, ...); the shell logs it."""

    token: Token
    reason: str


@dataclass(frozen=True)
class Validate:
    """Ask the validators (or use ``preset`` when the provider prevalidated) and call ``on_validated``."""

    token: Token
    preset: Validation | None


@dataclass(frozen=True)
class CheckReservations:
    """Ask the reservation module about each (id_token, parent_id, evse_id), then ``on_reservation_checks``."""

    context: object
    pairs: tuple[tuple[str, str | None, int], ...]


@dataclass(frozen=True)
class Authorize:
    """``evse.authorize`` on ``evse_id``, then ``on_authorize_result``."""

    evse_id: int
    token: Token
    parent_id: str | None
    reservation_id: int | None


@dataclass(frozen=True)
class Withdraw:
    """``evse.withdraw_authorization``; publish ``on_success`` if it withdrew something."""

    evse_id: int
    on_success: Decision | None


@dataclass(frozen=True)
class StopTransaction:
    """``evse.stop_transaction(reason=Local)``; publish ``on_success`` or ``on_failure``."""

    evse_id: int
    token: Token
    on_success: Decision
    on_failure: Decision


Action = Decision | Ignored | Validate | CheckReservations | Authorize | Withdraw | StopTransaction
