"""What a payload sees of its files: every WASI function on descriptors and paths.

All the file descriptor, path and socket functions of WASI preview 1 are
defined here, over wasmtime's, stdin included: one code path whether a job
has input files or not. fd 0 reads the job's bytes exactly as wasmtime's stdin
did (into the first non-empty iovec, the only one checked), and, given valid
arguments, fds 0, 1 and 2 answer fdstat, filestat, seek, close and the rest
as wasmtime answered them (tests/sandbox/test_sandbox_files.py compares the
two call by call); writing to fd 1 and 2 stays with _wasi's ``fd_write``. A
job without files has no preopened directory, so it behaves, call for call,
as before it could have files, and its fuel is what it was.

Bad arguments are where the two part: every value is checked against its
field's range first, on any descriptor, and one out of it is EINVAL (whence
over 2, advice over 5, a flag bit WASI does not define), where wasmtime
trapped; no alignment is required of struct pointers, where wasmtime trapped;
more than MAX_IOVECS iovecs are EINVAL on stdin too, where wasmtime read them;
a pointer out of memory is EFAULT, where wasmtime said ENOMEM for an iovec
and EINTR for ``nread``. docs/sandbox.md ("Stdin and stdio") lists them, and
the tests check each.

A job's input files (a _tree.Volume) are one read-only tree, seen through one
preopened directory, ``/`` at fd 3, so that wasi-libc resolves every absolute
path against it. Nothing of the host shows: every stat gives dev 0, the
node's inode (see _tree), nlink 1, the file's size (0 for a directory), every
time 0, and the type (regular file or directory). A directory lists ``.``,
``..`` and its entries in byte order, with cookies 1, 2, 3, ... ``..`` of the
root is the root, as on any POSIX system, so no path leads out of the tree:
there is nothing above it. A read copies the bytes from the mapped file into
the guest's linear memory, nothing in between.

A read of input files (and a directory listing) costs fuel, 1 per _guest.FUEL_BYTES
bytes copied, rounded up per call, taken from the store before anything is
copied: copying is host work, and a file can be read again without end, so it
must not come free; the rate is fixed, so the fuel is the same everywhere.
Stdin stays free. A long read checks the time limit every COPY_CHUNK bytes.

Anything that would write or create is refused, with the errno a read-only
file system gives (EROFS), or EBADF where the descriptor is not open for
writing; fsync succeeds, as Linux's of a descriptor open for reading;
docs/sandbox.md ("Input files") lists them. Every guest pointer is checked
(EFAULT), at most MAX_IOVECS iovecs go in one call (EINVAL) and MAX_FDS
descriptors may be open (EMFILE).

Why one module: the functions are one table (FUNCTIONS) over one descriptor
table (Fds), and what each answers for fds 0 to 2, for a file and for a
directory is one contract, read and tested against wasmtime's as a whole; the
helpers (iovecs, copying, the flags' ranges) serve only them. Split by
function, the answers for stdio would be spread over files.
"""

from __future__ import annotations

import struct

from sandbox import _job, _scratch
from sandbox._guest import (
    EBADF,
    EEXIST,
    EINVAL,
    EISDIR,
    EMFILE,
    ENAMETOOLONG,
    ENOENT,
    ENOTDIR,
    ENOTSOCK,
    ENOTSUP,
    EROFS,
    ESPIPE,
    IOVEC,
    SUCCESS,
    U64,
    Errno,
    Guest,
    Stopped,
    host,
    read_fuel,
    seek,
)
from sandbox._tree import MAX_PATH_BYTES, Volume

MAX_FDS = 1024  # open descriptors, stdio and the preopen included (a common RLIMIT_NOFILE)
MAX_IOVECS = 1024  # per call (IOV_MAX)
MAX_READ = (1 << 31) - 1  # bytes per read call (SSIZE_MAX of wasm32)
COPY_CHUNK = 16 << 20  # bytes copied between checks of the time limit
PREOPEN_FD = 3


# filetype
_UNKNOWN, _DIRECTORY, _REGULAR = 0, 3, 4
# rights
_FD_DATASYNC, _FD_READ, _FD_SEEK, _FD_FDSTAT_SET_FLAGS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FD_TELL, _FD_WRITE, _FD_ADVISE, _FD_ALLOCATE = 1 << 5, 1 << 6, 1 << 7, 1 << 8
_PATH_OPEN, _FD_READDIR, _PATH_READLINK = 1 << 13, 1 << 14, 1 << 15
_PATH_FILESTAT_GET, _FD_FILESTAT_GET, _FD_FILESTAT_SET_SIZE = 1 << 18, 1 << 21, 1 << 22
_POLL_FD_READWRITE = 1 << 27
_RIGHTS_ALL = (1 << 30) - 1
# what a libc asks for when it opens for writing (wasi-libc and Rust's std alike)
_WRITE_RIGHTS = _FD_WRITE | _FD_DATASYNC | _FD_ALLOCATE | _FD_FILESTAT_SET_SIZE
_FILE_RIGHTS = (
    _FD_READ
    | _FD_SEEK
    | _FD_TELL
    | _FD_ADVISE
    | _FD_FDSTAT_SET_FLAGS
    | _FD_FILESTAT_GET
    | _POLL_FD_READWRITE
)
_DIR_RIGHTS = (
    _PATH_OPEN
    | _FD_READDIR
    | _PATH_READLINK
    | _PATH_FILESTAT_GET
    | _FD_FILESTAT_GET
    | _FD_FDSTAT_SET_FLAGS
    | _FD_ADVISE
)
# oflags, fdflags, and every bit each flags field may have (any other is EINVAL)
_O_CREAT, _O_DIRECTORY, _O_EXCL, _O_TRUNC = 1, 2, 4, 8
_OFLAGS_ALL = 15
_FDFLAG_APPEND, _FDFLAG_DSYNC, _FDFLAG_NONBLOCK, _FDFLAG_SYNC = 1, 2, 4, 16
_FDFLAGS_ALL = 31  # append, dsync, nonblock, rsync, sync
_LOOKUP_SYMLINK_FOLLOW = 1
_FST_ALL = 15  # atim, atim_now, mtim, mtim_now
_RIFLAGS_ALL, _SDFLAGS_ALL = 3, 3  # recv_peek, recv_waitall; rd, wr
_WHENCE_SET, _WHENCE_CUR, _WHENCE_END = 0, 1, 2
_ADVICE_MAX = 5  # normal, sequential, random, willneed, dontneed, noreuse
_DIRENT = struct.Struct("<QQIB3x")  # d_next, d_ino, d_namlen, d_type


# --- descriptors ------------------------------------------------------------------


class _Stdin:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0


class _Out:
    """fd 1 or 2 (written through _wasi's fd_write, which knows them by number)."""

    __slots__ = ()


class _Open:
    """A node of the tree, opened: a file with its position, or a directory."""

    __slots__ = ("node", "pos", "flags", "preopen")

    def __init__(self, node: int, flags: int = 0, preopen: bool = False) -> None:
        self.node = node
        self.pos = 0
        self.flags = flags  # fdflags: NONBLOCK or nothing
        self.preopen = preopen  # the tree's "/" the job starts with (fd_prestat_get)


class Fds:
    """One job's file descriptors: stdin, stdout, stderr, the tree's ``/`` at fd 3, and
    the checkpoint directory (_scratch) after it."""

    __slots__ = ("table", "volume")

    def __init__(
        self, stdin: bytes, volume: Volume | None, scratch: _scratch.Scratch | None = None
    ) -> None:
        self.volume = volume
        self.table: dict[int, _Stdin | _Out | _Open] = {
            0: _Stdin(bytes(stdin)),
            1: _Out(),
            2: _Out(),
        }
        if volume is not None and volume.tree:
            self.table[PREOPEN_FD] = _Open(0, preopen=True)
        if scratch is not None:
            self.table[len(self.table)] = _scratch.ScratchDir(scratch, preopen=True)

    def get(self, fd: int) -> _Stdin | _Out | _Open:
        entry = self.table.get(fd)
        if entry is None:
            raise Errno(EBADF)
        return entry

    def file(self, fd: int, stdio: int, directory: int) -> _Open:
        """fd's open file; Errno `stdio` for fd 0 to 2, `directory` for a directory."""
        entry = self.get(fd)
        if not isinstance(entry, _Open):
            raise Errno(stdio)
        if self.volume.tree.is_dir[entry.node]:
            raise Errno(directory)
        return entry

    def directory(self, fd: int) -> _Open:
        """fd's open directory, for a path function: EBADF for fd 0 to 2, ENOTDIR for a file."""
        entry = self.get(fd)
        if not isinstance(entry, _Open):
            raise Errno(EBADF)
        if not self.volume.tree.is_dir[entry.node]:
            raise Errno(ENOTDIR)
        return entry

    def node(self, fd: int) -> _Open:
        """fd's open node (file or directory); EBADF for fd 0 to 2."""
        entry = self.get(fd)
        if not isinstance(entry, _Open):
            raise Errno(EBADF)
        return entry

    def add(self, entry: _Open) -> int:
        """The lowest free descriptor, now `entry`'s; EMFILE past MAX_FDS."""
        if len(self.table) >= MAX_FDS:
            raise Errno(EMFILE)
        fd = 0
        while fd in self.table:
            fd += 1
        self.table[fd] = entry
        return fd


def _put(guest: Guest, ptr: int, size: int, *fields: tuple[int, bytes]) -> None:
    """A struct of `size` bytes at `ptr`, its fields written and its padding left as it
    was (as wasmtime wrote them); EFAULT unless all of it is in guest memory."""
    guest.check(ptr, size)
    for offset, raw in fields:
        guest.write(ptr + offset, raw)


def _filestat(guest: Guest, ptr: int, volume: Volume | None, node: int) -> None:
    """dev 0, the node's inode, its type, nlink 1, its size, times 0 (all zero, type
    unknown, for fd 0 to 2, as wasmtime gave them)."""
    if volume is None:
        head, tail = bytes(17), bytes(40)
    else:
        kind = _DIRECTORY if volume.tree.is_dir[node] else _REGULAR
        head = struct.pack("<QQB", 0, node + 1, kind)
        tail = struct.pack("<QQQQQ", 1, volume.size[node], 0, 0, 0)
    _put(guest, ptr, 64, (0, head), (24, tail))


def _path(guest: Guest, ptr: int, n: int) -> bytes:
    if n > MAX_PATH_BYTES:
        raise Errno(ENAMETOOLONG)
    return guest.read(ptr, n)


def _iovecs(guest: Guest, ptr: int, n: int) -> list[tuple[int, int]]:
    """The `n` iovecs at `ptr` as guest (pointer, length), the array checked, not the
    buffers; EINVAL past MAX_IOVECS."""
    if n > MAX_IOVECS:
        raise Errno(EINVAL)
    guest.check(ptr, 8 * n)
    if n == 1:  # the common case
        return [IOVEC.unpack_from(guest.view, ptr)]
    return [IOVEC.unpack_from(guest.view, ptr + 8 * i) for i in range(n)]


def _copy(job: _job.Job, guest: Guest, vecs, source: memoryview, pos: int) -> int:
    """Bytes [pos, len(source)) into the guest's iovecs (pointer, length; each checked
    already), in order; how many. The time limit is checked after every COPY_CHUNK
    bytes (Stopped), so that one call cannot run far past it."""
    size, view = len(source), guest.view
    if len(vecs) == 1 and vecs[0][1] <= COPY_CHUNK:  # the common case: one slice
        ptr, length = vecs[0]
        take = min(length, size - pos)
        if take <= 0:
            return 0
        view[ptr : ptr + take] = source[pos : pos + take]
        return take
    total = 0
    for ptr, length in vecs:
        take = min(length, size - pos - total, MAX_READ - total)
        if take <= 0:
            break
        done = 0
        while done < take:
            step = min(take - done, COPY_CHUNK - (total + done) % COPY_CHUNK)
            at = pos + total + done
            view[ptr + done : ptr + done + step] = source[at : at + step]
            done += step
            if not (total + done) % COPY_CHUNK and job.must_stop():
                raise Stopped
        total += take
    return total


def _file_read(job: _job.Job, guest: Guest, entry: _Open, vecs, pos: int) -> int:
    """A read of `entry`'s file at `pos` into guest iovecs (each checked here), paid
    for in fuel (read_fuel) before anything is copied; how many bytes."""
    total = 0
    for ptr, length in vecs:
        guest.check(ptr, length)
        total += length
    source = job.files.volume.view[entry.node]
    room = min(total, len(source) - pos, MAX_READ)
    if room > 0:
        guest.charge(job, read_fuel(room))
    return _copy(job, guest, vecs, source, pos)


def _valid(value: int, allowed: int) -> None:
    """EINVAL unless `value` (a flags field) has only bits of `allowed`."""
    if value & ~allowed:
        raise Errno(EINVAL)


def _valid_times(fstflags: int) -> None:
    """EINVAL unless `fstflags` are known bits, neither time both given and now."""
    _valid(fstflags, _FST_ALL)
    if fstflags & 3 == 3 or fstflags & 12 == 12:
        raise Errno(EINVAL)


# --- reading ---------------------------------------------------------------------


def _fd_read(job: _job.Job, caller, args) -> int:
    fd, iovs, n, nread = args
    files = job.files
    entry = files.table.get(fd)
    if entry.__class__ is _Stdin:  # as wasmtime's stdin: the first non-empty iovec only
        guest = Guest.of(job, caller)
        vecs = [v for v in _iovecs(guest, iovs, n) if v[1]][:1]
        for ptr, length in vecs:
            guest.check(ptr, length)
        guest.check(nread, 4)
        done = _copy(job, guest, vecs, entry.data, entry.pos)
    elif entry is None or entry.__class__ is _Out:
        return EBADF
    elif files.volume.tree.is_dir[entry.node]:
        return EISDIR
    else:
        guest = Guest.of(job, caller)
        vecs = _iovecs(guest, iovs, n)
        guest.check(nread, 4)
        done = _file_read(job, guest, entry, vecs, entry.pos)
    entry.pos += done
    guest.put_u32(nread, done)
    return SUCCESS


def _fd_pread(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, iovs, n, offset, nread = args
    entry = fds.get(fd)
    if isinstance(entry, _Stdin):
        return ESPIPE
    entry = fds.file(fd, EBADF, EISDIR)
    guest = Guest.of(job, caller)
    vecs = _iovecs(guest, iovs, n)
    if offset < 0:
        return EINVAL
    guest.check(nread, 4)
    done = _file_read(job, guest, entry, vecs, min(offset, fds.volume.size[entry.node]))
    guest.put_u32(nread, done)
    return SUCCESS


def _fd_seek(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, offset, whence, out = args
    if whence > _WHENCE_END:
        return EINVAL
    entry = fds.file(fd, ESPIPE, EBADF)
    guest = Guest.of(job, caller)
    guest.check(out, 8)
    if whence == _WHENCE_SET:
        base = 0
    elif whence == _WHENCE_CUR:
        base = entry.pos
    else:
        base = fds.volume.size[entry.node]
    return seek(guest, entry, base, offset, out)


def _fd_tell(job: _job.Job, caller, args) -> int:
    fd, out = args
    entry = job.files.file(fd, ESPIPE, EBADF)
    Guest.of(job, caller).put_u64(out, entry.pos)
    return SUCCESS


def _fd_close(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    (fd,) = args
    job.files.get(fd)
    del job.files.table[fd]
    return SUCCESS


def _fd_renumber(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fds = job.files
    fd, to = args
    fds.get(fd)
    fds.get(to)
    if fd != to:
        fds.table[to] = fds.table.pop(fd)
    return SUCCESS


def _fd_fdstat_get(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, out = args
    entry = fds.get(fd)
    if isinstance(entry, _Stdin):
        kind, flags, base, inheriting = _UNKNOWN, 0, _FD_READ, _FD_READ
    elif isinstance(entry, _Out):
        kind, flags, base, inheriting = _UNKNOWN, 0, _FD_WRITE, _FD_WRITE
    elif fds.volume.tree.is_dir[entry.node]:
        # a libc asks for the rights it wants from what a directory passes on: all of
        # them, so that an open for writing is asked for and refused (EROFS), not
        # quietly made read-only
        kind, flags, base, inheriting = _DIRECTORY, entry.flags, _DIR_RIGHTS, _RIGHTS_ALL
    else:
        kind, flags, base, inheriting = _REGULAR, entry.flags, _FILE_RIGHTS, 0
    fields = (
        (0, bytes([kind])),
        (2, struct.pack("<H", flags)),
        (8, struct.pack("<QQ", base, inheriting)),
    )
    _put(Guest.of(job, caller), out, 24, *fields)
    return SUCCESS


def _fd_fdstat_set_flags(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, flags = args
    _valid(flags, _FDFLAGS_ALL)
    entry = job.files.node(fd)
    if flags & ~_FDFLAG_NONBLOCK:
        return ENOTSUP
    entry.flags = flags
    return SUCCESS


def _fd_fdstat_set_rights(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, base, inheriting = args
    _valid(base & U64, _RIGHTS_ALL)
    _valid(inheriting & U64, _RIGHTS_ALL)
    job.files.node(fd)
    return ENOTSUP


def _fd_filestat_get(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, out = args
    entry = fds.get(fd)
    if isinstance(entry, _Open):
        _filestat(Guest.of(job, caller), out, fds.volume, entry.node)
    else:
        _filestat(Guest.of(job, caller), out, None, 0)
    return SUCCESS


def _fd_advise(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    fd, _offset, _length, advice = args
    if advice > _ADVICE_MAX:
        return EINVAL
    job.files.node(fd)
    return SUCCESS


def _fd_readdir(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, buf, buf_len, cookie, used = args
    entry = fds.node(fd)
    tree = fds.volume.tree
    if not tree.is_dir[entry.node]:
        return ENOTDIR
    guest = Guest.of(job, caller)
    guest.check(buf, buf_len)
    guest.check(used, 4)
    out = bytearray()
    entries = tree.entries[entry.node]
    for i in range(min(cookie & U64, len(entries)), len(entries)):
        if len(out) >= buf_len:
            break
        name, node = entries[i]
        kind = _DIRECTORY if tree.is_dir[node] else _REGULAR
        out += _DIRENT.pack(i + 1, node + 1, len(name), kind) + name
    del out[buf_len:]
    guest.charge(job, read_fuel(len(out)))  # a listing is read from the tree, as a file
    guest.write(buf, bytes(out))
    guest.put_u32(used, len(out))
    return SUCCESS


def _fd_prestat_get(job: _job.Job, caller, args) -> int:
    fd, out = args
    entry = job.files.get(fd)
    if not isinstance(entry, _Open) or not entry.preopen:
        return EBADF
    _put(Guest.of(job, caller), out, 8, (0, b"\0"), (4, struct.pack("<I", 1)))
    return SUCCESS


def _fd_prestat_dir_name(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, ptr, n = args
    entry = fds.get(fd)
    if not isinstance(entry, _Open) or not fds.volume.tree.is_dir[entry.node]:
        return ENOTDIR  # as wasmtime answered for fd 0 to 2
    if not entry.preopen:
        return EBADF
    if n < 1:
        return ENAMETOOLONG
    Guest.of(job, caller).write(ptr, b"/")
    return SUCCESS


def _path_open(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, lookup, ptr, n, oflags, rights, inheriting, fdflags, out = args
    _valid(lookup, _LOOKUP_SYMLINK_FOLLOW)
    _valid(oflags, _OFLAGS_ALL)
    _valid(rights & U64, _RIGHTS_ALL)
    _valid(inheriting & U64, _RIGHTS_ALL)
    _valid(fdflags, _FDFLAGS_ALL)
    at = fds.directory(fd).node
    guest = Guest.of(job, caller)
    raw = _path(guest, ptr, n)
    guest.check(out, 4)
    tree = fds.volume.tree
    try:
        node = tree.resolve(at, raw)
    except Errno as e:
        if e.errno != ENOENT or not oflags & _O_CREAT:
            raise
        parent, _, _ = raw.rstrip(b"/").rpartition(b"/")
        if parent or raw.startswith(b"/"):
            at = tree.resolve(at, parent or b"/")
        if not tree.is_dir[at]:
            return ENOTDIR
        # creating: a file, or, named with a final "/", a directory, which open cannot
        return EISDIR if raw.endswith(b"/") else EROFS
    if oflags & _O_CREAT and oflags & _O_EXCL:
        return EEXIST
    if oflags & _O_DIRECTORY and not tree.is_dir[node]:
        return ENOTDIR
    writing = rights & _WRITE_RIGHTS or fdflags & (_FDFLAG_APPEND | _FDFLAG_DSYNC | _FDFLAG_SYNC)
    if tree.is_dir[node] and (writing or oflags & (_O_TRUNC | _O_CREAT)):
        return EISDIR  # as Linux: a directory is not opened to write, truncate or create
    if writing or oflags & _O_TRUNC:
        return EROFS
    guest.put_u32(out, fds.add(_Open(node, fdflags & _FDFLAG_NONBLOCK)))
    return SUCCESS


def _path_filestat_get(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, lookup, ptr, n, out = args
    _valid(lookup, _LOOKUP_SYMLINK_FOLLOW)
    at = fds.directory(fd).node
    guest = Guest.of(job, caller)
    raw = _path(guest, ptr, n)
    guest.check(out, 64)
    node = fds.volume.tree.resolve(at, raw)
    _filestat(guest, out, fds.volume, node)
    return SUCCESS


def _path_readlink(job: _job.Job, caller, args) -> int:
    fds = job.files
    fd, ptr, n, buf, buf_len, used = args
    at = fds.directory(fd).node
    guest = Guest.of(job, caller)
    raw = _path(guest, ptr, n)
    guest.check(buf, buf_len)
    guest.check(used, 4)
    fds.volume.tree.resolve(at, raw)
    return EINVAL  # it exists, and nothing in the tree is a symbolic link


# --- refused: everything that would write --------------------------------------


def _refused(where: tuple[int, ...], paths: tuple[tuple[int, int], ...], errno: int, valid=None):
    """A function that checks its values (`valid(args)`, raising EINVAL), its directory
    descriptors (args at `where`) and its paths ((pointer, length) args), then
    answers `errno`."""

    def refuse(job: _job.Job, caller, args) -> int:
        if valid is not None:
            valid(args)
        fds = job.files
        for i in where:
            fds.directory(args[i])
        guest = Guest.of(job, caller)
        for ptr, n in paths:
            _path(guest, args[ptr], args[n])
        return errno

    return refuse


def _valid_link(args) -> None:  # path_link
    _valid(args[1], _LOOKUP_SYMLINK_FOLLOW)


def _valid_set_times(args) -> None:  # path_filestat_set_times
    _valid(args[1], _LOOKUP_SYMLINK_FOLLOW)
    _valid_times(args[6])


def _not_for_writing(stdio: int, tree: int):
    """A function on a descriptor opened for writing: `stdio` for fd 0 to 2 (as
    wasmtime answered), `tree` for a file or directory."""

    def refuse(job: _job.Job, caller, args) -> int:  # noqa: ARG001
        entry = job.files.get(args[0])
        return tree if isinstance(entry, _Open) else stdio

    return refuse


def _fd_filestat_set_times(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    _valid_times(args[3])
    entry = job.files.get(args[0])
    return EROFS if isinstance(entry, _Open) else EBADF


def _fd_pwrite(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    entry = job.files.get(args[0])
    return ESPIPE if isinstance(entry, _Out) else EBADF


def _sock(flags: int, allowed: int):
    """A sock_* function: EINVAL if its flags (arg `flags`) have a bit not in
    `allowed`, else ENOTSOCK for any open descriptor."""

    def refuse(job: _job.Job, caller, args) -> int:  # noqa: ARG001
        _valid(args[flags], allowed)
        job.files.get(args[0])
        return ENOTSOCK

    return refuse


def _named(fn, name: str):
    fn.__name__ = name
    return fn


def _or_scratch(fn, name: str):
    """`fn`, but for a descriptor of the checkpoint directory (or one of its files):
    _scratch's function of that name."""
    other = _scratch.HANDLERS.get(name)
    if other is None:
        return fn
    at = 2 if name == "path_symlink" else 0
    scratch = _scratch.SCRATCH

    def either(job: _job.Job, caller, args) -> int:
        if job.files.table.get(args[at]).__class__ in scratch:
            return other(job, caller, args)
        return fn(job, caller, args)

    return either


# name -> (params: "i" i32, "I" i64; has a result; callback). Module globals: ctypes
# callbacks must outlive every linker that uses them. fd_write is _wasi's.
FUNCTIONS = {
    name: (params, True, host(_named(_or_scratch(fn, name), name), params))
    for name, params, fn in [
        ("fd_read", "iiii", _fd_read),
        ("fd_pread", "iiiIi", _fd_pread),
        ("fd_seek", "iIii", _fd_seek),
        ("fd_tell", "ii", _fd_tell),
        ("fd_close", "i", _fd_close),
        ("fd_renumber", "ii", _fd_renumber),
        ("fd_fdstat_get", "ii", _fd_fdstat_get),
        ("fd_fdstat_set_flags", "ii", _fd_fdstat_set_flags),
        ("fd_fdstat_set_rights", "iII", _fd_fdstat_set_rights),
        ("fd_filestat_get", "ii", _fd_filestat_get),
        ("fd_advise", "iIIi", _fd_advise),
        ("fd_readdir", "iiiIi", _fd_readdir),
        ("fd_prestat_get", "ii", _fd_prestat_get),
        ("fd_prestat_dir_name", "iii", _fd_prestat_dir_name),
        ("path_open", "iiiiiIIii", _path_open),
        ("path_filestat_get", "iiiii", _path_filestat_get),
        ("path_readlink", "iiiiii", _path_readlink),
        ("path_create_directory", "iii", _refused((0,), ((1, 2),), EROFS)),
        ("path_unlink_file", "iii", _refused((0,), ((1, 2),), EROFS)),
        ("path_remove_directory", "iii", _refused((0,), ((1, 2),), EROFS)),
        ("path_rename", "iiiiii", _refused((0, 3), ((1, 2), (4, 5)), EROFS)),
        ("path_symlink", "iiiii", _refused((2,), ((0, 1), (3, 4)), EROFS)),
        ("path_link", "iiiiiii", _refused((0, 4), ((2, 3), (5, 6)), EROFS, _valid_link)),
        (
            "path_filestat_set_times",
            "iiiiIIi",
            _refused((0,), ((2, 3),), EROFS, _valid_set_times),
        ),
        ("fd_pwrite", "iiiIi", _fd_pwrite),
        ("fd_allocate", "iII", _not_for_writing(EBADF, EBADF)),
        ("fd_filestat_set_size", "iI", _not_for_writing(EBADF, EBADF)),
        ("fd_filestat_set_times", "iIIi", _fd_filestat_set_times),
        # as Linux: fsync of a descriptor open for reading succeeds (nothing to write)
        ("fd_sync", "i", _not_for_writing(EBADF, SUCCESS)),
        ("fd_datasync", "i", _not_for_writing(EBADF, SUCCESS)),
        ("sock_accept", "iii", _sock(1, _FDFLAGS_ALL)),
        ("sock_recv", "iiiiii", _sock(3, _RIFLAGS_ALL)),
        ("sock_send", "iiiii", _sock(3, 0)),
        ("sock_shutdown", "ii", _sock(1, _SDFLAGS_ALL)),
    ]
}
