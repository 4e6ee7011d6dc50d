"""The dealer's journal: the core's records, in order, in SQLite (WAL).

One table of records (kind, msgpack map of the record's fields by name) in the
order the core made them, and a small meta table (the schema version, the tag
prefix, the task's name, and what else the batch pins). Records are appended in
batches, one transaction per batch; the caller replies to jobbers only after
`append` returns, so nothing is acknowledged before it is on disk. Replaying
the records into a fresh Core rebuilds the state the dealer had.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack

from dealer._core import RECORD_TYPES, Record

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"  # 2: records are maps by field name; Sent carries the machine; Denied


class JournalError(Exception):
    """The journal file cannot be used for this task."""


class Journal:
    def __init__(self, path: str | Path, task_name: str) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()  # a batch starts over only where no journal exists
        if not fresh and self.path.stat().st_size == 0:
            raise JournalError(
                f"{self.path}: the journal is an empty file; it was damaged, or is not a "
                "journal: move it away, or pass another --db, to start the batch afresh"
            )
        try:
            # one thread at a time, but not always the one that opened it (tests, embedding)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before we reply, so an acknowledged
            # result survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if not fresh and not {"meta", "records"} <= tables:
                missing = ", ".join(sorted({"meta", "records"} - tables))
                raise JournalError(
                    f"{self.path}: the journal has no {missing} table: it was damaged, or is "
                    "not a journal; move it away, or pass another --db, to start afresh"
                )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records "
                "(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL)"
            )
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: not a usable journal: {e}") from e
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if not meta and not fresh:
            raise JournalError(f"{self.path}: the journal's meta table is empty: it was damaged")
        if not meta:
            meta = {
                "schema": SCHEMA_VERSION,
                "task": task_name,
                "tag_prefix": secrets.token_hex(4),
            }
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        if meta.get("schema") != SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema {meta.get('schema')!r} is not {SCHEMA_VERSION}"
            )
        if meta.get("task") != task_name:
            raise JournalError(
                f"{self.path} is the journal of task {meta.get('task')!r}, not {task_name!r}; "
                "pass another --db"
            )
        self.tag_prefix = meta["tag_prefix"]

    def pin(self, key: str, value: str, what: str) -> None:
        """Record `value` under `key` the first time; refuse a different one later."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        elif row[0] != value:
            raise JournalError(
                f"{self.path} was written with {what} {row[0]}, not {value}; "
                "replaying it under other rules would change settled jobs: pass another --db"
            )

    def records(self) -> Iterator[Record]:
        try:
            rows = self._db.execute("SELECT seq, kind, body FROM records ORDER BY seq")
            for seq, kind, body in rows:
                cls = RECORD_TYPES.get(kind)
                if cls is None:
                    raise JournalError(f"{self.path}: record {seq}: unknown kind {kind!r}")
                try:
                    fields = msgpack.unpackb(body, raw=False)
                    yield cls(**fields)
                except Exception as e:  # msgpack's many errors, or fields that do not fit
                    raise JournalError(
                        f"{self.path}: record {seq} ({kind}) is damaged: {type(e).__name__}: {e}"
                    ) from e
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: the journal is damaged: {e}") from e

    def append(self, records: Sequence[Record]) -> None:
        """Write records durably, in one transaction."""
        if not records:
            return
        pack = msgpack.Packer(use_bin_type=True).pack
        rows = [(type(r).__name__, pack({f: getattr(r, f) for f in r.__slots__})) for r in records]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO records (kind, body) VALUES (?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    def close(self) -> None:
        self._db.close()
