"""A job's checkpoint directory: `/checkpoint`, writable, in memory, saved by a rename.

A job given a checkpoint allowance (`Limits.checkpoint_kb`) sees one more preopened
directory, ``/checkpoint`` (after ``/``, if it has input files), flat and writable,
held in this process's memory, never a host folder. At start it holds ``state`` if
the job resumes (the bytes saved by an earlier run of it), else nothing. The payload
saves its progress by writing a file there and renaming it onto ``state``, or by
writing ``state`` and closing it: at that moment the bytes ``state`` holds are
*saved* (``Scratch.saved``, and the ``on_save`` callback the caller gave, with
the fuel used so far), the checkpoint a later run of the job may resume from. C
and Python use plain file calls (`fopen`, `rename`, `open`, `os.replace`).

What the payload sees is the same on every machine: dev 0, each file's inode fixed
by the order it was made in (the directory's is 1), nlink 1, its size, every time
0; a listing in byte order of the names. All its files together hold at most
`limit` bytes (the allowance): a write past it writes what fits and, if nothing
does, fails ENOSPC; at most MAX_FILES files. No subdirectories, links or symlinks
(ENOTSUP); a name is one path component. A rename or link between ``/checkpoint``
and the input files is EXDEV. Written and read bytes cost fuel at the input files'
rate (_guest.read_fuel).

Every function here answers for a descriptor of this directory or one of its files;
_files sends them here (`HANDLERS`, by the descriptor each call names), and _wasi's
fd_write sends writes to them.

Why one module: the functions are one table (HANDLERS) over one directory (Scratch),
and what each answers for the directory and for a file in it is one contract, read and
tested as a whole, as _files' is for the input files; split by function, the rules of
the directory (its allowance, what a save is) would be spread over files.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from sandbox import _job
from sandbox._guest import (
    EBADF,
    EEXIST,
    EINVAL,
    EISDIR,
    ENAMETOOLONG,
    ENOENT,
    ENOTDIR,
    ENOTSOCK,
    ENOTSUP,
    IOVEC,
    SUCCESS,
    U64,
    Errno,
    Guest,
    read_fuel,
    seek,
)

DIR = "/checkpoint"
STATE = b"state"
MAX_FILES = 16
MAX_NAME_BYTES = 255
ENOSPC, EXDEV, ENOTEMPTY, EPERM = 51, 75, 55, 63

_UNKNOWN, _DIRECTORY, _REGULAR = 0, 3, 4
_FD_DATASYNC, _FD_READ, _FD_SEEK, _FD_FDSTAT_SET_FLAGS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FD_SYNC, _FD_TELL, _FD_WRITE, _FD_ADVISE, _FD_ALLOCATE = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
_FD_FILESTAT_GET, _FD_FILESTAT_SET_SIZE = 1 << 21, 1 << 22
_RIGHTS_ALL = (1 << 30) - 1
_FILE_RIGHTS = (
    _FD_DATASYNC
    | _FD_READ
    | _FD_SEEK
    | _FD_FDSTAT_SET_FLAGS
    | _FD_SYNC
    | _FD_TELL
    | _FD_WRITE
    | _FD_ADVISE
    | _FD_ALLOCATE
    | _FD_FILESTAT_GET
    | _FD_FILESTAT_SET_SIZE
)
_O_CREAT, _O_DIRECTORY, _O_EXCL, _O_TRUNC = 1, 2, 4, 8
_FDFLAG_APPEND, _FDFLAG_NONBLOCK = 1, 4
_WHENCE_SET, _WHENCE_CUR, _WHENCE_END = 0, 1, 2
_DIRENT = struct.Struct("<QQIB3x")


class Blob:
    """One file's bytes, and its inode."""

    __slots__ = ("data", "ino")

    def __init__(self, ino: int, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.ino = ino


class Scratch:
    """The directory: its files by name, and what was saved last."""

    def __init__(
        self,
        limit: int,
        state: bytes | None = None,
        on_save: Callable[[bytes, int], None] | None = None,
    ) -> None:
        if state is not None and len(state) > limit:
            raise ValueError(f"a checkpoint of {len(state)} bytes: over its {limit} allowed")
        self.limit = limit
        self.files: dict[bytes, Blob] = {}
        self._next_ino = 2  # the directory is inode 1
        self.saved: bytes | None = None  # the last state saved by this run
        self.saves = 0
        self.on_save = on_save
        if state is not None:
            self.files[STATE] = self._blob(state)

    def _blob(self, data: bytes = b"") -> Blob:
        blob = Blob(self._next_ino, data)
        self._next_ino += 1
        return blob

    def used(self, fds) -> int:
        """Bytes held: every file named here or still open."""
        blobs = {id(b): b for b in self.files.values()}
        for entry in fds.table.values():
            if isinstance(entry, ScratchFile):
                blobs[id(entry.blob)] = entry.blob
        return sum(len(b.data) for b in blobs.values())

    def save(self, fuel: int) -> None:
        """`state` as it is now is saved; `fuel`: what the job has used so far."""
        blob = self.files.get(STATE)
        if blob is None:
            return
        self.saved = bytes(blob.data)
        self.saves += 1
        if self.on_save is not None:
            self.on_save(self.saved, fuel)


class ScratchDir:
    """The directory, opened (the preopen, or an open of "." in it)."""

    __slots__ = ("scratch", "preopen", "flags")

    def __init__(self, scratch: Scratch, preopen: bool = False) -> None:
        self.scratch = scratch
        self.preopen = preopen
        self.flags = 0


class ScratchFile:
    """One of its files, opened: position, and what it was opened for."""

    __slots__ = ("scratch", "blob", "pos", "flags", "readable", "writable", "written")

    def __init__(
        self, scratch: Scratch, blob: Blob, flags: int, readable: bool, writable: bool
    ) -> None:
        self.scratch = scratch
        self.blob = blob
        self.pos = 0
        self.flags = flags
        self.readable = readable
        self.writable = writable
        self.written = False


def _name(guest: Guest, ptr: int, n: int) -> bytes:
    """A path relative to the directory, as one name (b"." for the directory itself)."""
    if n > 4096:
        raise Errno(ENAMETOOLONG)
    raw = guest.read(ptr, n).rstrip(b"/") or b"."
    if raw in (b".", b"./"):
        return b"."
    if raw.startswith(b"/"):
        raise Errno(ENOENT)  # wasi-libc never passes one: there is no absolute path here
    parts = [x for x in raw.split(b"/") if x and x != b"."]
    if len(parts) == 1 and parts[0] != b".." and b"\0" not in parts[0]:
        if len(parts[0]) > MAX_NAME_BYTES:
            raise Errno(ENAMETOOLONG)
        return parts[0]
    if parts and parts[0] == b"..":
        raise Errno(EPERM)  # nothing above it is reachable from here
    return raw  # a deeper path: no subdirectories here


def _fuel(job: _job.Job, guest: Guest, n: int) -> None:
    if n > 0:
        guest.charge(job, read_fuel(n))


def _stat(guest: Guest, ptr: int, ino: int, kind: int, size: int) -> None:
    guest.check(ptr, 64)
    guest.write(ptr, struct.pack("<QQB", 0, ino, kind))
    guest.write(ptr + 24, struct.pack("<QQQQQ", 1, size, 0, 0, 0))


# --- the functions ------------------------------------------------------------------


def path_open(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, _lookup, ptr, n, oflags, rights, _inheriting, fdflags, out = args
    d = fds.table[fd]
    guest = Guest.of(job, caller)
    name = _name(guest, ptr, n)
    guest.check(out, 4)
    s = d.scratch
    writing = bool(rights & (_FD_WRITE | _FD_ALLOCATE | _FD_FILESTAT_SET_SIZE)) or bool(
        fdflags & _FDFLAG_APPEND
    )
    if name == b".":
        if oflags & (_O_CREAT | _O_TRUNC) or writing:
            return EISDIR
        guest.put_u32(out, fds.add(ScratchDir(s)))
        return SUCCESS
    if b"/" in name:
        return ENOENT if name.split(b"/")[0] not in s.files else ENOTDIR
    blob = s.files.get(name)
    if blob is None:
        if not oflags & _O_CREAT:
            return ENOENT
        if len(s.files) >= MAX_FILES:
            return ENOSPC
        blob = s.files[name] = s._blob()
    elif oflags & _O_CREAT and oflags & _O_EXCL:
        return EEXIST
    if oflags & _O_DIRECTORY:
        return ENOTDIR
    if oflags & _O_TRUNC:
        if not writing:
            return EINVAL
        blob.data.clear()
    readable = bool(rights & _FD_READ)
    entry = ScratchFile(s, blob, fdflags & (_FDFLAG_APPEND | _FDFLAG_NONBLOCK), readable, writing)
    guest.put_u32(out, fds.add(entry))  # (EMFILE past _files.MAX_FDS: the file stays made)
    return SUCCESS


def fd_write(job: _job.Job, caller, args) -> int:
    fd, iovs, n, nwritten = args
    f = job.files.table.get(fd)
    if not isinstance(f, ScratchFile):
        return EISDIR if isinstance(f, ScratchDir) else EBADF
    if not f.writable:
        return EBADF
    guest = Guest.of(job, caller)
    if n > 1024:
        return EINVAL
    guest.check(iovs, 8 * n)
    vecs = [IOVEC.unpack_from(guest.view, iovs + 8 * i) for i in range(n)]
    for ptr, length in vecs:
        guest.check(ptr, length)
    guest.check(nwritten, 4)
    data = b"".join(guest.read(ptr, length) for ptr, length in vecs)
    blob = f.blob
    pos = len(blob.data) if f.flags & _FDFLAG_APPEND else f.pos
    grow = max(0, pos + len(data) - len(blob.data))
    room = f.scratch.limit - f.scratch.used(job.files)
    if grow > room:
        data = data[: max(0, len(data) - (grow - room))]
        if not data:
            return ENOSPC
    _fuel(job, guest, len(data))
    if pos > len(blob.data):
        blob.data.extend(bytes(pos - len(blob.data)))
    blob.data[pos : pos + len(data)] = data
    f.pos = pos + len(data)
    f.written = True
    guest.put_u32(nwritten, len(data))
    return SUCCESS


def _read(job: _job.Job, caller, f: ScratchFile, iovs: int, n: int, out: int, pos: int) -> int:
    guest = Guest.of(job, caller)
    if n > 1024:
        raise Errno(EINVAL)
    guest.check(iovs, 8 * n)
    vecs = [IOVEC.unpack_from(guest.view, iovs + 8 * i) for i in range(n)]
    for ptr, length in vecs:
        guest.check(ptr, length)
    guest.check(out, 4)
    data = f.blob.data
    total = 0
    for ptr, length in vecs:
        take = max(0, min(length, len(data) - pos - total))
        if not take:
            break
        guest.write(ptr, bytes(data[pos + total : pos + total + take]))
        total += take
    _fuel(job, guest, total)
    guest.put_u32(out, total)
    return total


def fd_read(job: _job.Job, caller, args) -> int:
    fd, iovs, n, nread = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir):
        return EISDIR
    if not f.readable:
        return EBADF
    f.pos += _read(job, caller, f, iovs, n, nread, f.pos)
    return SUCCESS


def fd_pread(job: _job.Job, caller, args) -> int:
    fd, iovs, n, offset, nread = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir):
        return EISDIR
    if not f.readable:
        return EBADF
    if offset < 0:
        return EINVAL
    _read(job, caller, f, iovs, n, nread, offset)
    return SUCCESS


def fd_pwrite(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return ENOTSUP  # wasi-libc's pwrite; nothing here needs it


def fd_seek(job: _job.Job, caller, args) -> int:
    fd, offset, whence, out = args
    f = job.files.table[fd]
    if whence > _WHENCE_END:
        return EINVAL
    if isinstance(f, ScratchDir):
        return EBADF
    guest = Guest.of(job, caller)
    guest.check(out, 8)
    return seek(guest, f, (0, f.pos, len(f.blob.data))[whence], offset, out)


def fd_tell(job: _job.Job, caller, args) -> int:
    fd, out = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir):
        return EBADF
    Guest.of(job, caller).put_u64(out, f.pos)
    return SUCCESS


def fd_close(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    (fd,) = args
    f = job.files.table.pop(fd)
    if isinstance(f, ScratchFile) and f.written and f.scratch.files.get(STATE) is f.blob:
        f.scratch.save(Guest.of(job, caller).fuel_used(job))
    return SUCCESS


def fd_fdstat_get(job: _job.Job, caller, args) -> int:
    fd, out = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir):
        kind, base, inheriting = _DIRECTORY, _RIGHTS_ALL, _RIGHTS_ALL
    else:
        base = _FILE_RIGHTS if f.writable else _FILE_RIGHTS & ~(_FD_WRITE | _FD_ALLOCATE)
        kind, inheriting = _REGULAR, 0
    guest = Guest.of(job, caller)
    guest.check(out, 24)
    guest.write(out, bytes([kind]))
    guest.write(out + 2, struct.pack("<H", f.flags))
    guest.write(out + 8, struct.pack("<QQ", base, inheriting))
    return SUCCESS


def fd_fdstat_set_flags(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, flags = args
    f = job.files.table[fd]
    if flags & ~(_FDFLAG_APPEND | _FDFLAG_NONBLOCK) or (
        flags & _FDFLAG_APPEND and not isinstance(f, ScratchFile)
    ):
        return ENOTSUP if not flags & ~31 else EINVAL
    f.flags = flags
    return SUCCESS


def fd_filestat_get(job: _job.Job, caller, args) -> int:
    fd, out = args
    f = job.files.table[fd]
    guest = Guest.of(job, caller)
    if isinstance(f, ScratchDir):
        _stat(guest, out, 1, _DIRECTORY, 0)
    else:
        _stat(guest, out, f.blob.ino, _REGULAR, len(f.blob.data))
    return SUCCESS


def fd_filestat_set_size(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, size = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir) or not f.writable:
        return EBADF if isinstance(f, ScratchFile) else EISDIR
    size &= U64
    grow = size - len(f.blob.data)
    if grow > f.scratch.limit - f.scratch.used(job.files):
        return ENOSPC
    if grow > 0:
        f.blob.data.extend(bytes(grow))
    else:
        del f.blob.data[size:]
    f.written = True
    return SUCCESS


def fd_allocate(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, offset, length = args
    f = job.files.table[fd]
    if isinstance(f, ScratchDir) or not f.writable:
        return EBADF
    grow = (offset & U64) + (length & U64) - len(f.blob.data)
    if grow > f.scratch.limit - f.scratch.used(job.files):
        return ENOSPC
    if grow > 0:
        f.blob.data.extend(bytes(grow))
    return SUCCESS


def fd_sync(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return SUCCESS  # in memory: nothing to make durable


def fd_advise(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return EINVAL if args[3] > 5 else SUCCESS


def fd_filestat_set_times(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return SUCCESS  # times stay 0 here, whatever is asked, so replicas agree


def fd_readdir(job: _job.Job, caller, args) -> int:
    fd, buf, buf_len, cookie, used = args
    f = job.files.table[fd]
    if not isinstance(f, ScratchDir):
        return ENOTDIR
    s = f.scratch
    guest = Guest.of(job, caller)
    guest.check(buf, buf_len)
    guest.check(used, 4)
    entries = [(b".", 1, _DIRECTORY), (b"..", 1, _DIRECTORY)]
    entries += [(name, s.files[name].ino, _REGULAR) for name in sorted(s.files)]
    out = bytearray()
    for i in range(min(cookie & U64, len(entries)), len(entries)):
        if len(out) >= buf_len:
            break
        name, ino, kind = entries[i]
        out += _DIRENT.pack(i + 1, ino, len(name), kind) + name
    del out[buf_len:]
    _fuel(job, guest, len(out))
    guest.write(buf, bytes(out))
    guest.put_u32(used, len(out))
    return SUCCESS


def fd_prestat_get(job: _job.Job, caller, args) -> int:
    fd, out = args
    f = job.files.table[fd]
    if not isinstance(f, ScratchDir) or not f.preopen:
        return EBADF
    guest = Guest.of(job, caller)
    guest.check(out, 8)
    guest.write(out, b"\0")
    guest.write(out + 4, struct.pack("<I", len(DIR)))
    return SUCCESS


def fd_prestat_dir_name(job: _job.Job, caller, args) -> int:
    fd, ptr, n = args
    f = job.files.table[fd]
    if not isinstance(f, ScratchDir):
        return ENOTDIR
    if not f.preopen:
        return EBADF
    if n < len(DIR):
        return ENAMETOOLONG
    Guest.of(job, caller).write(ptr, DIR.encode())
    return SUCCESS


def path_filestat_get(job: _job.Job, caller, args) -> int:
    fd, _lookup, ptr, n, out = args
    s = job.files.table[fd].scratch
    guest = Guest.of(job, caller)
    name = _name(guest, ptr, n)
    guest.check(out, 64)
    if name == b".":
        _stat(guest, out, 1, _DIRECTORY, 0)
        return SUCCESS
    blob = s.files.get(name)
    if blob is None:
        return ENOENT if b"/" not in name or name.split(b"/")[0] not in s.files else ENOTDIR
    _stat(guest, out, blob.ino, _REGULAR, len(blob.data))
    return SUCCESS


def path_filestat_set_times(job: _job.Job, caller, args) -> int:
    fd, _lookup, ptr, n = args[:4]
    s = job.files.table[fd].scratch
    name = _name(Guest.of(job, caller), ptr, n)
    return SUCCESS if name == b"." or name in s.files else ENOENT


def path_unlink_file(job: _job.Job, caller, args) -> int:
    fd, ptr, n = args
    s = job.files.table[fd].scratch
    name = _name(Guest.of(job, caller), ptr, n)
    if name == b".":
        return EISDIR
    if s.files.pop(name, None) is None:
        return ENOENT
    return SUCCESS


def path_remove_directory(job: _job.Job, caller, args) -> int:
    fd, ptr, n = args
    s = job.files.table[fd].scratch
    name = _name(Guest.of(job, caller), ptr, n)
    if name == b".":
        return ENOTEMPTY if s.files else EPERM
    return ENOTDIR if name in s.files else ENOENT


def path_create_directory(job: _job.Job, caller, args) -> int:
    fd, ptr, n = args
    s = job.files.table[fd].scratch
    name = _name(Guest.of(job, caller), ptr, n)
    return EEXIST if name == b"." or name in s.files else ENOTSUP


def path_rename(job: _job.Job, caller, args) -> int:
    fd, ptr, n, fd2, ptr2, n2 = args
    table = job.files.table
    d, d2 = table.get(fd), table.get(fd2)
    if d2 is None:
        return EBADF
    if not isinstance(d, ScratchDir) or not isinstance(d2, ScratchDir):
        return EXDEV if isinstance(d2, ScratchDir) or hasattr(d2, "node") else ENOTDIR
    guest = Guest.of(job, caller)
    old, new = _name(guest, ptr, n), _name(guest, ptr2, n2)
    s = d.scratch
    if old == b"." or new == b".":
        return EISDIR if old != b"." else EINVAL
    blob = s.files.get(old)
    if blob is None:
        return ENOENT
    if b"/" in new:
        return ENOENT
    if old != new:
        del s.files[old]
        s.files[new] = blob
    if new == STATE:
        s.save(guest.fuel_used(job))
    return SUCCESS


def path_readlink(job: _job.Job, caller, args) -> int:
    fd, ptr, n = args[:3]
    s = job.files.table[fd].scratch
    name = _name(Guest.of(job, caller), ptr, n)
    return EINVAL if name == b"." or name in s.files else ENOENT


def refused(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return ENOTSUP  # path_symlink, path_link: no links here


def sock(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    return ENOTSOCK


# name -> the function for a descriptor of the directory (or one of its files); the
# argument holding that descriptor is args[0], but for path_symlink's (args[2])
HANDLERS: dict[str, Callable] = {
    "fd_read": fd_read,
    "fd_pread": fd_pread,
    "fd_pwrite": fd_pwrite,
    "fd_seek": fd_seek,
    "fd_tell": fd_tell,
    "fd_close": fd_close,
    "fd_fdstat_get": fd_fdstat_get,
    "fd_fdstat_set_flags": fd_fdstat_set_flags,
    "fd_filestat_get": fd_filestat_get,
    "fd_filestat_set_size": fd_filestat_set_size,
    "fd_filestat_set_times": fd_filestat_set_times,
    "fd_allocate": fd_allocate,
    "fd_sync": fd_sync,
    "fd_datasync": fd_sync,
    "fd_advise": fd_advise,
    "fd_readdir": fd_readdir,
    "fd_prestat_get": fd_prestat_get,
    "fd_prestat_dir_name": fd_prestat_dir_name,
    "path_open": path_open,
    "path_filestat_get": path_filestat_get,
    "path_filestat_set_times": path_filestat_set_times,
    "path_unlink_file": path_unlink_file,
    "path_remove_directory": path_remove_directory,
    "path_create_directory": path_create_directory,
    "path_rename": path_rename,
    "path_readlink": path_readlink,
    "path_symlink": refused,
    "path_link": refused,
    "sock_accept": sock,
    "sock_recv": sock,
    "sock_send": sock,
    "sock_shutdown": sock,
}
SCRATCH = (ScratchDir, ScratchFile)
