"""What the dashboard sums up of a batch as it goes: when its first job was sent, each
jobber's results and run times, and its failures grouped by reason.

Both dashboards keep these the same way: the live one (dealer._dashboard) fed by the
service as results and failures come, and after a replay of its journal; the one read
from a journal alone (dealer._viewer) fed by dealer._history's replay. Each result or
failure costs O(1) here (a failure: a few regular expressions over its reasons); the
figures are read once a second, when a snapshot is built.

A run time is a replica's time out: from its Sent record's `at` to its Returned
record's `at` (network and queueing included, as the dealer sees it). A jobber's rate
is its results a minute while it worked here: from its first replica sent to its last
result. Results are those a jobber returned (accepted, outvoted or failed); replicas
given back unfinished, and results refused (implausible, from a denied identity), are
not counted.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from dataclasses import dataclass, field

from dealer._core import DENIED, IMPLAUSIBLE
from dealer._records import Record, Returned, Sent
from protocol import Status

RECENT = 64  # run times kept per jobber for its median
RECENT_ALL = 1024  # ... and of every jobber's, for the batch's
UNCOUNTED = frozenset({Status.ABANDONED.value, DENIED, IMPLAUSIBLE})

MAX_GROUPS = 50  # failure groups kept; failures of further reasons are only counted
EXAMPLES = 3  # jobs kept as examples of each group
REASON_CHARS = 300  # of a group's reason, as shown

# How alike failures are told apart from their reasons' text: who ran the replica
# ("TAG on KEY: ", as the core names an errored replica), a job's args in a refusal,
# hex digits (addresses, digests, keys) and numbers (exit statuses, fuel, times) vary
# from job to job; the rest says what went wrong.
_WHO = re.compile(r"^\S+ on \S+: ")
_ARGS = re.compile(r"\(args .*\) can never be sent")
_HEX = re.compile(r"\b(?:0x[0-9a-fA-F]+|[0-9a-f]{12,})\b")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?")


def _alike(reason: str) -> str:
    text = _WHO.sub("", reason)
    text = _ARGS.sub("(args …) can never be sent", text)
    return _NUMBER.sub("N", _HEX.sub("…", text))


def reason_group(reasons: tuple[str, ...] | list[str]) -> str:
    """The reason a failure is grouped by: its reasons with numbers written N, hex digits
    …, and who ran each replica left out; the errors of its replicas (after the first
    reason) once each, sorted, so that jobs failing alike share one group."""
    parts = [_alike(r) for r in reasons] or ["(no reason given)"]
    text = "; ".join([parts[0], *sorted(set(parts[1:]) - {parts[0]})])
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


@dataclass(slots=True)
class _Group:
    own: bool
    count: int = 0
    examples: list[dict] = field(default_factory=list)


class FailureGroups:
    """Failed jobs grouped by reason (reason_group): a count and a few examples each."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self.total = 0
        self.ungrouped = 0  # failures of reasons beyond MAX_GROUPS

    def add(self, job: int, args: list[str] | None, reasons, own: bool = False) -> None:
        self.total += 1
        key = reason_group(reasons)
        g = self._groups.get(key)
        if g is None:
            if len(self._groups) >= MAX_GROUPS:
                self.ungrouped += 1
                return
            g = self._groups[key] = _Group(own)
        g.count += 1
        if len(g.examples) < EXAMPLES:
            g.examples.append({"job": job, "args": args, "reasons": list(reasons)})

    def rows(self) -> list[dict]:
        """The groups, most failures first: reason (what the group's jobs share), shown
        (the first one's own reasons, for people: its numbers, not N), count, own (the
        job's own bug), and examples ({job, args, reasons})."""
        out = [
            {
                "reason": k,
                "shown": "; ".join(g.examples[0]["reasons"]) if g.examples else k,
                "count": g.count,
                "own": g.own,
                "examples": list(g.examples),
            }
            for k, g in self._groups.items()
        ]
        out.sort(key=lambda r: -r["count"])  # stable: the first seen first among equals
        return out


@dataclass(slots=True)
class _Jobber:
    first: float  # its first replica sent (or, if not known, its first result)
    last: float  # its last result
    results: int = 0
    timed: int = 0  # results whose run time is known
    total_s: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))


class Times:
    """When the batch's first job was sent, and results and run times by jobber."""

    def __init__(self) -> None:
        self.started_at: float | None = None  # the first replica sent
        self.last_at: float | None = None  # the last result
        self.results = 0
        self._timed = 0
        self._total_s = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT_ALL)
        self._by: dict[str, _Jobber] = {}

    def sent(self, at: float | None) -> None:
        """Replicas were sent at `at`."""
        if self.started_at is None and at is not None:
            self.started_at = at

    def returned(self, jobber: str, sent_at: float | None, at: float | None) -> None:
        """A result of `jobber`'s, for a replica sent at `sent_at`, came at `at` (either
        None: a journal older than those times)."""
        self.results += 1
        if at is None:
            return
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        first = at if sent_at is None else min(at, sent_at)
        j = self._by.get(jobber)
        if j is None:
            j = self._by[jobber] = _Jobber(first, at)
        j.first, j.last = min(j.first, first), max(j.last, at)
        j.results += 1
        if sent_at is not None and at >= sent_at:
            run = at - sent_at
            j.timed += 1
            j.total_s += run
            j.recent.append(run)
            self._timed += 1
            self._total_s += run
            self._recent.append(run)

    def before(self, core, rec: Record) -> None:
        """Replay: `rec` is about to be applied to `core` (whose `sent(tag)` names the
        jobber of an open replica and when it was sent)."""
        if type(rec) is Sent:
            self.sent(rec.at)
        elif type(rec) is Returned and rec.status not in UNCOUNTED:
            who = core.sent(rec.tag)
            if who is not None:
                self.returned(who[0], who[1], rec.at)

    def of(self, jobber: str) -> dict:
        """A jobber's figures: results, rate (a minute), median and mean run time (s)."""
        j = self._by.get(jobber)
        if j is None:
            return {"results": 0, "rate_per_min": None, "median_s": None, "mean_s": None}
        span = j.last - j.first
        return {
            "results": j.results,
            "rate_per_min": 60.0 * j.results / span if span > 0 else None,
            "median_s": statistics.median(j.recent) if j.recent else None,
            "mean_s": j.total_s / j.timed if j.timed else None,
        }

    def overall(self) -> dict:
        """Every jobber's: results, median run time (of the last RECENT_ALL), mean."""
        return {
            "results": self.results,
            "median_s": statistics.median(self._recent) if self._recent else None,
            "mean_s": self._total_s / self._timed if self._timed else None,
        }
