"""A small JSON HTTP API (stdlib ``http.server`` in a thread) to inspect the central system and drive stations.

GET /stations, GET /stations/<id>/messages[?action=&limit=], GET /transactions[?station=],
POST /stations/<id>/<Action> with the JSON payload → the station's answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chargepoint.logs import EventLogger

from .server import CentralSystem, CsmsError

log = EventLogger("csms.api")
MAX_BODY_BYTES = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: _ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged line by line; the CSMS logs what they cause."""

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[list[str], dict[str, str]]:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return segments, query

    def do_GET(self) -> None:
        csms = self.server.csms
        segments, query = self._route()
        if segments == ["stations"]:
            self._reply(200, csms.stations())
        elif len(segments) == 3 and segments[0] == "stations" and segments[2] == "messages":
            try:
                limit = int(query.get("limit", "1000"))
            except ValueError:
                self._reply(400, {"error": "limit must be a whole number"})
                return
            self._reply(200, csms.store.messages(segments[1], query.get("action"), limit))
        elif segments == ["transactions"]:
            self._reply(200, csms.store.transactions(query.get("station")))
        else:
            self._reply(404, {"error": f"no such resource {self.path!r}; try /stations, /transactions, "
                                       "/stations/<id>/messages"})

    def do_POST(self) -> None:
        segments, _ = self._route()
        if len(segments) != 3 or segments[0] != "stations":
            self._reply(404, {"error": "POST /stations/<id>/<Action> with the JSON payload"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": f"payload larger than {MAX_BODY_BYTES} bytes"})
            return
        raw = self.rfile.read(length) if length else b"{}"
        try:
            payload = json.loads(raw or b"{}")
        except ValueError as exc:
            self._reply(400, {"error": f"payload is not JSON: {exc}"})
            return
        station_id, action = segments[1], segments[2]
        csms = self.server.csms
        assert csms.loop is not None
        future = asyncio.run_coroutine_threadsafe(csms.send(station_id, action, payload), csms.loop)
        try:
            answer = future.result(timeout=csms.response_timeout + 5)
        except CsmsError as exc:
            self._reply(exc.status, {"error": str(exc), **exc.details})
            return
        except FutureTimeout:
            future.cancel()
            self._reply(504, {"error": f"no answer from {station_id!r}"})
            return
        log.info("call answered", station=station_id, action=action)
        self._reply(200, answer)


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], csms: CentralSystem) -> None:
        super().__init__(address, _Handler)
        self.csms = csms


class HttpApi:
    """Runs the API in a background thread; the CSMS must have been started (its loop is used for calls)."""

    def __init__(self, csms: CentralSystem, host: str = "127.0.0.1", port: int = 9001) -> None:
        self._server = _ApiServer((host, port), csms)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="csms-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("api listening", url=self.url)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
