"""What a batch did, from its journal alone: every job's result and its history.

`History` replays a journal's records into a Core of its own whose jobs are
rebuilt from the Drawn records (their args; `verify_jobs=False`, since the
journal, not a task, is the source of truth here), so accepted outputs and
failures come from the core's own voting, exactly as the dealer reached them,
without the task's code. A job's history is the core's own replicas of it
(jobber, machine, state, status, fuel, detail, and whether it was in the
winning quorum), kept as the records are applied, with the times that Sent and
Returned records carry.

Journals written before Drawn.args, Sent.at and Returned.at existed still
replay: their args are unknown (None, shown as "?") and their times too ("-").

Pure: records in, rows and text out. `python -m dealer results|jobs` (dealer.cli)
reads the journal with dealer._reader.ReadOnly and prints what this renders.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shlex
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dealer._core import (
    Accepted,
    Core,
    CoreError,
    Drawn,
    Policy,
    Record,
    ReplicaState,
    Retried,
    Returned,
    Sent,
)
from dealer._figures import Times
from dealer._journal import JournalError
from dealer._reader import ReadOnly
from tasks import Job

STATES = ("accepted", "failed", "unsettled")
SHOWN_CHARS = 200  # of an output in the text tables, unless --full
SHOWN_LINES = 8
SHOWN_ARGS = 48
UNKNOWN = "-"  # a time a journal older than Sent.at / Returned.at does not know
# a replica's fault as `jobs` shows it (dealer._blame)
BLAME = {"job": "the job's own bug", "machine": "the machine's fault", "pending": "not judged yet"}


def policy_of(voting: str) -> Policy:
    """The voting rules a journal was written under, from its `voting` meta row
    (`redundancy=2 quorum=2 max_errors=3 max_replicas=7 distinct=host`): all that
    settling jobs in a replay depends on."""
    fields = dict(w.partition("=")[::2] for w in voting.split())
    try:
        return Policy(
            redundancy=int(fields["redundancy"]),
            quorum=int(fields["quorum"]),
            max_errors=int(fields["max_errors"]),
            max_replicas=int(fields["max_replicas"]),
        )
    except (KeyError, ValueError) as e:
        raise ValueError(f"voting rules {voting!r} cannot be read: {e}") from None


class _Feed:
    """The replaying core's job source: the job of each Drawn record, put in just before
    the record is applied."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def put(self, job: Job) -> None:
        self._jobs.append(job)

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> Job:
        if not self._jobs:
            raise StopIteration
        return self._jobs.popleft()


@dataclass(slots=True)
class JobHistory:
    job_id: int
    args: tuple[str, ...] | None  # None: the journal did not record them
    stdin_size: int | None
    stdin_sha256: str | None
    replicas: list  # the core's own replicas (dealer._core._Replica), in the order sent
    state: str = "unsettled"
    output: bytes | None = None  # accepted: the output the quorum agreed on
    reasons: tuple[str, ...] = ()  # failed: why
    own: bool = False  # failed by its own bug: the same failure on a quorum of machines
    # replicas of its tries before a retry (dealer._retry), which vote no more
    earlier: list = field(default_factory=list)
    retries: int = 0  # how many times it was put back


@dataclass
class History:
    """A journal's records, replayed: feed them in order to `apply`."""

    policy: Policy
    tag_prefix: str
    jobs: dict[int, JobHistory] = field(default_factory=dict)
    sent_at: dict[str, float | None] = field(default_factory=dict)
    returned_at: dict[str, float | None] = field(default_factory=dict)
    records: int = 0
    # for the dashboard (dealer._viewer): the batch's start and jobbers' run times, the
    # latest time a record carries, and the jobs settled as each settled or was retried:
    # (that time, how many were settled then), in order
    times: Times = field(default_factory=Times)
    last_at: float | None = None
    progress: list[tuple[float | None, int]] = field(default_factory=list)
    settled: int = 0

    def __post_init__(self) -> None:
        self._feed = _Feed()
        self.core = Core(
            self._feed, self.policy, self.tag_prefix, verify_jobs=False, redraw=self._again
        )

    def _again(self, ids: Iterable[int]) -> dict[int, Job]:
        """Retried jobs, rebuilt from their Drawn records as the feed built them."""
        return {i: Job(self.jobs[i].args or ()) for i in ids if i in self.jobs}

    @classmethod
    def of(cls, policy: Policy, tag_prefix: str, records: Iterable[Record]) -> History:
        h = cls(policy, tag_prefix)
        for rec in records:
            h.apply(rec)
        return h

    def apply(self, rec: Record) -> None:
        if isinstance(rec, Drawn):
            self._feed.put(Job(rec.args or ()))
        self.times.before(self.core, rec)
        self.core.apply(rec)
        self.records += 1
        at = getattr(rec, "at", None)
        if at is not None and (self.last_at is None or at > self.last_at):
            self.last_at = at
        if isinstance(rec, Drawn):
            self.jobs[rec.job_id] = JobHistory(
                rec.job_id,
                rec.args,
                rec.stdin_size,
                rec.stdin_sha256,
                [] if rec.refused is not None else self.core.replicas(rec.job_id),
            )
        elif isinstance(rec, Sent):
            self.sent_at[rec.tag] = rec.at
        elif isinstance(rec, Returned):
            self.returned_at[rec.tag] = rec.at
        elif isinstance(rec, Retried):
            again = set(rec.job_ids)
            if rec.restart:  # every unsettled job started over too
                again |= {i for i, j in self.jobs.items() if j.state == "unsettled"}
            for i in sorted(again):
                j = self.jobs[i]
                if j.state != "unsettled":  # settled no more
                    self.settled -= 1
                    self.progress.append((self.last_at, self.settled))
                j.earlier += j.replicas
                j.replicas = self.core.replicas(i)
                j.retries += i in rec.job_ids
                j.state, j.output, j.reasons, j.own = "unsettled", None, (), False
        self.core.take_records()  # none: applying decides nothing new
        for s in self.core.take_settled():
            self.settled += 1
            self.progress.append((self.last_at, self.settled))
            j = self.jobs[s.job_id]
            if isinstance(s, Accepted):
                j.state, j.output = "accepted", s.output
            else:
                j.state, j.reasons, j.own = "failed", s.reasons, s.own

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for j in self.jobs.values():
            out[j.state] += 1
        return {"drawn": len(self.jobs), **out}

    def select(self, states: Iterable[str] = STATES) -> list[JobHistory]:
        wanted = set(states)
        return [j for j in self.jobs.values() if j.state in wanted]

    def replica_rows(self, j: JobHistory) -> list[dict]:
        return [
            {
                "tag": r.tag,
                "jobber": r.jobber,
                "machine": r.machine,
                "state": r.state.value,
                "status": r.status or None,
                "fuel": r.used or r.fuel,
                "detail": r.detail,
                # a long job's segments: the state it started from, and those it sent
                "resumed_from": r.resume.tag if r.resume else None,
                "resumed_fuel": r.resume.fuel if r.resume else None,
                "saves": r.saves,
                "saved_fuel": r.checkpoint.fuel if r.checkpoint else None,
                "output_bytes": len(r.output),
                "output_sha256": hashlib.sha256(r.output).hexdigest()[:16]
                if r.state is ReplicaState.OK or r.output
                else None,
                "sent_at": self.sent_at.get(r.tag),
                "deadline": r.deadline,
                "returned_at": self.returned_at.get(r.tag),
                "vote": vote(j, r),
                # whose fault its failure is (dealer._blame): "job" (its own bug, counted
                # on nobody), "machine" (counted on the jobber), "pending", or None
                "fault": r.fault or None,
                # a replica of a try before the job was retried: it votes no more
                "superseded": k < len(j.earlier),
            }
            for k, r in enumerate([*j.earlier, *j.replicas])
        ]


def vote(j: JobHistory, r) -> str | None:
    """ "won": in the quorum of machines that settled the job (on its output, or on
    one deterministic failure); "lost": an OK output of an accepted job that was not
    the agreed one; None: took no part."""
    if r.won:
        return "won"
    if j.state == "accepted" and r.state is ReplicaState.OK:
        return "lost"
    return None


# --- rendering ------------------------------------------------------------------------


def as_text(data: bytes) -> str | None:
    """`data` as text if it is UTF-8 with nothing but printable characters, newlines
    and tabs; else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in "\n\r\t" for c in text) else None


def _args_text(args: tuple[str, ...] | None) -> str:
    return "?" if args is None else shlex.join(args)


def _output(j: JobHistory) -> dict:
    data = j.output
    return {
        "output_base64": None if data is None else base64.b64encode(data).decode("ascii"),
        "output_text": None if data is None else as_text(data),
    }


def _job_json(j: JobHistory) -> dict:
    return {
        "job": j.job_id,
        "args": None if j.args is None else list(j.args),
        "state": j.state,
        **_output(j),
        "reasons": list(j.reasons),
        "own": j.own,
        "retries": j.retries,
    }


def results_json(h: History) -> dict:
    """Every settled job: exact output bytes in base64 (and as text when they are text),
    or why it failed."""
    return {**h.counts(), "jobs": [_job_json(j) for j in h.select(("accepted", "failed"))]}


def jobs_json(h: History, states: Iterable[str] = STATES) -> dict:
    return {
        **h.counts(),
        "jobs": [
            {
                **_job_json(j),
                "stdin_size": j.stdin_size,
                "stdin_sha256": j.stdin_sha256,
                "replicas": h.replica_rows(j),
            }
            for j in h.select(states)
        ],
    }


def results_csv(h: History) -> str:
    """Columns job, args, state, output, reasons. The output is its text when it is
    text; otherwise (and for text that itself begins so) `base64:` and its bytes in
    base64. Args are shell-quoted and joined by spaces ("?": not recorded); reasons
    are joined by "; "."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["job", "args", "state", "output", "reasons"])
    for j in h.select(("accepted", "failed")):
        cell = ""
        if j.output is not None:
            text = as_text(j.output)
            if text is None or text.startswith("base64:"):
                cell = "base64:" + base64.b64encode(j.output).decode("ascii")
            else:
                cell = text
        w.writerow([j.job_id, _args_text(j.args), j.state, cell, "; ".join(j.reasons)])
    return out.getvalue()


def shown(data: bytes, full: bool = False) -> list[str]:
    """An output as lines for a table: its text, or its bytes in hex with a note; at
    most SHOWN_CHARS characters in SHOWN_LINES lines unless `full`."""
    if not data:
        return ["(empty)"]
    text = as_text(data)
    if text is None:
        hexed = data.hex() if full else data[: SHOWN_CHARS // 2].hex()
        more = "" if full or len(data) <= SHOWN_CHARS // 2 else "…"
        return [f"{hexed}{more} (binary, {len(data)} bytes, in hex)"]
    lines = [line.expandtabs(4) for line in text.splitlines()] or [""]
    if full:
        return lines
    kept, used = [], 0
    for line in lines[:SHOWN_LINES]:
        if used + len(line) > SHOWN_CHARS:
            kept.append(line[: max(0, SHOWN_CHARS - used)])
            break
        kept.append(line)
        used += len(line)
    if kept != lines:
        kept[-1] += f"… ({len(data)} bytes in all; --full shows all)"
    return kept


def _when(t: float | None) -> str:
    return UNKNOWN if t is None else time.strftime("%m-%d %H:%M:%S", time.localtime(t))


def _took(sent: float | None, back: float | None) -> str:
    return UNKNOWN if sent is None or back is None else f"{back - sent:.1f}s"


def _summary(h: History) -> str:
    c = h.counts()
    text = (
        f"{c['drawn']} jobs drawn: {c['accepted']} accepted, {c['failed']} failed, "
        f"{c['unsettled']} unsettled"
    )
    if any(j.args is None for j in h.jobs.values()):
        text += "\n?: args not recorded (the journal was written before Drawn.args existed)"
    return text


def results_text(h: History, full: bool = False) -> str:
    """A table: job, state, args, and the output (or the reasons it failed)."""
    rows = []
    for j in h.select(("accepted", "failed")):
        args = _args_text(j.args)
        if not full and len(args) > SHOWN_ARGS:
            args = args[: SHOWN_ARGS - 1] + "…"
        cells = shown(j.output or b"", full) if j.state == "accepted" else list(j.reasons)
        rows.append((str(j.job_id), j.state, args, cells or [""]))
    if not rows:
        return f"no job settled yet\n{_summary(h)}"
    head = ("job", "state", "args", "output")
    widths = [max([len(head[i]), *(len(r[i]) for r in rows)]) for i in range(3)]
    pad = sum(widths) + 2 * 3
    lines = ["  ".join(x.ljust(w) for x, w in zip(head[:3], widths, strict=True)) + "  output"]
    for job, state, args, cells in rows:
        first = "  ".join(x.ljust(w) for x, w in zip((job, state, args), widths, strict=True))
        lines.append(f"{first}  {cells[0]}".rstrip())
        lines += [" " * pad + c for c in cells[1:]]
    lines.append(_summary(h))
    return "\n".join(lines)


def _segment(r: dict) -> str:
    """A long job's segment, for people: where the replica started, what it saved."""
    parts = []
    if r["resumed_from"]:
        parts.append(f"resumed from {r['resumed_from']} at fuel {r['resumed_fuel']}")
    if r["saves"]:
        parts.append(f"{r['saves']} states sent, the last at fuel {r['saved_fuel']}")
    return ", ".join(parts)


def jobs_text(h: History, states: Iterable[str] = STATES, full: bool = False) -> str:
    """Per job (as condor_history does per HTCondor job): its state, args, output or
    reasons, then one line per replica: tag, jobber, machine, state, status, fuel,
    when sent, how long until it came back, its vote and the detail (with, for a long
    job, its segment: the state it resumed from and the states it sent)."""
    key = 64 if full else 12
    out = []
    for j in h.select(states):
        stdin = "" if not j.stdin_size else f"  stdin {j.stdin_size} bytes ({j.stdin_sha256})"
        again = f" (retried {j.retries}x)" if j.retries else ""
        out.append(f"job {j.job_id}  {j.state}{again}  args {_args_text(j.args)}{stdin}")
        if j.state == "accepted":
            cells = shown(j.output or b"", full)
            out.append(f"  output: {cells[0]}")
            out += [f"          {c}" for c in cells[1:]]
        out += [f"  reason: {r}" for r in j.reasons]
        rows = h.replica_rows(j)
        if not rows:
            out.append("  (no replica sent yet)")
            continue
        table = [
            (
                r["tag"],
                r["jobber"][:key],
                r["machine"],
                r["state"],
                r["status"] or UNKNOWN,
                str(r["fuel"]),
                _when(r["sent_at"]),
                _took(r["sent_at"], r["returned_at"]),
                r["vote"] or "",
                "; ".join(
                    x
                    for x in (
                        "before the retry" if r["superseded"] else "",
                        _segment(r),
                        BLAME.get(r["fault"]),
                        r["detail"],
                    )
                    if x
                ),
            )
            for r in rows
        ]
        head = ("replica", "jobber", "machine", "state", "status", "fuel", "sent", "took")
        head += ("vote", "detail")
        widths = [max(len(head[i]), *(len(t[i]) for t in table)) for i in range(9)]
        for t in (head, *table):
            cells = [
                x.rjust(w) if i == 5 else x.ljust(w)
                for i, (x, w) in enumerate(zip(t[:9], widths, strict=True))
            ]
            out.append(("  " + "  ".join(cells) + "  " + t[9]).rstrip())
    out.append(_summary(h))
    return "\n".join(out)


# --- reading a journal: python -m dealer results|jobs ---------------------------------


READS = 3  # tries at reading a closed journal that a dealer keeps opening meanwhile


def read_history(path: Path) -> tuple[dict[str, str], History]:
    """A journal's meta and its records replayed (dealer._history), read without writing
    anything (dealer._reader.ReadOnly): safe on a live dealer's journal, a killed
    one's (with its -wal), or a finished one. JournalError if it cannot be read."""
    for _ in range(READS):
        with ReadOnly(path) as j:
            try:
                voting = j.meta.get("voting")
                if voting is None:
                    raise JournalError(
                        f"{path}: the journal does not record its voting rules (no 'voting' "
                        "row in its meta table): no dealer has served a task on it"
                    )
                try:
                    policy = policy_of(voting)
                except ValueError as e:
                    raise JournalError(f"{path}: {e}: its meta table was damaged") from e
                try:
                    h = History.of(policy, j.tag_prefix, j.records())
                except CoreError as e:
                    raise JournalError(
                        f"{path}: its records do not replay: {e}: the journal was damaged"
                    ) from e
            except JournalError:
                if j.intact():
                    raise
                continue  # a dealer opened it while it was read as closed: read again
            if j.intact():
                return j.meta, h
    raise JournalError(f"{path}: a dealer kept opening it while it was read; try again")


def _heading(path: Path, meta: dict[str, str]) -> str:
    open_ = meta.get("state", "").startswith("open")
    return f"journal {path}: task {meta.get('task')}; {meta.get('voting')}" + (
        "; open (a dealer runs on it, or was killed)" if open_ else ""
    )


def _about(path: Path, meta: dict[str, str]) -> dict:
    return {
        "journal": str(path),
        "task": meta.get("task"),
        "voting": meta.get("voting"),
        "open": meta.get("state", "").startswith("open"),
    }


def _emit(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def results(path: Path, form: str, full: bool = False) -> int:
    try:
        meta, h = read_history(path)
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if form == "json":
        return _emit(json.dumps({**_about(path, meta), **results_json(h)}, indent=2) + "\n")
    if form == "csv":
        return _emit(results_csv(h))
    return _emit(f"{_heading(path, meta)}\n{results_text(h, full)}\n")


def jobs(path: Path, states: Sequence[str], as_json: bool, full: bool = False) -> int:
    try:
        meta, h = read_history(path)
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if as_json:
        return _emit(json.dumps({**_about(path, meta), **jobs_json(h, states)}, indent=2) + "\n")
    return _emit(f"{_heading(path, meta)}\n{jobs_text(h, states, full)}\n")
