"""Authorize.conf -> token_validator answer (pure)."""

from __future__ import annotations

from typing import Any

from chargepoint.timestamps import parse_rfc3339, to_rfc3339

from .rpc import CallResult

DEFINITE = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")


def unknown_answer(reason: str) -> dict[str, Any]:
    return {"status": "Unknown", "parent_id": None, "expiry_time": None, "reason": reason}


def _utc_or_none(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return to_rfc3339(parse_rfc3339(value))
    except ValueError:
        return None


def id_tag_info_answer(info: Any, source: str) -> dict[str, Any]:
    """An OCPP idTagInfo as a validate_token result; anything unreadable is Unknown."""
    if not isinstance(info, dict) or info.get("status") not in DEFINITE:
        return unknown_answer(f"{source}: no readable idTagInfo")
    parent = info.get("parentIdTag")
    return {"status": info["status"], "parent_id": parent if isinstance(parent, str) and len(parent) <= 36 else None,
            "expiry_time": _utc_or_none(info.get("expiryDate")), "reason": f"{source}: {info['status']}"}


def authorize_answer(outcome: object) -> dict[str, Any]:
    """The outcome of an Authorize CALL (result, error, timeout, dropped)."""
    if isinstance(outcome, CallResult):
        return id_tag_info_answer(outcome.payload.get("idTagInfo"), "CSMS Authorize.conf")
    return unknown_answer(f"CSMS gave no answer to Authorize ({type(outcome).__name__})")
