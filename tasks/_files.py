"""Input files: read-only files a job's payload reads, named by their content.

An InputFile is made once, where the task is built, from a host file
(`from_path`) or from bytes (`from_bytes`): its SHA-256, its size and the
SHA-256 of each CHUNK_BYTES chunk, the form it travels in (docs/protocol.md,
`fetch` and `chunk`). A file from a path is streamed once to hash it, a chunk at
a time, and is never held whole: the dealer reads each chunk again from the path
when a jobber asks for it (`read_chunk`), so a task over a 1 GB file costs the
dealer no 1 GB of memory. The file must therefore not change while the dealer
runs; a chunk that no longer matches its digest is refused, not sent (each chunk is
hashed when first served, and again only if the file's identity changed since:
`read_chunk`).

Where a payload sees its files (`guest_files`): a job's own files (`Job.files`)
and the task's (`Task.files`) by NAME at `/input/NAME`, one path component; a
payload's (`Payload.files`: e.g. a language runtime's library) at absolute guest
paths of its choosing, outside `/input`. Two of them at one path, or a path that
is also a directory of another, is an error naming both.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocol import CHUNK_BYTES, MAX_FILE_BYTES, MAX_JOB_FILES, FileRef, chunk_count
from protocol._records import _GUEST_PATH
from tasks._paths import _caller, _resolve, _shown

# a file's ctime moves with each write, by ticks of a coarse clock (a few ms): a file
# changed more recently than this is not taken as unchanged by its identity (read_chunk)
SETTLED_NS = 50_000_000
INPUT_DIR = "/input"  # where a job's and a task's files are, by name
# one path component, as a guest path allows it: no "/", never "." or ".."
_NAME = re.compile(r"\A(?!\.\.?\Z)[A-Za-z0-9._+-]{1,255}\Z")


class InputFileError(ValueError):
    """An input file that cannot be served: unreadable, too big, badly named or placed."""


@dataclass(frozen=True, slots=True)
class InputFile:
    """A read-only input file: its SHA-256 (hex), size, and each chunk's SHA-256.

    Two InputFiles are equal when their bytes are (same hash and size), wherever they
    are read from. Make one with `from_path` or `from_bytes`."""

    sha256: str
    size: int
    digests: tuple[bytes, ...] = field(repr=False, compare=False)
    path: Path | None = field(default=None, compare=False)  # read when served, if set
    data: bytes | None = field(default=None, repr=False, compare=False)  # else these bytes

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> InputFile:
        """A host file, hashed by streaming it once (one chunk in memory at a time). A
        relative path is relative to the calling file's directory, as for payloads."""
        path = _resolve(path, _caller())
        shown = _shown(path)
        whole = hashlib.sha256()
        digests: list[bytes] = []
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        size = 0
        try:
            with open(path, "rb", buffering=0) as f:
                if not os.path.isfile(path):
                    raise InputFileError(f"input file {shown} is not a regular file")
                while True:
                    n = _fill(f, view)
                    if n == 0 and digests:
                        break
                    chunk = view[:n]
                    whole.update(chunk)
                    digests.append(hashlib.sha256(chunk).digest())
                    size += n
                    if size > MAX_FILE_BYTES:
                        raise InputFileError(
                            f"input file {shown} is over the wire's cap of {MAX_FILE_BYTES:,} bytes"
                        )
                    if n < CHUNK_BYTES:
                        break
        except OSError as e:
            raise InputFileError(f"cannot read input file {shown}: {e.strerror or e}") from None
        return cls(whole.hexdigest(), size, tuple(digests), path=path.resolve())

    @classmethod
    def from_bytes(cls, data: bytes) -> InputFile:
        """An input file of these bytes (kept in memory)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("InputFile.from_bytes takes bytes")
        data = bytes(data)
        if len(data) > MAX_FILE_BYTES:
            raise InputFileError(f"input file of {len(data):,} bytes: over the wire's cap")
        digests = tuple(
            hashlib.sha256(data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]).digest()
            for i in range(chunk_count(len(data)))
        )
        return cls(hashlib.sha256(data).hexdigest(), len(data), digests, data=data)

    @property
    def ref(self) -> FileRef:
        """What a JobSpec names it by."""
        return FileRef(self.sha256, self.size)

    def read_chunk(self, index: int, checked: dict[int, tuple] | None = None) -> bytes:
        """Chunk `index`'s bytes, read now (from the path with one pread). IndexError past
        the end; OSError if the path cannot be read; InputFileError if the bytes read are
        not those hashed (the file changed since).

        Bytes read from a path are hashed against the chunk's digest. `checked`, kept by
        the caller between calls (chunk index -> the file's identity when that chunk's
        bytes were last found right), spares the hash of a chunk served again while the
        file is unchanged: its device, inode, size, mtime and ctime as they were (any
        write changes the ctime, which no user call can set back). A file changed in the
        last SETTLED_NS is hashed every time: a second write within the clock's tick
        would leave its ctime as it was. Bytes in memory are never hashed again."""
        if not 0 <= index < len(self.digests):
            raise IndexError(f"chunk {index} of a file of {len(self.digests)} chunks")
        start = index * CHUNK_BYTES
        length = min(CHUNK_BYTES, self.size - start)
        if self.data is not None:
            return self.data[start : start + length]
        assert self.path is not None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            data = os.pread(fd, length, start)
        finally:
            os.close(fd)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if checked is not None and checked.get(index) == identity and len(data) == length:
            return data
        if len(data) != length or hashlib.sha256(data).digest() != self.digests[index]:
            raise InputFileError(
                f"input file {self.path or self.sha256[:12]}: chunk {index} differs from the "
                "bytes hashed when the task was built (the file changed)"
            )
        if checked is not None and time.time_ns() - st.st_ctime_ns > SETTLED_NS:
            checked[index] = identity
        return data


def _fill(f, view: memoryview) -> int:
    """Read into `view` until it is full or the file ends; how many bytes were read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def check_name(name: object, where: str) -> str:
    """`name` if it is one guest path component (a file under /input), else an error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputFileError(
            f"{where}: input file name {name!r} must be 1 to 255 of A-Z a-z 0-9 . _ + - "
            "(one path component, not '.' or '..')"
        )
    return name


def named_files(
    files: Mapping[str, InputFile] | Iterable[tuple[str, InputFile]], where: str
) -> tuple[tuple[str, InputFile], ...]:
    """Files by name, checked, as a sorted tuple of (name, InputFile): hashable."""
    pairs = tuple(sorted(files.items() if isinstance(files, Mapping) else files, key=_first))
    for name, f in pairs:
        check_name(name, where)
        if not isinstance(f, InputFile):
            raise TypeError(f"{where}: input file {name!r} is {f!r}, not a tasks.InputFile")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise InputFileError(f"{where}: an input file name is given twice")
    if len(pairs) > MAX_JOB_FILES:
        raise InputFileError(f"{where}: {len(pairs)} input files, over the wire's cap")
    return pairs


def shared_files(
    task_files: Mapping[str, InputFile], payload_files: Mapping[str, InputFile]
) -> dict[str, InputFile]:
    """Every job's files by guest path: the payload's where it says, the task's at
    /input/NAME. InputFileError for a bad name or path, or two that collide."""
    out: dict[str, InputFile] = {}
    for path, f in payload_files.items():
        if not isinstance(path, str) or not _GUEST_PATH.match(path):
            raise InputFileError(f"Payload.files: {path!r} is not an absolute guest path")
        if path == INPUT_DIR or path.startswith(INPUT_DIR + "/"):
            raise InputFileError(f"Payload.files: {path} is under {INPUT_DIR}, the task's")
        if not isinstance(f, InputFile):
            raise TypeError(f"Payload.files: {path} is {f!r}, not a tasks.InputFile")
        out[path] = f
    for name, f in named_files(task_files, "Task.files"):
        out[f"{INPUT_DIR}/{name}"] = f
    _no_nesting(out, "the payload's files")
    if len(out) > MAX_JOB_FILES:
        raise InputFileError(f"{len(out)} input files shared by every job: over the wire's cap")
    return out


def guest_files(shared: Mapping[str, InputFile], job_files: Iterable[tuple[str, InputFile]]):
    """A job's files by guest path: `shared` (see shared_files) and its own at
    /input/NAME. InputFileError if one of its names repeats a task-wide one."""
    out = dict(shared)
    for name, f in job_files:
        path = f"{INPUT_DIR}/{name}"
        if path in out:
            raise InputFileError(
                f"the job's input file {name!r} repeats a task-wide one (Task.files)"
            )
        out[path] = f
    return out


def _first(pair: tuple[str, InputFile]) -> str:
    return pair[0]


def _no_nesting(files: Mapping[str, InputFile], what: str) -> None:
    for path in files:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in files:
                raise InputFileError(f"{what}: {parent} is a file and a directory of {path}")
            parent = parent.rpartition("/")[0]
