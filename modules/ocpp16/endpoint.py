"""CSMS URL, HTTP Basic credentials, connection settings and failure texts for the OCPP-J link (pure, no I/O).

OCPP-J 1.6 §3.1.1: the URL is the configured endpoint + ``/`` + the percent-encoded ChargePointId.
Security whitepaper §2.2: profiles 1 and 2 send ``Authorization: Basic base64(<ChargePointId>:<password>)``.
"""

from __future__ import annotations

import base64
import socket
import ssl
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from .backoff import BackoffPolicy

SECURITY_PROFILES = (0, 1, 2, 3)
KEY_FORMATS = ("auto", "literal", "hex")
_PRINTABLE_ASCII = frozenset(range(0x20, 0x7F))


class EndpointError(ValueError):
    """The CSMS endpoint, ChargePointId or credentials cannot be used; the message says which and why."""


def charge_point_url(endpoint: str, charge_point_id: str) -> str:
    """``ws://host:8180/steve/websocket/CentralSystemService`` + ``CP 1`` -> ``.../CentralSystemService/CP%201``.

    A trailing ``/`` on the endpoint is allowed; a query string stays after the path. The id is encoded
    with no safe characters, so ``/`` or ``?`` in an id cannot change the path.
    """
    check_charge_point_id(charge_point_id)
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("ws", "wss"):
        raise EndpointError(f"CSMS endpoint {endpoint!r}: scheme must be ws:// or wss://, not {parts.scheme!r}")
    if not parts.hostname:
        raise EndpointError(f"CSMS endpoint {endpoint!r}: no host name")
    if parts.username is not None or parts.password is not None:
        raise EndpointError(
            f"CSMS endpoint {_without_userinfo(parts)!r}: credentials in the URL are not allowed; "
            "use security profile 1 with AuthorizationKey"
        )
    if parts.fragment:
        raise EndpointError(f"CSMS endpoint {endpoint!r}: a '#fragment' has no meaning in a websocket URL")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise EndpointError(f"CSMS endpoint {endpoint!r}: bad port ({exc})") from None
    path = parts.path.rstrip("/") + "/" + quote(charge_point_id, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_charge_point_id(charge_point_id: str) -> None:
    """Reject ids no CSMS can take: empty, surrounding whitespace, control characters."""
    if not charge_point_id:
        raise EndpointError("ChargePointId is empty")
    if charge_point_id != charge_point_id.strip():
        raise EndpointError(f"ChargePointId {charge_point_id!r} has leading or trailing whitespace")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in charge_point_id):
        raise EndpointError(f"ChargePointId {charge_point_id!r} contains control characters")


def basic_auth_password(authorization_key: str, key_format: str = "auto") -> bytes:
    """The Basic-auth password bytes for an AuthorizationKey.

    ``literal``: the key as typed (SteVe, OCPP.Core, CitrineOS compare the string).
    ``hex``: the key is hex and the password is the decoded bytes (OCPP-J 1.6 §6.2: a 20-byte key set as 40 hex digits).
    ``auto`` (libocpp's rule): hex-decode when the key is an even number of hex digits and every decoded byte is
    printable ASCII, else use the literal key.
    """
    if key_format not in KEY_FORMATS:
        raise EndpointError(f"authorization key format {key_format!r} is not one of {', '.join(KEY_FORMATS)}")
    if not authorization_key:
        raise EndpointError("AuthorizationKey is empty")
    literal = authorization_key.encode("utf-8")
    if key_format == "literal":
        return literal
    decoded = _hex_decoded(authorization_key)
    if key_format == "hex":
        if decoded is None:
            raise EndpointError("AuthorizationKey: format 'hex' needs an even number of hex digits (0-9, a-f)")
        return decoded
    if decoded is not None and all(byte in _PRINTABLE_ASCII for byte in decoded):
        return decoded
    return literal


def basic_auth_header(charge_point_id: str, authorization_key: str, key_format: str = "auto") -> str:
    """``Basic base64(<ChargePointId>:<password>)``, the value of the ``Authorization`` header."""
    check_charge_point_id(charge_point_id)
    if ":" in charge_point_id:
        raise EndpointError(
            f"ChargePointId {charge_point_id!r} contains ':', which HTTP Basic auth cannot carry in the username"
        )
    credentials = charge_point_id.encode("utf-8") + b":" + basic_auth_password(authorization_key, key_format)
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def upgrade_headers(
    security_profile: int, charge_point_id: str, authorization_key: str | None, key_format: str = "auto"
) -> dict[str, str]:
    """Extra headers of the websocket upgrade request for a security profile (Basic auth for 1 and 2)."""
    if security_profile not in SECURITY_PROFILES:
        raise EndpointError(f"SecurityProfile {security_profile!r} is not one of 0, 1, 2, 3")
    if security_profile not in (1, 2):
        return {}
    if not authorization_key:
        raise EndpointError(f"SecurityProfile {security_profile} needs an AuthorizationKey (HTTP Basic password)")
    return {"Authorization": basic_auth_header(charge_point_id, authorization_key, key_format)}


def check_profile_transport(security_profile: int, url: str) -> None:
    """Profiles 2 and 3 run over TLS only; profiles 0 and 1 accept ws:// and, behind TLS, wss://."""
    if security_profile in (2, 3) and not url.startswith("wss://"):
        raise EndpointError(f"SecurityProfile {security_profile} needs a wss:// endpoint (TLS), got {url!r}")


def _hex_decoded(text: str) -> bytes | None:
    if len(text) % 2 or not all(char in string.hexdigits for char in text):
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _without_userinfo(parts: SplitResult) -> str:
    """The URL with its credentials removed, so they reach neither an error message nor the log."""
    host_and_port = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host_and_port, parts.path, parts.query, ""))


UPGRADE_STATUS_MEANINGS = {
    400: "bad request: the CSMS did not accept the upgrade request, usually the subprotocol ocpp1.6 "
         "(SteVe, OCPP.Core) or characters in the ChargePointId (SteVe)",
    401: "unauthorized: wrong or missing AuthorizationKey, or this station is set to another security profile "
         "on the CSMS",
    403: "forbidden: the CSMS refuses this station (blocked, or not allowed on this endpoint)",
    404: "not found: unknown ChargePointId (SteVe and MaEVe need the station registered first) or a wrong "
         "endpoint path",
    412: "precondition failed: unknown ChargePointId (OCPP.Core needs the station registered first)",
    500: "CSMS internal error (OCPP.Core: this station already has an open connection)",
    502: "bad gateway: a proxy in front of the CSMS cannot reach it",
    503: "service unavailable: the CSMS is down or overloaded",
    504: "gateway timeout: a proxy in front of the CSMS got no answer from it",
}


def describe_upgrade_status(status_code: int) -> str:
    """What an HTTP status instead of ``101 Switching Protocols`` usually means for an OCPP station."""
    if status_code in UPGRADE_STATUS_MEANINGS:
        return UPGRADE_STATUS_MEANINGS[status_code]
    if 300 <= status_code < 400:
        return "redirect that could not be followed: check the CSMS endpoint (ws:// versus wss://, host, path)"
    if 400 <= status_code < 500:
        return "the CSMS rejected the upgrade request; check the endpoint, ChargePointId and credentials"
    if 500 <= status_code < 600:
        return "CSMS server error"
    return "unexpected HTTP status for a websocket upgrade"


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything needed to dial the CSMS. Invalid values raise ``ValueError`` naming the key."""

    endpoint: str
    charge_point_id: str
    security_profile: int = 0
    authorization_key: str | None = field(default=None, repr=False)
    authorization_key_format: str = "auto"
    ping_interval_s: float = 0.0
    """WebSocketPingInterval; 0 disables the station's pings (the CSMS's pings are always answered)."""
    pong_timeout_s: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    open_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    stable_after_s: float = 60.0
    """A connection that stayed up this long starts the back-off from the first step again."""
    max_message_bytes: int = 1 << 20
    ssl_context_factory: Callable[[], ssl.SSLContext] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = charge_point_url(self.endpoint, self.charge_point_id)
        check_profile_transport(self.security_profile, url)
        if self.authorization_key_format not in KEY_FORMATS:
            raise ValueError(f"authorization_key_format must be one of {', '.join(KEY_FORMATS)}")
        self.upgrade_headers()  # raises for a missing key or an id Basic auth cannot carry
        if self.security_profile == 3 and self.ssl_context_factory is None:
            raise ValueError("SecurityProfile 3 needs an ssl_context_factory that loads the client certificate")
        check_seconds("ping_interval_s", self.ping_interval_s, allow_zero=True)
        for name in ("pong_timeout_s", "open_timeout_s", "close_timeout_s"):
            check_seconds(name, getattr(self, name), allow_zero=False)
        check_seconds("stable_after_s", self.stable_after_s, allow_zero=True)
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")

    @property
    def url(self) -> str:
        return charge_point_url(self.endpoint, self.charge_point_id)

    def upgrade_headers(self) -> dict[str, str]:
        return upgrade_headers(self.security_profile, self.charge_point_id, self.authorization_key,
                               self.authorization_key_format)


def check_seconds(name: str, value: float, allow_zero: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound} (seconds), got {value!r}")


def describe_close_code(code: int | None) -> str:
    meanings = {
        1000: "closed normally by the CSMS", 1001: "the CSMS is going away (restart)",
        1002: "protocol error", 1003: "the CSMS does not accept this kind of frame (SteVe: binary frame)",
        1006: "connection lost without a close frame", 1008: "policy violation", 1009: "message too big",
        1011: "CSMS internal error or ping timeout", 1012: "the CSMS restarts",
    }
    return meanings.get(code or 1006, "closed by the CSMS")


def describe_dial_failure(exc: BaseException, url: str, open_timeout_s: float) -> tuple[str, int | None]:
    """One clear sentence for a failed dial, plus the HTTP status when the CSMS answered with one."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        return f"HTTP {code} on the websocket upgrade: {describe_upgrade_status(code)}", code
    if isinstance(exc, InvalidHandshake):
        return f"invalid websocket handshake from {where}: {exc}", None
    if isinstance(exc, WebSocketException):
        return f"websocket error with {where}: {exc}", None
    if isinstance(exc, TimeoutError):
        return f"no websocket handshake with {where} within {open_timeout_s:g} s", None
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup of {parts.hostname} failed: {exc.strerror}", None
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there, or a firewall rejects it", None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the CSMS certificate of {where} was not accepted: {exc.verify_message}", None
    if isinstance(exc, ssl.SSLError):
        hint = " (does this port speak TLS? try ws://)" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS handshake with {where} failed: {exc.reason or exc}{hint}", None
    if isinstance(exc, ConnectionResetError) and parts.scheme == "wss":
        return f"{where} reset the connection during the TLS handshake (does this port speak TLS? try ws://)", None
    if isinstance(exc, OSError):
        return f"network error with {where}: {exc.strerror or str(exc) or type(exc).__name__}", None
    return f"unexpected error dialling {where}: {type(exc).__name__}: {exc}", None
