"""A read-only HTTP server for the pages programs publish (the dealer's dashboard, the
allocator's page), and the `--http` address they are given.

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
from http.server import BaseHTTPRequestHandler, HTTPServer

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
HTTP_THREADS = 4  # requests served at once: a page and its pollers, a scraper or two
HTTP_QUEUE = 32  # accepted connections waiting for a thread; more are closed at once
HTTP_TIMEOUT_S = 10.0  # a connection silent this long (mid-request or idle) is closed
MAX_BODY_BYTES = 16384  # the most a POST to app_server may carry
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


class _Handler(BaseHTTPRequestHandler):
    """What both servers' handlers share: how a reply goes, and the log."""

    server_version = "borednet"
    extra_headers: tuple[tuple[str, str], ...] = ()  # sent with every reply, beside these

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in self.extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("http %s: " + format, self.address_string(), *args)


def read_only_server(host: str, port: int, route, what: str) -> HTTPServer:
    """A bounded HTTP server on (host, port), serving in daemon threads (see the module's
    docstring), that answers GET with `route(path)`, a (content type, body) or None for
    404, and every other method with 405 ("this `what` only reads"). For the dashboard
    and the allocator's page, whose routes only read bytes published by their owner's
    loop."""
    refusal = f"this {what} only reads\n".encode()

    class Handler(_Handler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            found = route(self.path.split("?", 1)[0])
            if found is None:
                self._send(404, "text/plain", b"not found\n")
            else:
                self._send(200, *found)

        def _refuse(self) -> None:
            self._send(405, "text/plain", refusal)

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    server = _PooledHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class SnapshotPage:
    """A page and the latest JSON snapshot its owner's loop published (at `json_path`),
    served read-only on (host, port) by `read_only_server`: the dealer's dashboard and
    the allocator's page. `swap` puts a new snapshot in with one assignment, so request
    threads never see half of one; subclasses may route more paths (`_route`)."""

    def __init__(self, host: str, port: int, page: bytes, json_path: str, what: str) -> None:
        self._snapshot = b"{}"
        self._page = page
        self._json_path = json_path
        self._server = read_only_server(host, port, self._route, what)
        self.http_address = self._server.server_address

    @property
    def url(self) -> str:
        host, port = self.http_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def swap(self, snapshot: dict) -> None:
        """Serve `snapshot` from now on (one assignment: atomic for the readers)."""
        self._snapshot = json.dumps(snapshot, default=str).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _route(self, path: str) -> tuple[str, bytes] | None:
        if path in ("/", "/index.html"):
            return "text/html; charset=utf-8", self._page
        if path == self._json_path:
            return "application/json", self._snapshot
        return None


def app_server(host: str, port: int, handle) -> HTTPServer:
    """The same bounded server, for a page that also takes actions (the jobber's manager):
    GET and POST both go to `handle(method, path, headers, body)`, which returns
    (status code, content type, body); a POST's body is read only with a Content-Length
    of at most MAX_BODY_BYTES (411 or 413 otherwise). Other methods: 405."""

    class Handler(_Handler):
        # no framing (no clicks tricked), no address of the page sent on
        extra_headers = (("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"))

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            self._send(*handle("GET", self.path, self.headers, b""))

        def do_POST(self) -> None:  # noqa: N802
            size = self.headers.get("Content-Length", "")
            if not size.isascii() or not size.isdigit():
                self._send(411, "text/plain", b"a Content-Length is needed\n")
            elif int(size) > MAX_BODY_BYTES:
                self.close_connection = True  # the body is not read: the connection is done
                self._send(413, "text/plain", b"too large\n")
            else:
                self._send(*handle("POST", self.path, self.headers, self.rfile.read(int(size))))

        def _refuse(self) -> None:
            self._send(405, "text/plain", b"GET or POST\n")

        do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

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
