"""rfid_pn532: the pure reader session (property tests), then the module over a real pty with the PN532 emulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, Broker, run, running_station, subprocess_env, write_wiring
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.busprobe import BusProbe
from modules.rfid_pn532 import framing
from modules.rfid_pn532.framing import FrameDecoder, Information, Nack
from modules.rfid_pn532.protocol import (
    Action,
    CardPresented,
    ClosePort,
    Debouncer,
    OpenPort,
    ReaderFault,
    ReaderOnline,
    ReaderSession,
    ReaderSettings,
    Send,
)
from simulators.pn532 import Pn532Emulator

# -- the pure session ------------------------------------------------------------------------------------------

SETTINGS = ReaderSettings(poll_interval_s=0.1, debounce_s=1.0, reconnect_interval_s=2.0, response_timeout_s=0.5)


class ScriptedPn532:
    """The far end for the pure session: answers commands, repeats its reply on NACK."""

    def __init__(self) -> None:
        self.card: bytes | None = None
        self.answering = True
        self.decoder = FrameDecoder()
        self.last_reply = b""

    def receive(self, data: bytes) -> bytes:
        out = b""
        for frame in self.decoder.feed(data):
            if not self.answering:
                continue
            if isinstance(frame, Nack):
                out += self.last_reply
            elif isinstance(frame, Information):
                command = frame.data[0]
                reply = b"" if command != framing.Command.IN_LIST_PASSIVE_TARGET else (
                    b"\x00" if self.card is None
                    else b"\x01\x01\x00\x44\x00" + bytes([len(self.card)]) + self.card)
                if command == framing.Command.GET_FIRMWARE_VERSION:
                    reply = bytes.fromhex("32010607")
                self.last_reply = framing.encode_reply(command, reply)
                out += framing.ACK + self.last_reply
        return out


class Bench:
    """The session wired to a scripted PN532 on a simulated clock; ``draw`` splits and garbles replies."""

    def __init__(self, draw: st.DataObject | None = None) -> None:
        self.session, self.pn532, self.draw = ReaderSession(SETTINGS), ScriptedPn532(), draw
        self.port_available = True
        self.now = 0.0
        self.log: list[Action] = []
        self._pending = self.session.start(self.now)
        self._corrupted_last = False

    def run_until(self, until: float) -> list[Action]:
        """Run the session until the clock reaches ``until``; return the actions it took meanwhile."""
        first = len(self.log)
        while True:
            while self._pending:
                self._perform(self._pending.pop(0))
            if self.session.deadline is None or self.session.deadline > until:
                self.now = until
                return self.log[first:]
            self.now = self.session.deadline
            self._pending += self.session.tick(self.now)

    def _perform(self, action: Action) -> None:
        self.log.append(action)
        if isinstance(action, OpenPort):
            self._pending += (self.session.port_opened(self.now) if self.port_available
                              else self.session.port_closed(self.now, "gone"))
        elif isinstance(action, Send):
            reply, draw = self.pn532.receive(action.data), self.draw
            corrupt = draw is not None and bool(reply) and not self._corrupted_last and draw.draw(st.booleans())
            if corrupt:
                garbled = bytearray(reply)
                garbled[draw.draw(st.integers(0, len(reply) - 1))] ^= 0x10
                reply = bytes(garbled)
            self._corrupted_last = corrupt
            cuts = sorted(draw.draw(st.lists(st.integers(0, len(reply)), max_size=3))) if draw else []
            for start, end in zip([0, *cuts], [*cuts, len(reply)], strict=True):
                self._pending += self.session.data_received(reply[start:end], self.now)


def presented(log: list[Action]) -> list[str]:
    return [a.id_tag for a in log if isinstance(a, CardPresented)]


uids = st.sampled_from(["04A1B2C3", "04112233445566", "DEADBEEF", "00112233445566778899"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(uids, st.booleans()), min_size=1, max_size=5), st.data())
def test_each_presentation_is_one_token_despite_garbled_and_split_replies(
        schedule: list[tuple[str, bool]], data: st.DataObject) -> None:
    bench = Bench(data)
    bench.run_until(1.0)
    expected: list[str] = []
    for uid, lifted_before in schedule:
        if lifted_before or (expected and expected[-1] == uid):
            bench.pn532.card = None
            bench.run_until(bench.now + SETTINGS.debounce_s + 0.5)
        bench.pn532.card = bytes.fromhex(uid)
        expected.append(uid)
        bench.run_until(bench.now + 4.0)
    assert presented(bench.log) == expected
    assert [type(a) for a in bench.log if isinstance(a, ReaderOnline | ReaderFault)] == [ReaderOnline]


def test_silent_reader_faults_once_and_recovers_with_a_fresh_wake_up() -> None:
    bench = Bench()
    assert any(isinstance(a, ReaderOnline) for a in bench.run_until(1.0))
    bench.pn532.answering = False
    log = bench.run_until(bench.now + 11.0)
    faults = [a for a in log if isinstance(a, ReaderFault)]
    assert len(faults) == 1 and "after 3 attempts" in faults[0].message
    assert ClosePort() in log and log.count(OpenPort()) == 3  # kept trying: at 3.5, 7 and 10.5 s
    after_open = [log[i + 1] for i, action in enumerate(log) if action == OpenPort()]
    assert all(isinstance(a, Send) and a.data.startswith(framing.WAKEUP) for a in after_open)
    bench.pn532.answering, bench.pn532.card = True, bytes.fromhex("04A1B2C3")
    log = bench.run_until(bench.now + 3.0)
    assert any(isinstance(a, ReaderOnline) for a in log) and presented(log) == ["04A1B2C3"]


def test_missing_port_faults_once_and_is_retried() -> None:
    bench = Bench()
    bench.port_available = False
    log = bench.run_until(7.0)
    assert [a.message for a in log if isinstance(a, ReaderFault)] == ["serial port unavailable: gone"]
    assert log.count(OpenPort()) == 4  # at 0, 2, 4 and 6 s


@given(st.lists(st.tuples(st.sampled_from(["A", "B", None]), st.floats(0.01, 0.5)), max_size=40))
def test_debouncer_held_card_counts_once_and_other_cards_at_once(polls: list[tuple[str | None, float]]) -> None:
    debouncer, now, last_seen, current = Debouncer(1.0), 0.0, {}, None
    for card, step in polls:
        now += step
        new = debouncer.observe(card, now)
        if card is not None:
            gap = now - last_seen.get(card, -100.0)
            assert new == (card != current or gap >= 1.0)
            last_seen[card], current = now, card
        else:
            assert not new


# -- the module over a real pseudo-terminal ---------------------------------------------------------------------


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Pn532Emulator]:
    with Pn532Emulator(link=tmp_path / "ttyPN532") as instance:
        yield instance


def reader_wiring(tmp_path: Path, port: int, serial_port: str) -> Path:
    return write_wiring(tmp_path, port, (
        "  rfid_1:\n    module: rfid_pn532\n"
        f"    config: {{port: '{serial_port}', poll_interval_s: 0.05, debounce_s: 0.6,"
        " response_timeout_s: 0.2, reconnect_interval_s: 0.2}\n"
    ))


class Tokens:
    """Token events and reader_fault state of rfid_1, as any MQTT client sees them."""

    def __init__(self, probe: BusProbe) -> None:
        self.probe = probe
        self.seen: list[dict[str, object]] = []
        probe.watch("cp/rfid_1/main/var/token", lambda _t, p: self.seen.append(json.loads(p)))
        probe.watch("cp/rfid_1/main/error/reader_fault")

    @property
    def ids(self) -> list[object]:
        return [t["id_token"] for t in self.seen]

    async def wait_count(self, count: int, timeout: float = 5.0) -> None:
        async def reached() -> None:
            while len(self.seen) < count:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(reached(), timeout)

    async def wait_fault(self, active: bool, timeout: float = 5.0) -> dict[str, object]:
        topic = "cp/rfid_1/main/error/reader_fault"
        payload = await self.probe.wait_for(topic, lambda p: json.loads(p)["active"] is active, timeout)
        return json.loads(payload)


def test_card_presentations_become_tokens(broker: Broker, tmp_path: Path, emulator: Pn532Emulator) -> None:
    path = reader_wiring(tmp_path, broker.port, emulator.port)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            tokens = Tokens(probe)
            await tokens.wait_fault(False)
            emulator.present("04a1b2c3")
            await tokens.wait_count(1)
            assert tokens.seen[0]["id_token"] == "04A1B2C3"
            assert tokens.seen[0]["token_type"] == "rfid" and tokens.seen[0]["source"] == "rfid_1"
            await asyncio.sleep(1.5)  # held for longer than the debounce window: still one presentation
            assert tokens.ids == ["04A1B2C3"]
            emulator.remove()
            await asyncio.sleep(1.0)
            emulator.present("04a1b2c3")
            await tokens.wait_count(2)
            emulator.present("04112233445566", ats=bytes.fromhex("067577810280"))  # 7-byte UID, ISO 14443-4
            await tokens.wait_count(3)
            emulator.present("00112233445566778899")
            await tokens.wait_count(4)
            assert tokens.ids == ["04A1B2C3", "04A1B2C3", "04112233445566", "00112233445566778899"]
            assert emulator.commands[:3] == [0x14, 0x02, 0x32]  # woken up by SAMConfiguration first

    run(scenario())


def test_garbled_reply_is_discarded_and_the_card_still_read(broker: Broker, tmp_path: Path,
                                                            emulator: Pn532Emulator) -> None:
    path = reader_wiring(tmp_path, broker.port, emulator.port)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            tokens = Tokens(probe)
            await tokens.wait_fault(False)
            emulator.garble_next()  # the reply with the card carries a corrupted UID byte
            emulator.present("DEADBEEF")
            await tokens.wait_count(1)
            await asyncio.sleep(0.5)
            assert tokens.ids == ["DEADBEEF"]
            assert emulator.garbled_sent == 1 and emulator.nacks_received >= 1
            emulator.present("04A1B2C3")
            await tokens.wait_count(2)
            assert tokens.ids == ["DEADBEEF", "04A1B2C3"]
            assert json.loads(probe.latest("cp/rfid_1/main/error/reader_fault") or b"{}")["active"] is False

    run(scenario())


def test_unplugged_reader_raises_fault_and_replug_recovers(broker: Broker, tmp_path: Path,
                                                            emulator: Pn532Emulator) -> None:
    path = reader_wiring(tmp_path, broker.port, emulator.port)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            tokens = Tokens(probe)
            await tokens.wait_fault(False)
            emulator.present("04A1B2C3")
            await tokens.wait_count(1)
            emulator.unplug()
            fault = await tokens.wait_fault(True)
            assert "ttyPN532" in str(fault["message"])
            emulator.replug()  # a new pty; the link the module opens now points at it
            emulator.present("04112233445566")
            await tokens.wait_fault(False)
            await tokens.wait_count(2)
            assert tokens.ids == ["04A1B2C3", "04112233445566"]

    run(scenario())


def test_silent_reader_raises_fault_and_recovers(broker: Broker, tmp_path: Path, emulator: Pn532Emulator) -> None:
    path = reader_wiring(tmp_path, broker.port, emulator.port)

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            tokens = Tokens(probe)
            await tokens.wait_fault(False)
            emulator.mute()
            fault = await tokens.wait_fault(True)
            assert "no valid reply" in str(fault["message"])
            emulator.present("CAFEBABE")  # lies on the reader while it is silent
            await asyncio.sleep(0.5)
            assert tokens.ids == []
            emulator.unmute()
            await tokens.wait_fault(False)
            await tokens.wait_count(1)
            assert tokens.ids == ["CAFEBABE"]

    run(scenario())


def test_reader_missing_at_start_is_picked_up_when_plugged_in(broker: Broker, tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB-pn532"
    path = reader_wiring(tmp_path, broker.port, str(link))

    async def scenario() -> None:
        async with running_station(path), BusProbe(broker.host, broker.port) as probe:
            tokens = Tokens(probe)
            fault = await tokens.wait_fault(True)
            assert "serial port unavailable" in str(fault["message"])
            with Pn532Emulator(link=link) as emulator:
                emulator.present("04A1B2C3")
                await tokens.wait_fault(False)
                await tokens.wait_count(1)
            assert tokens.ids == ["04A1B2C3"]

    run(scenario())


def test_emulator_runs_from_the_command_line(broker: Broker, tmp_path: Path) -> None:
    link = tmp_path / "ttyPN532"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "simulators.pn532", "--link", str(link)], cwd=ROOT, env=subprocess_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert emulator.stdout is not None and emulator.stdin is not None
        assert emulator.stdout.readline().strip() == str(link)
        path = reader_wiring(tmp_path, broker.port, str(link))

        async def scenario() -> None:
            async with running_station(path), BusProbe(broker.host, broker.port) as probe:
                tokens = Tokens(probe)
                await tokens.wait_fault(False)
                emulator.stdin.write("present 04a1b2c3\n")
                emulator.stdin.flush()
                await tokens.wait_count(1)
                assert tokens.ids == ["04A1B2C3"]

        run(scenario())
        _, errors = emulator.communicate("bogus\nquit\n", timeout=10)
        assert "unknown command 'bogus'" in errors and emulator.returncode == 0
        assert not link.exists()
    finally:
        if emulator.poll() is None:
            emulator.kill()
