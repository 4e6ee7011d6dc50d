"""The dealer's scheduling core: a pure state machine. No sockets, no SQLite, no clock.

Theory of operation
-------------------
Jobs are drawn lazily from the task's generator, numbered 0, 1, 2, ... in draw
order, and kept in memory only until they are settled, so memory is bounded
by the window of unsettled jobs, not by the size of the batch.

Each job is sent out as *replicas*. Every replica has a tag that is unique
forever within one journal (a random prefix chosen when the journal is made,
then a counter), the jobber it was sent to and an absolute deadline. A
replica's lifecycle is the table REPLICA_TRANSITIONS below; an event the table
does not allow raises CoreError and changes nothing.

Every jobber is an *identity* (its CurveZMQ public key, as the server proved
it) on a *machine* (a group key the server derives from the connection's
source address under the --distinct policy: the host, its subnet, or the
identity itself). Votes count machines, not identities: one machine running
two identities has one vote.

A job needs more replicas while

    sent - errored < redundancy   or   best + live < quorum

where `best` is the number of distinct machines whose OK replicas agree on
one (output, fuel used), and `live` counts replicas still out. It is *accepted* when
`best >= quorum`: the outputs in the winning group are valid and earn their
fuel as credit, other OK outputs are invalid. It *fails* when more than
`max_errors` replicas errored or went overdue, or when `max_replicas` were
sent, none is live and no quorum was reached. An overdue replica counts as an
error but stays open: its late result still counts until the job is settled.
A replica the jobber gives back unstarted or unfinished (Status.ABANDONED, on
shutdown) is *released*: no fault of anyone's, it counts for nothing.

Replicas of one job go to distinct machines: a machine holding a live or OK
replica of a job never gets another. A machine whose replica of a job errored
gets it again only when no other active machine is fresh to it, so a batch on
one machine cannot stall on one transient failure.

Homogeneous redundancy (as BOINC's): every replica carries the *platform* of
the jobber it went to (its CPU architecture, OS, wasmtime version and engine
flags, as the service passes them; None for a jobber that did not say, and for
every jobber of a cross-platform task). Only replicas of one platform vote
together: agreeing machines, deterministic failures and live replicas are
counted per platform, and an OK output of another platform than the winners'
neither wins nor loses. So a job whose replicas run on one platform goes on
there: it is eligible for a machine of another platform only once none of its
replicas that may still vote (live, gone, OK, or a deterministic failure) is on
that machine's platform and no active machine of their platforms is fresh to
it (those machines left the pool: the job moves rather than stall).

Quotas (as BOINC's per-host quotas): an identity, and separately its machine,
may hold at most `allowance` replicas out. Both start at `Policy.quota`, grow
by one for every valid result (in an accepted quorum) and halve for every
error, overdue replica, implausible result or lost vote, so a hoarder or a
stream of fresh names from one machine holds a few replicas at most, and a
good jobber earns its slots.

A result is checked for plausibility before anything else: fuel over the
job's fuel limit, output over its output limit, or a status its output or
fuel contradicts, is recorded as an error ("implausible") and never reaches
the vote. An identity denied (by `deny`, or automatically once it has lost
`Policy.deny_after` votes and more than it won) gets no work and has its
results refused.

Liveness: every word from a jobber (any request) renews its lease. A jobber
holding replicas that is silent for `Policy.lease_s` is taken as gone (a Gone
record): its OUT replicas become GONE, which is neither live nor an error, so
they are sent to others at once; a late result from a GONE replica still
counts until the job is settled, like an overdue one. Deadlines remain, for
jobbers that are alive but too slow.

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

Deterministic failures vote: the sandbox makes every status but time, crash
and abandoned the same on every machine, so when `quorum` machines agree on
such a status with the same (output, fuel), the job fails at once with that
reason instead of being sent out `max_errors + 1` times.

Every state change is a *record* (Drawn, Sent, Returned, Overdue, Gone, Denied). Decisions
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
before it has every replica on the platform None, which votes as it did then. A Core made with
`verify_jobs=False` replays a journal into jobs rebuilt from those records
without comparing digests: how `python -m dealer results` reads a batch
without its task (dealer._history).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import logging
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field, fields

import msgpack

from dealer._records import Denied, Drawn, Gone, Overdue, Record, Returned, Sent
from protocol import MAX_MESSAGE_BYTES, MAX_STR, ErrorCode, Status
from protocol._wire import MAX_ARGS, MAX_STDIN_BYTES
from tasks import Job

log = logging.getLogger(__name__)

# An identity or machine not heard from for this long that holds nothing and earned
# nothing is forgotten (evict; 5 minutes: several request rounds of a backing-off jobber).
ACTIVE_HORIZON_S = 300.0
LOST = "lost: the jobber no longer holds it"
IMPLAUSIBLE = "implausible"  # the status recorded for a result that failed the checks
DENIED = "denied"  # ... and for a result from a denied identity
MAX_ALLOWANCE = 4096  # open replicas one identity or machine can ever earn
MAX_DISPUTES = 100  # disagreements kept for status (the journal has them all)
MAX_LATE = 16384  # tags of settled jobs whose late results are still checked
NEVER = float("-inf")  # a machine that never asked for work it could take
# unsendable jobs one live draw goes past before it returns (the next draw goes on): each is
# a record and a failure to hand the task, so one turn stays short
REFUSED_PER_DRAW = 1000
# what a `jobs` message holding one job adds to its stdin, arguments and the payload: the
# tag, the limits, the deadline, field names, the payload's signature with its rotation
# chain (under 2 KB); generous, so that a job passing here always encodes under the cap
JOB_MESSAGE_OVERHEAD = 64 * 1024


class CoreError(Exception):
    """An event the lifecycle does not allow, or a journal that does not fit the task."""


class JournalMismatch(CoreError):
    """The task's jobs differ from those the journal recorded."""


class ReplicaState(str, enum.Enum):
    OUT = "out"  # sent, waiting for its result
    OK = "ok"  # returned with Status.OK: has an output that can vote
    ERROR = "error"  # returned with any other status
    OVERDUE = "overdue"  # deadline passed; a late result may still arrive
    RELEASED = "released"  # the jobber gave it back unfinished (shutting down); no fault
    GONE = "gone"  # the jobber went silent past its lease; a late result may still arrive


REPLICA_TRANSITIONS: dict[tuple[ReplicaState, str], ReplicaState] = {
    (ReplicaState.OUT, "returned_ok"): ReplicaState.OK,
    (ReplicaState.OUT, "returned_error"): ReplicaState.ERROR,
    (ReplicaState.OUT, "deadline"): ReplicaState.OVERDUE,
    (ReplicaState.OVERDUE, "returned_ok"): ReplicaState.OK,
    (ReplicaState.OVERDUE, "returned_error"): ReplicaState.ERROR,
    (ReplicaState.OUT, "released"): ReplicaState.RELEASED,
    (ReplicaState.OVERDUE, "released"): ReplicaState.RELEASED,
    (ReplicaState.OUT, "silent"): ReplicaState.GONE,
    (ReplicaState.GONE, "returned_ok"): ReplicaState.OK,
    (ReplicaState.GONE, "returned_error"): ReplicaState.ERROR,
    (ReplicaState.GONE, "released"): ReplicaState.RELEASED,
    (ReplicaState.GONE, "deadline"): ReplicaState.OVERDUE,
}
_LATE = (ReplicaState.OUT, ReplicaState.OVERDUE, ReplicaState.GONE)  # may still return
_TIMED = (ReplicaState.OUT, ReplicaState.GONE)  # become OVERDUE at their deadline
# statuses every honest machine of one platform gives alike for the same job (sandbox: no
# clocks, no randomness, one engine); time, crash and abandoned depend on the machine
DETERMINISTIC = frozenset(
    s.value
    for s in (
        Status.EXIT,
        Status.FUEL,
        Status.MEMORY,
        Status.OUTPUT,
        Status.STACK,
        Status.TRAP,
        Status.INVALID,
        Status.IMPORT,
    )
)
_ERRORED = (ReplicaState.ERROR, ReplicaState.OVERDUE)
# replicas whose result is in, or may still come, and may vote: they keep their job on
# their platform (with ERROR replicas of a deterministic status)
PLATFORMS_LISTED = 8  # platform names status lists (names come from jobbers: bounded)
_STAYING = (ReplicaState.OUT, ReplicaState.OK, ReplicaState.OVERDUE, ReplicaState.GONE)


# --- what the core hands out --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    tag: str
    job_id: int
    job: Job
    deadline: float


@dataclass(frozen=True, slots=True)
class Accepted:
    job_id: int
    job: Job
    output: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    job_id: int
    job: Job
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class Policy:
    redundancy: int = 1
    quorum: int = 1
    max_errors: int = 3
    max_replicas: int = 0  # 0: 2 * redundancy + max_errors
    deadline_s: float = 180.0
    memory_mb: int = 0  # a jobber allowing less than this gets no jobs
    window: int = 10_000  # unsettled jobs held at once
    fuel_limit: int = (
        0  # the jobs' fuel limit: a result claiming more is implausible (0: unchecked)
    )
    output_bytes: int = -1  # the jobs' output limit in bytes (-1: unchecked)
    quota: int = 4  # open replicas a new identity (and a new machine) may hold
    deny_after: int = 3  # lost votes (more than won) that deny an identity; 0: never
    # silence after which a jobber holding work is taken as gone: four of the
    # jobber's 5-second `alive` intervals, so one lost message is forgiven
    lease_s: float = 20.0
    backups: int = 1  # extra live replicas a job may get at the tail of a batch; 0: none

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= self.redundancy:
            raise ValueError(f"quorum {self.quorum} must be in 1..redundancy ({self.redundancy})")
        if self.max_errors < 0 or self.deadline_s <= 0 or self.window < 1:
            raise ValueError("max_errors >= 0, deadline_s > 0 and window >= 1 are required")
        if self.lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if self.backups < 0:
            raise ValueError("backups must be >= 0")
        if not 1 <= self.quota <= MAX_ALLOWANCE or self.deny_after < 0:
            raise ValueError(f"quota must be in 1..{MAX_ALLOWANCE} and deny_after >= 0")
        if self.max_replicas == 0:
            object.__setattr__(self, "max_replicas", 2 * self.redundancy + self.max_errors)
        if self.max_replicas < self.redundancy:
            raise ValueError("max_replicas must be at least redundancy")


@dataclass(slots=True)
class Standing:
    """How far the dealer trusts one identity or one machine: what it may hold open."""

    allowance: int
    held: int = 0  # replicas OUT (sent, not yet returned nor overdue)
    last_seen: float = 0.0
    # OK replicas of jobs not yet settled: returned, not yet compared with anyone, so they
    # count against the allowance as held ones do (unchecked work earns no room)
    unchecked: int = 0
    # when this machine last asked for work it could take (want > 0, within its quota) or
    # returned a result: a job waits for a machine only while it is present (see _present)
    present: float = NEVER

    def good(self) -> None:
        self.allowance = min(MAX_ALLOWANCE, self.allowance + 1)

    def bad(self) -> None:
        self.allowance = max(1, self.allowance // 2)


@dataclass(slots=True)
class JobberRecord(Standing):
    """An identity: its standing, and what it did."""

    allowance: int = 0
    valid: int = 0  # outputs in an accepted quorum
    invalid: int = 0  # OK outputs that lost the vote
    errors: int = 0  # replicas that errored, went overdue or were implausible
    credit: int = 0  # fuel of valid outputs
    machine: str = ""  # the machine it last asked from
    gone: bool = False  # taken as gone (silent past its lease) and not heard from since


@dataclass(slots=True)
class _Replica:
    tag: str
    job_id: int
    jobber: str
    deadline: float
    machine: str
    platform: str | None = None  # votes only with replicas of the same platform
    state: ReplicaState = ReplicaState.OUT
    status: str = ""  # as returned
    output: bytes = b""
    fuel: int = 0
    detail: str = ""
    won: bool = False  # in the group of machines whose agreement settled its job

    def fire(self, event: str) -> None:
        try:
            self.state = REPLICA_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise CoreError(
                f"replica {self.tag}: {event} not allowed in state {self.state.value}"
            ) from None


@dataclass(slots=True)
class _Job:
    id: int
    job: Job
    replicas: list[_Replica] = field(default_factory=list)
    digest: str = ""  # job_digest(job), as its Drawn record says


@dataclass(frozen=True, slots=True)
class _Tally:
    """A job's replicas, counted: what acceptance, failure and reissue are decided on.

    Votes are counted per platform (replicas of two platforms never agree), so a
    group's key starts with its platform."""

    best_key: tuple[bytes, int]  # the (output, fuel) most machines of one platform agree on
    best: int  # how many distinct machines agree on it
    best_platform: str | None  # the platform of those machines
    outputs: int  # distinct (platform, output, fuel) among OK replicas
    errors: int  # ERROR or OVERDUE
    live: int  # still OUT
    sent: int  # all but RELEASED and GONE
    fail_key: tuple[str, bytes, int]  # the deterministic failure most machines agree on
    fail_best: int  # how many distinct machines (of one platform) agree on it
    fail_platform: str | None  # the platform of those machines
    # the most a platform can reach without another replica: its largest agreeing group
    # plus its live replicas (with one platform: best + live)
    reach: int

    @classmethod
    def of(cls, j: _Job) -> _Tally:
        # one pass, no Counter: this runs several times for every job (the hot path)
        voters: dict[tuple[str | None, bytes, int], set[str]] = {}
        failing: dict[tuple[str | None, str, bytes, int], set[str]] = {}
        live_on: dict[str | None, int] = {}
        errors = live = uncounted = 0
        for r in j.replicas:
            state = r.state
            if state is ReplicaState.OUT:
                live += 1
                live_on[r.platform] = live_on.get(r.platform, 0) + 1
            elif state is ReplicaState.OK:
                voters.setdefault((r.platform, r.output, r.fuel), set()).add(r.machine)
            elif state is ReplicaState.ERROR:
                errors += 1
                if r.status in DETERMINISTIC:
                    key = (r.platform, r.status, r.output, r.fuel)
                    failing.setdefault(key, set()).add(r.machine)
            elif state is ReplicaState.OVERDUE:
                errors += 1
            else:  # RELEASED, GONE
                uncounted += 1
        if voters:
            top, best = _most(voters, (None, b"", 0))
            platform, key = top[0], top[1:]
            best_on: dict[str | None, int] = {}
            for (on, _, _), machines in voters.items():
                if len(machines) > best_on.get(on, 0):
                    best_on[on] = len(machines)
            for on, n in live_on.items():
                best_on[on] = best_on.get(on, 0) + n
            reach = max(best_on.values())
        else:
            platform, key, best = None, (b"", 0), 0
            reach = max(live_on.values()) if live_on else 0
        if failing:
            top, fail_best = _most(failing, (None, "", b"", 0))
            fail_platform, fail_key = top[0], top[1:]
        else:
            fail_platform, fail_key, fail_best = None, ("", b"", 0), 0
        return cls(
            key,
            best,
            platform,
            len(voters),
            errors,
            live,
            len(j.replicas) - uncounted,
            fail_key,
            fail_best,
            fail_platform,
            reach,
        )


def _most(groups: dict, empty):
    """The key of the largest group, and its size; the first reached wins a tie."""
    best_key, best = empty, 0
    for key, machines in groups.items():
        if len(machines) > best:
            best_key, best = key, len(machines)
    return best_key, best


def unsendable(job: Job, payload_bytes: int = 0) -> str | None:
    """Why `job` can never reach a jobber, or None: its stdin, an argument or their
    count over the wire's caps (docs/protocol.md, `job_spec`), an argument that is not
    text UTF-8 can carry, or a `jobs` message holding it and the payload
    (`payload_bytes`, sent with it to a jobber that lacks it) over the message cap.
    The same job gives the same answer every time: a pure function of its bytes."""
    where = "the wire's cap"
    if len(job.stdin) > MAX_STDIN_BYTES:
        return f"stdin of {len(job.stdin):,} bytes, over {where} of {MAX_STDIN_BYTES:,} bytes"
    if len(job.args) > MAX_ARGS:
        return f"{len(job.args):,} arguments, over {where} of {MAX_ARGS:,}"
    args_bytes = 0
    for i, arg in enumerate(job.args):
        if len(arg) > MAX_STR:
            return f"argument {i} of {len(arg):,} characters, over {where} of {MAX_STR:,}"
        try:
            args_bytes += len(arg.encode()) + 5  # and its msgpack header
        except UnicodeEncodeError as e:
            return f"argument {i} is not valid Unicode text ({e.reason} at {e.start})"
    size = payload_bytes + len(job.stdin) + args_bytes + JOB_MESSAGE_OVERHEAD
    if size > MAX_MESSAGE_BYTES:
        return (
            f"a jobs message of about {size:,} bytes with the payload, over {where} of "
            f"{MAX_MESSAGE_BYTES:,} bytes (stdin {len(job.stdin):,}, arguments "
            f"{args_bytes:,}, payload {payload_bytes:,})"
        )
    return None


def refusal(job_id: int, job: Job, why: str) -> str:
    """The failure recorded for an unsendable job: names the job and the limit."""
    shown = " ".join(job.args[:8])[:200] + (" ..." if len(job.args) > 8 else "")
    return (
        f"job {job_id} (args {shown or '(none)'}) can never be sent: {why}; "
        "see 'Limits of one job' in docs/writing-tasks.md"
    )


def job_digest(job: Job) -> str:
    return hashlib.sha256(msgpack.packb([list(job.args), job.stdin])).hexdigest()


def implausible(status: Status, output: bytes, fuel: int, policy: Policy) -> str | None:
    """Why no honest sandbox could have given this result under the policy's limits, or None."""
    if policy.fuel_limit and fuel > policy.fuel_limit:
        return f"fuel {fuel} exceeds the job's fuel limit of {policy.fuel_limit}"
    if policy.output_bytes >= 0 and len(output) > policy.output_bytes:
        return f"{len(output)} bytes of output exceed the job's limit of {policy.output_bytes}"
    if status is Status.OUTPUT and policy.output_bytes >= 0 and len(output) != policy.output_bytes:
        return f"status output with {len(output)} bytes; the limit is {policy.output_bytes}"
    if status is Status.FUEL and policy.fuel_limit and fuel != policy.fuel_limit:
        return f"status fuel with {fuel} fuel used; the limit is {policy.fuel_limit}"
    if status in (Status.INVALID, Status.IMPORT, Status.ABANDONED) and (output or fuel):
        return f"status {status.value} with output or fuel: the payload never ran"
    return None


class Core:
    def __init__(
        self,
        jobs: Iterable[Job],
        policy: Policy,
        tag_prefix: str,
        *,
        verify_jobs: bool = True,
        payload_bytes: int = 0,
    ) -> None:
        """`verify_jobs=False`: replaying, take the jobs `jobs` yields for those the
        journal drew without comparing their digests (the journal is the source of
        truth: a reader that rebuilds jobs from Drawn records, not a dealer).
        `payload_bytes`: the size of the payload a `jobs` message may carry with a job
        (see `unsendable`)."""
        if "." in tag_prefix or not tag_prefix:
            raise ValueError("tag_prefix must be non-empty and contain no '.'")
        self.policy = policy
        self._verify_jobs = verify_jobs
        self._payload_bytes = payload_bytes
        self._prefix = tag_prefix
        self._source: Iterator[Job] = iter(jobs)
        self._exhausted = False
        self._next_job = 0
        self._next_tag = 0
        self._jobs: dict[int, _Job] = {}  # unsettled jobs
        self._replicas: dict[str, _Replica] = {}  # replicas of unsettled jobs
        self._wanting: dict[int, None] = {}  # unsettled jobs needing replicas, oldest first
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
        self._settled: list[Accepted | Failed] = []
        self._settled_digests: list[str] = []  # the digest of each job in _settled
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

    def is_denied(self, jobber: str) -> bool:
        """Denied by hand, or by losing `deny_after` votes and more than it won."""
        if jobber in self.denied:
            return True
        rec = self.jobbers.get(jobber)
        limit = self.policy.deny_after
        return bool(limit and rec and rec.invalid >= limit and rec.invalid > rec.valid)

    def room(self, jobber: str, machine: str, unchecked: bool = True) -> int:
        """How many more replicas the identity `jobber` on `machine` may hold right now:
        with `unchecked`, counting its OK results not yet compared as held (room for new
        jobs); without, only what it holds (room for replicas other machines wait on)."""
        me = self.jobbers.get(jobber)
        host = self.machines.get(machine)
        mine = self.policy.quota if me is None else me.allowance - me.held
        theirs = self.policy.quota if host is None else host.allowance - host.held
        if unchecked:
            mine -= 0 if me is None else me.unchecked
            theirs -= 0 if host is None else host.unchecked
        return max(0, min(mine, theirs))

    def waiting(self, now: float) -> list[str]:
        """Why unsettled jobs wait, in words for people (status and the progress line)."""
        p = self.policy
        out: list[str] = []
        if self._wanting:
            active = [m for m, st in self.machines.items() if self._present(st, now)]
            n = len(self._wanting)
            out.append(
                f"{n} job{'s' if n != 1 else ''} need{'s' if n == 1 else ''} a replica on "
                f"another machine; {len(active)} machine{'s' if len(active) != 1 else ''} active"
            )
            if len(self._platforms) > 1:
                listed = sorted(str(k) for k in self._platforms)
                names = ", ".join(listed[:PLATFORMS_LISTED])
                if len(listed) > PLATFORMS_LISTED:
                    names += ", ..."
                out.append(
                    f"replicas of a job go to machines of one platform; "
                    f"{len(self._platforms)} platforms among them: {names}"
                )
        quiet = now - p.lease_s / 2
        for name, rec in self.jobbers.items():
            if rec.held and rec.last_seen < quiet:
                out.append(
                    f"{rec.held} job{'s' if rec.held != 1 else ''} out to {name[:12]}, "
                    f"silent for {now - rec.last_seen:.0f} s"
                )
            if len(out) >= 10:
                break
        return out

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

    def peek_settled_rows(self) -> list[tuple[int, str, str, bytes]]:
        """The settled jobs not taken yet, as the journal keeps them with the turn's
        records: (job id, digest, "accepted" or "failed", output or msgpack of the
        reasons), the form restore() takes back."""
        return [
            (s.job_id, digest, "accepted", s.output)
            if isinstance(s, Accepted)
            else (s.job_id, digest, "failed", msgpack.packb(list(s.reasons)))
            for s, digest in zip(self._settled, self._settled_digests, strict=True)
        ]

    # --- a finished batch, restored without replaying its records ----------------------

    def snapshot(self) -> dict:
        """What a finished batch leaves besides its outputs: counts, tags used, and every
        identity's and machine's record (for status). Maps keyed by field name."""
        return {
            "drawn": self._next_job,
            "next_tag": self._next_tag,
            "accepted": self.accepted,
            "failed": self.failed,
            "disputed": self.disputed,
            "disputes": list(self.disputes),
            "denied": dict(self.denied),
            "jobbers": {k: _fields_of(r) for k, r in self.jobbers.items()},
            "machines": {k: _fields_of(m) for k, m in self.machines.items()},
        }

    def restore(self, snap: dict, settled: Iterable[tuple[int, str, str, bytes]]) -> None:
        """Become the core of the finished batch `snap` describes: its jobs are drawn again
        from the task (each checked against the digest the journal keeps) and settled as
        `settled` says, (job id, digest, "accepted" or "failed", output or reasons) in the
        order they settled, ready for take_settled(). JournalMismatch if the task's jobs
        are not the journal's."""
        if self._next_job or self._jobs:
            raise CoreError("restore() is for a fresh core")
        drawn: dict[int, Job] = {}
        for job_id, digest, state, body in settled:
            while self._next_job <= job_id:
                try:
                    job = next(self._source)
                except StopIteration:
                    raise JournalMismatch(
                        f"the journal holds job {job_id} but the task yields only "
                        f"{self._next_job} jobs"
                    ) from None
                drawn[self._next_job] = job
                self._next_job += 1
            job = drawn.pop(job_id, None)
            if job is None or not isinstance(job, Job) or job_digest(job) != digest:
                raise JournalMismatch(
                    f"job {job_id} of the task differs from the journal's: "
                    "the task or its arguments changed since the journal was written"
                )
            if state == "accepted":
                self._settled.append(Accepted(job_id, job, body))
                self._settled_digests.append(digest)
            else:
                self._settled.append(Failed(job_id, job, tuple(msgpack.unpackb(body))))
                self._settled_digests.append(digest)
        if drawn or self._next_job != snap["drawn"]:
            raise JournalMismatch("the journal's finished batch does not match the task's jobs")
        if next(self._source, None) is not None:
            raise JournalMismatch(
                f"the task yields more than the {self._next_job} jobs of the journal's "
                "finished batch: the task or its arguments changed"
            )
        self._exhausted = True
        self._next_tag = snap["next_tag"]
        self.accepted, self.failed = snap["accepted"], snap["failed"]
        self.disputed = snap["disputed"]
        self.disputes.extend(snap["disputes"])
        self.denied.update(snap["denied"])
        self.jobbers = {k: JobberRecord(**v) for k, v in snap["jobbers"].items()}
        self.machines = {k: Standing(**v) for k, v in snap["machines"].items()}

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
    ) -> list[Assignment]:
        """Up to `want` replicas for `jobber` (on `machine`; default: its own), one per job.

        `holding`, when given, is every tag the jobber still has from us: its
        other open replicas were lost (it crashed and came back) and are
        released at once instead of waiting for their deadlines. No more are
        handed out than the identity's and the machine's quotas allow.
        `platform`: the jobber's (None: not said, or a cross-platform task); a job
        goes on on the platform its replicas run on (see _eligible).
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
        for job_id in list(self._wanting):
            if len(out) >= again:
                break
            j = self._jobs[job_id]
            if self._eligible(j, jobber, machine, platform, now):
                out.append(self._send(j, jobber, machine, platform, now))
        want = len(out) + min(want - len(out), self.room(jobber, machine))
        while len(out) < want and len(self._jobs) < self.policy.window:
            j = self._draw()
            if j is None:
                break
            out.append(self._send(j, jobber, machine, platform, now))
        if len(out) < want and self._exhausted and not self._wanting and self.policy.backups:
            out += self._backups(jobber, machine, platform, want - len(out), now)
        return out

    def _backups(
        self, jobber: str, machine: str, platform: str | None, want: int, now: float
    ) -> list[Assignment]:
        """The tail of a batch: nothing left to draw and nothing wanting, so idle jobbers
        get an extra replica of the jobs out longest (MapReduce's backup tasks). The
        first quorum settles the job; the others' replicas are then cancelled."""
        p = self.policy
        oldest = sorted(
            (min(r.deadline for r in j.replicas if r.state is ReplicaState.OUT), j.id)
            for j in self._jobs.values()
            if any(r.state is ReplicaState.OUT for r in j.replicas)
        )
        out: list[Assignment] = []
        for _, job_id in oldest:
            if len(out) >= want:
                break
            j = self._jobs[job_id]
            t = _Tally.of(j)
            if t.reach >= p.quorum + p.backups or t.sent >= p.max_replicas:
                continue
            if self._eligible(j, jobber, machine, platform, now):
                out.append(self._send(j, jobber, machine, platform, now))
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
        status = Status(status)
        if self.is_denied(jobber):
            self._record(Returned(tag, DENIED, b"", 0, "the identity is denied", now))
            return Rejected(ErrorCode.DENIED, "this identity is denied by the dealer")
        why = implausible(status, output, fuel, self.policy)
        if why is not None:
            self._record(Returned(tag, IMPLAUSIBLE, b"", 0, f"{status.value}: {why}", now))
            return Rejected(ErrorCode.IMPLAUSIBLE, why)
        self._record(Returned(tag, status.value, output, fuel, detail, now))
        if status is not Status.ABANDONED:  # it works: a job may wait for it a lease more
            m = self._machine(r.machine)
            m.present = max(m.present, now)
        return None

    def alive(
        self,
        jobber: str,
        now: float,
        holding: Collection[str] | None = None,
        machine: str | None = None,
    ) -> list[str]:
        """The jobber says it is alive (renewing its lease) and, maybe, what it holds.

        Returns the held tags it should drop: replicas of jobs already settled,
        which can no longer change anything. `machine`: where it speaks from (default:
        where it last asked, else its own). Being alive is not being present: no job
        waits for a machine that only says it is alive (see _present).
        """
        if machine is None:
            known = self.jobbers.get(jobber)
            machine = known.machine if known else jobber
        self._seen(jobber, machine, now)
        if holding is None:
            return []
        for tag in sorted(self._open.get(jobber, set()) - set(holding)):
            self._record(Returned(tag, Status.ABANDONED.value, b"", 0, LOST, now))
        return self.cancellable(holding)

    def cancellable(self, holding: Collection[str]) -> list[str]:
        """Tags among `holding` whose jobs are settled: running them is wasted work."""
        out = [t for t in holding if t not in self._replicas and self._issued_here(t)]
        for tag in out:
            self._late.pop(tag, None)  # its holder is told: nothing more to wait for
        return out

    @property
    def late(self) -> int:
        """Replicas that were out when their jobs settled and have not been heard of since."""
        return len(self._late)

    def resume(self, now: float) -> None:
        """After a replay: every jobber holding work gets a fresh lease from `now`, and its
        machine counts as present from `now` (presence is not journaled: without this a
        restarted dealer would wait for no machine, and move jobs off their platform)."""
        for rec in self.jobbers.values():
            if rec.held:
                rec.last_seen = max(rec.last_seen, now)
        for m in self.machines.values():
            if m.held or m.unchecked:
                m.present = max(m.present, now)

    def deny(self, jobber: str, reason: str, now: float | None = None) -> None:
        """Ban an identity: no more work, results refused, its open replicas sent elsewhere."""
        if jobber in self.denied:
            return
        self._record(Denied(jobber, reason))
        for tag in sorted(self._open.get(jobber, set())):
            self._record(Returned(tag, Status.ABANDONED.value, b"", 0, f"denied: {reason}", now))

    def tick(self, now: float) -> None:
        """Take jobbers silent past their lease as gone; mark late replicas overdue."""
        horizon = now - self.policy.lease_s
        for name in [n for n, r in self.jobbers.items() if r.held and r.last_seen < horizon]:
            log.info(
                "jobber %s: silent for %.0f s, taken as gone",
                name,
                now - self.jobbers[name].last_seen,
            )
            self._record(Gone(name))
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, tag = heapq.heappop(self._deadlines)
            r = self._replicas.get(tag)
            if r is not None and r.state in _TIMED and r.deadline == deadline:
                self._record(Overdue(tag))

    def evict(self, now: float, idle_s: float = ACTIVE_HORIZON_S) -> int:
        """Forget identities and machines idle for `idle_s` that hold nothing and earned nothing.

        Memory then grows with the jobbers that did work, not with every name
        that ever asked. Returns how many identities were forgotten.
        """
        horizon = now - idle_s
        gone = [
            name
            for name, rec in self.jobbers.items()
            if rec.last_seen < horizon
            and rec.held == 0
            and rec.unchecked == 0
            and not (rec.valid or rec.invalid or rec.credit)
            and name not in self.denied
        ]
        for name in gone:
            del self.jobbers[name]
            self._open.pop(name, None)
        idle = [
            m
            for m, s in self.machines.items()
            if s.last_seen < horizon and s.held == 0 and s.unchecked == 0
        ]
        for m in idle:
            del self.machines[m]
            for on in self._platforms.values():
                on.pop(m, None)
        for platform in [k for k, on in self._platforms.items() if not on]:
            del self._platforms[platform]  # no machine left on it: forgotten, not piled up
        return len(gone)

    # --- replay ------------------------------------------------------------

    def apply(self, rec: Record) -> None:
        """Apply one record: live (just decided) or replayed from the journal."""
        handler = _APPLY.get(type(rec))
        if handler is None:
            raise CoreError(f"unknown record {rec!r}")
        handler(self, rec)

    def _apply_denied(self, rec: Denied) -> None:
        self.denied[rec.jobber] = rec.reason

    # --- internals ---------------------------------------------------------

    def _record(self, rec: Record) -> None:
        self.apply(rec)
        self._records.append(rec)

    def _jobber(self, jobber: str) -> JobberRecord:
        rec = self.jobbers.get(jobber)
        if rec is None:
            rec = self.jobbers[jobber] = JobberRecord(allowance=self.policy.quota)
        return rec

    def _machine(self, machine: str) -> Standing:
        m = self.machines.get(machine)
        if m is None:
            m = self.machines[machine] = Standing(self.policy.quota)
        return m

    def _seen(self, jobber: str, machine: str, now: float) -> JobberRecord:
        rec = self._jobber(jobber)
        rec.last_seen = max(rec.last_seen, now)
        rec.machine = machine
        rec.gone = False
        m = self._machine(machine)
        m.last_seen = max(m.last_seen, now)
        return rec

    def _issued_here(self, tag: str) -> bool:
        prefix, _, seq = tag.partition(".")
        try:
            return prefix == self._prefix and 0 <= int(seq, 16) < self._next_tag
        except ValueError:
            return False

    def _late_from(self, jobber: str, tag: str, status: Status, output: bytes, fuel: int) -> bool:
        """A result for a replica that was open when its job settled: True if it disagrees."""
        job_id, accepted = self._late.pop(tag)
        if status is not Status.OK or accepted is None or (output, fuel) == accepted:
            return False
        self.disputed += 1
        self.disputes.append(
            {
                "job": job_id,
                "late": True,
                "groups": [
                    {"output": _digest(accepted), "fuel": accepted[1], "won": True},
                    {
                        "output": _digest((output, fuel)),
                        "fuel": fuel,
                        "won": False,
                        "jobbers": [jobber],
                    },
                ],
            }
        )
        log.warning(
            "job %d: a late result from %s disagrees with the accepted output", job_id, jobber
        )
        return True

    def _draw(self) -> _Job | None:
        """The next job that can be sent, drawn and recorded; jobs that never can are
        drawn and failed on the way (at most REFUSED_PER_DRAW of them). None: nothing
        more to draw now."""
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
            why = unsendable(job, self._payload_bytes)
            refused = None if why is None else refusal(job_id, job, why)
            self._pending_job = job
            stdin = hashlib.sha256(job.stdin).hexdigest()[:16] if job.stdin else None
            digest = job_digest(job)
            self._record(Drawn(job_id, digest, tuple(job.args), len(job.stdin), stdin, refused))
            if refused is None:
                return self._jobs[job_id]
            log.warning("%s", refused)
        return None

    def _apply_drawn(self, rec: Drawn) -> None:
        if rec.job_id != self._next_job:
            raise CoreError(f"journal draws job {rec.job_id}, expected {self._next_job}")
        job, self._pending_job = self._pending_job, None
        if job is None:  # replaying: the fresh task must yield the same job
            try:
                job = next(self._source)
            except StopIteration:
                raise JournalMismatch(
                    f"the journal holds job {rec.job_id} but the task yields only {rec.job_id} jobs"
                ) from None
            if not isinstance(job, Job) or (self._verify_jobs and job_digest(job) != rec.digest):
                raise JournalMismatch(
                    f"job {rec.job_id} of the task differs from the journal's: "
                    "the task or its arguments changed since the journal was written"
                )
        self._next_job += 1
        j = self._jobs[rec.job_id] = _Job(rec.job_id, job, digest=rec.digest)
        if rec.refused is not None:  # it can never be sent: it fails as it is drawn
            self.failed += 1
            self._settle(j, Failed(j.id, j.job, (rec.refused,)))
            return
        self._update_wanting(j)

    def _send(
        self, j: _Job, jobber: str, machine: str, platform: str | None, now: float
    ) -> Assignment:
        tag = f"{self._prefix}.{self._next_tag:x}"
        deadline = now + self.policy.deadline_s
        self._record(Sent(tag, j.id, jobber, deadline, machine, now, platform))
        return Assignment(tag, j.id, j.job, deadline)

    def _apply_sent(self, rec: Sent) -> None:
        j = self._jobs.get(rec.job_id)
        if j is None:
            raise CoreError(f"replica {rec.tag} sent for job {rec.job_id}, which is not unsettled")
        prefix, _, seq = rec.tag.partition(".")
        if prefix != self._prefix or int(seq, 16) != self._next_tag:
            raise CoreError(f"tag {rec.tag} out of sequence (next is {self._next_tag:x})")
        self._next_tag += 1
        r = _Replica(rec.tag, rec.job_id, rec.jobber, rec.deadline, rec.machine, rec.platform)
        j.replicas.append(r)
        on = self._platforms.get(rec.platform)
        if on is None:
            on = self._platforms[rec.platform] = {}
        if rec.machine not in on:
            on[rec.machine] = None
        self._replicas[rec.tag] = r
        self._open.setdefault(rec.jobber, set()).add(rec.tag)
        self._jobber(rec.jobber).held += 1
        self._machine(rec.machine).held += 1
        heapq.heappush(self._deadlines, (rec.deadline, rec.tag))
        self._update_wanting(j)

    def _unhold(self, r: _Replica) -> None:
        """Call before `r` leaves OUT: quotas count replicas still running, not overdue ones."""
        if r.state is ReplicaState.OUT:
            self._jobber(r.jobber).held -= 1
            self._machine(r.machine).held -= 1

    def _close(self, r: _Replica) -> None:
        """`r` is no longer open (returned, released or settled)."""
        self._unhold(r)
        self._open.get(r.jobber, set()).discard(r.tag)

    def _apply_returned(self, rec: Returned) -> None:
        r = self._replica(rec.tag)
        self._close(r)
        ok = rec.status == Status.OK.value
        was_overdue = r.state is ReplicaState.OVERDUE
        if rec.status == Status.ABANDONED.value:
            r.fire("released")
            r.detail = f"released: {rec.detail}"
            self._evaluate(self._jobs[r.job_id])
            return
        r.fire("returned_ok" if ok else "returned_error")
        me, host = self._jobber(r.jobber), self._machine(r.machine)
        if ok:  # not compared yet: holds room until its job settles (_settle)
            me.unchecked += 1
            host.unchecked += 1
        r.status = rec.status
        if ok or rec.status in DETERMINISTIC:  # both vote (quota is earned in _evaluate)
            r.output, r.fuel = rec.output, rec.fuel
        if not ok:
            r.detail = f"{rec.status}: {rec.detail}" if rec.detail else rec.status
            if not was_overdue:  # an overdue replica was counted already
                me.errors += 1
                me.bad()
                host.bad()
        self._evaluate(self._jobs[r.job_id])

    def _apply_overdue(self, rec: Overdue) -> None:
        r = self._replica(rec.tag)
        self._unhold(r)
        r.fire("deadline")
        r.detail = "overdue: no result by the deadline"
        me = self._jobber(r.jobber)
        me.errors += 1
        me.bad()
        self._machine(r.machine).bad()
        self._evaluate(self._jobs[r.job_id])

    def _apply_gone(self, rec: Gone) -> None:
        me = self._jobber(rec.jobber)
        me.gone = True
        touched: dict[int, _Job] = {}
        for tag in sorted(self._open.get(rec.jobber, set())):
            r = self._replicas[tag]
            if r.state is ReplicaState.OUT:
                self._unhold(r)
                r.fire("silent")
                r.detail = "gone: the jobber fell silent"
                touched[r.job_id] = self._jobs[r.job_id]
        for j in touched.values():
            self._evaluate(j)

    def _replica(self, tag: str) -> _Replica:
        r = self._replicas.get(tag)
        if r is None:
            raise CoreError(f"no open replica {tag}")
        return r

    def _eligible(
        self, j: _Job, jobber: str, machine: str, platform: str | None, now: float
    ) -> bool:
        tried_and_failed = False
        here = False  # a replica that may still vote is on this platform
        elsewhere: set[str | None] | None = None  # ... on these others
        for r in j.replicas:
            if r.machine == machine or r.jobber == jobber:
                if r.state in (ReplicaState.OUT, ReplicaState.OK):
                    return False
                if r.state is ReplicaState.GONE and r.jobber == jobber:
                    return False  # back from silence: it may still be running that one
                tried_and_failed = True
            if r.state in _STAYING or (r.state is ReplicaState.ERROR and r.status in DETERMINISTIC):
                if r.platform == platform:
                    here = True
                elif elsewhere is None:
                    elsewhere = {r.platform}
                else:
                    elsewhere.add(r.platform)
        touched = None
        if elsewhere is not None and not here:
            # homogeneous redundancy: the job goes on on its replicas' platforms, unless
            # none of their active machines is fresh to it (then it moves, not stalls)
            touched = {r.machine for r in j.replicas}
            touched.add(machine)
            if self._fresh_on(elsewhere, touched, now):
                return False
        if not tried_and_failed:
            return True
        # Give it back to a machine that failed it only if no other active machine is fresh to it.
        if touched is None:
            touched = {r.machine for r in j.replicas}
            touched.add(machine)
        return not any(
            name not in touched and self._present(m, now) for name, m in self.machines.items()
        )

    def _fresh_on(self, platforms: set[str | None], touched: set[str], now: float) -> bool:
        """Whether a machine that ran replicas on one of `platforms` is present and has no
        replica of the job (`touched` names those that have)."""
        for platform in platforms:
            for name in self._platforms.get(platform, ()):
                if name not in touched:
                    m = self.machines.get(name)
                    if m is not None and self._present(m, now):
                        return True
        return False

    def _present(self, m: Standing, now: float) -> bool:
        """Whether a job may wait for machine `m`: it asked for work it could take, or
        returned a result, within the lease. Asking for nothing (`want` 0), asking past
        its quota, or only saying it is alive does not count: so a machine, or two, can
        hold a job back only by holding its replicas, and no longer than a lease."""
        return m.present >= now - self.policy.lease_s

    def _evaluate(self, j: _Job) -> None:
        p = self.policy
        t = _Tally.of(j)
        if t.best >= p.quorum:
            losers: dict[tuple[bytes, int], list[_Replica]] = {}
            for r in j.replicas:
                if r.state is ReplicaState.OK:
                    rec = self._jobber(r.jobber)
                    if r.platform != t.best_platform:  # not compared: it neither wins nor loses
                        r.detail = r.detail or (
                            f"not compared: platform {r.platform}, the quorum's {t.best_platform}"
                        )
                    elif (r.output, r.fuel) == t.best_key:
                        r.won = True
                        rec.valid += 1
                        rec.credit += r.fuel
                        rec.good()
                        self._machine(r.machine).good()
                    else:
                        rec.invalid += 1
                        rec.bad()
                        self._machine(r.machine).bad()
                        losers.setdefault((r.output, r.fuel), []).append(r)
            if losers:
                self._dispute(j, t, losers)
            self.accepted += 1
            self._settle(j, Accepted(j.id, j.job, t.best_key[0]), t.best_key, t.best_platform)
            return
        if t.fail_best >= p.quorum:
            status, _, fuel = t.fail_key
            agreed = [
                r
                for r in j.replicas
                if r.state is ReplicaState.ERROR
                and r.platform == t.fail_platform
                and (r.status, r.output, r.fuel) == t.fail_key
            ]
            for r in agreed:
                r.won = True
            detail = agreed[0].detail
            self.failed += 1
            where = f"{t.fail_best} machine{'s' if t.fail_best > 1 else ''}"
            text = f"the same failure on {where}: {detail} (fuel {fuel})"
            self._settle(j, Failed(j.id, j.job, (text,)))
            return
        if t.errors > p.max_errors:
            reasons = tuple(
                f"{r.tag} on {r.jobber}: {r.detail}" for r in j.replicas if r.state in _ERRORED
            )
            self.failed += 1
            self._settle(j, Failed(j.id, j.job, (f"more than {p.max_errors} errors", *reasons)))
            return
        if t.sent >= p.max_replicas and t.live == 0:
            self.failed += 1
            text = f"no {p.quorum} of {t.sent} replicas agreed ({t.outputs} distinct outputs)"
            self._settle(j, Failed(j.id, j.job, (text,)))
            return
        self._update_wanting(j, t)

    def _dispute(self, j: _Job, t: _Tally, losers: dict[tuple[bytes, int], list[_Replica]]) -> None:
        """Outputs disagreed and a quorum won: keep the groups for status and log it."""
        winners = [
            r
            for r in j.replicas
            if r.state is ReplicaState.OK
            and r.platform == t.best_platform
            and (r.output, r.fuel) == t.best_key
        ]
        groups = [(t.best_key, winners, True)] + [(k, rs, False) for k, rs in losers.items()]
        self.disputed += 1
        self.disputes.append(
            {
                "job": j.id,
                "late": False,
                "groups": [
                    {
                        "output": _digest(key),
                        "fuel": key[1],
                        "won": won,
                        "jobbers": sorted({r.jobber for r in rs}),
                        "machines": sorted({r.machine for r in rs}),
                    }
                    for key, rs, won in groups
                ],
            }
        )
        log.warning(
            "job %d: outputs disagreed; %d machines agreed, %s lost the vote",
            j.id,
            t.best,
            ", ".join(sorted({r.jobber for rs in losers.values() for r in rs})),
        )

    def _needed(self, j: _Job, t: _Tally) -> int:
        p = self.policy
        if not j.replicas:
            return p.redundancy
        need = max(p.redundancy - (t.sent - t.errors), p.quorum - t.reach, 0)
        return min(need, p.max_replicas - t.sent)

    def _update_wanting(self, j: _Job, t: _Tally | None = None) -> None:
        if j.id not in self._jobs:
            wanted = False
        elif t is None and not j.replicas:
            wanted = self.policy.redundancy > 0
        elif (
            t is None
            and len(j.replicas) >= self.policy.redundancy
            and all(
                r.state is ReplicaState.OUT and r.platform == j.replicas[0].platform
                for r in j.replicas
            )
        ):
            # the common case, cut short: as many replicas out as the job needs, none back,
            # all on one platform (so sent - errors = len >= redundancy >= quorum and
            # reach = live): none needed
            wanted = False
        else:
            wanted = self._needed(j, t or _Tally.of(j)) > 0
        if wanted:
            self._wanting.setdefault(j.id, None)
        else:
            self._wanting.pop(j.id, None)

    def _settle(
        self,
        j: _Job,
        outcome: Accepted | Failed,
        accepted: tuple[bytes, int] | None = None,
        platform: str | None = None,
    ) -> None:
        """`accepted`: the winning (output, fuel), which late results of `platform` (the
        winners') are checked against; others' are not comparable."""
        del self._jobs[j.id]
        self._wanting.pop(j.id, None)
        for r in j.replicas:
            self._replicas.pop(r.tag, None)
            if r.state is ReplicaState.OK:
                self._jobber(r.jobber).unchecked -= 1
                self._machine(r.machine).unchecked -= 1
            if r.state in _LATE:
                self._late[r.tag] = (j.id, accepted if r.platform == platform else None)
                if len(self._late) > MAX_LATE:
                    self._late.popitem(last=False)
                self._close(r)
        self._settled.append(outcome)
        self._settled_digests.append(j.digest)


def _fields_of(record) -> dict:
    """A slotted dataclass's fields by name."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _digest(key: tuple[bytes, int]) -> str:
    """A short name for an output in status and logs (its SHA-256, 16 hex digits)."""
    return hashlib.sha256(key[0]).hexdigest()[:16]


_APPLY = {
    Drawn: Core._apply_drawn,
    Sent: Core._apply_sent,
    Returned: Core._apply_returned,
    Overdue: Core._apply_overdue,
    Gone: Core._apply_gone,
    Denied: Core._apply_denied,
}
