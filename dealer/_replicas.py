"""Replicas and jobs: the lifecycle of one replica as a transition table, and what the
core hands out. Pure data: no decision is made here (dealer._votes decides, dealer._core
records).

Each job is sent out as *replicas*. Every replica has a tag that is unique
forever within one journal (a random prefix chosen when the journal is made,
then a counter), the jobber it was sent to and an absolute deadline. A
replica's lifecycle is the table REPLICA_TRANSITIONS below; an event the table
does not allow raises CoreError and changes nothing.

The table's events: `returned_ok` and `returned_error` (a result came back), `deadline`
(its deadline passed: OVERDUE, a late result may still come), `released` (the jobber
gave it back unfinished: no fault of anyone's), `silent` (its jobber fell silent past its
lease: GONE, neither live nor an error).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol import ErrorCode, Status
from protocol._frozen import frozen
from tasks import InputFile, Job


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
_STAYING = (ReplicaState.OUT, ReplicaState.OK, ReplicaState.OVERDUE, ReplicaState.GONE)


# --- what the core hands out --------------------------------------------------


# a job's file set (dealer._locality): the hashes of its own input files, and the total
# bytes of all it reads
FilesKey = tuple[frozenset[str], int]


@frozen
class Assignment:
    tag: str
    job_id: int
    job: Job
    deadline: float
    files: Mapping[str, InputFile] = field(default_factory=dict, compare=False)  # by guest path
    resume: Checkpoint | None = None  # the saved state it starts from


@frozen
class Accepted:
    job_id: int
    job: Job
    output: bytes


@frozen
class Failed:
    job_id: int
    job: Job
    reasons: tuple[str, ...]
    # its own bug: the same failure on a quorum of machines (dealer._blame), not theirs
    own: bool = False


@frozen
class Rejected:
    code: ErrorCode
    text: str


@frozen
class Checkpoint:
    """A job's saved state, sent by the jobber of replica `tag` (dealer._saves)."""

    tag: str
    hash: str
    size: int
    fuel: int  # what the job had used when it was saved
    time_s: float
    at: float | None = None
    # the machines whose runs made it: the replica's and those of the states it resumed
    lineage: frozenset[str] = frozenset()


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
    # whose fault its failure is (dealer._blame): "" none (or not compared), "pending"
    # (judged when its job settles), "job" (its own bug), "machine" (counted on its jobber)
    fault: str = ""
    used: int = 0  # fuel it says it used (its credit); `fuel` is what votes compare
    resume: Checkpoint | None = None  # the saved state it started from
    checkpoint: Checkpoint | None = None  # the latest state its jobber sent
    saves: int = 0  # states its jobber sent
    # resumed: its machine and those whose runs made the state it started from (its
    # vote counts once with any of theirs: dealer._votes); None: it started afresh
    lineage: frozenset[str] | None = None
    sent_at: float | None = None  # when it was sent (None: a journal older than Sent.at)

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
    group: FilesKey  # its file set (dealer._locality)
    replicas: list[_Replica] = field(default_factory=list)
    digest: str = ""  # job_digest(job), as its Drawn record says
    files: Mapping[str, InputFile] = field(default_factory=dict)  # by guest path
    # saved states of replicas that ended without a result: the next replica sent may
    # start from one (dealer._saves)
    spare: list[Checkpoint] = field(default_factory=list)
