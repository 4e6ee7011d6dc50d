"""The dealer's scheduling core: a pure state machine. No sockets, no SQLite, no clock.

Theory of operation
-------------------
Jobs are drawn lazily from the task's generator, numbered 0, 1, 2, ... in draw
order, and kept in memory only until they are settled, so memory is bounded
by the window of unsettled jobs, not by the size of the batch.

A job that can never be sent (its stdin, an argument or their count over the
wire's caps, or a `jobs` message holding it and the payload over the message
cap: see `unsendable`) fails where it is drawn: its Drawn record carries the
reason (`refused`), and applying that record settles the job as failed at
once, on a live draw and on a replay alike. No replica of it is ever made, and
the rest of the batch goes on. A live draw goes past at most
REFUSED_PER_DRAW such jobs in a row (the next draw goes on), so a task of
nothing but oversize jobs cannot hold one turn for long.

The tail: once nothing is left to draw and no job wants a replica, a jobber
that asks gets a *backup* replica of the job out longest (up to
`Policy.backups` beyond what the job needs), so a batch ends when its fastest
machines finish, not its slowest. The first quorum settles the job, and the
jobbers still holding its other replicas are told to cancel them.

Every state change is a *record* (dealer._records: Drawn, Sent, Returned, ...). Decisions
are made by the live entry points (bored, result, tick, refill), which append records
and apply them; `apply` alone rebuilds the same state from a journal. The
caller takes the new records with `take_records()` and must make them durable
before replying to anyone, and takes settled jobs (Accepted, Failed) in order
with `take_settled()`. Queries (finished, has_work, waiting, ...) never change
the state: a batch learns that its generator is empty from `refill()`, which
draws a job when none is unsettled, and which its caller runs after every turn.

Records also carry what people reading a journal later want and the core does
not need (Drawn.args, Sent.at, Returned.at): optional fields, absent from
journals written before them, that `apply` ignores. Sent.platform is optional
too, but the core needs it (votes are counted per platform): a journal written
before it has every replica on the platform None, which votes as it did then. A Core made
with `verify_jobs=False` replays a journal into jobs rebuilt from those records without
comparing digests: how `python -m dealer results` reads a batch (dealer._history).

The core is one class in parts, each a module: dealer._replicas (a replica's states and
the transition table, what the core hands out), dealer._policy (the settings and the
limits of a job and a result), dealer._quota (standing: quotas, leases, denial, and
their events: alive, deny, tick), dealer._votes (acceptance, failure, placement,
disputes), dealer._blame (whose fault a failure is), dealer._restore (a finished batch
restored from its snapshot), dealer._retry (failed jobs put back: the Retried record).
This module draws and sends (bored), takes results, records, and applies records (the
replay).

The hot path (a job drawn, sent, returned and accepted: docs/benchmarks.md, "Dispatch")
makes a record of each step and applies it with its handler called directly, not
looked up (`_record` does that for the rest), and a job whose one replica at a quorum
of one came back OK is accepted without a tally of its votes (Votes._accept_alone).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

from dealer._blame import Blame
from dealer._locality import NO_FILES, Locality

# the core's names, wherever defined, are dealer._core's too ("X as X": re-exported)
from dealer._policy import JOB_MESSAGE_OVERHEAD as JOB_MESSAGE_OVERHEAD
from dealer._policy import MAX_ALLOWANCE as MAX_ALLOWANCE
from dealer._policy import Policy as Policy
from dealer._policy import files_digest, implausible, job_digest, refusal, unsendable
from dealer._quota import ACTIVE_HORIZON_S as ACTIVE_HORIZON_S
from dealer._quota import LOST as LOST
from dealer._quota import JobberRecord as JobberRecord
from dealer._quota import Standing as Standing
from dealer._quota import Standings
from dealer._records import RECORD_TYPES as RECORD_TYPES
from dealer._records import Checkpointed, Denied, Drawn, Gone, Overdue, Retried, Returned, Sent
from dealer._records import Record as Record
from dealer._replicas import (
    _LATE,
    _TIMED,
    Accepted,
    Assignment,
    CoreError,
    Failed,
    FilesKey,
    _Job,
    _Replica,
)
from dealer._replicas import DETERMINISTIC as DETERMINISTIC
from dealer._replicas import JournalMismatch as JournalMismatch
from dealer._replicas import Rejected as Rejected
from dealer._replicas import ReplicaState as ReplicaState
from dealer._restore import Finished
from dealer._retry import Redraw, Retries
from dealer._saves import Saves
from dealer._votes import MAX_DISPUTES as MAX_DISPUTES
from dealer._votes import MAX_LATE as MAX_LATE
from dealer._votes import Votes
from dealer._votes import _Tally as _Tally
from protocol import ErrorCode, Status
from tasks import InputFile, InputFileError, Job
from tasks._files import guest_files

log = logging.getLogger(__name__)

IMPLAUSIBLE = "implausible"  # the status recorded for a result that failed the checks
DENIED = "denied"  # ... and for a result from a denied identity
# unsendable jobs one live draw goes past before it returns (the next draw goes on): each is
# a record and a failure to hand the task, so one turn stays short
REFUSED_PER_DRAW = 1000
_VALUE = {s: s.value for s in Status}  # (an enum's value is a property: slow per result)
_OK, _ABANDONED = Status.OK.value, Status.ABANDONED.value


class Core(Votes, Standings, Finished, Locality, Saves, Blame, Retries):
    """One batch's scheduling: live events in, records out, `apply` to replay them. Its
    parts: Votes (dealer._votes), Standings (dealer._quota), Finished (dealer._restore),
    Locality (dealer._locality), Saves (dealer._saves), Blame (dealer._blame), Retries
    (dealer._retry)."""

    def __init__(
        self,
        jobs: Iterable[Job],
        policy: Policy,
        tag_prefix: str,
        *,
        verify_jobs: bool = True,
        payload_bytes: int = 0,
        files: Mapping[str, InputFile] | None = None,
        argv: Sequence[str] = (),
        redraw: Redraw | None = None,
    ) -> None:
        """`verify_jobs=False`: replaying, take the jobs `jobs` yields for those the
        journal drew without comparing digests (a reader of the journal, not a dealer).
        `payload_bytes`: the size of the payload a `jobs` message may carry with a job
        (see `unsendable`; 0 for a runtime, never sent in one). `files`: the input files
        every job reads, by guest path (the task's and the payload's:
        tasks._files.shared_files); each job's own are added. `argv`: the arguments the
        payload puts before every job's own (tasks.Payload.argv), counted against the
        wire's caps with them. `redraw`: the task's jobs of given ids, drawn again
        (dealer._retry), for failed jobs put back."""
        if "." in tag_prefix or not tag_prefix:
            raise ValueError("tag_prefix must be non-empty and contain no '.'")
        self.policy = policy
        self._verify_jobs = verify_jobs
        self._payload_bytes = payload_bytes
        self._argv = tuple(argv)
        self._prefix = tag_prefix
        self._source: Iterator[Job] = iter(jobs)
        self._exhausted = False
        self._next_job = 0
        self._next_tag = 0
        self._jobs: dict[int, _Job] = {}  # unsettled jobs
        self._replicas: dict[str, _Replica] = {}  # replicas of unsettled jobs
        self._wanting: dict[int, None] = {}  # unsettled jobs needing replicas, oldest first
        # ... grouped by the files they read (dealer._locality), and those files
        self._groups: dict[FilesKey, dict[int, None]] = {}
        self._readers: dict[str, dict[FilesKey, None]] = {}
        self._shared = dict(files or {})
        self._shared_by_hash = {f.sha256: f for f in self._shared.values()}
        self._shared_digest = files_digest(self._shared)
        self._plain: FilesKey = (frozenset(), sum(f.size for f in self._shared.values()))
        self._held_files: dict[str, list] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries skipped
        self.jobbers: dict[str, JobberRecord] = {}
        self.machines: dict[str, Standing] = {}
        self._open: dict[str, set[str]] = {}  # jobber -> tags of its OUT/OVERDUE replicas
        # platform -> the machines replicas went to on it (to know whether a job held on
        # a platform can still go on there: see _eligible)
        self._platforms: dict[str | None, dict[str, None]] = {}
        self.denied: dict[str, str] = {}  # identity -> why
        self.disputes: deque[dict] = deque(maxlen=MAX_DISPUTES)
        self.disputed = 0  # jobs accepted over a disagreement, and late results that disagreed
        # tag of a replica open when its job settled -> (job id, accepted (output, fuel) or None)
        self._late: OrderedDict[str, tuple[int, tuple[bytes, int] | None]] = OrderedDict()
        self.accepted = 0
        self.failed = 0
        self._records: list[Record] = []
        self._pending_job: Job | None = None  # drawn live, about to be applied
        self._pending_files: dict[str, InputFile] | None = None  # ... and its files
        self._sending = False  # ... and it goes out at once (see _draw)
        self._settled: list[Accepted | Failed] = []
        self._settled_digests: list[str] = []  # the digest of each job in _settled
        self._redraw, self._pending_retry = redraw, None  # dealer._retry's (see there)
        self._failures: dict[int, tuple[str, bool]] = {}  # failed job -> (digest, its own?)
        self.source_error = ""  # what the task's jobs() raised, if it did

    # --- queries -----------------------------------------------------------

    @property
    def drawn(self) -> int:
        return self._next_job

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    @property
    def replicas_out(self) -> int:
        return sum(1 for r in self._replicas.values() if r.state is ReplicaState.OUT)

    def finished(self) -> bool:
        """True once the generator is exhausted and every drawn job is settled. A query:
        it draws nothing (`refill` does), so it stays False for a generator nobody has
        yet found empty."""
        return self._exhausted and not self._jobs

    def replicas(self, job_id: int) -> list[_Replica]:
        """The replicas of the unsettled job `job_id`: the core's own list, which grows
        as replicas are sent and is left as it was when the job settles. To read only."""
        return self._jobs[job_id].replicas

    def has_work(self) -> bool:
        return bool(self._wanting) or (not self._exhausted and len(self._jobs) < self.policy.window)

    def offerable(self, total: int | None = None) -> int:
        """About how many jobs could go out now: those wanting a replica, plus those the
        window could still draw (at most `total - drawn` when the task's total is known).
        Counters only, no pass over the jobs: what a peer's `work_query` is told."""
        room = 0 if self._exhausted else self.policy.window - len(self._jobs)
        if total is not None:
            room = min(room, total - self._next_job)
        return len(self._wanting) + max(0, room)

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, tag = self._deadlines[0]
            r = self._replicas.get(tag)
            if r is not None and r.state in _TIMED and r.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def take_records(self) -> list[Record]:
        out, self._records = self._records, []
        return out

    def refill(self) -> None:
        """Draw a job if none is unsettled and the generator may have more: so that a
        batch whose generator is empty (or ran dry as its last jobs settled) is seen to
        be finished, and a fresh one has its first job drawn before anyone asks. Call it
        once a turn, and after a replay."""
        if not self._jobs and not self._exhausted:
            self._draw()

    def take_settled(self) -> list[Accepted | Failed]:
        out, self._settled = self._settled, []
        self._settled_digests = []
        return out

    # --- live events -------------------------------------------------------

    def bored(
        self,
        jobber: str,
        want: int,
        memory_mb: int,
        now: float,
        holding: Collection[str] | None = None,
        machine: str | None = None,
        platform: str | None = None,
        input_mb: int | None = None,
        files: Collection[str] = (),
    ) -> list[Assignment]:
        """Up to `want` replicas for `jobber` (on `machine`; default: its own), one per job.

        `holding`, when given, is every tag the jobber still has from us: its
        other open replicas were lost (it crashed and came back) and are
        released at once instead of waiting for their deadlines. No more are
        handed out than the identity's and the machine's quotas allow.
        `platform`: the jobber's (None: not said, or a cross-platform task); a job
        goes on on the platform its replicas run on (see _eligible). `input_mb`: the
        most a job's input files may total on it (None: it takes none); `files`: the
        hashes of those it holds, whose jobs it is offered first (dealer._locality).
        """
        machine = jobber if machine is None else machine
        self._seen(jobber, machine, now)
        if holding is not None:
            kept = set(holding)
            for tag in sorted(self._open.get(jobber, set()) - kept):
                self._record(Returned(tag, Status.ABANDONED.value, b"", 0, LOST, now))
        if memory_mb < self.policy.memory_mb or self.is_denied(jobber):
            return []
        # Replicas of jobs already out, that other machines' results wait on, fit in what
        # the jobber holds; new jobs also in its unchecked results (else machines whose
        # results wait on each other's could stall a batch). Either room makes it present.
        again = min(want, self.room(jobber, machine, unchecked=False))
        out: list[Assignment] = []
        if again <= 0:
            return out
        m = self._machine(machine)
        m.present = max(m.present, now)
        allowance = None if input_mb is None else input_mb << 20
        for job_id in self._candidates(allowance, files):
            if len(out) >= again:
                break
            j = self._jobs[job_id]
            if self._eligible(j, jobber, machine, platform, now):
                out.append(self._send(j, jobber, machine, platform, now, allowance))
        want = len(out) + min(want - len(out), self.room(jobber, machine))
        drawn = 0  # jobs whose files this jobber cannot take are drawn, not sent: a few
        while len(out) < want and drawn < want and len(self._jobs) < self.policy.window:
            j = self._draw(sending=True)
            if j is None:
                break
            drawn += 1
            if not (j.group[0] or self._shared) or self._fits(j.group, allowance):
                out.append(self._send(j, jobber, machine, platform, now))
        if len(out) < want and self._exhausted and not self._wanting and self.policy.backups:
            out += self._backups(jobber, machine, platform, want - len(out), now, allowance)
        return out

    def result(
        self,
        jobber: str,
        tag: str,
        status: Status,
        output: bytes,
        fuel: int,
        detail: str,
        now: float,
    ) -> Rejected | None:
        """Take one result; None if it was recorded, else why it changes nothing."""
        r = self._replicas.get(tag)
        if r is None:
            if tag in self._late and self._late_from(jobber, tag, status, output, fuel):
                return Rejected(
                    ErrorCode.SETTLED,
                    f"job of {tag} is already settled, and your output differs from the "
                    "accepted one: flagged",
                )
            if self._issued_here(tag):
                return Rejected(ErrorCode.SETTLED, f"job of {tag} is already settled")
            return Rejected(ErrorCode.UNKNOWN_TAG, f"no replica {tag} was sent out")
        if r.jobber != jobber:
            return Rejected(ErrorCode.UNKNOWN_TAG, f"replica {tag} was not sent to you")
        self._seen(jobber, r.machine, now)
        if r.state not in _LATE:
            return Rejected(ErrorCode.DUPLICATE, f"result for {tag} was already received")
        if type(status) is not Status:
            status = Status(status)
        if self.is_denied(jobber):
            self._record(Returned(tag, DENIED, b"", 0, "the identity is denied", now))
            return Rejected(ErrorCode.DENIED, "this identity is denied by the dealer")
        why = implausible(status, output, fuel, self.policy)
        if why is not None:
            self._record(Returned(tag, IMPLAUSIBLE, b"", 0, f"{status.value}: {why}", now))
            return Rejected(ErrorCode.IMPLAUSIBLE, why)
        rec = Returned(tag, _VALUE[status], output, fuel, detail, now)
        self._apply_returned(rec)  # (what _record does, without looking up the handler)
        self._records.append(rec)
        if status is not Status.ABANDONED:  # it works: a job may wait for it a lease more
            m = self._machine(r.machine)
            if now > m.present:
                m.present = now
        return None

    # --- replay ------------------------------------------------------------

    def apply(self, rec: Record) -> None:
        """Apply one record: live (just decided) or replayed from the journal."""
        if (handler := _APPLY.get(type(rec))) is None:
            raise CoreError(f"unknown record {rec!r}")
        handler(self, rec)

    # --- internals ---------------------------------------------------------

    def _record(self, rec: Record) -> None:
        self.apply(rec)
        self._records.append(rec)

    def _issued_here(self, tag: str) -> bool:
        prefix, _, seq = tag.partition(".")
        try:
            return prefix == self._prefix and 0 <= int(seq, 16) < self._next_tag
        except ValueError:
            return False

    def _draw(self, sending: bool = False) -> _Job | None:
        """The next job that can be sent, drawn and recorded; jobs that never can are
        drawn and failed on the way (at most REFUSED_PER_DRAW of them). None: nothing
        more to draw now. `sending`: a job that reads no file is sent at once (bored), so
        it is not put among the wanting only to be taken out again (`_apply_sent` puts
        it there if it wants more replicas): the state is the replay's."""
        for _ in range(REFUSED_PER_DRAW):
            if self._exhausted:
                return None
            try:
                job = next(self._source)
                if not isinstance(job, Job):
                    raise TypeError(f"jobs() yielded {job!r}, not a tasks.Job")
            except StopIteration:
                self._exhausted = True
                return None
            except Exception as e:  # the task's own bug: no more jobs; those drawn go on
                self._exhausted = True
                self.source_error = f"{type(e).__name__}: {e}"
                log.error(
                    "the task's jobs() raised after %d jobs; drawing no more: %s",
                    self._next_job,
                    self.source_error,
                    exc_info=True,
                )
                return None
            job_id = self._next_job
            files, why = self._files_of(job) if job.files or self._shared else ({}, None)
            why = why or unsendable(job, self._payload_bytes, files, self._argv)
            refused = None if why is None else refusal(job_id, job, why)
            self._pending_job = job
            self._pending_files = files
            self._sending = sending and not files
            stdin = hashlib.sha256(job.stdin).hexdigest()[:16] if job.stdin else None
            digest = job_digest(job, self._shared_digest)
            rec = Drawn(job_id, digest, tuple(job.args), len(job.stdin), stdin, refused)
            self._apply_drawn(rec)  # (what _record does, without looking up the handler)
            self._records.append(rec)
            if refused is None:
                return self._jobs[job_id]
            log.warning("%s", refused)
        return None

    def _apply_drawn(self, rec: Drawn) -> None:
        if rec.job_id != self._next_job:
            raise CoreError(f"journal draws job {rec.job_id}, expected {self._next_job}")
        job, self._pending_job = self._pending_job, None
        files, self._pending_files = self._pending_files, None
        sending, self._sending = self._sending, False
        if job is None:  # replaying: the fresh task must yield the same job
            try:
                job = next(self._source)
            except StopIteration:
                raise JournalMismatch(
                    f"the journal holds job {rec.job_id} but the task yields only {rec.job_id} jobs"
                ) from None
            if not isinstance(job, Job) or (
                self._verify_jobs and job_digest(job, self._shared_digest) != rec.digest
            ):
                raise JournalMismatch(
                    f"job {rec.job_id} of the task differs from the journal's: the task, "
                    "its arguments or its input files changed since the journal was written"
                )
        self._next_job += 1
        if rec.refused is not None:
            files = {}
        elif files is None:  # (drawn live: as _draw found them)
            files, _ = self._files_of(job)
        group = self._files_key(files, [f for _, f in job.files]) if files else NO_FILES
        j = self._jobs[rec.job_id] = _Job(
            rec.job_id, job, digest=rec.digest, files=files, group=group
        )
        if rec.refused is not None:  # it can never be sent: it fails as it is drawn
            self.failed += 1
            self._settle(j, Failed(j.id, j.job, (rec.refused,)))
            return
        if files:
            self._hold_files(j)
        if not sending:  # (else drawn live to be sent at once: see _draw)
            self._want(j)  # (with no replica, what a job needs: see _update_wanting)

    def _files_of(self, job: Job) -> tuple[dict[str, InputFile], str | None]:
        """All the input files `job` reads, by guest path; or why it cannot have them."""
        if not job.files and not self._shared:
            return {}, None
        try:
            return guest_files(self._shared, job.files), None
        except InputFileError as e:
            return {}, str(e)

    def _send(
        self,
        j: _Job,
        jobber: str,
        machine: str,
        platform: str | None,
        now: float,
        allowance: int | None = None,
        backup: bool = False,
    ) -> Assignment:
        """A replica of `j` for `jobber`, from a saved state if one fits (dealer._saves)."""
        tag = f"{self._prefix}.{self._next_tag:x}"
        deadline = now + self.policy.deadline_s
        ck = None if allowance is None else self._resume_of(j, allowance, backup)
        sha = None if ck is None else ck.hash
        rec = Sent(tag, j.id, jobber, deadline, machine, now, platform, sha)
        self._apply_sent(rec, True)  # (what _record does, without looking up the handler)
        self._records.append(rec)
        return Assignment(tag, j.id, j.job, deadline, j.files, ck)

    def _apply_sent(self, rec: Sent, live: bool = False) -> None:
        """`live`: just made by `_send`, whose tag is the next one (not checked again)."""
        j = self._jobs.get(rec.job_id)
        if j is None:
            raise CoreError(f"replica {rec.tag} sent for job {rec.job_id}, which is not unsettled")
        if not live:
            prefix, _, seq = rec.tag.partition(".")
            if prefix != self._prefix or int(seq, 16) != self._next_tag:
                raise CoreError(f"tag {rec.tag} out of sequence (next is {self._next_tag:x})")
        self._next_tag += 1
        r = _Replica(rec.tag, rec.job_id, rec.jobber, rec.deadline, rec.machine, rec.platform)
        r.sent_at = rec.at
        if rec.resume is not None:
            self._started(j, r, rec)
        reps = j.replicas
        reps.append(r)
        on = self._platforms.get(rec.platform)
        if on is None:
            on = self._platforms[rec.platform] = {}
        if rec.machine not in on:
            on[rec.machine] = None
        self._replicas[rec.tag] = r
        tags = self._open.get(rec.jobber)
        if tags is None:
            tags = self._open[rec.jobber] = set()
        tags.add(rec.tag)
        self._jobber(rec.jobber).held += 1
        self._machine(rec.machine).held += 1
        heapq.heappush(self._deadlines, (rec.deadline, rec.tag))
        if len(reps) == 1 and self.policy.redundancy == 1:
            self._unwant(j)  # (_update_wanting's case at redundancy 1, cut short)
        else:
            self._update_wanting(j)

    def _apply_returned(self, rec: Returned) -> None:
        r = self._replica(rec.tag)
        ok = rec.status == _OK
        if ok and r.state is ReplicaState.OUT and self.policy.quorum == 1:
            j = self._jobs[r.job_id]
            if len(j.replicas) == 1:  # the common case at redundancy 1: accepted at once
                self._returned_alone(j, r, rec)
                return
        self._close(r)
        was_overdue = r.state is ReplicaState.OVERDUE
        if rec.status == _ABANDONED:
            r.fire("released")
            r.detail = f"released: {rec.detail}"
            self._spare(r)
            self._evaluate(self._jobs[r.job_id])
            return
        r.fire("returned_ok" if ok else "returned_error")
        me, host = self._jobber(r.jobber), self._machine(r.machine)
        if ok:  # not compared yet: holds room until its job settles (_settle)
            me.unchecked += 1
            host.unchecked += 1
        r.status = rec.status
        if ok or rec.status in DETERMINISTIC:  # both vote (quota is earned in _evaluate)
            # jobs that save: fuel depends on where a replica resumed, outputs alone vote
            r.output, r.used = rec.output, rec.fuel
            r.fuel = 0 if self.policy.checkpoint_bytes else rec.fuel
        if not ok:
            r.detail = f"{rec.status}: {rec.detail}" if rec.detail else rec.status
            self._failed_replica(r, was_overdue)  # whose fault: now, or when judged
        self._evaluate(self._jobs[r.job_id])

    def _replica(self, tag: str) -> _Replica:
        r = self._replicas.get(tag)
        if r is None:
            raise CoreError(f"no open replica {tag}")
        return r


_APPLY = {
    Drawn: Core._apply_drawn,
    Sent: Core._apply_sent,
    Returned: Core._apply_returned,
    Overdue: Core._apply_overdue,
    Gone: Core._apply_gone,
    Denied: Core._apply_denied,
    Checkpointed: Core._apply_checkpointed,
    Retried: Core._apply_retried,
}
