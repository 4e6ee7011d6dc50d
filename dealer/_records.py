"""The dealer's journal records: every state change of the core (dealer._core), as the
journal (dealer._journal) keeps it and replay reads it back.

Each record is declared once, in the schema language of the wire (protocol._schema):
a field's annotation says what it holds for people and type checkers, its `checked`
checker what the journal accepts when it reads the record back. The bounds are
what msgpack can carry, not the wire's caps: a journal is the dealer's own file,
and a record it wrote is never refused for a size it accepted then. The journal's
format (dealer._format) stores a record's fields by name (a row of its own) or in
the order declared here (in a turn); a field added later is optional and goes last,
so a journal written before it still loads.
"""

from __future__ import annotations

import sys

from protocol._schema import (
    MAX_U64,
    _bool,
    _bytes,
    _float,
    _int,
    _list,
    _optional,
    _Record,
    _str,
    checked,
    record,
)

# what msgpack carries: any integer it has, any finite number, any length
_INT = _int(-(2**63), MAX_U64)
_NUMBER = _float(-sys.float_info.max, sys.float_info.max)
_TEXT = _str(sys.maxsize)
_BLOB = _bytes(sys.maxsize)


@record
class Drawn(_Record):
    job_id: int = checked(_INT)
    # sha256 of the job's args and stdin, to detect a changed task
    digest: str = checked(_TEXT)
    # for people reading the journal (None: written before these were recorded); the
    # stdin itself is never stored (it can be MiBs): its size, and a short digest
    args: tuple[str, ...] | None = checked(_optional(_list(_TEXT, sys.maxsize)), None)
    stdin_size: int | None = checked(_optional(_INT), None)
    # 16 hex digits of its sha256; None when empty
    stdin_sha256: str | None = checked(_optional(_TEXT), None)
    # why the job can never be sent (see `unsendable`): it failed as it was drawn. None:
    # a sendable job (and every job of a journal written before this field)
    refused: str | None = checked(_optional(_TEXT), None)

    def __post_init__(self) -> None:
        if isinstance(self.args, list):  # as msgpack gives it back
            object.__setattr__(self, "args", tuple(self.args))


@record
class Sent(_Record):
    tag: str = checked(_TEXT)
    job_id: int = checked(_INT)
    jobber: str = checked(_TEXT)  # the identity (hex public key)
    deadline: float = checked(_NUMBER)  # absolute, seconds since the epoch
    machine: str = checked(_TEXT)  # the group key votes are counted by (see --distinct)
    # when it was sent (None: a journal older than this field)
    at: float | None = checked(_optional(_NUMBER), None)
    # the jobber's platform: only replicas of one platform vote together (None: it did
    # not say, the task is cross-platform, or a journal older than this field)
    platform: str | None = checked(_optional(_TEXT), None)
    # the saved state it starts from: the hash of a Checkpointed record of another replica
    # of its job (None: the beginning, and every journal older than checkpoints)
    resume: str | None = checked(_optional(_TEXT), None)


@record
class Returned(_Record):
    tag: str = checked(_TEXT)
    status: str = checked(_TEXT)
    output: bytes = checked(_BLOB)
    fuel: int = checked(_INT)
    detail: str = checked(_TEXT)
    # when it came back or was released (None: unknown)
    at: float | None = checked(_optional(_NUMBER), None)


@record
class Checkpointed(_Record):
    """A replica's jobber sent its job's saved state, now in the dealer's checkpoint
    folder under its hash (dealer._checkpoints): a replica sent later in its place may
    start from it."""

    tag: str = checked(_TEXT)
    hash: str = checked(_TEXT)
    size: int = checked(_INT)
    fuel: int = checked(_INT)  # what the job had used when it saved it
    time_s: float = checked(_NUMBER)
    at: float | None = checked(_optional(_NUMBER), None)


@record
class Overdue(_Record):
    tag: str = checked(_TEXT)


@record
class Gone(_Record):
    jobber: str = checked(_TEXT)  # silent past its lease: its OUT replicas become GONE


@record
class Denied(_Record):
    jobber: str = checked(_TEXT)
    reason: str = checked(_TEXT)


@record
class Retried(_Record):
    """Failed jobs put back into the batch (a batch run with --retry-failed): each of
    `job_ids` is unsettled again and wants replicas; its earlier failure stays in the
    journal. `restart`: the payload or the limits changed (`changed` says how, for
    people), so every job unsettled at that moment starts over: its replicas under the
    old payload are forgotten and vote no more."""

    job_ids: tuple[int, ...] = checked(_list(_INT, sys.maxsize))
    restart: bool = checked(_bool(), False)
    changed: str | None = checked(_optional(_TEXT), None)
    at: float | None = checked(_optional(_NUMBER), None)

    def __post_init__(self) -> None:
        if isinstance(self.job_ids, list):  # as msgpack gives it back
            object.__setattr__(self, "job_ids", tuple(self.job_ids))


Record = Drawn | Sent | Returned | Overdue | Gone | Denied | Checkpointed | Retried
RECORD_TYPES: dict[str, type] = {
    c.__name__: c for c in (Drawn, Sent, Returned, Overdue, Gone, Denied, Checkpointed, Retried)
}
# A kind's number in the journal's turns (schema 3, dealer._format): a record there is
# [code, [its fields in the order declared above]]. Part of the format on disk: a new
# kind takes a new number, a new field goes last (optional, so older turns lack it),
# and no number or place is ever reused.
RECORD_CODES: dict[type, int] = {
    Drawn: 0,
    Sent: 1,
    Returned: 2,
    Overdue: 3,
    Gone: 4,
    Denied: 5,
    Checkpointed: 6,
    Retried: 7,
}
