"""Delivers the transactional queue: one message at a time, stored before it goes, deleted when answered.

The asyncio side of :mod:`.tx_queue` and :mod:`.queue_store`: waits until the CSMS accepted the station,
sends the head of the queue through the link, and turns the outcome into queue effects, storage commits
and callbacks (StartTransaction.conf -> transactionId; StopTransaction.conf -> the transaction is over).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from chargepoint.logs import EventLogger
from chargepoint.timestamps import utc_now

from .link import OcppLink, Outcome
from .queue_store import QueueStore, QueueStoreError
from .rpc import CallAborted, CallResult
from .transactions import Transaction, TransactionBook
from .tx_queue import (
    Delivered,
    Dropped,
    OrphanMessageError,
    QueuedMessage,
    QueueEffect,
    Retrying,
    TransactionQueue,
)

StartAnswered = Callable[[Transaction, dict[str, Any]], None]
IdTagAnswered = Callable[[str, Any], None]


class TransactionalSender:
    def __init__(self, store: QueueStore, link: OcppLink, book: TransactionBook, log: EventLogger, *,
                 may_send: Callable[[], bool], attempts: Callable[[], int], retry_interval_s: Callable[[], float],
                 on_start_answered: StartAnswered, on_stop_id_tag_info: IdTagAnswered | None = None,
                 max_messages: int = 1000) -> None:
        """``on_stop_id_tag_info(id_tag, id_tag_info)``: a StopTransaction.conf answered for a stop by a tag."""
        self.store = store
        self.link = link
        self.book = book
        self.log = log
        self.may_send = may_send
        self.attempts = attempts
        self.retry_interval_s = retry_interval_s
        self.on_start_answered = on_start_answered
        self.on_stop_id_tag_info = on_stop_id_tag_info
        self.queue = TransactionQueue.restore(store.load_messages(), {
            tx.session_id: tx.transaction_id for tx in book.all() if tx.transaction_id is not None}, max_messages,
            store.last_seq())
        self.wake = asyncio.Event()
        if self.queue.refused:  # dropped like any message that can never go: logged, deleted, its session closed
            self._apply([Dropped((message,), f"stored payload refused: {why}")
                         for message, why in self.queue.refused])
            self.queue.refused.clear()
        if self.queue.messages:
            log.info("transactional messages waiting from before the restart", **self.queue.counts())

    def enqueue(self, messages: list[tuple[str, dict[str, Any]]], session_id: str | None) -> None:
        """Store and queue messages (in one commit); the book's view of the session is stored with them."""
        added, deleted = [], []
        for action, payload in messages:
            try:
                message, thinned = self.queue.add(action, payload, session_id)
            except OrphanMessageError as exc:
                self.log.error("transactional message not queued", error=str(exc))
                continue
            except ValueError as exc:  # PayloadError too: a bug upstream, but never a message the CSMS refuses
                self.log.error("transactional message refused by the OCPP schema, not queued", action=action,
                               error=str(exc))
                continue
            added.append((message, utc_now()))
            if thinned is not None:
                deleted += [m.seq for m in thinned.messages]
                self.log.warning("queued messages dropped", reason=thinned.reason, count=len(thinned.messages))
        tx = self.book.session(session_id) if session_id is not None else None
        self._commit(add=added, delete=deleted, transactions=[tx] if tx is not None else [])
        self.wake.set()

    def save_transaction(self, tx: Transaction) -> None:
        self._commit(transactions=[tx])

    def _commit(self, **changes: Any) -> None:
        self._store(self.store.write, **changes)

    def _store(self, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            write(*args, **kwargs)
        except QueueStoreError as exc:  # the message still goes out from memory; only a restart would lose it
            self.log.error("queue storage failed", error=str(exc))

    async def run(self) -> None:
        """Starts deliveries the answers do not chain (first message, after a retry wait, after a reconnect)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._pump():
                await self.link.flush()
                continue
            next_time = self.queue.next_time() if self.may_send() else None
            timeout = None if next_time is None else max(0.0, next_time - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout if timeout is not None else 1.0)
            self.wake.clear()

    def _pump(self) -> bool:
        """Hand the head of the queue to the link when nothing is out and it may go now; True when one went.

        The caller flushes: :meth:`run` itself, or the link, which flushes right after the answer whose
        callback (:meth:`_done`) pumps the next message. So a long queue replays with no task switch between
        an answer and the next message.
        """
        loop = asyncio.get_running_loop()
        while self.may_send() and self.link.connected:
            message = self.queue.next_to_send(loop.time())
            if message is None:
                return False
            self.queue.sent(message)
            try:
                payload = self.queue.outgoing_payload(message)
                self.link.send(message.action, payload, flushed_by_caller=True,
                               on_done=lambda outcome, m=message: self._done(m, outcome))
                return True
            except LookupError as exc:  # cannot happen in order; never send a made-up id
                self.log.error("queued message cannot be sent", error=str(exc), action=message.action)
            self._apply(self.queue.failed(loop.time(), 0, 0))
        return False

    def _done(self, message: QueuedMessage, outcome: Outcome) -> None:
        """The link's callback when the CALL of ``message`` ended (inside the link's event handling)."""
        if isinstance(outcome, CallAborted):
            self.queue.aborted()
        elif isinstance(outcome, CallResult):
            self._apply(self.queue.delivered(outcome.payload), outcome.payload)
        else:
            self.log.warning("transactional message not delivered", action=message.action,
                             outcome=type(outcome).__name__, attempt=message.attempts + 1)
            self._apply(self.queue.failed(asyncio.get_running_loop().time(), self.attempts(),
                                          self.retry_interval_s()))
        if not self._pump():
            self._store(self.store.flush_delivered)  # the replay paused or ended: tidy the database now
            self.wake.set()

    def _apply(self, effects: list[QueueEffect], answer: dict[str, Any] | None = None) -> None:
        delete: list[int] = []
        attempts: list[tuple[int, int]] = []
        saved: list[Transaction] = []
        forget: list[str] = []
        started: Transaction | None = None
        stopped_by: str | None = None
        durable = False
        for effect in effects:
            if isinstance(effect, Delivered):
                message = effect.message
                if message.session_id is None or message.action not in ("StartTransaction", "StopTransaction"):
                    self._store(self.store.delivered, message.seq)  # nothing else changes: the mark is enough
                    continue
                # the book changes with it (the CSMS's transactionId, the end of the transaction): one
                # commit, flushed, so no later mark can get ahead of it on disk
                delete.append(message.seq)
                durable = True
                if effect.transaction_id is not None:
                    self.book.start_answered(message.session_id, effect.transaction_id)
                    started = self.book.session(message.session_id)
                    if started is not None:
                        saved.append(started)
                else:  # a Stop, or a Start answered without an id
                    self.book.close(message.session_id)
                    forget.append(message.session_id)
                    if message.action == "StopTransaction" and isinstance(message.payload.get("idTag"), str):
                        stopped_by = message.payload["idTag"]
            elif isinstance(effect, Retrying):
                attempts.append((effect.message.seq, effect.message.attempts))
            elif isinstance(effect, Dropped):
                delete += [m.seq for m in effect.messages]
                self.log.error("transactional messages dropped", reason=effect.reason,
                               actions=",".join(m.action for m in effect.messages))
                for m in effect.messages:
                    if m.action == "StartTransaction" and m.session_id is not None:
                        self.book.close(m.session_id)
                        forget.append(m.session_id)
        self._commit(delete=delete, attempts=attempts, transactions=saved, forget=forget, durable=durable)
        if started is not None and answer is not None:
            self.on_start_answered(started, answer)
        if (stopped_by is not None and answer is not None and answer.get("idTagInfo") is not None
                and self.on_stop_id_tag_info is not None):
            self.on_stop_id_tag_info(stopped_by, answer["idTagInfo"])
