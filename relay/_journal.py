"""The relay's journal: what it holds, in SQLite (WAL), beside its key.

A relay's journal is a dealer journal (dealer._journal.Journal: WAL, synchronous
FULL, marked open and closed, refused when damaged or missing its log, never
started over) whose task is RELAY_TASK, with three tables of its own instead
of a log of records, since what a relay holds changes both ways (jobs come in,
results leave once the upstream acknowledged them):

    held      utag, the JobSpec as the upstream sent it (msgpack, by field name),
              its payload's sha256, when it came, the jobber it was fetched for
              (attributed), and once done the result for upstream and who gave it
    payloads  sha256, the module's bytes, the author's signature (msgpack or NULL)
    local     ltag, utag, key, address, sent_at: replicas out with our jobbers

and the next local tag's number in meta (`next`). The core's operations
(relay._records.Op, typed records whose fields are the rows' columns) are
applied in one transaction per turn, before any reply or request is sent.
A row is deleted only when the upstream acknowledged (or rejected, or
cancelled) its replica.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack

import protocol as p
from dealer._journal import AFRESH, Journal, JournalError
from relay._records import Done, Drop, Hold, Local, Next, Op, Payload, Release, Send

RELAY_TASK = "borednet relay"  # the task name a relay's journal is marked with
RELAY_SCHEMA = "1"  # the relay tables' own version (meta `relay_schema`)

_TABLES = (
    "CREATE TABLE IF NOT EXISTS held (utag TEXT PRIMARY KEY, spec BLOB NOT NULL, "
    "payload TEXT NOT NULL, got_at REAL NOT NULL, result BLOB, by TEXT NOT NULL DEFAULT '', "
    "for_key TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS payloads (sha TEXT PRIMARY KEY, wasm BLOB NOT NULL, sig BLOB)",
    "CREATE TABLE IF NOT EXISTS local (ltag TEXT PRIMARY KEY, utag TEXT NOT NULL, "
    "key TEXT NOT NULL, address TEXT NOT NULL, sent_at REAL NOT NULL)",
)


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _unpack(cls: type, blob: bytes, where: str):
    """A record of protocol._wire (JobSpec, Result, Signature) from its msgpack map,
    checked as the wire checks it; JournalError naming `where` if it does not fit."""
    try:
        return cls._from_wire(msgpack.unpackb(blob, raw=False), where)
    except Exception as e:  # msgpack's errors, or a ProtocolError from the schema
        raise JournalError(f"{where} is damaged: {type(e).__name__}: {e}: {AFRESH}") from e


class RelayJournal(Journal):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, RELAY_TASK)
        try:
            self._db.execute("BEGIN")
            for sql in _TABLES:
                self._db.execute(sql)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('relay_schema', ?)", (RELAY_SCHEMA,)
            )
            self._db.execute("COMMIT")
            schema = self._db.execute(
                "SELECT value FROM meta WHERE key = 'relay_schema'"
            ).fetchone()[0]
        except sqlite3.DatabaseError as e:
            self.close()
            raise JournalError(f"{self.path}: not a usable relay journal: {e}: {AFRESH}") from e
        if schema != RELAY_SCHEMA:
            self.close()
            raise JournalError(
                f"{self.path}: relay journal schema {schema!r} is not {RELAY_SCHEMA}: resume it "
                "with the borednet that wrote it"
            )
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM held").fetchone()
        self._seq = row[0]

    # --- reading it back -------------------------------------------------------

    def held(self) -> Iterator[tuple[str, p.JobSpec, float, p.Result | None, str, str]]:
        rows = self._db.execute(
            "SELECT utag, spec, got_at, result, by, for_key FROM held ORDER BY seq"
        )
        for utag, spec, got_at, result, by, for_key in rows:
            where = f"{self.path}: held job {utag!r}"
            yield (
                utag,
                _unpack(p.JobSpec, spec, where),
                float(got_at),
                None if result is None else _unpack(p.Result, result, where),
                by,
                for_key,
            )

    def payloads(self) -> Iterator[tuple[str, bytes, p.Signature | None]]:
        for sha, wasm, sig in self._db.execute("SELECT sha, wasm, sig FROM payloads"):
            where = f"{self.path}: payload {sha}"
            yield sha, bytes(wasm), None if sig is None else _unpack(p.Signature, sig, where)

    def local(self) -> Iterator[Local]:
        rows = self._db.execute("SELECT ltag, utag, key, address, sent_at FROM local")
        for ltag, utag, key, address, sent_at in rows:
            yield Local(ltag, utag, key, address, float(sent_at))

    def next_tag(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next'").fetchone()
        return 0 if row is None else int(row[0])

    # --- writing ---------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        """The core's operations, durably, in one transaction."""
        if not ops:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for op in ops:
                self._apply(op)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _apply(self, op: Op) -> None:
        db = self._db
        match op:
            case Hold(utag, spec, got_at, for_key):
                self._seq += 1
                db.execute(
                    "INSERT OR REPLACE INTO held (utag, spec, payload, got_at, for_key, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (utag, _pack(spec), spec["payload"], got_at, for_key, self._seq),
                )
            case Payload(sha, wasm, sig):
                db.execute(
                    "INSERT OR REPLACE INTO payloads VALUES (?, ?, ?)",
                    (sha, wasm, None if sig is None else _pack(sig)),
                )
            case Send():
                db.execute("INSERT OR REPLACE INTO local VALUES (?, ?, ?, ?, ?)", op.row())
            case Release(ltag):
                db.execute("DELETE FROM local WHERE ltag = ?", (ltag,))
            case Done(utag, result, by):
                db.execute(
                    "UPDATE held SET result = ?, by = ? WHERE utag = ?", (_pack(result), by, utag)
                )
            case Drop(utag):
                db.execute("DELETE FROM held WHERE utag = ?", (utag,))
                db.execute("DELETE FROM local WHERE utag = ?", (utag,))
            case Next(number):
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next', ?)", (str(number),))
            case _:
                raise ValueError(f"unknown relay journal operation {op!r}")

    def forget_unused_payloads(self) -> int:
        """Delete the payloads no held job names (a long-lived relay's modules of
        finished batches), at start. Returns how many."""
        self._db.execute("BEGIN")
        n = self._db.execute(
            "DELETE FROM payloads WHERE sha NOT IN (SELECT payload FROM held)"
        ).rowcount
        self._db.execute("COMMIT")
        return n
