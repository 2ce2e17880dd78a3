"""auth: the asyncio shell around :class:`core.AuthCore`.

Every input (token, EVSE state, session event, cmd, timer) becomes a job on one queue, so the core
sees them one at a time and in order. The shell carries out the core's actions: cmd calls to the
validators, the reservation module and the EVSEs, and the ``decision`` and ``pending`` vars.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from chargepoint import CmdError, Module
from chargepoint.module import RequiredConnection
from chargepoint.timestamps import to_rfc3339, utc_now

from .core import AuthCore, decide_validation
from .model import (
    NOT_RESERVED,
    Action,
    Authorize,
    AuthSettings,
    CheckReservations,
    Decision,
    Ignored,
    ReservationCheck,
    StopTransaction,
    Token,
    Validate,
    Validation,
    Withdraw,
)

T = TypeVar("T")
Job = Callable[[], Awaitable[None]]


class Auth(Module):
    async def init(self) -> None:
        self.core = AuthCore(AuthSettings.from_config(self.config), use_reservations=bool(self.requires["reservation"]))
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()
        self.evse_by_id: dict[int, RequiredConnection] = {}
        self.published_pending: object = None
        for order, evse in enumerate(self.requires["evse_manager"]):
            evse.subscribe("state", partial(self._post_value, partial(self._on_state, order, evse)))
            evse.subscribe("session", partial(self._post_value, self._on_session))
            evse.subscribe("session_event", partial(self._post_value, self._on_session_event))
        for provider in self.requires["token_provider"]:
            provider.subscribe("token", partial(self._post_value, self._on_token))
        main = self.provides["main"]
        main.serve("select_connector", self.select_connector)
        main.serve("withdraw_authorization", self.withdraw_authorization)
        main.serve("set_connection_timeout", self.set_connection_timeout)
        main.serve("set_master_pass_group_id", self.set_master_pass_group_id)
        self._publish_pending()
        self.spawn(self._consume(), name=f"{self.id}-jobs")

    # -- cmds -------------------------------------------------------------------------------
    async def select_connector(self, evse_id: int, id_token: str | None) -> bool:
        async def choose() -> bool:
            decisions = await self._run(self.core.select(evse_id, id_token, time.monotonic()))
            return any(d.decision == "accepted" and d.evse_id == evse_id for d in decisions)

        return await self._submit(choose)

    async def withdraw_authorization(self, evse_id: int | None, id_token: str | None) -> int:
        async def withdraw() -> int:
            decisions = await self._run(self.core.withdraw(evse_id, id_token))
            return sum(d.decision == "withdrawn" for d in decisions)

        return await self._submit(withdraw)

    def set_connection_timeout(self, timeout_s: int) -> None:
        self.core.settings.connection_timeout_s = float(timeout_s)
        self.log.info("connection timeout set", timeout_s=timeout_s)

    def set_master_pass_group_id(self, group_id: str | None) -> None:
        self.core.settings.master_pass_group_id = group_id
        self.log.info("master pass group set", group_id=group_id)

    # -- the job queue ----------------------------------------------------------------------
    def _post_value(self, handler: Callable[[Any], Awaitable[None]], value: Any) -> None:
        self.jobs.put_nowait(partial(handler, value))

    async def _submit(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` as a job (in order with everything else) and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def job() -> None:
            try:
                future.set_result(await work())
            except Exception as exc:
                future.set_exception(exc)
                raise

        self.jobs.put_nowait(job)
        return await future

    async def _consume(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            job: Job | None
            try:
                job = await asyncio.wait_for(self.jobs.get(), timeout)
            except TimeoutError:
                job = None
            try:
                if job is not None:
                    await job()
                await self._run(self.core.tick(time.monotonic()))
            except Exception as exc:
                self.log.error("event handling failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self._publish_pending()

    # -- inputs -----------------------------------------------------------------------------
    async def _on_state(self, order: int, connection: RequiredConnection, state: dict[str, Any]) -> None:
        evse_id = state["evse_id"]
        known = self.evse_by_id.setdefault(evse_id, connection)
        if known is not connection:
            self.log.warning("two EVSEs report the same evse_id; the second is ignored", evse=evse_id,
                             first=known.module_id, second=connection.module_id)
            return
        await self._run(self.core.on_evse_state(order, state, time.monotonic()))

    async def _on_session(self, session: dict[str, Any]) -> None:
        self.core.on_session(session)

    async def _on_session_event(self, event: dict[str, Any]) -> None:
        await self._run(self.core.on_session_event(event))

    async def _on_token(self, event: dict[str, Any]) -> None:
        token = Token.from_event(event)
        self.log.info("token presented", id_token=token.id_token, type=token.token_type, source=token.source)
        await self._run(self.core.on_token(token, time.monotonic()))

    async def _on_validated(self, token: Token, validation: Validation) -> None:
        await self._run(self.core.on_validated(token, validation, time.monotonic()))

    # -- actions ----------------------------------------------------------------------------
    async def _run(self, actions: list[Action]) -> list[Decision]:
        """Carry out ``actions`` and those the core answers with; return the decisions published."""
        published: list[Decision] = []
        work: deque[Action] = deque(actions)
        while work:
            action = work.popleft()
            follow_up: list[Action] = []
            if isinstance(action, Decision):
                self._publish_decision(action)
                published.append(action)
            elif isinstance(action, Ignored):
                self.log.info("token ignored", id_token=action.token.id_token, reason=action.reason)
            elif isinstance(action, Validate):
                if action.preset is not None:
                    self.jobs.put_nowait(partial(self._on_validated, action.token, action.preset))
                else:
                    self.spawn(self._validate(action.token), name=f"{self.id}-validate")
            elif isinstance(action, CheckReservations):
                checks = await self._check_reservations(action.pairs)
                follow_up = self.core.on_reservation_checks(action, checks, time.monotonic())
            elif isinstance(action, Authorize):
                ok = await self._evse_call(action.evse_id, "authorize", id_token=action.token.id_token,
                                           token_type=action.token.token_type, parent_id=action.parent_id,
                                           reservation_id=action.reservation_id)
                follow_up = self.core.on_authorize_result(action, ok is True, time.monotonic())
            elif isinstance(action, Withdraw):
                if await self._evse_call(action.evse_id, "withdraw_authorization") is True and action.on_success:
                    follow_up = [action.on_success]
            elif isinstance(action, StopTransaction):
                stopped = await self._evse_call(action.evse_id, "stop_transaction", reason="Local",
                                                id_token=action.token.id_token)
                follow_up = [action.on_success if stopped is True else action.on_failure]
            work.extendleft(reversed(follow_up))
        return published

    async def _evse_call(self, evse_id: int, cmd: str, **args: Any) -> Any:
        connection = self.evse_by_id.get(evse_id)
        if connection is None:
            self.log.warning("no EVSE with this id", evse=evse_id, cmd=cmd)
            return None
        return await connection.try_call(cmd, **args)

    async def _validate(self, token: Token) -> None:
        validators = list(self.requires["token_validator"])
        answers: list[Validation | None] = [None] * len(validators)
        tasks = {asyncio.ensure_future(self._ask(v, token)): index for index, v in enumerate(validators)}
        decided: Validation | None = None
        waiting = set(tasks)
        try:
            while decided is None and waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    answers[tasks[task]] = task.result()
                decided = decide_validation(answers)
        finally:
            for task in waiting:
                task.cancel()
        assert decided is not None
        self.log.info("token validated", id_token=token.id_token, status=decided.status, validator=decided.validator)
        self.jobs.put_nowait(partial(self._on_validated, token, decided))

    async def _ask(self, validator: RequiredConnection, token: Token) -> Validation:
        try:
            result = await validator.call("validate_token", id_token=token.id_token, token_type=token.token_type)
        except CmdError as exc:
            self.log.warning("validator failed", validator=validator.module_id, code=exc.code, error=exc.message)
            return Validation("Unknown", None, validator.module_id, f"{validator.module_id}: {exc.code}")
        return Validation(result["status"], result.get("parent_id"), validator.module_id, result.get("reason", ""))

    async def _check_reservations(self, pairs: tuple[tuple[str, str | None, int], ...]
                                  ) -> dict[tuple[str, int], ReservationCheck]:
        reservation = self.requires["reservation"].one

        async def check(id_token: str, parent_id: str | None, evse_id: int) -> ReservationCheck:
            try:
                result = await reservation.call("check_reservation", evse_id=evse_id, id_token=id_token,
                                                parent_id=parent_id)
            except CmdError as exc:
                self.log.warning("reservation check failed", evse=evse_id, code=exc.code, error=exc.message)
                return NOT_RESERVED
            return ReservationCheck(result["status"], result["reservation_id"])

        results = await asyncio.gather(*(check(*pair) for pair in pairs))
        return {(id_token, evse_id): result for (id_token, _, evse_id), result in zip(pairs, results, strict=True)}

    # -- outputs ----------------------------------------------------------------------------
    def _publish_decision(self, decision: Decision) -> None:
        self.provides["main"].publish("decision", decision.payload(utc_now()))
        self.log.info("decision", decision=decision.decision, id_token=decision.token.id_token,
                      evse=decision.evse_id, status=decision.status, reason=decision.reason)

    def _publish_pending(self) -> None:
        view = self.core.pending_view()
        if view == self.published_pending:
            return
        self.published_pending = view
        mono, wall = time.monotonic(), datetime.now(UTC)
        self.provides["main"].publish("pending", [
            {"id_token": id_token, "evse_ids": list(evse_ids), "waiting_for": waiting_for,
             "expires_at": to_rfc3339(wall + timedelta(seconds=max(0.0, deadline - mono)))}
            for id_token, evse_ids, waiting_for, deadline in view
        ])
