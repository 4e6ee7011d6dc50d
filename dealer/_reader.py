"""A journal opened only to read (dealer._journal's): `python -m dealer results|jobs`, the
dashboard served from a journal. Never through `Journal`, which marks the file open and
checkpoints it, but as an SQLite `mode=ro` reader, safe beside a live dealer, with the
journal's own checks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from dealer._journal import COMPANIONS, JournalError, check_meta, companion, decode
from dealer._records import Record


class ReadOnly:
    """A journal opened only to read (`python -m dealer results|jobs`): what it holds
    now, whether a dealer runs on it, was killed, or finished.

    It writes nothing to the journal. A journal with a -wal beside it (a live or
    killed dealer's) is read as an SQLite `mode=ro` WAL reader, in one read
    transaction: one consistent snapshot, which does not disturb the dealer (WAL
    readers never block its commits). A journal without one (closed: the main file
    is all of it) is read as immutable, so no -wal and -shm are made beside it;
    `intact()` then says whether a dealer opened it meanwhile (read it again if so).
    The rows are fetched at once and the connection closed, so a dealer stopping
    meanwhile finds few readers in its way: one reading at that very moment keeps the
    dealer's close from removing the (by then empty) -wal and the -shm, which are
    left beside a main file that is whole and says it was closed. The checks are the
    journal's own, short of the task's name, which a reader does not know; a missing,
    empty, damaged or log-less journal is refused with JournalError naming it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        wal, shm = (companion(self.path, s) for s in COMPANIONS)
        if not self.path.exists():
            found = [f.name for f in (wal, shm) if f.exists()]
            if found:
                raise JournalError(
                    f"{self.path} does not exist, but {' and '.join(found)} beside it "
                    f"{'do' if len(found) > 1 else 'does'}: the journal's main file was "
                    "deleted or moved without its write-ahead log"
                )
            raise JournalError(f"{self.path}: no such journal (there is no file there)")
        if not self.path.is_file():
            raise JournalError(f"{self.path}: not a journal (it is not a file)")
        if self.path.stat().st_size == 0:
            raise JournalError(
                f"{self.path}: the journal is an empty file; it was damaged, or is not a journal"
            )
        had_wal, had_shm = wal.exists(), shm.exists()
        if had_shm and not had_wal:
            raise JournalError(
                f"{self.path}: {shm.name} is beside the journal but {wal.name} is not: its "
                "write-ahead log was deleted, or the journal was copied without it, and the "
                "results committed in that log since the last checkpoint are not in "
                f"{self.path.name}. Put {wal.name} back beside it"
            )
        self._quiet = None if had_wal else self._stamp()
        uri = self.path.absolute().as_uri() + ("?mode=ro" if had_wal else "?mode=ro&immutable=1")
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: not a usable journal: {e}") from e
        try:
            db.execute("BEGIN")  # one snapshot for the meta and every record
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"meta", "records"} <= tables:
                missing = " and ".join(sorted({"meta", "records"} - tables))
                raise JournalError(
                    f"{self.path}: the journal has no {missing} table: it was damaged, or is "
                    "not a journal"
                )
            self.meta: dict[str, str] = dict(db.execute("SELECT key, value FROM meta"))
            check_meta(self.path, self.meta, had_wal, "", reading=True)
            self._rows = db.execute("SELECT seq, kind, body FROM records ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as e:
            raise JournalError(
                f"{self.path}: not a usable journal: {e}: it was damaged, or is not a journal"
            ) from e
        finally:
            db.close()
        self.tag_prefix = self.meta["tag_prefix"]

    def _stamp(self) -> tuple[int, int, int] | None:
        """What changes if a dealer opens the journal: its -wal appears, its main file
        is written (a dealer that opened and closed it meanwhile)."""
        if companion(self.path, "-wal").exists():
            return None
        st = self.path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def records(self) -> Iterator[Record]:
        return decode(self.path, self._rows, "")

    def intact(self) -> bool:
        """False if what was read may be torn: the journal was read without a -wal (as
        immutable), and a dealer has opened it since."""
        return self._quiet is None or self._stamp() == self._quiet

    def close(self) -> None:
        self._rows = []

    def __enter__(self) -> ReadOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
