"""The journal's rows: how the core's records and the settled jobs lie in its SQLite
tables. dealer._journal opens, writes and checks the file; this module packs the rows
and reads them back, checked.

Schema 3 (this version) writes one row of records and one row of settled jobs per
turn, whatever the turn held:

    records        (seq, kind, body): kind 'turn', body a msgpack array of the turn's
                   records in order, each [code, [fields]]: its kind's number
                   (dealer._records.RECORD_CODES) and its fields in the order
                   dealer._records declares them, nil where unset
    settled_turns  (seq, jobs, failed, body): body a msgpack array of the jobs the turn
                   settled, in the order they settled, each [job id, digest, "accepted"
                   or "failed", the output or a msgpack array of the reasons]; `jobs`
                   counts them and `failed` the failed ones

Schema 2 wrote a row per record (kind: the record's name, body: a msgpack map of its
fields by name, optional fields left at None not stored) and a row per settled job in
`settled` (seq, job_id, digest, state, body). A row costs SQLite about as much as
4 KB of blob, so a turn of 256 jobs at redundancy 1 wrote 1,024 rows (docs/benchmarks.md,
"Dispatch"). Both are still read, even in one journal: a journal of schema 2 that a
dealer resumes becomes schema 3 with its first write (its meta row `schema` changed in
that transaction, so a dealer that reads only schema 2 refuses it rather than misread
it), and its rows of schema 2 come before its turns. A retry's records
(dealer._retry: Journal.reopen) are still rows of their own, so that a Retried record
is found by its kind without reading every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import msgpack

from dealer._records import RECORD_CODES, RECORD_TYPES, Record, Retried
from protocol import ProtocolError

# 2: records are maps by field name; Sent carries the machine; Denied. 3: a turn's
# records in one row, positional, and its settled jobs in one row (settled_turns).
# New meta rows (state, payload, limits) need no new version: a dealer that does not
# know them ignores them.
SCHEMA_VERSION = "3"
READABLE = ("2", "3")  # schemas this dealer reads (and resumes, writing schema 3)
TURN = "turn"  # the kind of a row of records that holds a whole turn's
FAILED = "failed"


class JournalError(Exception):
    """The journal file cannot be used for this task."""


class OwnRow(Exception):
    """A record that goes in a row of its own, not in a turn (a Retried record)."""


def _row_of(cls: type, code: int) -> Callable[[Record], tuple]:
    """The function of a record of `cls` as it is in a turn: (code, (its fields))."""
    if cls is Retried:
        return _own_row
    fields = "".join(f"r.{name}, " for name in cls.__slots__)
    env: dict = {}
    exec(f"def row(r):\n    return ({code}, ({fields}))", env)  # noqa: S102 - from its fields
    return env["row"]


def _own_row(rec: Record) -> tuple:
    raise OwnRow(type(rec).__name__)


_ROWS = {cls: _row_of(cls, code) for cls, code in RECORD_CODES.items()}
_BY_CODE = {code: cls for cls, code in RECORD_CODES.items()}


def pack(rec: Record, packer: msgpack.Packer | None = None) -> bytes:
    """A record's body in a row of its own: a msgpack map of its fields by name; optional
    fields left at None are not stored (a reader gets their default). `packer`: one to
    reuse (a journal's own: a Packer is not to be shared between threads)."""
    body = {}
    for f in rec.__slots__:
        v = getattr(rec, f)
        if v is not None:
            body[f] = v
    return (packer or msgpack.Packer(use_bin_type=True)).pack(body)


def pack_turn(records: Sequence[Record], packer: msgpack.Packer) -> bytes:
    """The body of a turn's row: its records, each [code, [fields]], in one msgpack call.
    OwnRow if one of them goes in a row of its own (a Retried record)."""
    rows = _ROWS
    return packer.pack([rows[type(r)](r) for r in records])


def turn_length(body: bytes) -> int:
    """How many records a turn's row holds (its array's header alone is read)."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(body)
    return unpacker.read_array_header()


def decode(
    path: Path, rows: Iterable[tuple[int, str, bytes]], then: str, every: bool = True
) -> Iterator[Record]:
    """Records from (seq, kind, body) rows in order, each checked; a damaged one raises
    JournalError naming `path` and the record (numbered from 1 across rows and turns),
    ending with `then` (what to do). `every`: the rows are all the journal's, so none may
    be missing; else some rows of their own, picked by kind (each named by its row)."""
    expected = 1  # seq is the rowid: 1, 2, 3, ... with no gaps (nothing is ever deleted)
    n = 0  # records read
    turns = False
    for seq, kind, body in rows:
        if not every:
            expected, n = seq, seq - 1
        if seq != expected:  # before any turn, rows are records: name it as one
            missing = f"the records' row {expected}" if turns else f"record {expected}"
            raise JournalError(
                f"{path}: {missing} is missing (the next is {seq}): the journal was damaged{then}"
            )
        expected += 1
        if kind != TURN:
            n += 1
            yield _by_name(path, n, kind, body, then)
            continue
        turns = True
        try:
            items = msgpack.unpackb(body, raw=False)
            if type(items) is not list:
                raise ValueError(f"a {type(items).__name__}, not a list of records")
        except Exception as e:
            raise JournalError(
                f"{path}: the turn in row {seq} (from record {n + 1} on) is damaged: "
                f"{type(e).__name__}: {e}{then}"
            ) from e
        for item in items:
            n += 1
            yield _positional(path, n, item, then)


def _by_name(path: Path, n: int, kind: str, body: bytes, then: str) -> Record:
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise JournalError(
            f"{path}: record {n}: unknown kind {kind!r}: the journal was "
            f"damaged, or a newer borednet wrote it{then}"
        )
    try:
        fields = msgpack.unpackb(body, raw=False)
        rec = cls(**fields)
    except Exception as e:  # msgpack's many errors, or fields that do not fit
        raise JournalError(
            f"{path}: record {n} ({kind}) is damaged: {type(e).__name__}: {e}{then}"
        ) from e
    for name, _, check in cls._FIELDS:  # the checks its declaration gives
        if name in fields:  # (an optional field not stored: its default)
            _check(path, n, cls, name, check, fields[name], rec, then)
    return rec


def _positional(path: Path, n: int, item: object, then: str) -> Record:
    if type(item) is not list or len(item) != 2 or type(item[1]) is not list:
        raise JournalError(f"{path}: record {n} is damaged: not [code, fields]{then}")
    code, values = item
    cls = _BY_CODE.get(code) if type(code) is int else None
    if cls is None:
        raise JournalError(
            f"{path}: record {n}: unknown kind {code!r}: the journal was "
            f"damaged, or a newer borednet wrote it{then}"
        )
    try:
        rec = cls(*values)
    except Exception as e:  # too many fields, too few
        raise JournalError(
            f"{path}: record {n} ({cls.__name__}) is damaged: {type(e).__name__}: {e}{then}"
        ) from e
    for (name, _, check), value in zip(cls._FIELDS, values, strict=False):
        _check(path, n, cls, name, check, value, rec, then)
    return rec


def _check(path, n, cls, name, check, value, rec, then) -> None:
    try:
        check.valid(value)
    except ProtocolError:
        raise JournalError(
            f"{path}: record {n} ({cls.__name__}) is damaged: its {name} is a "
            f"{type(getattr(rec, name)).__name__}, not {cls.__annotations__[name]}{then}"
        ) from None


def pack_settled(settled: Sequence[tuple[int, str, str, bytes]], packer: msgpack.Packer):
    """The row of a turn's settled jobs: (jobs, failed, body)."""
    failed = sum(1 for s in settled if s[2] == FAILED)
    return len(settled), failed, packer.pack(settled)


def settled_of(path: Path, seq: int, body: bytes, then: str) -> list[tuple[int, str, str, bytes]]:
    """The settled jobs in row `seq` of settled_turns, checked; JournalError if damaged."""
    try:
        out = []
        for job_id, digest, state, data in msgpack.unpackb(body, raw=False):
            if (
                type(job_id) is not int
                or type(digest) is not str
                or state not in ("accepted", FAILED)
                or type(data) is not bytes
            ):
                raise ValueError(f"job {job_id!r}: not (job id, digest, state, bytes)")
            out.append((job_id, digest, state, data))
    except Exception as e:
        raise JournalError(
            f"{path}: the settled jobs of row {seq} are damaged: {type(e).__name__}: {e}{then}"
        ) from e
    return out
