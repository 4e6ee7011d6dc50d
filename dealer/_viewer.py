"""`python -m dealer dashboard [DB]`: a batch's dashboard from its journal alone.

The page is the live dealer's (dealer/dashboard.html), fed a snapshot of the same
shape (dealer._dashboard.compose) rebuilt from the journal's records: the journal
is read as `python -m dealer results` reads it (dealer._history.read_history:
dealer._reader.ReadOnly, which writes nothing and is safe beside a live dealer),
its records replayed into a History, and the snapshot made from that. The
journal is looked at every POLL_S seconds (its size and time, and its -wal's)
and read again when it changed, so the page also follows a batch a dealer is
running; a journal that takes long to read is looked at again only after
READ_SHARE times what its last look took, so a huge one does not take a core.

What a journal does not say is shown as unknown: the jobbers' names (only their
keys are recorded), why work waits, the peers. The address lenders gave is the
one the dealer noted in the journal's meta (dealer._service.Service.note: its
address, the task's total and, as it stopped, the task's summary line); for a
journal written before that, the dealer's key is read from the batch's key file
beside it (dealer._batch.batch_key), and the address is not known.

`state` says where the batch stands: "finished" (the dealer marked it so), "open"
(a dealer runs on it, or was killed), or "stopped" (closed before its end, or
ended early by the task's done()). The time elapsed runs from the first job sent
to now while it is open, and to its last result (its last record, stopped)
otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from dealer._batch import batch_key
from dealer._dashboard import FAILURES_SHOWN, HISTORY_POINTS, RATE_WINDOW_S, Board, compose
from dealer._figures import FailureGroups
from dealer._history import History, read_history
from dealer._journal import COMPANIONS, JournalError, companion
from dealer._report import STATUS_PAGE, jobber_rows
from net._http import parse_http
from net._keys import load_public_key

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the journal is looked at
READ_SHARE = 4  # ... or, after a slow look, this many times as long as that look took
STOP_CHECK_S = 0.2  # how soon a SIGTERM is heard


def dealer_key(path: Path) -> str | None:
    """The public key of the batch whose journal is `path`, from its key file beside it
    (dealer._batch.batch_key); None if there is none, or it cannot be read."""
    key, _ = batch_key(path, resuming=True)
    try:
        return load_public_key(key)
    except ValueError:
        return None


def _history_points(h: History, started: float | None, end: float) -> list[list[float]]:
    """Jobs settled over time, as the live page's samples: a point per job settled (or
    retried) whose time is known, at most HISTORY_POINTS of them, from the start to `end`."""
    known = [(t, n) for t, n in h.progress if t is not None]
    step = max(1, -(-len(known) // HISTORY_POINTS))
    points = known[step - 1 :: step]
    if known and points[-1] != known[-1]:
        points.append(known[-1])
    out = [[started, 0]] if started is not None else []
    out += [[t, n] for t, n in points]
    if out and end > out[-1][0]:
        out.append([end, out[-1][1]])
    return out


def snapshot_of(
    path: Path, meta: dict[str, str], h: History, now: float, key: str | None = None
) -> dict:
    """The dashboard's snapshot of the journal at `path` (its `meta`, replayed into `h`)
    at `now`; `key`: the dealer's, if the journal does not say its address."""
    counts = h.counts()
    core = h.core
    settled = counts["accepted"] + counts["failed"]
    finished = "finished" in meta
    is_open = meta.get("state", "").startswith("open")
    state = "finished" if finished else "open" if is_open else "stopped"
    total_text = meta.get("total", "")
    total = int(total_text) if total_text.isdigit() else counts["drawn"] if finished else None
    times = h.times
    # over at its last result (finished) or record (stopped); else it runs on (None)
    last = (times.last_at or h.last_at) if finished else h.last_at
    ended_at = None if is_open and not finished else last
    end = now if ended_at is None else ended_at
    started = times.started_at
    if ended_at is None:  # jobs settled over the last minute
        # as many as were settled a minute ago (retries take some back)
        before = [n for t, n in h.progress if t is not None and t <= now - RATE_WINDOW_S]
        recent = settled - (before[-1] if before else 0)
        span = min(RATE_WINDOW_S, now - started) if started is not None else 0.0
        rate, rate_over = (max(0, recent) / span if span > 0 else 0.0), "last minute"
    else:  # over the whole run
        span = end - started if started is not None else 0.0
        rate, rate_over = (settled / span if span > 0 else 0.0), "whole run"
    failed = h.select(("failed",))
    groups = FailureGroups()
    for j in failed:
        groups.add(j.job_id, None if j.args is None else list(j.args), j.reasons, j.own)
    rows = jobber_rows(core, {})
    # what a replayed core does not keep of a jobber: its machine, and when it was seen
    seen: dict[str, tuple[str, float]] = {}
    for j in h.jobs.values():
        for r in j.replicas:
            at = h.returned_at.get(r.tag) or r.sent_at or 0.0
            seen[r.jobber] = (r.machine, max(at, seen.get(r.jobber, ("", 0.0))[1]))
    for row in rows[:STATUS_PAGE]:
        machine, at = seen.get(row["key"], ("", 0.0))
        row["machine"], row["last_seen"] = row["machine"] or machine, row["last_seen"] or at
    address = meta.get("address", "")
    status = {
        "task": meta.get("task", "?").rpartition(".")[2],
        "key": address.rpartition("#")[2] if "#" in address else key or "",
        "total": total,
        "drawn": counts["drawn"],
        "accepted": counts["accepted"],
        "failed": counts["failed"],
        "failed_own": core.failed_own,
        "in_flight": counts["unsettled"],
        "replicas_out": core.replicas_out,
        "disputed": core.disputed,
        "waiting": [],
        "jobbers_total": len(rows),
        "jobbers": rows[:STATUS_PAGE],
        "peers": [],
        "long_jobs": [],
    }
    return compose(
        status,
        times,
        now,
        rate,
        title=status["task"],
        address=address,
        source="journal",
        finished=finished,
        state=state,
        ended_at=ended_at,
        journal=str(path.absolute()),
        voting=meta.get("voting"),
        records=h.records,
        summary=None if ended_at is None else meta.get("summary"),  # as the dealer stopped
        rate_over=rate_over,
        history=_history_points(h, started, end),
        failures=[
            {"job": j.job_id, "args": list(j.args or ()), "reasons": list(j.reasons), "own": j.own}
            for j in failed[-FAILURES_SHOWN:]
        ],
        failures_total=len(failed),
        failure_groups=groups.rows(),
        failures_ungrouped=groups.ungrouped,
        credit=sum(r.credit for r in core.jobbers.values()),
    )


class Viewer:
    """The dashboard of the journal at `path`, served on (host, port) and read again
    whenever the journal changes. JournalError if it cannot be read at first."""

    def __init__(self, path: Path, host: str, port: int) -> None:
        self.path = path
        self._stopping = False
        self._key = dealer_key(path)
        self._stamp = self._stat()
        meta, h = read_history(path)
        self._state = (meta, h)
        self.board = Board(host, port, meta.get("task", "?").rpartition(".")[2])
        self._show()

    @property
    def url(self) -> str:
        return self.board.url

    def _stat(self) -> tuple:
        """What changes when a dealer writes the journal: its files' sizes and times."""
        out = []
        for suffix in ("", *COMPANIONS[:1]):
            try:
                st = os.stat(companion(self.path, suffix))
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def _show(self, error: str | None = None) -> None:
        meta, h = self._state
        snap = snapshot_of(self.path, meta, h, time.time(), self._key)
        if error:
            snap["read_error"] = error
        self.board.swap(snap)

    def refresh(self) -> bool:
        """Read the journal again if it changed since it was last read (True if it was);
        rebuild the snapshot either way while a dealer may run on it (its time goes on)."""
        stamp = self._stat()
        if stamp == self._stamp:
            if self._state[0].get("state", "").startswith("open"):
                self._show()
            return False
        try:
            self._state = read_history(self.path)
        except JournalError as e:  # kept as it was: say why it is not newer
            log.warning("%s", e)
            self._show(str(e))
            return False
        self._stamp = stamp
        self._show()
        return True

    def run(self) -> None:
        """Look at the journal every POLL_S (or less often, see READ_SHARE) until stopped."""
        due = time.monotonic() + POLL_S
        while not self._stopping:
            time.sleep(STOP_CHECK_S)
            if time.monotonic() >= due:
                started = time.monotonic()
                self.refresh()
                took = time.monotonic() - started
                due = time.monotonic() + max(POLL_S, READ_SHARE * took)

    def stop(self) -> None:
        """Stop `run` (safe from a signal handler: it only sets a flag)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self) -> None:
        self.board.close()


def serve(path: Path, http: str | None) -> int:
    """`python -m dealer dashboard`: serve the journal's dashboard until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        host, port = parse_http(http or "0")
        viewer = Viewer(path, host, port)
    except (JournalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, JournalError) else 2
    except OSError as e:
        print(f"error: --http {http}: {e.strerror or e}", file=sys.stderr)
        return 2

    def stop(*_) -> None:  # the first signal stops it after its look; a second at once
        if viewer.stopping:
            raise KeyboardInterrupt
        viewer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"dashboard on {viewer.url} (journal {path}; Ctrl-C stops it)", flush=True)
    try:
        viewer.run()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    return 0
