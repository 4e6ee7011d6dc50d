"""The allocator's web page: its statistics for the operator, read-only, as the dealer's
dashboard is built (dealer._http).

The allocator's loop builds a snapshot once a second (`publish`: root's view of
every pool, project and machine, and the credit history) as finished JSON bytes
and swaps it in with one assignment; the web server's threads only read the
latest one. Routes (GET only; anything else is 405):

=============== =====================================================================
path            what
=============== =====================================================================
/               the page (dealer/allocator.html): polls /stats.json every 2 s
/stats.json     the latest snapshot
=============== =====================================================================

It binds to 127.0.0.1 unless told otherwise: it shows every pool's machines.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0


class AllocatorPage:
    def __init__(self, host: str, port: int) -> None:
        self._snapshot = b"{}"
        self._published_at = float("-inf")
        self._page = resources.files("dealer").joinpath("allocator.html").read_bytes()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.address = self._server.server_address
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def due(self, now: float) -> bool:
        if now - self._published_at < PUBLISH_EVERY_S:
            return False
        self._published_at = now
        return True

    def publish(self, snapshot: dict) -> None:
        self._snapshot = json.dumps(snapshot, default=str).encode()  # one swap: atomic

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        page = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "borednet"

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page._page)
                elif path == "/stats.json":
                    self._send(200, "application/json", page._snapshot)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _refuse(self) -> None:
                self._send(405, "text/plain", b"this page only reads\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                log.debug("http %s: " + format, self.address_string(), *args)

        return Handler
