"""The rules one batch runs by: Policy, the dealer's scheduling settings as one typed
record, with every default defined once below (the task's class attributes and the
command line override them: dealer._service.policy_for, dealer._batch); and the limits
its jobs and their results are held to: what can never be sent (`unsendable`), and what
no honest sandbox could have answered (`implausible`).

A result is checked for plausibility before anything else: fuel over the
job's fuel limit, output over its output limit, or a status its output or
fuel contradicts, is recorded as an error ("implausible") and never reaches
the vote.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack

from protocol import MAX_JOB_FILES, MAX_MESSAGE_BYTES, MAX_STR, Status
from protocol._wire import MAX_ARGS, MAX_STDIN_BYTES
from tasks import InputFile, Job, Task

# --- the defaults (the relay holds its jobbers to the same: relay._core) -------------

MAX_ERRORS = 3  # errored or overdue replicas a job may have; one more and it fails
DEADLINE_S = 180.0  # what a jobber has to return a replica (a task's own: from its limits)
WINDOW = 10_000  # unsettled jobs held at once: memory is bounded by it, not by the batch
QUOTA = 4  # open replicas a new identity (and a new machine) may hold
MAX_ALLOWANCE = 4096  # open replicas one identity or machine can ever earn
DENY_AFTER = 3  # lost votes (more than won) that deny an identity; 0: never
# silence after which a jobber holding work is taken as gone: four of the jobber's
# 5-second `alive` intervals, so one lost message is forgiven
LEASE_S = 20.0
BACKUPS = 1  # extra live replicas a job may get at the tail of a batch; 0: none
# "retry later" while all work is out but not settled
RETRY_BUSY_S = 2.0
# "retry later" to a jobber at its quota: the results it is about to return free
# room within a round trip, so it comes back soon (a hoarder that never returns
# anything is still held to its quota, however often it asks)
RETRY_QUOTA_S = 0.2
RETRY_IDLE_S = 30.0  # "retry later" for jobbers this dealer cannot use
# "retry later" to a jobber that lacks the pinned runtime the jobs run, asked to prepare it
# (retry_later.runtimes: about 100 MB fetched and minutes of compiling). One that has just
# prepared it waits at most this for its first jobs, little beside those minutes; one that
# never will (older than runtimes, or unwilling) asks 5 times less often than at
# RETRY_BUSY_S, each ask answered without asking the core for work
RETRY_RUNTIME_S = 10.0
# A jobber may hold what it has shown it runs in this long (its results per second,
# measured over dealer._service.PACE_WINDOW_S), and never less than two jobs per slot:
# jobs of a millisecond go out in hundreds, jobs of an hour two per slot, a hoarder that
# returns nothing gets two per slot (and its quota: see dealer._quota)
SOON_S = 1.0
# what a `jobs` message holding one job adds to its stdin, arguments and the payload: the
# tag, the limits, the deadline, field names, the payload's signature with its rotation
# chain (under 2 KB); generous, so that a job passing here always encodes under the cap
JOB_MESSAGE_OVERHEAD = 64 * 1024
# what one input file adds to a `jobs` message beside its guest path: a FileRef (a hash of
# 64 hex digits, a size) and the field names, with room to spare
FILE_ENTRY_BYTES = 128


@dataclass(frozen=True, slots=True)
class Policy:
    redundancy: int = 1
    quorum: int = 1
    max_errors: int = MAX_ERRORS
    max_replicas: int = 0  # 0: 2 * redundancy + max_errors
    deadline_s: float = DEADLINE_S
    memory_mb: int = 0  # a jobber allowing less than this gets no jobs
    window: int = WINDOW
    fuel_limit: int = (
        0  # the jobs' fuel limit: a result claiming more is implausible (0: unchecked)
    )
    output_bytes: int = -1  # the jobs' output limit in bytes (-1: unchecked)
    quota: int = QUOTA
    deny_after: int = DENY_AFTER
    lease_s: float = LEASE_S
    backups: int = BACKUPS
    # the jobs save their state (limits.checkpoint_kb, bytes; 0: they do not): a replica may
    # resume from another's, so fuel differs between honest replicas and votes compare
    # outputs alone (dealer._saves)
    checkpoint_bytes: int = 0

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


def policy_for(
    task: Task,
    *,
    redundancy: int | None = None,
    quorum: int | None = None,
    max_errors: int | None = None,
    deadline_s: float | None = None,
    quota: int | None = None,
    deny_after: int | None = None,
    lease_s: float | None = None,
    backups: int | None = None,
) -> Policy:
    """The task's scheduling policy: each setting as given (the command line), else as
    the task's class attribute says, else Policy's default. The quorum has one rule, here:
    as given, else the task's capped at the redundancy, else the redundancy."""
    redundancy = _first(redundancy, task.redundancy)
    if quorum is None:
        quorum = redundancy if task.quorum is None else min(task.quorum, redundancy)
    return Policy(
        redundancy=redundancy,
        quorum=quorum,
        max_errors=_first(max_errors, task.max_errors),
        deadline_s=_first(deadline_s, task.effective_deadline_s()),
        memory_mb=task.limits.memory_mb,
        fuel_limit=task.limits.fuel,
        output_bytes=task.limits.output_kb * 1024,
        quota=_first(quota, QUOTA),
        deny_after=_first(deny_after, DENY_AFTER),
        lease_s=_first(lease_s, task.lease_s, LEASE_S),
        backups=_first(backups, BACKUPS),
        checkpoint_bytes=(task.limits.checkpoint_kb or 0) * 1024,
    )


def _first(*values):
    """The first value that is not None (a setting given, else its default)."""
    return next(v for v in values if v is not None)


def unsendable(
    job: Job,
    payload_bytes: int = 0,
    files: Mapping[str, InputFile] | None = None,
    argv: Sequence[str] = (),
) -> str | None:
    """Why `job` can never reach a jobber, or None: its stdin, an argument or their
    count over the wire's caps (docs/protocol.md, `job_spec`), an argument that is not
    text UTF-8 can carry, more input files (`files`: all it reads, by guest path) than a
    job may name, or a `jobs` message holding it and the payload (`payload_bytes`, sent
    with it to a jobber that lacks it) over the message cap. `argv`: the arguments the
    payload puts before every job's own (tasks.Payload.argv: a runtime's script), which
    travel in each JobSpec's `args` and count against the same caps. The same job gives
    the same answer every time: a pure function of its bytes."""
    where = "the wire's cap"
    if files is None:
        files = {}
    if len(files) > MAX_JOB_FILES:
        return f"{len(files):,} input files, over {where} of {MAX_JOB_FILES:,}"
    if len(job.stdin) > MAX_STDIN_BYTES:
        return f"stdin of {len(job.stdin):,} bytes, over {where} of {MAX_STDIN_BYTES:,} bytes"
    args = (*argv, *job.args) if argv else job.args
    if len(args) > MAX_ARGS:
        theirs = f" ({len(argv)} of them the payload's)" if argv else ""
        return f"{len(args):,} arguments{theirs}, over {where} of {MAX_ARGS:,}"
    args_bytes = 0
    for i, arg in enumerate(args):
        if len(arg) > MAX_STR:
            return f"{_which(i, argv)} of {len(arg):,} characters, over {where} of {MAX_STR:,}"
        if arg.isascii():  # (one byte a character: nothing to encode)
            args_bytes += len(arg) + 5  # and its msgpack header
            continue
        try:
            args_bytes += len(arg.encode()) + 5
        except UnicodeEncodeError as e:
            return f"{_which(i, argv)} is not valid Unicode text ({e.reason} at {e.start})"
    files_bytes = sum(len(path) + FILE_ENTRY_BYTES for path in files) if files else 0
    size = payload_bytes + len(job.stdin) + args_bytes + files_bytes + JOB_MESSAGE_OVERHEAD
    if size > MAX_MESSAGE_BYTES:
        return (
            f"a jobs message of about {size:,} bytes with the payload, over {where} of "
            f"{MAX_MESSAGE_BYTES:,} bytes (stdin {len(job.stdin):,}, arguments "
            f"{args_bytes:,}{f', input files {files_bytes:,}' if files else ''}, payload "
            f"{payload_bytes:,})"
        )
    return None


def _which(i: int, argv: Sequence[str]) -> str:
    return f"argument {i - len(argv)}" if i >= len(argv) else f"the payload's argument {i}"


def refusal(job_id: int, job: Job, why: str) -> str:
    """The failure recorded for an unsendable job: names the job and the limit."""
    shown = " ".join(job.args[:8])[:200] + (" ..." if len(job.args) > 8 else "")
    return (
        f"job {job_id} (args {shown or '(none)'}) can never be sent: {why}; "
        "see 'Limits of one job' in docs/writing-tasks.md"
    )


def job_digest(job: Job, shared: str = "") -> str:
    """What the journal pins a job by: its args, its stdin and, if it reads any, the
    hashes of its input files, its own by name and `shared` (files_digest of those every
    job sees). A job without files has the digest it had before files existed."""
    if not job.files and not shared:
        # (a tuple packs as the list it was: the same digest)
        return hashlib.sha256(_packer().pack((job.args, job.stdin))).hexdigest()
    own = [[name, f.sha256] for name, f in job.files]
    return hashlib.sha256(msgpack.packb([list(job.args), job.stdin, own, shared])).hexdigest()


_PACKERS = threading.local()  # a Packer per thread: made once, not for every job


def _packer() -> msgpack.Packer:
    try:
        return _PACKERS.packer
    except AttributeError:
        _PACKERS.packer = msgpack.Packer(use_bin_type=True)
        return _PACKERS.packer


def files_digest(files: Mapping[str, InputFile]) -> str:
    """A digest of files by guest path ("" for none): part of every job's digest."""
    if not files:
        return ""
    pairs = sorted([path, f.sha256] for path, f in files.items())
    return hashlib.sha256(msgpack.packb(pairs)).hexdigest()


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
