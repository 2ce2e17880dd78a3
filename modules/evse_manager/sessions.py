"""Session bookkeeping shared by the core: session events, the persisted record and the session var."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chargepoint.timestamps import parse_rfc3339, to_rfc3339

from .model import Authorization, EvseConfig, MeterReading, Session, Transaction

RECORD_VERSION = 1


def token_fields(authorization: Authorization) -> dict[str, Any]:
    return {"id_token": authorization.id_token, "token_type": authorization.token_type,
            "parent_id": authorization.parent_id}


def start_facts(transaction: Transaction) -> dict[str, Any]:
    """How the transaction began: lets a module that missed transaction_started (it restarted) report it."""
    return {"transaction_started_at": to_rfc3339(transaction.started_at), "meter_start_Wh": transaction.meter_start_Wh}


def session_event(config: EvseConfig, kind: str, session_id: str | None, at: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "session_id": session_id, "timestamp": at, "evse_id": config.evse_id,
            "connector_id": config.connector_id, **fields}


def energy_between(start_Wh: float | None, end_Wh: float | None) -> float | None:
    if start_Wh is None or end_Wh is None:
        return None
    return round(max(end_Wh - start_Wh, 0.0), 3)


def session_view(config: EvseConfig, session: Session | None, meter: MeterReading, active: bool) -> dict[str, Any]:
    """The ``session`` var without its timestamp; all null when there was no session."""
    if session is None:
        return {"evse_id": config.evse_id, "session_id": None, "active": False, "started_at": None,
                "id_token": None, "parent_id": None, "transaction_active": False, "transaction_started_at": None,
                "meter_start_Wh": None, "energy_Wh": None, "power_W": None}
    running = session.transaction
    transaction = running or session.finished_transaction
    authorization = transaction.authorization if transaction else None
    end_Wh = meter.energy_Wh if running is not None else session.meter_stop_Wh
    return {
        "evse_id": config.evse_id, "session_id": session.session_id, "active": active,
        "started_at": to_rfc3339(session.started_at),
        "id_token": authorization.id_token if authorization else None,
        "parent_id": authorization.parent_id if authorization else None,
        "transaction_active": running is not None,
        "transaction_started_at": to_rfc3339(transaction.started_at) if transaction else None,
        "meter_start_Wh": transaction.meter_start_Wh if transaction else None,
        "energy_Wh": energy_between(transaction.meter_start_Wh, end_Wh) if transaction else None,
        "power_W": meter.power_W if running is not None else None,
    }


def session_record(config: EvseConfig, session: Session, transaction: Transaction, meter_Wh: float | None,
                   now: datetime) -> dict[str, Any]:
    """What survives a restart of the process: enough to resume the transaction or to close it."""
    authorization = transaction.authorization
    return {
        "version": RECORD_VERSION,
        "evse_id": config.evse_id,
        "connector_id": config.connector_id,
        "session_id": session.session_id,
        "session_started_at": to_rfc3339(session.started_at),
        "id_token": authorization.id_token,
        "token_type": authorization.token_type,
        "parent_id": authorization.parent_id,
        "reservation_id": authorization.reservation_id,
        "authorized_at": to_rfc3339(authorization.at),
        "transaction_started_at": to_rfc3339(transaction.started_at),
        "meter_start_Wh": transaction.meter_start_Wh,
        "meter_last_Wh": meter_Wh if meter_Wh is not None else transaction.meter_start_Wh,
        "meter_last_at": to_rfc3339(now),
        "has_charged": transaction.has_charged,
    }


def session_from_record(record: dict[str, Any]) -> Session:
    """Rebuild a plugged-in session with its running transaction (the record is already validated)."""
    authorization = Authorization(record["id_token"], record["token_type"], record["parent_id"],
                                  record["reservation_id"], parse_rfc3339(record["authorized_at"]))
    transaction = Transaction(authorization, parse_rfc3339(record["transaction_started_at"]),
                              record["meter_start_Wh"], has_charged=record["has_charged"])
    session = Session(record["session_id"], parse_rfc3339(record["session_started_at"]), plugged_in=True)
    session.transaction = transaction
    return session
