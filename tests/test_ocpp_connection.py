"""The CSMS websocket link: URL and Basic auth, back-off, and real websockets servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import pytest
from helpers import run
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from chargepoint.broker.launch import free_port
from chargepoint.logs import LineFormatter
from modules.ocpp16.backoff import BackoffPolicy
from modules.ocpp16.connection import (
    BinaryReceived,
    Connected,
    ConnectFailed,
    ConnectionEvent,
    Disconnected,
    NotConnectedError,
    OcppConnection,
    TextReceived,
)
from modules.ocpp16.endpoint import (
    ConnectionSettings,
    EndpointError,
    basic_auth_header,
    basic_auth_password,
    charge_point_url,
    describe_dial_failure,
    upgrade_headers,
)

FAST = BackoffPolicy(wait_minimum_s=0.02, random_range_s=0.01, repeat_times=2)
HEX_OF_PRINTABLE = "3132333435363738393031323334353637383930"  # "12345678901234567890"
RANDOM_KEY_HEX = "8f1e00a2ff7c3b9d4e5f60718293a4b5c6d7e8f9"  # 20 random bytes, not printable


# -- pure: URL ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "charge_point_id", "url"), [
    ("ws://steve:8180/steve/websocket/CentralSystemService", "CP-1",
     "ws://steve:8180/steve/websocket/CentralSystemService/CP-1"),
    ("ws://steve:8180/steve/websocket/CentralSystemService/", "CP-1",
     "ws://steve:8180/steve/websocket/CentralSystemService/CP-1"),
    ("ws://evserver:8010/OCPP16/tenant42/tok3n", "Wallbox 7", "ws://evserver:8010/OCPP16/tenant42/tok3n/Wallbox%207"),
    ("ws://core:8081/OCPP", "station/1", "ws://core:8081/OCPP/station%2F1"),
    ("ws://citrine:8092", "cp#1?x", "ws://citrine:8092/cp%231%3Fx"),
    ("wss://csms.example.com/ocpp/?tenant=3", "Käfer", "wss://csms.example.com/ocpp/K%C3%A4fer?tenant=3"),
])
def test_url_is_endpoint_slash_percent_encoded_id(endpoint: str, charge_point_id: str, url: str) -> None:
    assert charge_point_url(endpoint, charge_point_id) == url


@given(st.text(st.characters(max_codepoint=0x2FF, exclude_categories=("Cc", "Zs")), min_size=1, max_size=48))
def test_the_id_is_always_exactly_the_last_path_segment(charge_point_id: str) -> None:
    url = charge_point_url("ws://csms:9000/ocpp/", charge_point_id)
    prefix, _, segment = url.rpartition("/")
    assert prefix == "ws://csms:9000/ocpp"
    assert unquote(segment) == charge_point_id


@pytest.mark.parametrize(("endpoint", "charge_point_id", "message"), [
    ("http://csms/ocpp", "CP", "ws:// or wss://"),
    ("ws:///ocpp", "CP", "no host"),
    ("ws://csms:99999/ocpp", "CP", "port"),
    ("ws://csms/ocpp", "", "empty"),
    ("ws://csms/ocpp", " CP", "whitespace"),
    ("ws://csms/ocpp", "CP\n1", "control"),
])
def test_bad_endpoint_or_id_is_named(endpoint: str, charge_point_id: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        charge_point_url(endpoint, charge_point_id)


def test_credentials_in_the_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(EndpointError, match="AuthorizationKey") as caught:
        charge_point_url("ws://cp1:hunter2@csms:80/ocpp", "cp1")
    assert "hunter2" not in str(caught.value)


# -- pure: Basic auth ---------------------------------------------------------------------------
def decoded(header: str) -> bytes:
    assert header.startswith("Basic ")
    return base64.b64decode(header.removeprefix("Basic "))


def test_basic_auth_literal_and_hex_keys() -> None:
    assert decoded(basic_auth_header("CP-1", "my secret key!")) == b"CP-1:my secret key!"
    assert decoded(basic_auth_header("CP-1", HEX_OF_PRINTABLE)) == b"CP-1:12345678901234567890"  # libocpp's rule
    assert decoded(basic_auth_header("CP-1", HEX_OF_PRINTABLE, "literal")) == b"CP-1:" + HEX_OF_PRINTABLE.encode()
    assert decoded(basic_auth_header("CP-1", RANDOM_KEY_HEX)) == b"CP-1:" + RANDOM_KEY_HEX.encode()
    assert decoded(basic_auth_header("CP-1", RANDOM_KEY_HEX, "hex")) == b"CP-1:" + bytes.fromhex(RANDOM_KEY_HEX)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: basic_auth_password("abc", "hex"), "hex digits"),
    (lambda: basic_auth_password("", "literal"), "empty"),
    (lambda: basic_auth_password("key", "base64"), "format"),
    (lambda: basic_auth_header("CP:1", "key"), "':'"),
    (lambda: upgrade_headers(1, "CP-1", None), "needs an AuthorizationKey"),
    (lambda: upgrade_headers(4, "CP-1", "key"), "SecurityProfile 4"),
])
def test_bad_credentials_are_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        call()


def test_profiles_decide_the_header_and_the_transport() -> None:
    assert upgrade_headers(0, "CP-1", "ignored") == {}
    assert "Authorization" in upgrade_headers(1, "CP-1", "key")
    assert upgrade_headers(3, "CP-1", None) == {}
    with pytest.raises(ValueError, match="wss://"):
        ConnectionSettings("ws://csms/ocpp", "CP-1", security_profile=2, authorization_key="key")
    with pytest.raises(ValueError, match="ssl_context_factory"):
        ConnectionSettings("wss://csms/ocpp", "CP-1", security_profile=3)
    with pytest.raises(ValueError, match="ping_interval_s"):
        ConnectionSettings("ws://csms/ocpp", "CP-1", ping_interval_s=-1)
    settings = ConnectionSettings("ws://csms/ocpp", "CP-1", security_profile=1, authorization_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"), min_size=1),
       st.text(min_size=1))
def test_basic_header_round_trips(charge_point_id: str, key: str) -> None:
    user, _, password = decoded(basic_auth_header(charge_point_id, key)).partition(b":")
    assert user.decode() == charge_point_id
    assert password == basic_auth_password(key)


def test_dial_failures_read_clearly() -> None:
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert describe_dial_failure(dns, "ws://csms.invalid/x", 10)[0] == \
        "DNS lookup of csms.invalid failed: Name or service not known"
    refused = describe_dial_failure(ConnectionRefusedError(111, "refused"), "ws://10.0.0.1:8180/x", 10)[0]
    assert refused.startswith("connection refused by 10.0.0.1:8180")
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert "unable to get local issuer certificate" in describe_dial_failure(verify, "wss://csms/x", 10)[0]
    timeout = describe_dial_failure(TimeoutError(), "ws://csms/x", 7)[0]
    assert timeout == "no websocket handshake with csms:80 within 7 s"


# -- pure: back-off ---------------------------------------------------------------------------------
@given(st.floats(0, 60), st.floats(0, 60), st.integers(0, 10), st.integers(1, 50), st.floats(0, 1, exclude_max=True))
def test_backoff_delay_bounds(minimum: float, spread: float, repeat: int, attempt: int, fraction: float) -> None:
    policy = BackoffPolicy(minimum, spread, repeat)
    delay = policy.delay_s(attempt, lambda: fraction)
    fixed = minimum * 2 ** min(attempt - 1, repeat)
    assert fixed <= delay <= fixed + spread
    assert delay <= policy.longest_delay_s()
    assert policy.fixed_part_s(attempt) <= policy.fixed_part_s(attempt + 1)


def test_backoff_follows_the_libocpp_defaults_and_stays_constant() -> None:
    policy = BackoffPolicy()
    assert [policy.fixed_part_s(attempt) for attempt in range(1, 7)] == [3, 6, 12, 24, 24, 24]
    assert policy.delay_s(1, lambda: 0.5) == 8.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"wait_minimum_s": -1}, "RetryBackoffWaitMinimum"),
    ({"random_range_s": float("nan")}, "RetryBackoffRandomRange"),
    ({"repeat_times": 99}, "RetryBackoffRepeatTimes"),
])
def test_bad_backoff_config_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**kwargs)


def test_backoff_rejects_a_bad_random_source_and_attempt() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BackoffPolicy().delay_s(1, lambda: 1.0)
    with pytest.raises(ValueError, match="start at 1"):
        BackoffPolicy().delay_s(0, lambda: 0.0)


# -- real websockets servers ---------------------------------------------------------------------
OCPP16 = [Subprotocol("ocpp1.6")]


def station(port: int, path: str = "/ocpp/", **overrides: Any) -> ConnectionSettings:
    values: dict[str, Any] = {"backoff": FAST, "open_timeout_s": 2.0, "close_timeout_s": 1.0, **overrides}
    return ConnectionSettings(f"ws://127.0.0.1:{port}{path}", values.pop("charge_point_id", "CP-1"), **values)


async def next_of(events: AsyncIterator[ConnectionEvent], kind: type[Any]) -> Any:
    """The next event of that kind (the test's overall timeout bounds the wait)."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"events ended before a {kind.__name__}")


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = LineFormatter()
    return [formatter.format(record) for record in caplog.records]


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def test_connects_with_ocpp16_and_exchanges_frames() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        seen["path"] = ws.request.path
        seen["offered"] = ws.request.headers.get("Sec-WebSocket-Protocol")
        seen["authorization"] = ws.request.headers.get("Authorization")
        await ws.send('[2,"1","GetConfiguration",{}]')
        await ws.send(b"\x00binary")
        seen["reply"] = await ws.recv()
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=OCPP16) as server:
            port = server.sockets[0].getsockname()[1]
            async with OcppConnection(station(port, "/steve/websocket/CentralSystemService",
                                              charge_point_id="CP 1/Ä")) as link:
                events = link.events()
                connected = await next_of(events, Connected)
                assert (connected.number, connected.subprotocol) == (1, "ocpp1.6")
                assert link.connected
                text = await next_of(events, TextReceived)
                assert text.text == '[2,"1","GetConfiguration",{}]'
                assert (await next_of(events, BinaryReceived)).data == b"\x00binary"
                await link.send('[3,"1",{}]', number=connected.number)
        assert seen == {"path": "/steve/websocket/CentralSystemService/CP%201%2F%C3%84", "offered": "ocpp1.6",
                        "authorization": None, "reply": '[3,"1",{}]'}

    run(main(), timeout=10)


def test_no_agreed_subprotocol_fails_the_connection_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")
    closes: list[int | None] = []

    async def silent(ws: ServerConnection) -> None:  # CitrineOS on the wrong port: open, no subprotocol, silence
        await ws.wait_closed()
        closes.append(ws.close_code)

    async def main() -> None:
        async with serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with OcppConnection(station(port)) as link:
                events = link.events()
                first = await next_of(events, ConnectFailed)
                second = await next_of(events, ConnectFailed)
                assert (first.attempt, second.attempt) == (1, 2)
                assert "without agreeing to subprotocol ocpp1.6" in first.reason
                assert not link.connected
                with pytest.raises(NotConnectedError):
                    await link.send("[]")
        assert closes and all(code == 1002 for code in closes)

    run(main(), timeout=10)
    failures = [line for line in log_lines(caplog) if "CSMS connection failed" in line]
    assert len(failures) >= 2
    assert "subprotocol ocpp1.6" in failures[0] and "attempt=1" in failures[0] and "retry_in_s=" in failures[0]


@pytest.mark.parametrize(("key", "key_format", "password"), [
    ("correct horse", "auto", b"correct horse"),
    (HEX_OF_PRINTABLE, "auto", b"12345678901234567890"),
    (RANDOM_KEY_HEX, "hex", bytes.fromhex(RANDOM_KEY_HEX)),
])
def test_profile_1_sends_basic_auth_and_never_logs_it(caplog: pytest.LogCaptureFixture, key: str, key_format: str,
                                                      password: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    headers: list[str | None] = []

    async def handler(ws: ServerConnection) -> None:
        headers.append(ws.request.headers.get("Authorization"))
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=OCPP16) as server:
            port = server.sockets[0].getsockname()[1]
            settings = station(port, charge_point_id="CP-7", security_profile=1, authorization_key=key,
                               authorization_key_format=key_format)
            async with OcppConnection(settings) as link:
                await next_of(link.events(), Connected)

    run(main(), timeout=10)
    assert len(headers) == 1 and headers[0] is not None
    assert decoded(headers[0]) == b"CP-7:" + password
    text = "\n".join(line for line, record in zip(log_lines(caplog), caplog.records, strict=True)
                     if record.name.startswith("chargepoint"))  # the station's log, not the test server's
    assert "Authorization" in text  # websockets logged the handshake at DEBUG ...
    assert key not in text and headers[0].removeprefix("Basic ") not in text  # ... but not the credentials


@pytest.mark.parametrize(("status", "meaning"), [
    (HTTPStatus.UNAUTHORIZED, "wrong or missing AuthorizationKey"),
    (HTTPStatus.NOT_FOUND, "unknown ChargePointId"),
    (HTTPStatus.PRECONDITION_FAILED, "OCPP.Core"),
])
def test_refused_upgrade_is_logged_clearly_and_retried_until_accepted(
        caplog: pytest.LogCaptureFixture, status: HTTPStatus, meaning: str) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")
    requests: list[str] = []

    def gatekeeper(connection: ServerConnection, request: Request) -> Response | None:
        requests.append(request.path)
        if len(requests) <= 3:  # the operator registers the station after the third try
            return connection.respond(status, "no\n")
        return None

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, subprotocols=OCPP16, process_request=gatekeeper) as server:
            port = server.sockets[0].getsockname()[1]
            async with OcppConnection(station(port)) as link:
                events = link.events()
                failures = [await next_of(events, ConnectFailed) for _ in range(3)]
                assert [f.status_code for f in failures] == [status.value] * 3
                assert [f.attempt for f in failures] == [1, 2, 3]
                connected = await next_of(events, Connected)
                assert connected.number == 1

    run(main(), timeout=10)
    lines = [line for line in log_lines(caplog) if "CSMS connection failed" in line]
    assert len(lines) == 3
    assert f"HTTP {status.value} on the websocket upgrade" in lines[0] and meaning in lines[0]
    assert f"status={status.value}" in lines[0]


def test_clean_close_by_the_server_reconnects() -> None:
    connections = 0

    async def closes_at_once(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await ws.close(1000, "bye")
        else:
            await ws.wait_closed()

    async def main() -> None:
        async with serve(closes_at_once, "127.0.0.1", 0, subprotocols=OCPP16) as server:
            port = server.sockets[0].getsockname()[1]
            async with OcppConnection(station(port)) as link:
                events = link.events()
                assert (await next_of(events, Connected)).number == 1
                dropped = await next_of(events, Disconnected)
                assert (dropped.number, dropped.code, dropped.reason) == (1, 1000, "bye")
                assert dropped.retry_in_s is not None and dropped.retry_in_s >= FAST.wait_minimum_s
                assert (await next_of(events, Connected)).number == 2
                with pytest.raises(NotConnectedError):
                    await link.send("[]", number=1)  # a reply meant for the old connection stays out
        assert connections == 2

    run(main(), timeout=10)


def test_killed_server_is_redialled_until_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")
    port = free_port()

    async def main() -> None:
        server = await serve(echo, "127.0.0.1", port, subprotocols=OCPP16)
        async with OcppConnection(station(port)) as link:
            events = link.events()
            await next_of(events, Connected)
            server.close(close_connections=False)
            for connection in list(server.connections):
                connection.transport.abort()  # the CSMS process dies: no close frame
            await server.wait_closed()
            dropped = await next_of(events, Disconnected)
            assert dropped.code == 1006
            refused = await next_of(events, ConnectFailed)
            assert refused.reason.startswith(f"connection refused by 127.0.0.1:{port}")
            async with serve(echo, "127.0.0.1", port, subprotocols=OCPP16):
                back = await next_of(events, Connected)
                assert back.number == 2
                await link.send("ping?")
                assert (await next_of(events, TextReceived)).text == "ping?"

    run(main(), timeout=15)
    assert any("CSMS connection lost" in line and "code=1006" in line for line in log_lines(caplog))


class PingCounter(logging.Handler):
    """Counts the ping frames a test server receives (websockets logs each frame at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pings = 0

    def emit(self, record: logging.LogRecord) -> None:
        frame = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if record.msg == "< %s" and getattr(frame, "opcode", None) is Opcode.PING:
            self.pings += 1


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_pings_follow_websocket_ping_interval_and_can_change_live() -> None:
    counter = PingCounter()
    server_log = logging.getLogger("tests.ocpp_ping_server")
    server_log.setLevel(logging.DEBUG)
    server_log.addHandler(counter)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, subprotocols=OCPP16, logger=server_log) as server:
            port = server.sockets[0].getsockname()[1]
            async with OcppConnection(station(port, ping_interval_s=0)) as link:
                await next_of(link.events(), Connected)
                await asyncio.sleep(0.3)
                assert counter.pings == 0  # WebSocketPingInterval 0: no pings
                link.set_ping_interval(0.05)
                await wait_until(lambda: counter.pings >= 3)
                assert link.connected  # pongs came back, the link stays

    try:
        run(main(), timeout=10)
    finally:
        server_log.removeHandler(counter)


def test_no_pong_drops_the_link_and_redials() -> None:
    dials = 0

    async def handshake_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Completes the ocpp1.6 handshake, then never answers anything, not even pings (a hung CSMS)."""
        nonlocal dials
        dials += 1
        protocol = ServerProtocol(subprotocols=OCPP16)
        received: list[Any] = []
        while not received:
            protocol.receive_data(await reader.read(4096))
            received = protocol.events_received()
        protocol.send_response(protocol.accept(received[0]))
        writer.write(b"".join(protocol.data_to_send()))
        await reader.read()  # swallow pings until the station hangs up
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handshake_then_silence, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, OcppConnection(station(port, ping_interval_s=0.05, pong_timeout_s=0.2)) as link:
            events = link.events()
            await next_of(events, Connected)
            dropped = await next_of(events, Disconnected)
            assert dropped.retry_in_s is not None
            await next_of(events, Connected)
        assert dials >= 2

    run(main(), timeout=15)


def test_wss_to_a_plain_http_port_is_one_clear_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = ConnectionSettings(f"wss://127.0.0.1:{port}/ocpp", "CP-1", backoff=FAST, open_timeout_s=2)
        async with server, OcppConnection(settings) as link:
            failed = await next_of(link.events(), ConnectFailed)
            assert failed.reason.startswith(f"TLS handshake with 127.0.0.1:{port} failed")
            assert "try ws://" in failed.reason

    run(main(), timeout=10)
    assert sum("CSMS connection failed" in line and "TLS handshake" in line for line in log_lines(caplog)) >= 1


def test_reconnect_with_a_new_key_and_close_during_backoff() -> None:
    headers: list[str | None] = []

    async def handler(ws: ServerConnection) -> None:
        headers.append(ws.request.headers.get("Authorization"))
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=OCPP16) as server:
            port = server.sockets[0].getsockname()[1]
            link = OcppConnection(station(port, security_profile=1, authorization_key="old key"))
            task = asyncio.create_task(link.run())
            events = link.events()
            await next_of(events, Connected)
            await link.reconnect(station(port, security_profile=1, authorization_key="new key"))
            by_station = await next_of(events, Disconnected)
            assert (by_station.code, by_station.retry_in_s) == (1000, None)
            assert (await next_of(events, Connected)).number == 2
        slow = station(port, backoff=BackoffPolicy(wait_minimum_s=60, random_range_s=0, repeat_times=0))
        await link.reconnect(slow)  # the server is gone: the next wait is a minute ...
        await next_of(events, ConnectFailed)
        await link.close()  # ... and close() cuts it short
        await task
        assert [event async for event in events] == []
        assert [decoded(h or "") for h in headers] == [b"CP-1:old key", b"CP-1:new key"]

    run(main(), timeout=10)
