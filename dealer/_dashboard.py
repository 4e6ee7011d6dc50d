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

The server (net._http.read_only_server) is bounded whoever connects.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from importlib import resources

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from net._http import read_only_server

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0  # how often the loop builds a snapshot: the page's resolution
HISTORY_POINTS = 3600  # progress samples kept; then every other one is dropped
RATE_WINDOW_S = 60.0  # jobs settled per second, averaged over this long
FAILURES_SHOWN = 50


class Dashboard:
    """Serves the snapshots the dealer's loop publishes."""

    def __init__(self, host: str, port: int, title: str, address: str = "") -> None:
        """`address`: the dealer's, for lenders (`tcp://host:port#KEY`), shown in the header."""
        self.title = title
        self.address = address
        self._snapshot = b"{}"
        self._history: deque[tuple[float, int]] = deque()
        self._thin = 1  # keep every n-th sample once the history is full
        self._samples = 0
        self._published_at = float("-inf")
        self.registry = CollectorRegistry()
        names = {
            "accepted": "jobs accepted",
            "failed": "jobs failed",
            "failed_own": "jobs failed by their own bug (the same failure on a quorum of machines)",
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
        self.http_address = self._server.server_address
        log.info("dashboard on http://%s:%d/", *self.http_address[:2])

    @property
    def url(self) -> str:
        host, port = self.http_address[:2]
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
            "address": self.address,
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
