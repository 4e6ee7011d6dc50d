"""The dealer's journal: the core's records, in order, in SQLite (WAL).

A table of records in the order the core made them (each turn's in one row, packed
by dealer._format), the jobs they settled (a turn's in one row, with their outputs:
a finished batch is restored from these), and a small meta table (the schema
version, the tag prefix, the task's name, whether the journal is open, and what the
batch pins). Each turn's rows are written in one transaction; the caller replies to
jobbers only after `append` returns, so nothing is acknowledged before it is on disk.
Replaying the records into a fresh Core rebuilds the state the dealer had.

A damaged journal is refused with its file and what is wrong, never started
over: a batch starts afresh only on a path where no journal exists (and no
`-wal` or `-shm` of one). `move_aside` (the task option --fresh) renames a
journal and its companions with the time, so nothing is ever deleted.

The write-ahead log is part of the journal. A dealer killed (kill -9) leaves
its last commits in PATH-wal, not yet copied into PATH; a PATH without that
file (the -wal deleted, or PATH copied alone) has lost acknowledged results and
would hand their tags out again. So the journal marks itself open in PATH
itself (a meta row, checkpointed into the main file at open) and closed at
close (checkpointed again). While SQLite holds a WAL database open the -wal
file exists (truncated to 0 bytes by a checkpoint, never removed), and a clean
close removes it; so a journal that says it is open with no -wal beside it, or
a -shm with no -wal, lost its log, and is refused.

The batch is pinned in meta: the voting rules, the payload's sha256, the
task's limits (see `pins`); the jobs are pinned by the digests in Drawn
records. A rerun under other pins is refused, saying what changed.

Each record read is checked field by field with the checks its declaration
(dealer._records, in the wire's schema language) gives; one that does not fit
is refused, naming the record and the field, never replayed.

Records gain fields without a new schema version when the fields are optional
(a default, None: unknown) and go last: a journal written before them still loads.
A journal of the schema before (2: a row per record) is read as it is, and written
as schema 3 from the first write of a dealer that resumes it (dealer._format).

`ReadOnly` (dealer._reader) opens a journal only to read it
(`python -m dealer results|jobs`): never through `Journal`, which marks the
file open and checkpoints it, but as an SQLite `mode=ro` reader, safe beside a
live dealer, with the same checks, and without creating a -wal or -shm beside a
closed journal.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
import weakref
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack

from dealer._format import (
    FAILED,
    READABLE,
    SCHEMA_VERSION,
    TURN,
    OwnRow,
    pack,
    pack_settled,
    pack_turn,
    settled_of,
    turn_length,
)
from dealer._format import JournalError as JournalError
from dealer._format import decode as decode
from dealer._records import Record

log = logging.getLogger(__name__)

COMPANIONS = ("-wal", "-shm")  # SQLite's files beside a WAL database
AFRESH = "to start the batch afresh, pass another --db, or --fresh to move this journal aside"
DAMAGED = f"it was damaged, or is not a journal: {AFRESH}"
RETRY_HINT = (
    "to keep the accepted results and run the failed jobs (and those not settled) again "
    "with the new payload and limits, rerun it with --retry-failed"
)


def check_meta(path: Path, meta: dict[str, str], had_wal: bool, then: str, reading: bool) -> None:
    """The meta table's checks that do not depend on the task: the schema, the tag
    prefix, and a journal left open whose write-ahead log is not beside it. `then`
    ends the messages (what to do); `reading`: for a reader, not a dealer."""
    if not meta:
        raise JournalError(f"{path}: the journal's meta table is empty: it was damaged{then}")
    if meta.get("schema") not in READABLE:
        raise JournalError(
            f"{path}: journal schema {meta.get('schema')!r} is not {' or '.join(READABLE)} "
            "(another version of borednet wrote it, or it was damaged): "
            + ("read" if reading else "resume")
            + " it with the borednet that wrote it"
            + (f"; or, {then.removeprefix(': ')}" if then else "")
        )
    prefix = meta.get("tag_prefix", "")
    if len(prefix) != 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise JournalError(
            f"{path}: the journal's tag prefix is {prefix or 'missing'!r}, not 8 hex "
            f"digits: its meta table was damaged{then}"
        )
    state = meta.get("state", "")
    if state.startswith("open") and not had_wal:
        lost = (
            "what it shows would miss them"
            if reading
            else "this batch would lose acknowledged results and hand their tags out again"
        )
        raise JournalError(
            f"{path} was left open (its dealer was killed or crashed) and its "
            f"write-ahead log {path.name}-wal is not beside it: the results and tags "
            "committed since the journal's last checkpoint are in that file, and without "
            f"it {lost}. Put {path.name}-wal back beside it (copy a journal with its -wal "
            "and -shm)" + (f"; or, {then.removeprefix(': ')}" if then else "")
        )


def companion(path: str | Path, suffix: str) -> Path:
    """PATH-wal or PATH-shm."""
    return Path(f"{path}{suffix}")


def move_aside(path: str | Path) -> Path | None:
    """Rename the journal at `path` and its -wal and -shm, if any, to one name with the
    time in it (`j.sqlite` -> `j.20260102-150405.sqlite`), so that `path` is free for
    a fresh batch and the old one is kept whole (open it with --db). None if there was
    nothing at `path`."""
    path = Path(path)
    present = [s for s in ("", *COMPANIONS) if companion(path, s).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while True:
        aside = path.with_name(f"{path.stem}.{stamp}{f'.{n}' if n else ''}{path.suffix}")
        if not any(companion(aside, s).exists() for s in ("", *COMPANIONS)):
            break
        n += 1
    for s in (*COMPANIONS, ""):  # the main file last: until it moves, the journal is there
        if s in present:
            os.rename(companion(path, s), companion(aside, s))
    return aside


def task_pins(task: Any) -> dict[str, tuple[str, str]]:
    """What a task's batch is, beyond its jobs: its payload and its limits, as `pins`
    takes them."""
    lim = task.limits
    return {
        "payload": (task.payload.sha256, "the payload"),
        "limits": (
            f"fuel={lim.fuel} memory_mb={lim.memory_mb} time_s={float(lim.time_s)!r} "
            f"output_kb={lim.output_kb}",
            "the limits",
        ),
    }


def _fields(text: str) -> dict[str, str] | None:
    """`a=1 b=2` as a map, or None if it is not such a list."""
    words = [w.partition("=") for w in text.split()]
    if not words or not all(sep for _, sep, _ in words):
        return None
    return {k: v for k, _, v in words}


def _what_changed(old: str, new: str, what: str) -> str:
    """A pin's change in a few words: the fields that differ, or both values' starts."""
    a, b = _fields(old), _fields(new)
    if a is None or b is None:
        return f"{what} is new ({new[:12]}, was {old[:12]})"
    diff = [
        f"{k} {b.get(k, 'unset')} (was {a.get(k, 'unset')})"
        for k in {**a, **b}
        if a.get(k) != b.get(k)
    ]
    return f"{what} changed: {', '.join(diff)}"


def _close(db: sqlite3.Connection, path: Path, token: str) -> None:
    """Mark the journal closed (if this connection is the one that marked it open),
    checkpoint, close. Run by Journal.close, or when a Journal is collected unclosed."""
    try:
        db.execute(
            "UPDATE meta SET value = 'closed' WHERE key = 'state' AND value = ?",
            (f"open {token}",),
        )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as e:  # the file stays marked open: the next open checks its log
        log.warning("%s: could not mark the journal closed: %s", path, e)
    finally:
        db.close()


class Journal:
    def __init__(self, path: str | Path, task_name: str) -> None:
        self.path = Path(path)
        self._packer = msgpack.Packer(use_bin_type=True)  # reused for every record
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        wal, shm = (companion(self.path, s) for s in COMPANIONS)
        # what is on disk before SQLite is asked: opening makes an empty -wal and -shm
        self.fresh = not self.path.exists()  # a batch starts over only where no journal exists
        had_wal, had_shm = wal.exists(), shm.exists()
        if self.fresh and (had_wal or had_shm):
            found = [f.name for f in (wal, shm) if f.exists()]
            stray = " and ".join(found)
            raise JournalError(
                f"{self.path} does not exist, but {stray} beside it "
                f"{'do' if len(found) > 1 else 'does'}: the journal's "
                "main file was deleted or moved without its write-ahead log. Put the "
                f"journal back; or, {AFRESH} (it moves the {stray} aside too)"
            )
        if not self.fresh and self.path.stat().st_size == 0:
            raise JournalError(
                f"{self.path}: the journal is an empty file; it was damaged, or is not a "
                f"journal: {AFRESH}"
            )
        if had_shm and not had_wal:
            raise JournalError(
                f"{self.path}: {shm.name} is beside the journal but {wal.name} is not: its "
                "write-ahead log was deleted, or the journal was copied without it, and the "
                "results and tags committed in that log since the last checkpoint are not "
                f"in {self.path.name}. Put {wal.name} back beside it (a copy: copy the "
                f"journal with its -wal and -shm, while no dealer runs on it); or, {AFRESH}"
            )
        self._token = secrets.token_hex(8)
        try:
            # one thread at a time, but not always the one that opened it (tests, embedding)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: not a usable journal: {e}: {DAMAGED}") from e
        try:
            meta = self._open(task_name, had_wal)
        except BaseException:
            self._db.close()  # a refused journal is left as it was found
            raise
        self.tag_prefix = meta["tag_prefix"]
        self._schema = meta["schema"]  # schema 2 becomes 3 with the first write (_upgrade)
        self._shut = weakref.finalize(self, _close, self._db, self.path, self._token)

    def _open(self, task_name: str, had_wal: bool) -> dict[str, str]:
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(
                    f"{self.path}: SQLite cannot keep this journal in WAL mode (it is {mode}): "
                    "put it on a local file system"
                )
            # FULL: a commit is fsynced before we reply, so an acknowledged
            # result survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if not self.fresh and not {"meta", "records"} <= tables:
                missing = " and ".join(sorted({"meta", "records"} - tables))
                raise JournalError(
                    f"{self.path}: the journal has no {missing} table: it was damaged, or is "
                    f"not a journal: {AFRESH}"
                )
            meta = dict(self._db.execute("SELECT key, value FROM meta")) if tables else {}
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: not a usable journal: {e}: {DAMAGED}") from e
        if not self.fresh:
            self._check(meta, task_name, had_wal)
        previous = meta.get("state")
        try:
            with self._db:
                self._db.execute("BEGIN")
                if self.fresh:
                    self._db.execute(
                        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
                    self._db.execute(
                        "CREATE TABLE records "
                        "(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL)"
                    )
                    meta = {
                        "schema": SCHEMA_VERSION,
                        "task": task_name,
                        "tag_prefix": secrets.token_hex(4),
                    }
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                # settled jobs as the task saw them, kept with the records that settled
                # them: a finished batch is restored from these without a replay
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS settled (seq INTEGER PRIMARY KEY, "
                    "job_id INTEGER NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL, "
                    "body BLOB NOT NULL)"
                )
                # ... a turn's in one row (schema 3: dealer._format)
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS settled_turns (seq INTEGER PRIMARY KEY, "
                    "jobs INTEGER NOT NULL, failed INTEGER NOT NULL, body BLOB NOT NULL)"
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('state', ?)", (f"open {self._token}",)
                )
            # into the main file now: a copy of it alone, or it without its -wal, says "open"
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: not a usable journal: {e}: {DAMAGED}") from e
        if busy:
            with self._db:  # leave the mark as it was: the other process's to clear
                self._db.execute("BEGIN")
                if previous is None:
                    self._db.execute("DELETE FROM meta WHERE key = 'state'")
                else:
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'state'", (previous,))
            raise JournalError(
                f"{self.path}: another process is reading or writing this journal (its "
                "checkpoint was blocked): is a dealer already running on it?"
            )
        return meta

    def _check(self, meta: dict[str, str], task_name: str, had_wal: bool) -> None:
        if meta and meta.get("schema") in READABLE and meta.get("task") != task_name:
            raise JournalError(
                f"{self.path} is the journal of task {meta.get('task')!r}, not {task_name!r}; "
                "pass another --db"
            )
        check_meta(self.path, meta, had_wal, f": {AFRESH}", reading=False)
        state = meta.get("state", "")
        if state.startswith("open"):
            log.info("%s was not closed (its dealer was killed?): resuming from its log", self.path)

    def pin(self, key: str, value: str, what: str) -> None:
        """Record `value` under `key` the first time; refuse a different one later."""
        self.pins({key: (value, what)})

    def pins(
        self, pins: Mapping[str, tuple[str, str]], changeable: Collection[str] = ()
    ) -> dict[str, str]:
        """Each of `pins` is key: (value, what it is, for people). Record the values not
        recorded yet; refuse, saying what changed, if any recorded one differs (then
        nothing is recorded), but for those of `changeable` (a retry's: see `reopen`),
        which are returned, key: what changed (for people), and not recorded here."""
        old = dict(self._db.execute("SELECT key, value FROM meta"))
        may = {
            k: _what_changed(old[k], v, what)
            for k, (v, what) in pins.items()
            if k in changeable and old.get(k, v) != v
        }
        changed = [
            (k, old[k], v, what)
            for k, (v, what) in pins.items()
            if old.get(k, v) != v and k not in changeable
        ]
        if changed:
            olds = " and ".join(what.removeprefix("the ") for *_, what in changed)
            raise JournalError(
                f"{self.path}: "
                + "; ".join(self._changed(*c) for c in changed)
                + f". The results in this journal were made under the old {olds}: replaying "
                "them would give a stale answer. To resume it, run the batch as it was; "
                f"{AFRESH} (renamed with the time, not deleted)"
                + (f"; or, {RETRY_HINT}" if "payload" in olds or "limits" in olds else "")
            )
        new = {k: v for k, (v, _) in pins.items() if k not in old}
        if not new:
            return may
        if not self.fresh:
            for k, (v, what) in pins.items():
                if k in new:
                    log.info(
                        "%s: the journal has no record of %s (an older dealer wrote it): "
                        "recording %s %s",
                        self.path,
                        what,
                        k,
                        v,
                    )
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", new.items())
        return may

    @staticmethod
    def _changed(key: str, old: str, new: str, what: str) -> str:
        text = f"{what} changed: the journal was written for {key} {old}, the task now has {new}"
        a, b = _fields(old), _fields(new)
        if a is not None and b is not None:  # name the fields that differ
            diff = [
                f"{k} {a.get(k, 'unset')} then, {b.get(k, 'unset')} now"
                for k in dict.fromkeys([*a, *b])
                if a.get(k) != b.get(k)
            ]
            text += f" ({'; '.join(diff)})"
        return text

    def note(self, values: Mapping[str, str]) -> None:
        """Keep `values` in the meta table, each replacing the last: what no record says
        and a reader of the journal alone shows (`address`: where the dealer served;
        `total`: the task's jobs; `summary`: its summary line as the dealer stopped)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def records(self) -> Iterator[Record]:
        try:
            rows = self._db.execute("SELECT seq, kind, body FROM records ORDER BY seq")
            yield from decode(self.path, rows, f": {AFRESH}")
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: the journal is damaged: {e}: {AFRESH}") from e

    def append(
        self, records: Sequence[Record], settled: Sequence[tuple[int, str, str, bytes]] = ()
    ) -> None:
        """Write records, and the jobs they settled ((job id, digest, "accepted" or
        "failed", output or msgpack of the reasons)), durably, in one transaction: one
        row for the records, one for the settled jobs (dealer._format)."""
        if not records and not settled:
            return
        packer = self._packer
        db = self._db
        db.execute("BEGIN")
        try:
            self._upgrade()
            if records:
                try:
                    body = pack_turn(records, packer)
                except OwnRow:  # a Retried record, found by its kind: rows of their own
                    self._rows(records)
                else:
                    db.execute("INSERT INTO records (kind, body) VALUES (?, ?)", (TURN, body))
            if settled:
                db.execute(
                    "INSERT INTO settled_turns (jobs, failed, body) VALUES (?, ?, ?)",
                    pack_settled(settled, packer),
                )
        except BaseException:
            db.execute("ROLLBACK")
            self._schema = self._read_schema()
            raise
        db.execute("COMMIT")

    def _upgrade(self) -> None:
        """Within a write's transaction: a journal of schema 2 becomes schema 3 (its old
        rows stay as they are, and are read as they were: dealer._format)."""
        if self._schema != SCHEMA_VERSION:
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            log.info(
                "%s: journal of schema %s, written as schema %s from now on",
                self.path,
                self._schema,
                SCHEMA_VERSION,
            )
            self._schema = SCHEMA_VERSION

    def _read_schema(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]

    def _rows(self, records: Sequence[Record]) -> None:
        """Records as rows of their own, by name (as schema 2 wrote every record)."""
        self._db.executemany(
            "INSERT INTO records (kind, body) VALUES (?, ?)",
            [(type(r).__name__, pack(r, self._packer)) for r in records],
        )

    def reopen(
        self, records: Sequence[Record], job_ids: Iterable[int], pins: Mapping[str, str]
    ) -> None:
        """A retry (dealer._retry), durably in one transaction: its `records` (rows of
        their own); the failed jobs `job_ids` no longer settled (their rows leave the
        settled jobs, which keep each job's latest outcome); `pins` (key: value) recorded
        in place of the old; and the batch no longer finished."""
        ids = set(job_ids)
        self._db.execute("BEGIN")
        try:
            self._upgrade()
            self._rows(records)
            self._db.executemany(
                "DELETE FROM settled WHERE job_id = ? AND state = 'failed'",
                [(i,) for i in ids],
            )
            for seq, body in self._db.execute(
                "SELECT seq, body FROM settled_turns WHERE failed > 0"
            ).fetchall():
                rows = settled_of(self.path, seq, body, f": {AFRESH}")
                kept = [r for r in rows if r[2] != FAILED or r[0] not in ids]
                if len(kept) == len(rows):
                    continue
                if kept:
                    self._db.execute(
                        "UPDATE settled_turns SET jobs = ?, failed = ?, body = ? WHERE seq = ?",
                        (*pack_settled(kept, self._packer), seq),
                    )
                else:
                    self._db.execute("DELETE FROM settled_turns WHERE seq = ?", (seq,))
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", pins.items())
            self._db.execute("DELETE FROM meta WHERE key = 'finished'")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._schema = self._read_schema()
            raise
        self._db.execute("COMMIT")

    def failed_ids(self) -> list[int]:
        """The jobs whose latest outcome is a failure, from the settled jobs."""
        ids = {i for (i,) in self._db.execute("SELECT job_id FROM settled WHERE state = 'failed'")}
        for seq, body in self._db.execute("SELECT seq, body FROM settled_turns WHERE failed > 0"):
            ids.update(
                r[0] for r in settled_of(self.path, seq, body, f": {AFRESH}") if r[2] == FAILED
            )
        return sorted(ids)

    def retried(self) -> Counter[int]:
        """How many times each job was put back by a retry (Retried records)."""
        rows = self._db.execute("SELECT seq, kind, body FROM records WHERE kind = 'Retried'")
        out: Counter[int] = Counter()
        for rec in decode(self.path, rows, f": {AFRESH}", every=False):
            out.update(rec.job_ids)
        return out

    def mark_finished(self, snapshot: dict) -> None:
        """The batch is finished: keep the core's `snapshot` with the number of records
        and settled jobs it sums up, so a restart can skip the replay (finished_summary)."""
        records = self._db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
        settled = self._settled_count()
        body = json.dumps({"records": records, "settled": settled, "core": snapshot})
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('finished', ?)", (body,))

    def finished_summary(self) -> dict | None:
        """The snapshot of a finished batch, if the journal is still exactly as it was when
        it was marked (no record since, every settled job kept); else None: replay it."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'finished'").fetchone()
        if row is None:
            return None
        try:
            mark = json.loads(row[0])
            records = self._db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
            settled = self._settled_count()
            core = mark["core"]
            if (mark["records"], mark["settled"]) != (records, settled):
                return None
            if settled != core["accepted"] + core["failed"]:
                return None  # settled jobs from before they were kept: replay instead
        except (ValueError, KeyError, TypeError):
            return None
        return core

    def _settled_count(self) -> int:
        return self._db.execute(
            "SELECT (SELECT count(*) FROM settled) "
            "+ (SELECT coalesce(sum(jobs), 0) FROM settled_turns)"
        ).fetchone()[0]

    def settled_rows(self) -> Iterator[tuple[int, str, str, bytes]]:
        """The settled jobs in the order they settled (those of schema 2 first)."""
        try:
            yield from self._db.execute(
                "SELECT job_id, digest, state, body FROM settled ORDER BY seq"
            )
            for seq, body in self._db.execute("SELECT seq, body FROM settled_turns ORDER BY seq"):
                yield from settled_of(self.path, seq, body, f": {AFRESH}")
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: the journal is damaged: {e}: {AFRESH}") from e

    def count(self) -> int:
        """How many records the journal holds (a turn's counted by its records)."""
        rows = self._db.execute("SELECT kind, body FROM records")
        return sum(turn_length(body) if kind == TURN else 1 for kind, body in rows)

    def close(self) -> None:
        """Mark the journal closed and checkpoint it: PATH alone is then the whole journal."""
        self._shut()
