"""The dealer's dashboard: a read-only web page, its status as JSON, and /metrics.

Theory of operation
-------------------
The dealer's loop owns every piece of state and is single-threaded; the web
server runs in threads of its own. They never share mutable state: once a
second the loop calls `publish`, which builds a *snapshot* (the status, a
history of progress, rate and ETA, failures grouped by reason, each jobber's
figures) as finished JSON bytes and swaps it in with one assignment, and sets
the Prometheus gauges (which prometheus-client makes thread-safe). Request
threads only read the latest snapshot. So a slow or hostile browser costs the
loop nothing, and the page can never see a half-updated state.

One page serves two sources: the live dealer's (`Dashboard`, `--http`) and a
journal's, read alone (dealer._viewer, `python -m dealer dashboard`). Both
snapshots are made by `compose`, in one shape; `source` says which it is
("live", "journal") and `finished` whether the batch is.

Routes (GET only; anything else is 405):

============== ===================================================================
path           what
============== ===================================================================
/              the page (dealer/dashboard.html): polls /status.json every second
               (`/?still`: reads it once, for a screenshot)
/status.json   the latest snapshot
/metrics       Prometheus text format (prometheus-client, a registry of its own);
               the live dashboard's only
============== ===================================================================

It binds to 127.0.0.1 unless told otherwise: the page shows jobber keys and
machines, for the operator, not for the world.

The server (net._http.read_only_server) is bounded whoever connects.
"""

from __future__ import annotations

import logging
from collections import deque
from importlib import resources

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dealer._figures import Times
from net._http import SnapshotPage
from protocol import credit_text

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0  # how often the loop builds a snapshot: the page's resolution
HISTORY_POINTS = 3600  # progress samples kept; then every other one is dropped
RATE_WINDOW_S = 60.0  # jobs settled per second, averaged over this long
FAILURES_SHOWN = 50


def fuel_text(fuel: int | None) -> str:
    """Credit for people: `37.0 G fuel` (protocol.credit_text)."""
    return f"{credit_text(fuel)} fuel"


def compose(status: dict, times: Times, now: float, rate: float, **about) -> dict:
    """The snapshot both pages read: `status` (Service.status, or its like rebuilt from a
    journal) and what follows from it: jobs settled, time left at `rate` (jobs a second),
    the time elapsed since the first job was sent (to `about["ended_at"]` once the batch
    is over, else to `now`), each listed jobber's figures (dealer._figures.Times: its
    results a minute, median and mean run time) and its credit in readable units; and
    `about`: title, address, source, finished, journal, history, failures... as given
    (`credit`: the credit of every jobber, not only those listed)."""
    settled = status["accepted"] + status["failed"]
    total = status.get("total")
    finished = bool(about.get("finished"))
    eta = None
    if total is not None and rate > 0 and not finished:
        eta = max(0.0, (total - settled) / rate)
    started = times.started_at
    end = about.get("ended_at") or now
    jobbers = [
        {**row, **times.of(row.get("key", "")), "credit_text": fuel_text(row.get("credit"))}
        for row in status.get("jobbers", [])
    ]
    credit = about.pop("credit", None)
    if credit is None:
        credit = sum(row.get("credit", 0) for row in jobbers)
    return {
        **status,
        **about,
        "now": now,
        "settled": settled,
        "rate": rate,
        "eta_s": eta,
        "started_at": started,
        "elapsed_s": None if started is None else max(0.0, end - started),
        "jobbers": jobbers,
        "times": times.overall(),
        "credit": credit,
        "credit_text": fuel_text(credit),
    }


class Board(SnapshotPage):
    """The page and the latest snapshot (/status.json), served read-only on (host, port)."""

    def __init__(self, host: str, port: int, title: str) -> None:
        self.title = title
        page = resources.files("dealer").joinpath("dashboard.html").read_bytes()
        page = page.replace(b"{{TITLE}}", _html(title).encode())
        super().__init__(host, port, page, "/status.json", "dashboard")
        log.info("dashboard on %s", self.url)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Dashboard(Board):
    """Serves the snapshots the dealer's loop publishes, and /metrics."""

    def __init__(self, host: str, port: int, title: str, address: str = "") -> None:
        """`address`: the dealer's, for lenders (`tcp://host:port#KEY`), shown in the header."""
        self.address = address
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
        super().__init__(host, port, title)

    def publish(
        self,
        status: dict,
        failures: list[dict],
        failures_total: int,
        now: float,
        times: Times | None = None,
        **about,
    ) -> None:
        """Build the next snapshot from `status` (Service.status) and the recent `failures`
        (maps with `args` and `reasons`) of `failures_total`; `times` (the service's
        dealer._figures.Times) and `about` (journal, finished, summary, failure_groups,
        credit...) as `compose` takes them."""
        settled = status["accepted"] + status["failed"]
        self._samples += 1
        if self._samples % self._thin == 0:
            self._history.append((now, settled))
            if len(self._history) > HISTORY_POINTS:  # keep the whole run at half the detail
                self._history = deque(list(self._history)[::2])
                self._thin *= 2
        rate = self._rate_at(now, settled)
        snapshot = compose(
            status,
            times or Times(),
            now,
            rate,
            **{"source": "live", "finished": False, **about},
            title=self.title,
            address=self.address,
            rate_over="last minute",
            history=[[t, n] for t, n in self._history],
            failures=failures[-FAILURES_SHOWN:],
            failures_total=failures_total,
        )
        self.swap(snapshot)
        for k, g in self._gauges.items():
            v = status.get(k)
            g.set(-1 if v is None else v)
        self._rate.set(rate)
        states = {"active": 0, "gone": 0, "denied": 0}
        for row in status.get("jobbers", []):
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

    def _route(self, path: str) -> tuple[str, bytes] | None:
        if path == "/metrics":
            return CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return super()._route(path)
