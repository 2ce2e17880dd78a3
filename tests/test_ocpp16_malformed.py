"""Malformed frames from the CSMS, sent raw over a real websocket: each is answered with the right CALLERROR (or
ignored when it cannot be answered) and changes nothing: no configuration change, no availability change, no
reset, no extra message from the station."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from helpers import Broker, run, running_station, write_wiring
from ocpp16_lab import ocpp_station
from scenario import Lab
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargepoint.busprobe import BusProbe
from chargepoint.timestamps import utc_now

INOPERATIVE = '{"connectorId":0,"type":"Inoperative"}'  # visible at once if it were carried out

ANSWERED = [  # (message id, frame, CALLERROR code)
    ("missing-1", '[2,"missing-1","ChangeAvailability",{"connectorId":0}]', "OccurenceConstraintViolation"),
    ("missing-2", '[2,"missing-2","Reset",{}]', "OccurenceConstraintViolation"),
    ("extra-1", '[2,"extra-1","ChangeConfiguration",{"key":"HeartbeatInterval","value":"5","note":"x"}]',
     "FormationViolation"),
    ("type-1", '[2,"type-1","ChangeAvailability",{"connectorId":"0","type":"Inoperative"}]',
     "TypeConstraintViolation"),
    ("type-2", '[2,"type-2","ChangeConfiguration",{"key":"HeartbeatInterval","value":5}]', "TypeConstraintViolation"),
    ("value-1", '[2,"value-1","ChangeAvailability",{"connectorId":0,"type":"Broken"}]',
     "PropertyConstraintViolation"),
    ("json-1", '[2,"json-1","ChangeConfiguration",{"key":"HeartbeatInterval","value":"5"', "FormationViolation"),
    ("object-1", '[2,"object-1","Reset",["Soft"]]', "FormationViolation"),
    ("short-1", '[2,"short-1","ChangeAvailability"]', "FormationViolation"),
    ("unknown-1", '[2,"unknown-1","MakeCoffee",{}]', "NotImplemented"),
    ("unsupported-1", '[2,"unsupported-1","CertificateSigned",{"certificateChain":"-----BEGIN"}]', "NotSupported"),
]
IGNORED: list[str | bytes] = [
    "hello",
    '{"messageTypeId":2,"messageId":"dict-1","action":"ChangeAvailability"}',
    f'[2,17,"ChangeAvailability",{INOPERATIVE}]',  # non-string message id: nothing to answer to
    f'[7,"seven-1","ChangeAvailability",{INOPERATIVE}]',  # unknown MessageTypeId: ignored (OCPP-J 1.6)
    f'[2,"binary-1","ChangeAvailability",{INOPERATIVE}]'.encode(),  # binary frame: OCPP-J uses text only
    '[3,"nobody-1",{}]',  # a CALLRESULT for no CALL of the station's
]


class RawCsms:
    """A websocket server on 127.0.0.1 that answers the station's CALLs itself and sends whatever text it is given."""

    def __init__(self) -> None:
        self.frames: list[list[Any]] = []  # everything the station sent, parsed
        self.socket: ServerConnection | None = None
        self.port = 0

    async def _serve(self, ws: ServerConnection) -> None:
        self.socket = ws
        try:
            async for text in ws:
                frame = json.loads(text)
                self.frames.append(frame)
                if frame[0] == 2:
                    await ws.send(json.dumps([3, frame[1], self._answer(frame[2])]))
        except ConnectionClosed:
            pass

    @staticmethod
    def _answer(action: str) -> dict[str, Any]:
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": utc_now(), "interval": 300}
        return {"currentTime": utc_now()} if action == "Heartbeat" else {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RawCsms]:
        async with serve(self._serve, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self

    def calls(self) -> list[list[Any]]:
        return [frame for frame in self.frames if frame[0] == 2]

    async def send(self, frame: str | bytes) -> None:
        assert self.socket is not None
        await self.socket.send(frame)

    async def wait(self, what: str, match: Any, timeout: float = 10.0) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (found := [frame for frame in self.frames if match(frame)]):
            if loop.time() > deadline:
                raise TimeoutError(f"the station sent no {what} within {timeout} s; frames: {self.frames[-8:]}")
            await asyncio.sleep(0.02)
        return found[0]

    async def ask(self, message_id: str, action: str, payload: dict[str, Any]) -> list[Any]:
        """A well-formed CALL; the station's answer frame."""
        await self.send(json.dumps([2, message_id, action, payload]))
        return await self.wait(f"answer to {message_id}", lambda f: f[0] in (3, 4) and f[1] == message_id)


def test_malformed_csms_frames_get_the_right_callerror_and_change_nothing(broker: Broker, tmp_path: Path) -> None:
    csms = RawCsms()

    async def main() -> None:
        async with csms.running():
            wiring = write_wiring(tmp_path, broker.port, ocpp_station(tmp_path, csms.port, with_system=True))
            async with running_station(wiring) as manager, BusProbe("127.0.0.1", broker.port) as probe:
                lab = Lab(probe)
                await csms.wait("status of connector 1", lambda f: f[0] == 2 and f[2] == "StatusNotification"
                                and f[3]["connectorId"] == 1)
                configuration = (await csms.ask("get-1", "GetConfiguration", {}))[2]
                calls_before = len(csms.calls())
                for frame in IGNORED:
                    await csms.send(frame)
                for _, frame, _ in ANSWERED:
                    await csms.send(frame)
                assert (await csms.ask("get-2", "GetConfiguration", {}))[2] == configuration
                await asyncio.sleep(0.5)  # room for anything a wrongly carried out frame would cause

                for message_id, frame, code in ANSWERED:
                    answers = [f for f in csms.frames if f[0] in (3, 4) and f[1] == message_id]
                    assert len(answers) == 1, (frame, answers)
                    [kind, _, got, description, details] = answers[0]
                    assert (kind, got, details) == (4, code, {}), (frame, answers[0])
                    assert isinstance(description, str) and description, frame
                answered = {f[1] for f in csms.frames if f[0] in (3, 4)}
                assert answered == {"get-1", "get-2"} | {message_id for message_id, _, _ in ANSWERED}
                assert len(csms.calls()) == calls_before  # no StatusNotification, no other message
                assert lab.state(1)["enabled"] is True
                assert not manager.stop_requested.is_set()  # type: ignore[attr-defined]

                # still connected and serving: a well-formed call is carried out, with a long message id echoed whole
                long_id = "csms-" + "7" * 60
                answer = await csms.ask(long_id, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "5"})
                assert answer == [3, long_id, {"status": "Accepted"}]

    run(main(), timeout=60)
