"""The allocator's web page: its statistics for the operator, read-only, as the dealer's
dashboard is built (net._http, dealer._dashboard).

The allocator's loop builds a snapshot once a second (`publish`: root's view of
every pool, project and machine, and the credit history) as finished JSON bytes
and swaps it in with one assignment; the web server's threads only read the
latest one. Routes (GET only; anything else is 405):

=============== =====================================================================
path            what
=============== =====================================================================
/               the page (allocator/allocator.html): polls /stats.json every 2 s
/stats.json     the latest snapshot
=============== =====================================================================

It binds to 127.0.0.1 unless told otherwise: it shows every pool's machines.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from net._http import read_only_server

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0


class AllocatorPage:
    def __init__(self, host: str, port: int) -> None:
        self._snapshot = b"{}"
        self._published_at = float("-inf")
        self._page = resources.files("allocator").joinpath("allocator.html").read_bytes()
        self._server = read_only_server(host, port, self._route, "page")
        self.address = self._server.server_address

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

    def _route(self, path: str) -> tuple[str, bytes] | None:
        if path in ("/", "/index.html"):
            return "text/html; charset=utf-8", self._page
        if path == "/stats.json":
            return "application/json", self._snapshot
        return None
