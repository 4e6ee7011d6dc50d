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

import logging
from importlib import resources

from net._http import SnapshotPage

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0
CHART_MIN_SPAN_S = 600.0  # the chart shows at least the last ten minutes


def credit_chart(history: list[dict], now: float, min_span_s: float = CHART_MIN_SPAN_S) -> dict:
    """The page's chart of credit over time, from the history (a point per pool and project
    when it changed, any order): per project, its credit summed over the pools, as steps
    (a value holds until the next change, the last one until `now`), over the span from
    the first point (or `min_span_s` before now, if later) to now. `top`: the largest value."""
    t1 = max([now, *(float(h["t"]) for h in history)])
    t0 = min([t1 - min_span_s, *(float(h["t"]) for h in history)])
    latest: dict[tuple[str, str], int] = {}  # (pool, project): credit, as of the point
    series: dict[str, list[list[float]]] = {}
    for h in sorted(history, key=lambda h: h["t"]):
        latest[(h["pool"], h["project"])] = h["credit"]
        total = sum(c for (_, project), c in latest.items() if project == h["project"])
        pts = series.setdefault(h["project"], [])
        if pts and pts[-1][0] == h["t"]:
            pts[-1][1] = total  # several pools at one poll: one point
            continue
        if pts:
            pts.append([h["t"], pts[-1][1]])  # the step: the old value up to the change
        pts.append([h["t"], total])
    for pts in series.values():
        pts.append([t1, pts[-1][1]])
    top = max([1, *(c for pts in series.values() for _, c in pts)])
    return {"t0": t0, "t1": t1, "top": top, "projects": series}


class AllocatorPage(SnapshotPage):
    """The allocator's page and its latest snapshot (/stats.json), served read-only."""

    def __init__(self, host: str, port: int) -> None:
        self._published_at = float("-inf")
        page = resources.files("allocator").joinpath("allocator.html").read_bytes()
        super().__init__(host, port, page, "/stats.json", "page")
        self.address = self.http_address

    def due(self, now: float) -> bool:
        if now - self._published_at < PUBLISH_EVERY_S:
            return False
        self._published_at = now
        return True

    def publish(self, snapshot: dict) -> None:
        history = snapshot.get("stats", {}).get("history", [])
        self.swap({**snapshot, "chart": credit_chart(history, snapshot.get("now", 0.0))})
