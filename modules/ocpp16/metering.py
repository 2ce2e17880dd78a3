"""MeterValues of the ocpp16 module: periodic and clock-aligned samples, StopTransaction.transactionData.

Readings come from the powermeter wired for the EVSE (same index as its evse_manager connection), else from
the evse ``session`` var (energy register and power only). A mixin of the module class: it uses the
module's link, configuration, transaction book and the latest vars.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargepoint.timestamps import to_rfc3339

from .meter_values import energy_register_Wh
from .reconcile import ended_on_evse

if TYPE_CHECKING:
    from .configuration import Configuration
    from .link import OcppLink
    from .transactions import Transaction, TransactionBook
    from .tx_sender import TransactionalSender


class Metering:
    ocpp: Configuration
    link: OcppLink
    book: TransactionBook
    sender: TransactionalSender
    evse_by_id: dict[int, Any]
    sessions: dict[int, dict[str, Any]]
    readings: dict[int, dict[str, Any]]
    meter_index: dict[int, int]
    begin_readings: dict[str, dict[str, Any]]

    async def _meter_values(self) -> None:
        while True:
            interval = self.ocpp.int("MeterValueSampleInterval")
            await asyncio.sleep(interval if interval > 0 else 5)
            if interval > 0:
                for tx in self.book.running():
                    if not self._over_on_evse(tx):
                        self.send_meter_values(tx.connector_id, "Sample.Periodic", tx)

    def _over_on_evse(self, tx: Transaction) -> bool:
        """The EVSE's session var says this transaction ended (its finish event was missed and is being
        reconciled): no more samples for it."""
        session = self.sessions.get(tx.connector_id)
        return session is not None and ended_on_evse(session, tx.session_id)

    async def _aligned_meter_values(self) -> None:
        """Sample.Clock MeterValues every ClockAlignedDataInterval from midnight UTC (a change applies within 5 s)."""
        from .meter_values import next_aligned_time
        due: datetime | None = None
        due_for = 0
        while True:
            interval, now = self.ocpp.int("ClockAlignedDataInterval"), datetime.now(UTC)
            if interval <= 0:
                due = None
                await asyncio.sleep(5)
                continue
            if due is None or due_for != interval:
                due, due_for = next_aligned_time(now, interval), interval
            if now < due:
                await asyncio.sleep(min(5.0, (due - now).total_seconds()))
                continue
            for connector_id in sorted(self.evse_by_id):
                tx = self.book.on_connector(connector_id)
                if tx is not None and self._over_on_evse(tx):
                    continue
                self.send_meter_values(connector_id, "Sample.Clock", tx, measurands_key="MeterValuesAlignedData",
                                       timestamp=to_rfc3339(due))
            due = next_aligned_time(due, interval)

    def send_meter_values(self, connector_id: int, context: str, tx: Transaction | None, *,
                          measurands_key: str = "MeterValuesSampledData", timestamp: str | None = None,
                          queued: bool = True) -> bool:
        """MeterValues of ``connector_id``; those of a transaction go through the transactional queue (unless
        ``queued`` is false: a triggered sample goes now, with the transactionId when it is known)."""
        from .meter_values import meter_value
        reading = self._current_reading(connector_id)
        if reading is None:
            return False
        value = meter_value(reading, self.ocpp.csl(measurands_key), context=context,
                            timestamp=timestamp or reading["timestamp"])
        if not value["sampledValue"]:
            return False
        payload: dict[str, Any] = {"connectorId": connector_id, "meterValue": [value]}
        if tx is not None and queued:
            energy = energy_register_Wh(reading)
            if energy is not None:
                self.book.sampled(tx.session_id, energy, value["timestamp"])
            self.sender.enqueue([("MeterValues", payload)], tx.session_id)
            return True
        if tx is not None and tx.transaction_id is not None:
            payload["transactionId"] = tx.transaction_id
        self.link.send("MeterValues", payload)
        return True

    def _current_reading(self, connector_id: int) -> dict[str, Any] | None:
        reading = self.readings.get(self.meter_index.get(connector_id, -1))
        if reading is None:
            session = self.sessions.get(connector_id)
            if session is None or (session.get("energy_Wh") is None and session.get("meter_start_Wh") is None):
                return None
            reading = reading_from_session(session)
        return reading

    def _stop_transaction_data(self, event: dict[str, Any]) -> list[dict[str, Any]] | None:
        """StopTxnSampledData at Transaction.Begin and Transaction.End (None when the key is empty)."""
        from .meter_values import transaction_data
        measurands = self.ocpp.csl("StopTxnSampledData")
        begin = self.begin_readings.pop(event["session_id"], None)
        end = self._current_reading(event["evse_id"])
        if not measurands or end is None:
            return None
        end = {**end, "timestamp": event["timestamp"]}
        return transaction_data(begin, end, measurands) or None


def reading_from_session(session: dict[str, Any]) -> dict[str, Any]:
    """A powermeter-interface reading built from the evse ``session`` var (energy register and power)."""
    register = float(session.get("meter_start_Wh") or 0.0) + float(session.get("energy_Wh") or 0.0)
    reading: dict[str, Any] = {"timestamp": session["timestamp"], "meter_id": f"evse-{session['evse_id']}",
                               "energy_Wh_import": {"total": register}}
    if isinstance(session.get("power_W"), int | float):
        reading["power_W"] = {"total": float(session["power_W"])}
    return reading
