"""Input files: a read-only tree with fixed metadata, and stdin and stdio as they were.

Real wasmtime, real payloads: a C program (compiled once per session with ziglang)
that reads, stats, lists, seeks, and tries to write; scripted WASI calls
(tests/wasi_calls) for what C cannot reach: bad pointers, every stdio answer.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sandbox
from protocol import Limits, Status
from sandbox import _files, _guest, _job, _memory, _tree
from sandbox._guest import U64, Errno
from tests.helpers import collect_one
from tests.wasi_calls import SCRATCH, Script, reference

FILES_C = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case EBADF: return "EBADF";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EISDIR: return "EISDIR";
    case EMFILE: return "EMFILE";
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case EROFS: return "EROFS";
    case ESPIPE: return "ESPIPE";
    case ENOTCAPABLE: return "ENOTCAPABLE";
    default: return "other";
    }
}

static void digest(const char *label, FILE *f) {
    static unsigned char buf[65536];
    uint64_t fnv = 1469598103934665603ULL, sum = 0, size = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            sum += buf[i];
            fnv = (fnv ^ buf[i]) * 1099511628211ULL;
        }
        size += n;
    }
    printf("%s size=%llu sum=%llu fnv=%016llx\n", label, (unsigned long long)size,
           (unsigned long long)sum, (unsigned long long)fnv);
}

static void show(const char *how, const char *path, const struct stat *s) {
    printf("%s %s dev=%llu ino=%llu mode=%o nlink=%llu uid=%u gid=%u rdev=%llu size=%lld "
           "blksize=%ld blocks=%lld atim=%lld.%09ld mtim=%lld.%09ld ctim=%lld.%09ld\n",
           how, path, (unsigned long long)s->st_dev, (unsigned long long)s->st_ino,
           (unsigned)s->st_mode, (unsigned long long)s->st_nlink, (unsigned)s->st_uid,
           (unsigned)s->st_gid, (unsigned long long)s->st_rdev, (long long)s->st_size,
           (long)s->st_blksize, (long long)s->st_blocks, (long long)s->st_atim.tv_sec,
           s->st_atim.tv_nsec, (long long)s->st_mtim.tv_sec, s->st_mtim.tv_nsec,
           (long long)s->st_ctim.tv_sec, s->st_ctim.tv_nsec);
}

static char walked[8192];

static void walk(size_t len) { /* every file under walked[:len], NUL-terminated */
    DIR *d = opendir(len ? walked : "/");
    if (!d) { printf("opendir %s %s%c", walked, name(errno), 0); return; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t n = strlen(e->d_name);
        walked[len] = '/';
        memcpy(walked + len + 1, e->d_name, n + 1);
        if (e->d_type == DT_DIR) walk(len + 1 + n);
        else printf("%s%c", walked, 0);
        walked[len] = 0;
    }
    closedir(d);
}

#define TRY(label, expr) do { errno = 0; long long r_ = (long long)(expr); \
    printf("%s=%lld %s\n", label, r_ < 0 ? -1LL : r_, r_ < 0 ? name(errno) : "ok"); } while (0)

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "stdin")) {
        digest("stdin", stdin);
        return 0;
    }
    if (!strcmp(cmd, "walk")) {
        walk(0);
        return 0;
    }
    for (int i = 2; i < argc; i++) {
        const char *p = argv[i];
        if (!strcmp(cmd, "sum")) {
            FILE *f = fopen(p, "rb");
            if (!f) { printf("%s fopen %s\n", p, name(errno)); continue; }
            digest(p, f);
            fclose(f);
        } else if (!strcmp(cmd, "stat")) {
            struct stat s;
            if (stat(p, &s)) { printf("stat %s %s\n", p, name(errno)); continue; }
            show("stat", p, &s);
            int fd = open(p, O_RDONLY);
            if (fd < 0 || fstat(fd, &s)) { printf("fstat %s %s\n", p, name(errno)); continue; }
            show("fstat", p, &s);
            close(fd);
        } else if (!strcmp(cmd, "ls")) {
            DIR *d = opendir(p);
            if (!d) { printf("opendir %s %s\n", p, name(errno)); continue; }
            struct dirent *e;
            while ((e = readdir(d)) != NULL)
                printf("%s: %s ino=%llu type=%d\n", p, e->d_name, (unsigned long long)e->d_ino,
                       (int)e->d_type);
            closedir(d);
        } else if (!strcmp(cmd, "seek")) {
            int fd = open(p, O_RDONLY);
            char b[8] = {0};
            TRY("end", lseek(fd, 0, SEEK_END));
            TRY("back3", lseek(fd, -3, SEEK_END));
            TRY("read", read(fd, b, 3));
            printf("got=%.3s\n", b);
            TRY("pread", pread(fd, b, 4, 1));
            printf("got=%.4s\n", b);
            TRY("cur", lseek(fd, 0, SEEK_CUR));
            TRY("before0", lseek(fd, -1, SEEK_SET));
            TRY("cur", lseek(fd, 0, SEEK_CUR));
            TRY("past", lseek(fd, 1000, SEEK_SET));
            TRY("readpast", read(fd, b, 3));
            TRY("write", write(fd, "x", 1));
            TRY("ftruncate", ftruncate(fd, 0));
            TRY("fsync", fsync(fd));
            close(fd);
        } else if (!strcmp(cmd, "write")) {
            char other[512];
            snprintf(other, sizeof other, "%s.new", p);
            TRY("wronly", open(p, O_WRONLY));
            TRY("rdwr", open(p, O_RDWR));
            TRY("trunc", open(p, O_RDONLY | O_TRUNC));
            TRY("append", open(p, O_WRONLY | O_APPEND));
            TRY("creat", open(other, O_WRONLY | O_CREAT, 0644));
            TRY("excl", open(p, O_WRONLY | O_CREAT | O_EXCL, 0644));
            printf("fopen_w=%s %s\n", fopen(p, "w") ? "opened" : "refused", name(errno));
            printf("fopen_a=%s %s\n", fopen(p, "a") ? "opened" : "refused", name(errno));
            TRY("mkdir", mkdir(other, 0755));
            TRY("unlink", unlink(p));
            TRY("rmdir", rmdir(p));
            TRY("rename", rename(p, other));
            TRY("symlink", symlink(p, other));
            TRY("link", link(p, other));
            char l[64];
            TRY("readlink", readlink(p, l, sizeof l));
            TRY("still_reads", open(p, O_RDONLY));
        } else if (!strcmp(cmd, "many")) {
            int n = 0, fd, last = -1;
            while ((fd = open(p, O_RDONLY)) >= 0) { n++; last = fd; }
            printf("opened=%d last=%d then %s\n", n, last, name(errno));
            TRY("close", close(last));
            TRY("again", open(p, O_RDONLY));
        } else if (!strcmp(cmd, "read-dir")) {
            int fd = open(p, O_RDONLY);
            char b[4];
            TRY("open", fd);
            TRY("read", read(fd, b, sizeof b));
        } else {
            return 2;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def files_wasm() -> bytes:
    from tasks import compile_c

    return compile_c(FILES_C)


@pytest.fixture(autouse=True)
def no_memory_left_behind():
    yield
    assert _memory.live() == 0, "a finished job left a linear memory mapped"


BAD = 1 << 30  # beyond the scripts' 4 pages
HELLO = b"hello, world\n"
TABLE = bytes(range(256)) * 40
FILES = {"/input/a.txt": HELLO, "/input/sub/b.bin": TABLE, "/table.csv": b"x,y\n1,2\n"}


def fnv(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def digest(label: str, data: bytes) -> str:
    return f"{label} size={len(data)} sum={sum(data)} fnv={fnv(data)}"


def lines(o: sandbox.Outcome) -> list[str]:
    assert o.status is Status.OK, o.detail
    return o.stdout.decode().splitlines()


# --- what the guest reads ---------------------------------------------------------


def test_fread_gives_the_bytes_of_bytes_and_of_host_files(files_wasm, tmp_path):
    host = tmp_path / "table.csv"
    host.write_bytes(TABLE * 3)
    files = {**FILES, "/table.csv": str(host), "/data/t.csv": host}  # str and PathLike
    o = sandbox.run(files_wasm, ["sum", "/input/a.txt", "/table.csv", "/data/t.csv"], files=files)
    assert lines(o) == [
        digest("/input/a.txt", HELLO),
        digest("/table.csv", TABLE * 3),
        digest("/data/t.csv", TABLE * 3),
    ]


def test_dot_dot_stays_in_the_tree(files_wasm):
    paths = ["/input/../../etc/passwd", "/input/../../input/a.txt", "input/./sub/../a.txt", "/x"]
    o = sandbox.run(files_wasm, ["sum", *paths], files=FILES)
    assert lines(o) == [
        "/input/../../etc/passwd fopen ENOENT",  # nothing above the root: /etc is not there
        digest("/input/../../input/a.txt", HELLO),
        digest("input/./sub/../a.txt", HELLO),  # relative to the working directory, /
        "/x fopen ENOENT",
    ]


def test_every_stat_field_is_fixed(files_wasm):
    o = sandbox.run(files_wasm, ["stat", "/input/a.txt", "/input", "/", "/nope"], files=FILES)
    # inodes: 1 + the index among /, /input, /input/a.txt, /input/sub, /input/sub/b.bin,
    # /table.csv; no permission bits (WASI has none), every time 0
    zero = "uid=0 gid=0 rdev=0"
    times = "atim=0.000000000 mtim=0.000000000 ctim=0.000000000"
    expected = []
    for path, ino, mode, size in [("/input/a.txt", 3, "100000", 13), ("/input", 2, "40000", 0)]:
        for how in ("stat", "fstat"):
            expected.append(
                f"{how} {path} dev=0 ino={ino} mode={mode} nlink=1 {zero} size={size} "
                f"blksize=0 blocks=0 {times}"
            )
    for how in ("stat", "fstat"):
        rest = f"nlink=1 {zero} size=0 blksize=0 blocks=0 {times}"
        expected.append(f"{how} / dev=0 ino=1 mode=40000 {rest}")
    expected.append("stat /nope ENOENT")
    assert lines(o) == expected


def test_directories_list_in_byte_order_with_their_inodes(files_wasm):
    files = {**FILES, "/input/B": b"", "/input/a": b"", "/input/\u00e9": b""}
    o = sandbox.run(files_wasm, ["ls", "/", "/input", "/input/sub", "/input/a.txt"], files=files)
    assert lines(o) == [
        "/: . ino=1 type=3",
        "/: .. ino=1 type=3",  # the root's parent is the root
        "/: input ino=2 type=3",
        "/: table.csv ino=9 type=4",
        "/input: . ino=2 type=3",
        "/input: .. ino=1 type=3",
        "/input: B ino=3 type=4",  # bytes order: B < a < a.txt < sub < é
        "/input: a ino=4 type=4",
        "/input: a.txt ino=5 type=4",
        "/input: sub ino=6 type=3",
        "/input: \u00e9 ino=8 type=4",
        "/input/sub: . ino=6 type=3",
        "/input/sub: .. ino=2 type=3",
        "/input/sub: b.bin ino=7 type=4",
        "opendir /input/a.txt ENOTDIR",
    ]


def test_a_directory_of_many_entries_is_listed_whole_across_readdir_calls(files_wasm):
    names = [f"file-{i:04d}-{'x' * (i % 50)}" for i in range(1500)]
    o = sandbox.run(files_wasm, ["ls", "/d"], files={f"/d/{n}": b"" for n in names})
    listed = [line.split()[1] for line in lines(o)]
    assert listed == [".", "..", *sorted(names)]


def test_lseek_and_pread(files_wasm):
    o = sandbox.run(files_wasm, ["seek", "/input/a.txt"], files=FILES)
    assert lines(o) == [
        "end=13 ok",
        "back3=10 ok",
        "read=3 ok",
        "got=ld",  # "ld\n"
        "",
        "pread=4 ok",
        "got=ello",
        "cur=13 ok",  # pread leaves the position
        "before0=-1 EINVAL",
        "cur=13 ok",
        "past=1000 ok",
        "readpast=0 ok",
        "write=-1 EBADF",  # not open for writing
        "ftruncate=-1 EBADF",
        "fsync=0 ok",  # as Linux: nothing to write, nothing to refuse
    ]


def test_everything_that_would_write_is_refused(files_wasm):
    o = sandbox.run(files_wasm, ["write", "/input/a.txt"], files=FILES)
    assert lines(o) == [
        "wronly=-1 EROFS",
        "rdwr=-1 EROFS",
        "trunc=-1 EROFS",
        "append=-1 EROFS",
        "creat=-1 EROFS",
        "excl=-1 EEXIST",
        "fopen_w=refused EROFS",
        "fopen_a=refused EROFS",
        "mkdir=-1 EROFS",
        "unlink=-1 EROFS",
        "rmdir=-1 EROFS",
        "rename=-1 EROFS",
        "symlink=-1 EROFS",
        "link=-1 EROFS",
        "readlink=-1 EINVAL",  # not a symbolic link: there are none
        "still_reads=4 ok",
    ]


def test_open_descriptors_are_capped(files_wasm):
    o = sandbox.run(files_wasm, ["many", "/input/a.txt"], files=FILES)
    # stdin, stdout, stderr and / at 3 are open: MAX_FDS - 4 more
    n = _files.MAX_FDS - 4
    assert lines(o) == [
        f"opened={n} last={_files.MAX_FDS - 1} then EMFILE",
        "close=0 ok",
        f"again={_files.MAX_FDS - 1} ok",
    ]


def test_reading_a_directory_is_eisdir(files_wasm):
    o = sandbox.run(files_wasm, ["read-dir", "/input"], files=FILES)
    assert lines(o) == ["open=4 ok", "read=-1 EISDIR"]


# --- the same everywhere --------------------------------------------------------------


def test_replicas_over_host_copies_in_other_places_see_the_same(files_wasm, tmp_path):
    data = os.urandom(300_000)
    runs = []
    for i, mtime in enumerate((1_000_000_000, 1_700_000_000)):
        where = tmp_path / f"machine{i}" / ("deep/" * i)
        where.mkdir(parents=True)
        host = where / f"copy{i}.bin"
        host.write_bytes(data)
        os.chmod(host, 0o600 if i else 0o444)
        os.utime(host, (mtime, mtime))
        files = {"/input/data.bin": str(host), "/input/small": b"abc"}
        args = ["stat", "/input/data.bin", "/input"]
        runs.append(
            [sandbox.run(files_wasm, a, files=files) for a in (args, ["sum", "/input/data.bin"])]
        )
    (stat0, sum0), (stat1, sum1) = runs
    assert (stat0.stdout, stat0.fuel) == (stat1.stdout, stat1.fuel)
    assert (sum0.stdout, sum0.fuel) == (sum1.stdout, sum1.fuel)
    assert lines(sum0) == [digest("/input/data.bin", data)]
    assert "size=300000 " in stat0.stdout.decode() and "mtim=0.000000000" in stat0.stdout.decode()


def test_a_200_mb_file_is_mapped_not_copied(files_wasm, tmp_path):
    block = hashlib.sha256(b"block").digest() * (1 << 15)  # 1 MiB
    host = tmp_path / "big.bin"
    with open(host, "wb") as f:
        for _ in range(200):
            f.write(block)
    tracemalloc.start()
    try:
        o = sandbox.run(
            files_wasm,
            ["sum", "/big.bin"],
            files={"/big.bin": host},
            limits=Limits(fuel=10**11, time_s=120, memory_mb=16),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert o.status is Status.OK, o.detail
    size, total = o.stdout.decode().split()[1:3]
    assert (size, total) == (f"size={200 << 20}", f"sum={200 * sum(block)}")
    assert peak < 16 << 20, f"Python allocated {peak} bytes while reading a 200 MiB file"


def test_a_host_file_under_many_guest_paths_is_mapped_once(tmp_path):
    host = tmp_path / "one.bin"
    host.write_bytes(b"x" * 5000)
    os.link(host, tmp_path / "hard.bin")  # the same file under another host name
    other = tmp_path / "other.bin"
    other.write_bytes(b"y")
    files = {f"/p{i}": str(host) for i in range(100)}
    files |= {"/hard": tmp_path / "hard.bin", "/other": str(other), "/bytes": b"z" * 9000}
    with _tree.Volume(_tree.Tree(files)) as volume:
        page = mmap.PAGESIZE
        # whole pages of each host file, once: the address-space fence grows by that
        assert volume.mapped == -(-5000 // page) * page + page
        tree = volume.tree
        views = {id(volume.view[tree.resolve(0, p.encode())]) for p in files if p != "/other"}
        assert len(views) == 2  # /p* and /hard; /bytes
        assert bytes(volume.view[tree.resolve(0, b"/hard")]) == b"x" * 5000


def test_stdin_works_with_and_without_files(files_wasm):
    data = os.urandom(200_000)
    without = sandbox.run(files_wasm, ["stdin"], data)
    with_files = sandbox.run(files_wasm, ["stdin"], data, files=FILES)
    assert lines(without) == lines(with_files) == [digest("stdin", data)]


@pytest.mark.parametrize("size", [0, 1, 4095, 200_000])
def test_stdin_reads_as_before_to_the_fuel(files_wasm, size):
    data = os.urandom(size)
    o = sandbox.run(files_wasm, ["stdin"], data)
    assert (o.stdout, o.fuel) == reference(files_wasm, data, ["stdin"])


# --- stdio answers as wasmtime's did; bad pointers ------------------------------------


def _stdio_script() -> Script:
    """Every descriptor and path function on fds 0 to 3 and one never open, then stdin
    read through iovecs of several shapes, renumbered and closed."""
    s = Script()
    x, y = s.string("x"), s.string("y")
    one = s.iovecs((SCRATCH + 64, 16))
    shaped = s.iovecs((SCRATCH + 64, 0), (SCRATCH + 80, 5), (SCRATCH + 90, 8))
    for fd in (0, 1, 2, 3, 9):
        s.call("fd_fdstat_get", fd, SCRATCH)
        s.call("fd_filestat_get", fd, SCRATCH)
        s.call("fd_prestat_get", fd, SCRATCH)
        s.call("fd_prestat_dir_name", fd, SCRATCH, 16)
        for offset, whence in ((0, 1), (5, 0), (-1, 0)):
            s.call("fd_seek", fd, offset, whence, SCRATCH)
        s.call("fd_tell", fd, SCRATCH)
        s.call("fd_pread", fd, *one, 0, SCRATCH)
        s.call("fd_pwrite", fd, *one, 0, SCRATCH)
        s.call("fd_advise", fd, 0, 0, 0)
        s.call("fd_allocate", fd, 0, 1)
        s.call("fd_datasync", fd)
        s.call("fd_sync", fd)
        for flags in (0, 4, 1):
            s.call("fd_fdstat_set_flags", fd, flags)
        s.call("fd_fdstat_set_rights", fd, 0, 0)
        s.call("fd_filestat_set_size", fd, 0)
        s.call("fd_filestat_set_times", fd, 0, 0, 0)
        s.call("fd_readdir", fd, SCRATCH, 64, 0, SCRATCH + 100)
        s.call("path_open", fd, 0, *x, 0, 0x1FFFFFFF, 0x1FFFFFFF, 0, SCRATCH)
        s.call("path_filestat_get", fd, 0, *x, SCRATCH)
        s.call("path_create_directory", fd, *x)
        s.call("path_unlink_file", fd, *x)
        s.call("path_remove_directory", fd, *x)
        s.call("path_readlink", fd, *x, SCRATCH, 64, SCRATCH + 100)
        s.call("path_rename", fd, *x, fd, *y)
        s.call("path_symlink", *x, fd, *y)
        s.call("path_link", fd, 0, *x, fd, *y)
        s.call("path_filestat_set_times", fd, 0, *x, 0, 0, 0)
        s.call("sock_accept", fd, 0, SCRATCH)
        s.call("sock_recv", fd, *one, 0, SCRATCH, SCRATCH + 8)
        s.call("sock_send", fd, *one, 0, SCRATCH)
        s.call("sock_shutdown", fd, 1)
        if fd != 0:
            s.call("fd_read", fd, *one, SCRATCH)
    for _ in range(3):
        s.call("fd_read", 0, *shaped, SCRATCH)
    for _ in range(4):
        s.call("fd_read", 0, *one, SCRATCH)
    s.call("fd_read", 0, *s.iovecs(), SCRATCH)
    s.call("fd_read", 0, SCRATCH, 0, SCRATCH)
    s.call("fd_renumber", 0, 5)
    s.call("fd_renumber", 1, 0)
    s.call("fd_fdstat_get", 0, SCRATCH)
    s.call("fd_fdstat_get", 5, SCRATCH)
    s.call("fd_close", 5)
    s.call("fd_close", 0)
    s.call("fd_close", 2)
    s.call("fd_close", 2)
    s.call("fd_fdstat_get", 2, SCRATCH)
    return s


def test_stdio_answers_every_call_as_wasmtime_did():
    s = _stdio_script()
    wasm = s.wasm()
    stdin = b"hello world, this is stdin, a few bytes of it"
    o = sandbox.run(wasm, stdin=stdin)
    assert o.status is Status.OK, o.detail
    then, fuel = reference(wasm, stdin)
    for now, before in zip(s.decode(o.stdout), s.decode(then), strict=True):
        assert now == before
    assert o.fuel == fuel
    stdin_reads = [r for r in s.decode(o.stdout) if r[0] == "fd_read" and r[1][0] == 0]
    assert [int.from_bytes(r[3][:4], "little") for r in stdin_reads] == [
        5,
        5,
        5,
        16,
        14,
        0,
        0,
        0,
        0,
    ]


# Calls on fds 0 to 2 with bad arguments, where the sandbox answers otherwise than
# wasmtime did (docs/sandbox.md, "Stdin and stdio", lists them): (call, the sandbox's
# errno, wasmtime's: an errno, or the words of the trap it made of the call)
_STDIO_BAD = [
    (lambda s: ("fd_seek", 0, 0, 3, SCRATCH), 28, "Invalid enum value Whence"),
    (lambda s: ("fd_advise", 0, 0, 0, 6), 28, "Invalid enum value Advice"),
    (lambda s: ("fd_fdstat_set_flags", 0, 0x10000), 28, "too large to fit"),
    (lambda s: ("path_open", 0, 0, 0, 0, 0x10000, 0, 0, 0, SCRATCH), 28, "too large to fit"),
    (lambda s: ("fd_filestat_set_times", 0, 0, 0, 0xFFFF), 28, "Invalid flag value Fstflags"),
    (lambda s: ("sock_shutdown", 0, 9), 28, "Invalid flag value Sdflags"),
    (lambda s: ("sock_accept", 0, 0xFFFF, SCRATCH), 28, "Invalid flag value Fdflags"),
    (lambda s: ("fd_fdstat_get", 0, SCRATCH + 3), 0, "not aligned"),
    (lambda s: ("fd_filestat_get", 1, SCRATCH + 4), 0, "not aligned"),
    (lambda s: ("fd_read", 0, *s.iovecs(*[(SCRATCH + 64, 1)] * 1025), SCRATCH), 28, 0),
    (lambda s: ("fd_read", 0, *s.iovecs((SCRATCH + 64, 0x7FFFFFFF)), SCRATCH), 21, 48),
    (lambda s: ("fd_read", 0, 0, 0, 0xFFFFFFF0), 21, 27),
    # where the two agree: only the first non-empty iovec of a stdin read is looked at
    (lambda s: ("fd_read", 0, *s.iovecs((SCRATCH, 4), (BAD, 4)), SCRATCH), 0, 0),
    (lambda s: ("fd_read", 0, *s.iovecs((BAD, 0), (SCRATCH, 4)), SCRATCH), 0, 0),
]


@pytest.mark.parametrize("case", range(len(_STDIO_BAD)))
def test_stdio_answers_bad_arguments_as_documented(case):
    build, errno, then = _STDIO_BAD[case]
    s = Script()
    s.call(*build(s))
    wasm = s.wasm()
    o = sandbox.run(wasm, stdin=b"abcdefghijklmnopqrstuvwxyz")
    assert o.status is Status.OK, o.detail  # never a trap: an errno
    assert s.decode(o.stdout)[0][2] == errno
    if isinstance(then, str):
        with pytest.raises(Exception, match=then):
            reference(wasm, b"abcdefghijklmnopqrstuvwxyz")
    else:
        out, _ = reference(wasm, b"abcdefghijklmnopqrstuvwxyz")
        assert s.decode(out)[0][2] == then


def test_a_job_without_files_has_no_preopened_directory():
    s = Script()
    s.call("fd_prestat_get", 3, SCRATCH)
    s.call("path_open", 3, 0, *s.string("a"), 0, 2, 0, 0, SCRATCH)
    o = sandbox.run(s.wasm())
    assert [errno for _, _, errno, _ in s.decode(o.stdout)] == [8, 8]  # EBADF


def test_bad_pointers_are_efault_not_a_crash():
    s = Script()
    a = s.string("input/a.txt")
    d = s.string("input")
    one = s.iovecs((SCRATCH, 16))
    bad_vec = s.iovecs((BAD, 16))
    s.call("path_open", 3, 0, *a, 0, 2, 0, 0, SCRATCH)  # fd 4
    calls = [
        ("path_open", 3, 0, BAD, 5, 0, 2, 0, 0, SCRATCH),
        ("path_open", 3, 0, *a, 0, 2, 0, 0, BAD),
        ("path_open", 3, 0, 0xFFFFFFF0, 32, 0, 2, 0, 0, SCRATCH),  # wraps past 4 GiB
        ("fd_read", 4, BAD, 1, SCRATCH),
        ("fd_read", 4, *bad_vec, SCRATCH),
        ("fd_read", 4, *one, BAD),
        ("fd_read", 0, *bad_vec, SCRATCH),
        ("fd_pread", 4, *bad_vec, 0, SCRATCH),
        ("fd_seek", 4, 0, 0, BAD),
        ("fd_tell", 4, BAD),
        ("fd_fdstat_get", 4, BAD),
        ("fd_fdstat_get", 0, BAD),
        ("fd_filestat_get", 4, BAD),
        ("fd_filestat_get", 1, BAD),
        ("fd_prestat_get", 3, BAD),
        ("fd_prestat_dir_name", 3, BAD, 1),
        ("fd_readdir", 3, BAD, 64, 0, SCRATCH),
        ("fd_readdir", 3, SCRATCH, 64, 0, BAD),
        ("path_filestat_get", 3, 0, *d, BAD),
        ("path_filestat_get", 3, 0, BAD, 4, SCRATCH),
        ("path_readlink", 3, *a, BAD, 64, SCRATCH),
        ("path_create_directory", 3, BAD, 3),
        ("path_unlink_file", 3, BAD, 3),
        ("path_rename", 3, *a, 3, BAD, 3),
    ]
    for call in calls:
        s.call(*call)
    s.call("fd_read", 4, *s.iovecs((SCRATCH + 64, 16)), SCRATCH)  # still at its start
    o = sandbox.run(s.wasm(), stdin=b"stdin", files=FILES)
    assert o.status is Status.OK, o.detail
    results = s.decode(o.stdout)
    assert results[0][2] == 0 and results[0][3][:4] == (4).to_bytes(4, "little")
    assert [r[2] for r in results[1:-1]] == [21] * len(calls), results  # EFAULT
    assert results[-1][2] == 0 and results[-1][3][:4] == (13).to_bytes(4, "little")
    assert results[-1][3][64:77] == HELLO


def test_too_many_iovecs_is_einval():
    s = Script()
    many = s.iovecs(*[(SCRATCH, 1)] * (_files.MAX_IOVECS + 1))
    s.call("path_open", 3, 0, *s.string("t"), 0, 2, 0, 0, SCRATCH)
    s.call("fd_read", 4, *many, SCRATCH)
    s.call("fd_pread", 4, *many, 0, SCRATCH)
    s.call("fd_read", 0, *many, SCRATCH)
    o = sandbox.run(s.wasm(), files={"/t": b"abc"})
    assert [r[2] for r in s.decode(o.stdout)] == [0, 28, 28, 28]  # EINVAL


# --- bad values, small answers ---------------------------------------------------------


def test_values_out_of_range_are_einval_not_masked():
    s = Script()
    a, one = s.string("a.txt"), s.iovecs((SCRATCH + 64, 16))
    s.call("path_open", 3, 0, *a, 0, 2, 0, 0, SCRATCH)  # fd 4
    calls = [
        ("fd_seek", 4, 5, 256, SCRATCH),  # whence 256 is not SET
        ("fd_seek", 4, 5, 3, SCRATCH),
        ("fd_advise", 4, 0, 0, 6),
        ("fd_advise", 4, 0, 0, 256),
        ("fd_fdstat_set_flags", 4, 0x10004),  # not nonblock
        ("fd_fdstat_set_flags", 4, 0x20),
        ("fd_fdstat_set_rights", 4, 1 << 30, 0),
        ("fd_filestat_set_times", 4, 0, 0, 0x10),
        ("fd_filestat_set_times", 4, 0, 0, 3),  # atim and atim_now
        ("path_open", 3, 0, *s.string("new"), 0x10001, 2, 0, 0, SCRATCH),  # not O_CREAT
        ("path_open", 3, 0, *a, 0x10, 2, 0, 0, SCRATCH),
        ("path_open", 3, 0, *a, 0, 2, 0, 0x10004, SCRATCH),  # fdflags: not nonblock
        ("path_open", 3, 0, *a, 0, 1 << 30, 0, 0, SCRATCH),  # rights
        ("path_open", 3, 2, *a, 0, 2, 0, 0, SCRATCH),  # lookupflags
        ("path_filestat_get", 3, 2, *a, SCRATCH),
        ("path_filestat_set_times", 3, 0, *a, 0, 0, 12),
        ("path_link", 3, 2, *a, 3, *s.string("b")),
        ("sock_shutdown", 4, 4),
        ("sock_accept", 4, 0x20, SCRATCH),
        ("sock_recv", 4, *one, 4, SCRATCH, SCRATCH + 8),
        ("sock_send", 4, *one, 1, SCRATCH),
        ("fd_pread", 4, *one, -1, SCRATCH),  # a negative offset
        ("fd_pread", 4, *one, -(1 << 63), SCRATCH),
    ]
    for call in calls:
        s.call(*call)
    s.call("fd_tell", 4, SCRATCH)  # no seek moved it
    o = sandbox.run(s.wasm(), files={"/a.txt": HELLO})
    assert o.status is Status.OK, o.detail
    results = s.decode(o.stdout)
    assert [r[2] for r in results[1:-1]] == [28] * len(calls)  # EINVAL
    assert results[-1][2] == 0 and results[-1][3][:8] == bytes(8)


def test_fsync_creating_a_directory_and_opening_one_to_create_answer_as_linux():
    s = Script()
    s.call("path_open", 3, 0, *s.string("a.txt"), 0, 2, 0, 0, SCRATCH)  # fd 4
    s.call("fd_sync", 4)
    s.call("fd_datasync", 4)
    s.call("fd_sync", 3)
    s.call("path_open", 3, 0, *s.string("new/"), 1, 2, 0, 0, SCRATCH)  # O_CREAT
    s.call("path_open", 3, 0, *s.string("d/new/"), 1, 2, 0, 0, SCRATCH)
    s.call("path_open", 3, 0, *s.string("nope/new/"), 1, 2, 0, 0, SCRATCH)
    s.call("path_open", 3, 0, *s.string("d"), 1, 2, 0, 0, SCRATCH)  # an existing directory
    s.call("path_open", 3, 0, *s.string("d"), 5, 2, 0, 0, SCRATCH)  # O_CREAT | O_EXCL
    s.call("path_open", 3, 0, *s.string("new"), 1, 2, 0, 0, SCRATCH)
    s.call("path_open", 3, 0, *s.string("a.txt/"), 1, 2, 0, 0, SCRATCH)
    o = sandbox.run(s.wasm(), files={"/a.txt": HELLO, "/d/b": b""})
    # SUCCESS x 3, EISDIR, EISDIR, ENOENT, EISDIR, EEXIST, EROFS, ENOTDIR
    assert [r[2] for r in s.decode(o.stdout)] == [0, 0, 0, 0, 31, 31, 44, 31, 20, 69, 54]


_ARGS = st.lists(
    st.one_of(
        st.tuples(st.just("i"), st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 96) - 1)),
        st.tuples(st.just("I"), st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, U64)),
    ),
    min_size=1,
    max_size=9,
)


@settings(max_examples=300, deadline=None)
@given(_ARGS)
def test_host_functions_get_i32_as_u32_and_i64_signed_whatever_fills_the_slots(args):
    # one 16-byte wasmtime_val_raw_t per argument: an i32 in its low 4 bytes, an i64 in
    # its low 8; the rest of the slot is whatever was there
    raw = b"".join(
        v.to_bytes(4, "little") + junk.to_bytes(12, "little")
        if kind == "i"
        else (v & U64).to_bytes(8, "little") + junk.to_bytes(8, "little")
        for kind, v, junk in args
    )
    slots = ctypes.create_string_buffer(raw, len(raw))
    words = ctypes.cast(slots, ctypes.POINTER(ctypes.c_uint32))
    params = "".join(kind for kind, _, _ in args)
    assert list(_guest._decoder(params)(words)) == [v for _, v, _ in args]


# --- what reading costs -------------------------------------------------------------------


def _pread_script(times: int, length: int) -> bytes:
    s = Script()
    s.call("path_open", 3, 0, *s.string("f"), 0, 2, 0, 0, SCRATCH)  # fd 4
    vec = s.iovecs((65536, length))
    for _ in range(times):
        s.call("fd_pread", 4, *vec, 0, SCRATCH)
    return s.wasm()


@pytest.mark.parametrize("size", [1, 16, 17, 20_000])
def test_reading_input_files_costs_fuel_per_byte(size):
    wasm = _pread_script(3, 40_000)  # each pread reads the whole file
    read = sandbox.run(wasm, files={"/f": os.urandom(size)})
    empty = sandbox.run(wasm, files={"/f": b""})
    assert read.status is empty.status is Status.OK, read.detail
    assert read.fuel - empty.fuel == 3 * _files.read_fuel(size) == 3 * -(-size // 16)


def test_a_read_the_fuel_left_cannot_pay_for_ends_the_job_as_fuel():
    wasm = _pread_script(1, 1 << 16)
    empty = sandbox.run(wasm, files={"/f": b""})
    cost = _files.read_fuel(1 << 16)
    limit = empty.fuel + cost // 2
    o = sandbox.run(wasm, limits=Limits(fuel=limit), files={"/f": bytes(1 << 16)})
    assert (o.status, o.fuel, o.detail) == (Status.FUEL, limit, f"fuel limit of {limit} exhausted")
    assert o.stdout == b""  # it ended in the read
    enough = empty.fuel + cost
    o = sandbox.run(wasm, limits=Limits(fuel=enough), files={"/f": bytes(1 << 16)})
    assert (o.status, o.fuel) == (Status.OK, enough)


def test_readdir_listings_cost_fuel_as_reads():
    s = Script()
    for _ in range(2):
        s.call("fd_readdir", 3, SCRATCH, 256, 0, SCRATCH + 300)
    wasm = s.wasm()
    short = sandbox.run(wasm, files={"/a": b""})
    long = sandbox.run(wasm, files={"/" + "a" * 40: b""})
    # ".", ".." and the one entry: a 24-byte dirent and the name each
    listed = [_files.read_fuel(3 * 24 + 1 + 2 + n) for n in (1, 40)]
    assert long.fuel - short.fuel == 2 * (listed[1] - listed[0]) > 0


class _Clock:
    """A job's clock that says `step` seconds have passed each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_one_long_read_checks_the_time_limit_between_chunks(monkeypatch):
    monkeypatch.setattr(_files, "COPY_CHUNK", 16)
    job = _job.Job(Limits(time_s=1), _Clock(0.6))  # over at its second check

    class _Memory:
        view = memoryview(bytearray(200))

    source = memoryview(bytes(range(100)))
    with pytest.raises(_guest.Stopped):
        _files._copy(job, _Memory, [(0, 40), (50, 60)], source, 0)
    assert job.stop[0] is Status.TIME
    copied = bytes(_Memory.view[:40]) + bytes(_Memory.view[50:110])
    assert copied.rstrip(b"\0") == bytes(range(32))  # two chunks, then the limit


def test_the_guest_memory_is_looked_up_once_per_job(monkeypatch):
    looked = []
    export_get = _guest.ffi.wasmtime_caller_export_get

    def counting(*args):
        looked.append(1)
        return export_get(*args)

    monkeypatch.setattr(_guest.ffi, "wasmtime_caller_export_get", counting)
    s = Script()
    vec = s.iovecs((SCRATCH + 64, 1))
    for _ in range(50):
        s.call("fd_read", 0, *vec, SCRATCH)
    wasm = s.wasm()
    o = sandbox.run(wasm, stdin=bytes(range(50)))
    assert o.status is Status.OK, o.detail
    assert [r[3][64] for r in s.decode(o.stdout)] == list(range(50))
    assert len(looked) == 1
    looked.clear()
    assert sandbox.run(wasm, stdin=b"x").status is Status.OK
    assert len(looked) == 1  # a new job, a new instance: looked up again


# --- guest paths and the tree -------------------------------------------------------


@pytest.mark.parametrize(
    "path, why",
    [
        ("relative/a", "not absolute"),
        ("/", "the root is a directory"),
        ("/a//b", "empty component"),
        ("/a/", "empty component"),
        ("/a/./b", "'.' component"),
        ("/a/../b", "'..' component"),
        ("/" + "x" * 256, "over 255 bytes"),
        ("/" + "\u00e9" * 128, "over 255 bytes"),  # 256 bytes of UTF-8
        ("/a\0b", "NUL"),
        ("/\udc80", "not valid UTF-8"),
        ("/" + "a/" * 2100 + "b", "over 4096 bytes"),
    ],
)
def test_a_bad_guest_path_fails_before_the_job_runs(path, why):
    with pytest.raises(ValueError, match=why):
        sandbox.run(b"not even a module", files={path: b""})


def test_a_file_that_is_also_a_directory_and_too_many_files_fail():
    with pytest.raises(ValueError, match="also a directory"):
        _tree.Tree({"/a": b"", "/a/b": b""})
    with pytest.raises(ValueError, match="more than 4096"):
        _tree.Tree({f"/f{i}": b"" for i in range(4097)})
    assert list(_tree.Tree({f"/f{i}": b"" for i in range(4096)}).files())[:2] == ["/f0", "/f1"]
    with pytest.raises(ValueError, match="bytes or a host path"):
        _tree.Tree({"/a": 3})
    deep = "/" + "/".join(f"d{i}" for i in range(800))  # 800 directories per path
    _tree.Tree({f"{deep}/f{i}": b"" for i in range(4)} | {"/x/a/b/f": b""})
    with pytest.raises(ValueError, match="more than 4096 directories"):
        _tree.Tree({f"/{i}{deep}/f": b"" for i in range(6)})


def test_a_missing_host_file_is_an_oserror_in_run(files_wasm, tmp_path):
    with pytest.raises(FileNotFoundError):
        sandbox.run(files_wasm, ["sum", "/a"], files={"/a": str(tmp_path / "gone")})
    with pytest.raises(OSError, match="not a regular file"):
        sandbox.run(files_wasm, ["sum", "/a"], files={"/a": str(tmp_path)})


_NAME = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda n: n not in (".", ".."))
_PATHS = st.lists(st.lists(_NAME, min_size=1, max_size=4), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(_PATHS)
def test_any_valid_paths_build_a_tree_that_lists_exactly_them(parts):
    paths = {"/" + "/".join(p) for p in parts}
    # a path that is another's directory is not a file
    files = {p for p in paths if not any(q.startswith(p + "/") for q in paths)}
    tree = _tree.Tree({p: p.encode() for p in files})
    assert sorted(tree.files()) == sorted(files)
    assert len(list(tree.files())) == len(files)
    for p in files:
        node = tree.resolve(0, p.encode())
        assert not tree.is_dir[node] and tree.sources[node] == p.encode()
        parent, name = p.rsplit("/", 1)
        assert tree.resolve(0, f"{parent}/./{name}".encode()) == node
        with pytest.raises(Errno):  # a file has no entries, not even ..
            tree.resolve(0, f"{p}/..".encode())
    assert tree.paths == sorted(tree.paths) and tree.paths[0] == b"/"


@settings(max_examples=25, deadline=None)
@given(_PATHS)
def test_the_guest_walking_its_tree_finds_exactly_the_files(files_wasm, parts):
    paths = {"/" + "/".join(p) for p in parts}
    files = {p for p in paths if not any(q.startswith(p + "/") for q in paths)}
    o = sandbox.run(files_wasm, ["walk"], files={p: b"" for p in files})
    assert o.status is Status.OK, o.detail
    found = [p.decode() for p in o.stdout.split(b"\0")[:-1]]
    assert found == sorted(files, key=lambda p: p.encode().split(b"/"))  # each directory in order


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_guest_path_accepts_exactly_the_normalised_absolute_paths(path):
    parts = path.split("/")
    ok = (
        path.startswith("/")
        and len(path.encode("utf-8", "surrogatepass")) <= 4096
        and all(p not in ("", ".", "..") and "\0" not in p for p in parts[1:])
        and all(len(p.encode("utf-8", "surrogatepass")) <= 255 for p in parts)
        and not any("\ud800" <= c <= "\udfff" for c in path)
    )
    try:
        raw = _tree.guest_path(path)
    except ValueError:
        assert not ok
    else:
        assert ok and raw == path.encode()


# --- slots ----------------------------------------------------------------------------


def test_slots_run_jobs_with_files_as_run_does(files_wasm, tmp_path):
    host = tmp_path / "t.csv"
    host.write_bytes(TABLE)
    files = {"/input/a.txt": HELLO, "/t.csv": str(host)}
    args = ["sum", "/input/a.txt", "/t.csv"]
    cache = sandbox.ModuleCache(tmp_path / "cache")
    sha = cache.put(files_wasm)
    with sandbox.Slots(1, tmp_path / "cache") as slots:
        with pytest.raises(ValueError, match="not absolute"):
            slots.start("bad", sha, args, b"", Limits(), files={"t.csv": b""})
        slots.start("ok", sha, args, b"", Limits(), files=files)
        key, o = collect_one(slots)
        here = sandbox.run(files_wasm, args, files=files)
        assert (key, o.status, o.stdout, o.fuel) == ("ok", Status.OK, here.stdout, here.fuel)
        assert lines(o) == [digest("/input/a.txt", HELLO), digest("/t.csv", TABLE)]
        slots.start("gone", sha, args, b"", Limits(), files={"/t.csv": str(tmp_path / "gone")})
        key, o = collect_one(slots)
        assert (key, o.status) == ("gone", Status.CRASH)
        assert o.detail.startswith("input file: ") and "No such file" in o.detail
        slots.start("after", sha, ["stdin"], b"abc", Limits())  # the worker goes on
        assert lines(collect_one(slots)[1]) == [digest("stdin", b"abc")]


def test_a_slot_maps_a_file_larger_than_its_host_margin(files_wasm, tmp_path):
    # 3 GiB, sparse: more than the worker's address-space fence leaves for the host
    # (HOST_MARGIN, 1 GiB) unless the fence grows by the files mapped
    host = tmp_path / "huge.bin"
    with open(host, "wb") as f:
        f.truncate(3 << 30)
    cache = sandbox.ModuleCache(tmp_path / "cache")
    sha = cache.put(files_wasm)
    with sandbox.Slots(1, tmp_path / "cache") as slots:
        slots.start(
            "huge", sha, ["seek", "/huge"], b"", Limits(memory_mb=16), files={"/huge": str(host)}
        )
        _, o = collect_one(slots)
    assert lines(o)[:3] == [f"end={3 << 30} ok", f"back3={(3 << 30) - 3} ok", "read=3 ok"]
