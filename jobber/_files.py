"""The jobber shell's input-file store: files jobs read, kept in the data directory by
their SHA-256, written a chunk at a time as they come, and kept ("sticky") within the
cache's allowance, least recently used evicted first, never one a job in hand reads.

On disk, under `files/`:

    <sha>           a whole file, checked against its name, read-only (0444)
    <sha>.part      a file coming: its full size (sparse until its chunks are in)
    <sha>.digests   beside it: the SHA-256 of each of its chunks (chunk 0 brought them)

A chunk is written at its offset and fsynced before the core hears of it; the digests
are written (atomically) before chunk 0 is. A restarted jobber **re-checks** each
partial file on start: every chunk whose bytes on disk hash to its digest is kept, the
rest are fetched again, so a torn or lost write costs a chunk, never a wrong byte. The
whole file's SHA-256 is computed as its chunks come, over the run of chunks from its
start; once every chunk is in, what is left (chunks that came out of order or before a
restart) is read back 1 MiB at a time, and the file is renamed to its name, or removed.

Nothing here decides: the core (jobber._inputs) says which chunk to keep; the shell
(jobber._client) bounds the store's size with the payload cache's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
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


class FileStore:
    """Input files by hash: whole ones, and partial ones with their digests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.partials: dict[str, Partial] = {}
        self._hashing: dict[str, _Run] = {}  # partial file -> its hash so far
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
        with open(self._part(sha), "rb") as f:
            for i in range(n):
                f.seek(i * p.CHUNK_BYTES)
                data = f.read(min(p.CHUNK_BYTES, size - i * p.CHUNK_BYTES))
                if hashlib.sha256(data).digest() == digests[i]:
                    part.have.add(i)
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
        """Write chunk `index` (checked by the core) and fsync it; with chunk 0, keep the
        digests first. True once the file has every chunk (then `finish` it). OSError if
        the disk will not take it."""
        part = self.partials.get(sha)
        if part is None:
            if digests is None:
                raise ValueError(f"input file {sha[:12]}: a chunk before its digests")
            write_atomic(self._digests(sha), b"".join(digests), durable=True, mode=0o600)
            fd = os.open(self._part(sha), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            part = self.partials[sha] = Partial(size, tuple(digests))
        fd = os.open(self._part(sha), os.O_WRONLY)
        try:
            os.pwrite(fd, data, index * p.CHUNK_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
        part.have.add(index)
        self._hash_on(sha, index, data)
        return not part.missing()

    def _hash_on(self, sha: str, index: int, data: bytes) -> None:
        """Hash the file as its chunks come, over the run of chunks from its start
        (fetches go out in order, so that run is nearly all of it): `finish` then reads
        back only what came out of order or before a restart, and a big file's whole
        check does not hold up the loop (and the jobber's `alive`) at its end."""
        run = self._hashing.setdefault(sha, _Run())
        if index != run.next:
            return
        run.sha256.update(data)
        run.next += 1
        part = self.partials[sha]
        n = p.chunk_count(part.size)
        with open(self._part(sha), "rb") as f:
            while run.next < n and run.next in part.have:
                f.seek(run.next * p.CHUNK_BYTES)
                run.sha256.update(f.read(min(p.CHUNK_BYTES, part.size - run.next * p.CHUNK_BYTES)))
                run.next += 1

    def finish(self, sha: str) -> str | None:
        """Check a file with every chunk against its name: renamed to it (read-only) and
        None, or removed and the hash its bytes have."""
        run = self._hashing.pop(sha, None) or _Run()
        h = run.sha256
        with open(self._part(sha), "rb") as f:
            f.seek(run.next * p.CHUNK_BYTES)
            while block := f.read(_READ):
                h.update(block)
        got = h.hexdigest()
        if got != sha:
            self.drop_partial(sha)
            return got
        os.chmod(self._part(sha), 0o444)  # jobs read it; nothing here writes it again
        os.replace(self._part(sha), self.path(sha))
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._digests(sha).unlink(missing_ok=True)
        self.partials.pop(sha, None)
        return None

    def drop_partial(self, sha: str) -> None:
        """Forget a partial file and its digests (a bad file, a write the disk refused)."""
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

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
