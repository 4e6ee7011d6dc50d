"""The jobber shell's input-file store: files jobs read, kept in the data directory by
their SHA-256, written a chunk at a time as they come, and kept ("sticky") within the
cache's allowance, least recently used evicted first, never one a job in hand reads.

On disk, under `files/`:

    <sha>           a whole file, checked against its name, read-only (0444)
    <sha>.part      a file coming: its full size (sparse until its chunks are in)
    <sha>.digests   beside it: the SHA-256 of each of its chunks (chunk 0 brought them)
    .<sha>.download a runtime's file from the package index, checked, to be adopted

The digests are written (atomically, durably) before chunk 0 is. A chunk is written
at its offset and not fsynced: a restarted jobber **re-checks** each partial file on
start, and every chunk whose bytes on disk hash to its digest is kept, the rest are
fetched again, so a torn or lost write costs a chunk, never a wrong byte (and the
loop, which answers dealers and sends `alive`, never waits on the disk per chunk).
The store refuses a chunk it holds already, or digests other than those it keeps:
what it keeps under a name only ever comes from one set of digests.

The whole file's SHA-256 is computed as its chunks come, over the run of chunks from
its start (fetches go out in order, so that run is nearly all of it; the start-up
re-check rebuilds it as it reads). Once every chunk is in, the rest of the check
(reading back the chunks that came after a gap, the fsync, the rename to its name or
the removal) is done off the loop by `FileChecker`, as the spool does its writes; the
shell then says FileKept or FileBad to the core.

Nothing here decides: the core (jobber._inputs) says which chunk to keep and which
partial file to drop, and how much of the cache the store may take.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import protocol as p
from jobber._state import Partial
from net._files import write_atomic

log = logging.getLogger("jobber._client")  # the shell's log, whichever part of it speaks

_NAME = re.compile(r"\A[0-9a-f]{64}\Z")
_READ = 1 << 20  # the whole-file check reads this much at a time


@dataclass
class _Run:
    """A partial file's SHA-256 over its chunks from the start, and the chunk after them."""

    sha256: Any = field(default_factory=hashlib.sha256)
    next: int = 0


class Diverged(ValueError):
    """A chunk the store will not write: one it holds already, digests other than those
    it keeps, or a file being checked. The core and the store differ on the file."""


class FileStore:
    """Input files by hash: whole ones, and partial ones with their digests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.partials: dict[str, Partial] = {}
        self._hashing: dict[str, _Run] = {}  # partial file -> its hash so far
        self.checking: set[str] = set()  # partial files with every chunk, being checked
        self._load()

    # --- paths ---------------------------------------------------------------------

    def path(self, sha: str) -> Path:
        """Where whole file `sha` is (a job reads it there)."""
        return self.root / sha

    def _part(self, sha: str) -> Path:
        return self.root / f"{sha}.part"

    def _digests(self, sha: str) -> Path:
        return self.root / f"{sha}.digests"

    # --- what is held ----------------------------------------------------------------

    def _load(self) -> None:
        """Re-check the partial files left by an earlier run (see the module's doc)."""
        for path in sorted(self.root.iterdir()):
            sha, _, kind = path.name.partition(".")
            if not _NAME.match(sha) or kind not in ("", "part", "digests"):
                path.unlink(missing_ok=True)  # a temporary file of an interrupted write
                continue
            if kind != "part":
                continue
            part = self._recheck(sha)
            if part is None:
                self.drop_partial(sha)
                continue
            self.partials[sha] = part
            if not part.missing():
                got = self.finish(sha)
                if got is not None:
                    log.warning("input file %s: its bytes hash to %s; removed", sha[:12], got[:12])
        for path in self.root.glob("*.digests"):  # digests of no partial file
            if path.name.partition(".")[0] not in self.partials:
                path.unlink(missing_ok=True)

    def _recheck(self, sha: str) -> Partial | None:
        """A partial file as its chunks on disk show it; None if unusable."""
        try:
            size = self._part(sha).stat().st_size
            raw = self._digests(sha).read_bytes()
        except FileNotFoundError:
            return None
        n = p.chunk_count(size)
        if len(raw) != 32 * n:
            return None
        digests = tuple(raw[i * 32 : (i + 1) * 32] for i in range(n))
        part = Partial(size, digests)
        run = self._hashing[sha] = _Run()  # the whole file's hash, rebuilt as it is read
        with open(self._part(sha), "rb") as f:
            for i in range(n):
                f.seek(i * p.CHUNK_BYTES)
                data = f.read(min(p.CHUNK_BYTES, size - i * p.CHUNK_BYTES))
                if hashlib.sha256(data).digest() == digests[i]:
                    part.have.add(i)
                    if run.next == i:
                        run.sha256.update(data)
                        run.next += 1
        log.info(
            "input file %s: %d of %d chunks kept from an earlier run", sha[:12], len(part.have), n
        )
        return part

    def whole(self) -> list[tuple[str, int]]:
        """Files held whole (hash, size), most recently used first."""
        entries = []
        for path in self.root.iterdir():
            if _NAME.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    entries.append((st.st_mtime, path.name, st.st_size))
        entries.sort(reverse=True)
        return [(sha, size) for _, sha, size in entries]

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def total(self) -> int:
        """Bytes the store takes: whole files and partial ones at their full size."""
        return sum(n for _, n in self.whole()) + sum(x.size for x in self.partials.values())

    def touch(self, sha: str) -> None:
        """Mark a file as just used (eviction removes the least recently used)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(sha))

    # --- writing ---------------------------------------------------------------------

    def keep_chunk(
        self, sha: str, size: int, index: int, data: bytes, digests: tuple[bytes, ...] | None
    ) -> bool:
        """Write chunk `index` (checked by the core); with chunk 0, keep the digests first.
        True once the file has every chunk (then check it: `complete`). OSError if the
        disk will not take it; Diverged if the store holds that chunk already, keeps other
        digests, or is checking the file."""
        if sha in self.checking:
            raise Diverged(f"input file {sha[:12]}: being checked whole")
        part = self.partials.get(sha)
        if part is None:
            if digests is None:
                raise Diverged(f"input file {sha[:12]}: a chunk before its digests")
            write_atomic(self._digests(sha), b"".join(digests), durable=True, mode=0o600)
            fd = os.open(self._part(sha), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            part = self.partials[sha] = Partial(size, tuple(digests))
            self._hashing[sha] = _Run()
        elif digests is not None and tuple(digests) != part.digests:
            raise Diverged(f"input file {sha[:12]}: digests other than those kept")
        if index in part.have:
            raise Diverged(f"input file {sha[:12]}: chunk {index} is kept already")
        fd = os.open(self._part(sha), os.O_WRONLY)
        try:
            os.pwrite(fd, data, index * p.CHUNK_BYTES)
        finally:
            os.close(fd)
        part.have.add(index)
        run = self._hashing.setdefault(sha, _Run())
        if index == run.next:  # in order: hashed now, from memory (no read back)
            run.sha256.update(data)
            run.next += 1
        return not part.missing()

    def complete(self, sha: str) -> _Run:
        """File `sha` has every chunk: it is being checked from now (`check`, off the loop,
        then `checked`); nothing writes or drops it meanwhile. Its hash so far."""
        self.checking.add(sha)
        return self._hashing.pop(sha, None) or _Run()

    def check(self, sha: str, run: _Run) -> str | None:
        """Check a file with every chunk against its name, hashing on from `run` (what
        came after a gap is read back 1 MiB at a time): fsynced and renamed to its name
        (read-only), and None; or removed, and the hash its bytes have. Touches only this
        file: safe off the loop while `sha` is in `checking`. OSError from the disk."""
        h = run.sha256
        with open(self._part(sha), "rb") as f:
            f.seek(run.next * p.CHUNK_BYTES)
            while block := f.read(_READ):
                h.update(block)
            got = h.hexdigest()
            if got == sha:
                os.fsync(f.fileno())  # its chunks were not synced one by one
        if got != sha:
            self._part(sha).unlink(missing_ok=True)
            return got
        os.chmod(self._part(sha), 0o444)  # jobs read it; nothing here writes it again
        os.replace(self._part(sha), self.path(sha))
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    def checked(self, sha: str) -> int:
        """The check of file `sha` is over (whatever it found): it is no longer partial.
        Its size."""
        self.checking.discard(sha)
        self._digests(sha).unlink(missing_ok=True)
        part = self.partials.pop(sha, None)
        if not self.has(sha):
            self._part(sha).unlink(missing_ok=True)
        return 0 if part is None else part.size

    def finish(self, sha: str) -> str | None:
        """`complete`, `check` and `checked` at once, on this thread (at start-up, where
        the re-check has rebuilt the hash, so little or nothing is read back)."""
        try:
            return self.check(sha, self.complete(sha))
        finally:
            self.checked(sha)

    def drop_partial(self, sha: str) -> None:
        """Forget a partial file and its digests (the core forgot it, a write the disk
        refused); not one being checked (the check decides what becomes of it)."""
        if sha in self.checking:
            return
        self._hashing.pop(sha, None)
        self._part(sha).unlink(missing_ok=True)
        self._digests(sha).unlink(missing_ok=True)
        self.partials.pop(sha, None)

    def evict(self, max_bytes: int, keep: set[str]) -> int:
        """Remove the least recently used files, partial or whole, until the store takes
        at most `max_bytes`; never those in `keep`. Returns how many were removed."""
        entries = []
        for sha, size in self.whole():
            entries.append((self._mtime(self.path(sha)), sha, size, False))
        for sha, part in self.partials.items():
            if sha in self.checking:
                continue  # being checked: whole in a moment, or gone
            entries.append((self._mtime(self._part(sha)), sha, part.size, True))
        entries.sort()
        total = sum(e[2] for e in entries)
        removed = 0
        for _, sha, size, partial in entries:
            if total <= max_bytes:
                break
            if sha in keep:
                continue
            if partial:
                self.drop_partial(sha)
            else:
                self.path(sha).unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def adopt(self, sha: str, path: Path) -> None:
        """Take whole file `sha` from `path` in this store's folder (checked by hash by
        whoever wrote it there: a runtime's files from the package index), in place of
        any partial one: read-only under its name, durably. OSError from the disk."""
        if sha in self.checking:
            raise OSError(f"input file {sha[:12]} is being checked")
        self.drop_partial(sha)
        os.chmod(path, 0o444)
        os.replace(path, self.path(sha))
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, sha: str) -> None:
        """Remove whole file `sha` (a runtime's module, once it is in the payload cache)."""
        self.path(sha).unlink(missing_ok=True)

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0


class FileChecker(threading.Thread):
    """Checks complete input files off the loop (FileStore.check): what came out of
    order is read back and the file fsynced there, so a big file's end holds up neither
    the dealers' answers nor `alive`. Each check done is queued in `done` (sha, the hash
    its bytes have or None, an OSError or None) and signalled on a pipe the loop polls,
    as the spool writer does (jobber._spool.SpoolWriter)."""

    def __init__(self, store: FileStore) -> None:
        super().__init__(name="file-checker", daemon=True)
        self.store = store
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.fd, self._signal = os.pipe()
        os.set_blocking(self.fd, False)

    def put(self, sha: str, run: _Run) -> None:
        self._todo.put((sha, run))

    def stop(self) -> None:
        """Finish the checks queued, then end (joined)."""
        self._todo.put(None)
        self.join()
        os.close(self.fd)
        os.close(self._signal)

    def run(self) -> None:
        while (item := self._todo.get()) is not None:
            sha, run = item
            try:
                self.done.put((sha, self.store.check(sha, run), None))
            except OSError as e:
                self.done.put((sha, None, e))
            os.write(self._signal, b"x")
