"""The dealer's live dashboard: a read-only web page, its status as JSON, and /metrics.

Theory of operation
-------------------
The dealer's loop owns every piece of state and is single-threaded; the web
server runs in threads of its own. They never share mutable state: once a
second the loop calls `publish`, which builds a *snapshot* (the status, a
history of progress, rate and ETA, recent failures) as finished JSON bytes and
swaps it in with one assignment, and sets the Prometheus gauges (which
prometheus-client makes thread-safe). Request threads only read the latest
snapshot. So a slow or hostile browser costs the loop nothing, and the page
can never see a half-updated state.

Routes (GET only; anything else is 405):

============== ===================================================================
path           what
============== ===================================================================
/              the page (dealer/dashboard.html): polls /status.json every second
/status.json   the latest snapshot
/metrics       Prometheus text format (prometheus-client, a registry of its own)
============== ===================================================================

It binds to 127.0.0.1 unless told otherwise: the page shows jobber keys and
machines, for the operator, not for the world.

The server is bounded whoever connects: HTTP_THREADS threads serve, taking
accepted connections from a queue of at most HTTP_QUEUE; a connection accepted
when the queue is full is closed at once, and one still silent HTTP_TIMEOUT_S
after its accept (or MIN_TIMEOUT_S after a thread took it, if it waited that
long in the queue) is closed, so idle connections cannot pin threads or pile
up (a thread per connection made 266 threads for 259 idle connections).
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0  # how often the loop builds a snapshot: the page's resolution
HISTORY_POINTS = 3600  # progress samples kept; then every other one is dropped
RATE_WINDOW_S = 60.0  # jobs settled per second, averaged over this long
FAILURES_SHOWN = 50
DEFAULT_HOST = "127.0.0.1"
HTTP_THREADS = 4  # requests served at once: a page and its pollers, a scraper or two
HTTP_QUEUE = 32  # accepted connections waiting for a thread; more are closed at once
HTTP_TIMEOUT_S = 10.0  # a connection silent this long (mid-request or idle) is closed
MIN_TIMEOUT_S = 0.5  # what a connection that waited its whole timeout in the queue still gets
HTTP_BACKLOG = 64  # connections the kernel holds before accept


def parse_http(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT` (port 0: any free one); host defaults to localhost."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http {text!r}: expected PORT or HOST:PORT")
    return host, int(port)


class Dashboard:
    """Serves the snapshots the dealer's loop publishes."""

    def __init__(self, host: str, port: int, title: str) -> None:
        self.title = title
        self._snapshot = b"{}"
        self._history: deque[tuple[float, int]] = deque()
        self._thin = 1  # keep every n-th sample once the history is full
        self._samples = 0
        self._published_at = float("-inf")
        self.registry = CollectorRegistry()
        names = {
            "accepted": "jobs accepted",
            "failed": "jobs failed",
            "in_flight": "jobs drawn and not yet settled",
            "drawn": "jobs drawn from the task",
            "total": "jobs in the task (-1: not known)",
            "replicas_out": "replicas out with jobbers",
            "disputed": "jobs accepted over a disagreement, and late results that disagreed",
        }
        self._gauges = {
            k: Gauge(f"borednet_jobs_{k}", doc, registry=self.registry) for k, doc in names.items()
        }
        self._jobbers = Gauge(
            "borednet_jobbers", "jobbers the dealer remembers", ["state"], registry=self.registry
        )
        self._rate = Gauge(
            "borednet_jobs_settled_per_second", "over the last minute", registry=self.registry
        )
        page = resources.files("dealer").joinpath("dashboard.html").read_bytes()
        self._page = page.replace(b"{{TITLE}}", title.encode())
        self._server = read_only_server(host, port, self._route, "dashboard")
        self.address = self._server.server_address
        log.info("dashboard on http://%s:%d/", *self.address[:2])

    @property
    def url(self) -> str:
        host, port = self.address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def publish(self, status: dict, failures: list[dict], failures_total: int, now: float) -> None:
        """Build the next snapshot from `status` (Service.status) and the recent `failures`
        (maps with `args` and `reasons`) of `failures_total`."""
        settled = status["accepted"] + status["failed"]
        self._samples += 1
        if self._samples % self._thin == 0:
            self._history.append((now, settled))
            if len(self._history) > HISTORY_POINTS:  # keep the whole run at half the detail
                self._history = deque(list(self._history)[::2])
                self._thin *= 2
        rate = self._rate_at(now, settled)
        total = status.get("total")
        eta = (total - settled) / rate if total is not None and rate > 0 else None
        jobbers = status.get("jobbers", [])
        snapshot = {
            **status,
            "title": self.title,
            "now": now,
            "settled": settled,
            "rate": rate,
            "eta_s": eta,
            "history": [[t, n] for t, n in self._history],
            "failures": failures[-FAILURES_SHOWN:],
            "failures_total": failures_total,
        }
        self._snapshot = json.dumps(snapshot, default=str).encode()  # one swap: atomic
        for k, g in self._gauges.items():
            v = status.get(k)
            g.set(-1 if v is None else v)
        self._rate.set(rate)
        states = {"active": 0, "gone": 0, "denied": 0}
        for row in jobbers:
            states["denied" if row["denied"] else "gone" if row["gone"] else "active"] += 1
        for state, n in states.items():
            self._jobbers.labels(state).set(n)

    def due(self, now: float) -> bool:
        """True when a new snapshot is due (at most one per PUBLISH_EVERY_S)."""
        if now - self._published_at < PUBLISH_EVERY_S:
            return False
        self._published_at = now
        return True

    def _rate_at(self, now: float, settled: int) -> float:
        past = [(t, n) for t, n in self._history if now - t <= RATE_WINDOW_S]
        if not past or now - past[0][0] <= 0:
            return 0.0
        return max(0.0, (settled - past[0][1]) / (now - past[0][0]))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _route(self, path: str) -> tuple[str, bytes] | None:
        if path in ("/", "/index.html"):
            return "text/html; charset=utf-8", self._page
        if path == "/status.json":
            return "application/json", self._snapshot
        if path == "/metrics":
            return CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return None


def read_only_server(host: str, port: int, route, what: str) -> HTTPServer:
    """A bounded HTTP server on (host, port), serving in daemon threads (see the module's
    docstring), that answers GET with `route(path)`, a (content type, body) or None for
    404, and every other method with 405 ("this `what` only reads"). For the dashboard
    and the allocator's page, whose routes only read bytes published by their owner's
    loop."""
    refusal = f"this {what} only reads\n".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "borednet"

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            found = route(self.path.split("?", 1)[0])
            if found is None:
                self._send(404, "text/plain", b"not found\n")
            else:
                self._send(200, *found)

        def _refuse(self) -> None:
            self._send(405, "text/plain", refusal)

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

    server = _PooledHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _PooledHTTPServer(HTTPServer):
    """http.server with a fixed pool of threads and a bounded queue of connections."""

    request_queue_size = HTTP_BACKLOG

    def __init__(self, address: tuple[str, int], handler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._waiting: queue.Queue = queue.Queue(HTTP_QUEUE)
        super().__init__(address, handler)
        self.refused = 0
        for i in range(HTTP_THREADS):
            threading.Thread(target=self._serve_queued, name=f"http-{i}", daemon=True).start()

    def process_request(self, request, client_address) -> None:
        try:
            self._waiting.put_nowait((request, client_address, time.monotonic()))
        except queue.Full:  # every thread busy and the queue full: no room, say so by closing
            self.refused += 1
            self.shutdown_request(request)

    def _serve_queued(self) -> None:
        while True:
            request, client_address, at = self._waiting.get()
            if request is None:
                return
            try:
                # the silence allowed counts from the accept: a queue of idle connections
                # is worked through in half a second each, not HTTP_TIMEOUT_S
                left_s = max(MIN_TIMEOUT_S, HTTP_TIMEOUT_S - (time.monotonic() - at))
                request.settimeout(left_s)  # a silent client is dropped, not waited for
                self.finish_request(request, client_address)
            except Exception:  # one client's failure (a reset, a timeout) is its own
                log.debug("http %s: request failed", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        while True:  # close what waits, and let the threads go
            try:
                request, _, _ = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                self.shutdown_request(request)
        for _ in range(HTTP_THREADS):
            try:
                self._waiting.put_nowait((None, None, 0.0))
            except queue.Full:
                break
