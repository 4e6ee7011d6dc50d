"""What a payload may import: WASI preview 1, with the leaks plugged.

A payload sees ``wasi_snapshot_preview1`` as implemented by wasmtime, with no
preopened directories, no environment variables, no sockets, stdin from the
job's bytes and argv ``["payload", *args]``. Six functions are the sandbox's
own, defined over wasmtime's (``Linker.allow_shadowing``):

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

These are raw ctypes callbacks (``wasmtime_linker_define_func_unchecked``),
not wasmtime-py ``Func``s: they run without Python-level exception plumbing,
which wasmtime-py keeps in a module global that threads would share.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct

import wasmtime
from wasmtime import _ffi as ffi

from protocol import Status
from sandbox import _job
from sandbox._job import STDERR_KEEP

WASI = "wasi_snapshot_preview1"

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

# WASI errno values
_SUCCESS = 0
_EBADF = 8
_EFAULT = 21
_EINVAL = 28

_RANDOM_SEED = b"borednet random_get"
_RANDOM_CHUNK_BLOCKS = 2048  # 64 KiB of the stream between checks of the time limit
_sha256 = hashlib.sha256
_MEMORY_NAME = b"memory"
_MEMORY_KIND = ffi.WASMTIME_EXTERN_MEMORY.value
_U32 = 0xFFFFFFFF
_IOVEC = struct.Struct("<II")
# subscription: userdata, tag, clock id, timeout, precision, flags (clock variant)
_SUBSCRIPTION = struct.Struct("<QB7xIxxxxQQH6x")
# event: userdata, error, type, nbytes, flags
_EVENT = struct.Struct("<QHB5xQH6x")
_SUBSCRIPTION_SIZE = 48
assert _SUBSCRIPTION.size == _SUBSCRIPTION_SIZE and _EVENT.size == 32


class _Fault(Exception):
    """A guest pointer outside its memory: the call returns EFAULT."""


def _trap(message: str) -> int:
    trap = ffi.wasmtime_trap_new(ctypes.create_string_buffer(message.encode()), len(message))
    return ctypes.cast(trap, ctypes.c_void_p).value or 0


class _Guest:
    """The calling instance's exported memory, for one host call."""

    __slots__ = ("context", "base", "size")

    def __init__(self, caller) -> None:
        ext = ffi.wasmtime_extern_t()
        found = ffi.wasmtime_caller_export_get(caller, _MEMORY_NAME, 6, ctypes.byref(ext))
        if not found or ext.kind != _MEMORY_KIND:
            raise _Fault
        self.context = ffi.wasmtime_caller_context(caller)
        memory = ctypes.byref(ext.of.memory)
        self.base = ctypes.cast(
            ffi.wasmtime_memory_data(self.context, memory), ctypes.c_void_p
        ).value
        self.size = ffi.wasmtime_memory_data_size(self.context, memory)

    def check(self, ptr: int, n: int) -> int:
        if ptr + n > self.size:
            raise _Fault
        return self.base + ptr

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self.check(ptr, n), n)

    def write(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(self.check(ptr, len(data)), data, len(data))

    def fuel_used(self, job: _job.Job) -> int:
        remaining = ctypes.c_uint64(0)
        if ffi.wasmtime_context_get_fuel(self.context, ctypes.byref(remaining)):
            return 0  # cannot happen with fuel on; reading 0 keeps the clock fixed
        return job.limits.fuel - remaining.value


def _host(fn):
    """Wrap a host function body: args are the raw values, the return an errno.

    The body may raise _Fault (EFAULT) or return a trap (an int > 0xFFFF, from
    `_trap`). Anything else raised is a bug here: it is recorded and the payload
    traps, and the job is reported as CRASH.
    """

    @ffi.wasmtime_func_unchecked_callback_t
    def callback(env, caller, args, nargs):  # noqa: ARG001
        job = _job.current()
        try:
            if job is None:
                return _trap("borednet sandbox: host call outside a job")
            result = fn(job, caller, args)
        except _Fault:
            result = _EFAULT
        except BaseException as e:
            if job is not None:
                job.internal = f"{fn.__name__}: {e!r}"
            return _trap("borednet sandbox: internal error")
        if result > 0xFFFF:
            return result
        args[0].i32 = result
        return 0

    callback.__name__ = fn.__name__
    return callback


def _fd_write(job: _job.Job, caller, args) -> int:
    fd = args[0].i32
    iovs, iovs_len, nwritten = args[1].i32 & _U32, args[2].i32 & _U32, args[3].i32 & _U32
    if fd not in (1, 2):
        return _EBADF
    guest = _Guest(caller)
    vec = guest.read(iovs, 8 * iovs_len)
    guest.check(nwritten, 4)
    # copy only what is kept: stdout up to its cap, stderr up to STDERR_KEEP
    room = job.out_cap - len(job.out) if fd == 1 else max(0, STDERR_KEEP - len(job.err))
    kept = bytearray()
    total = 0
    for i in range(iovs_len):
        ptr, n = _IOVEC.unpack_from(vec, 8 * i)
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
            return _trap("borednet sandbox: output limit reached")
    ctypes.c_uint32.from_address(guest.base + nwritten).value = min(total, _U32)
    return _SUCCESS


def _proc_exit(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    # wasmtime's own refuses codes of 126 and up (not portable process exit
    # statuses); a payload's exit code is just a number here
    job.exit_code = args[0].i32 & _U32
    return _trap("borednet sandbox: proc_exit")


def _now_ns(job: _job.Job, guest: _Guest) -> int:
    return guest.fuel_used(job) + job.slept_ns


def _clock_time_get(job: _job.Job, caller, args) -> int:
    clock_id, out = args[0].i32, args[2].i32 & _U32
    if not 0 <= clock_id <= 3:
        return _EINVAL
    guest = _Guest(caller)
    guest.write(out, struct.pack("<Q", _now_ns(job, guest) & 0xFFFFFFFFFFFFFFFF))
    return _SUCCESS


def _clock_res_get(job: _job.Job, caller, args) -> int:  # noqa: ARG001
    clock_id, out = args[0].i32, args[1].i32 & _U32
    if not 0 <= clock_id <= 3:
        return _EINVAL
    _Guest(caller).write(out, struct.pack("<Q", 1))
    return _SUCCESS


def _random_get(job: _job.Job, caller, args) -> int:
    buf, n = args[0].i32 & _U32, args[1].i32 & _U32
    guest = _Guest(caller)
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
                return _trap("borednet sandbox: job stopped")
        take = min(n - done, len(job.random))
        guest.write(buf + done, bytes(job.random[:take]))
        del job.random[:take]
        done += take
    return _SUCCESS


def _poll_oneoff(job: _job.Job, caller, args) -> int:
    subs, events, nsubs = args[0].i32 & _U32, args[1].i32 & _U32, args[2].i32 & _U32
    nevents = args[3].i32 & _U32
    if nsubs == 0:
        return _EINVAL
    guest = _Guest(caller)
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
                return _EINVAL
            waits.append((userdata, max(0, timeout - now) if flags & 1 else timeout))
        first = min(wait for _, wait in waits)
        job.slept_ns += first
        ready = [(userdata, 0) for userdata, wait in waits if wait == first]
    out = b"".join(_EVENT.pack(userdata, 0, tag, 0, 0) for userdata, tag in ready)
    guest.write(events, out)
    guest.write(nevents, struct.pack("<I", len(ready)))
    return _SUCCESS


_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()

# name -> (params, results, callback). Module globals: ctypes callbacks must
# outlive every linker that uses them.
_OWN = {
    "fd_write": ([_I32] * 4, [_I32], _host(_fd_write)),
    "clock_time_get": ([_I32, _I64, _I32], [_I32], _host(_clock_time_get)),
    "clock_res_get": ([_I32, _I32], [_I32], _host(_clock_res_get)),
    "random_get": ([_I32, _I32], [_I32], _host(_random_get)),
    "poll_oneoff": ([_I32] * 4, [_I32], _host(_poll_oneoff)),
    "proc_exit": ([_I32], [], _host(_proc_exit)),
}


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(env):  # noqa: ARG001
    pass


def define(linker: wasmtime.Linker) -> None:
    """WASI preview 1 in `linker`, with the sandbox's own functions over wasmtime's."""
    linker.define_wasi()
    linker.allow_shadowing = True
    module = WASI.encode()
    for name, (params, results, callback) in _OWN.items():
        ty = wasmtime.FuncType(params, results)
        err = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(),
            module,
            len(module),
            name.encode(),
            len(name),
            ty.ptr(),
            callback,
            None,
            _no_finalizer,
        )
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
    linker.allow_shadowing = False


def refused_imports(module: wasmtime.Module) -> list[str]:
    """The imports of `module` the sandbox does not provide ("module.name (kind)")."""
    refused = []
    for imp in module.imports:
        if imp.module == WASI and imp.name in PREVIEW1 and isinstance(imp.type, wasmtime.FuncType):
            continue
        kind = type(imp.type).__name__.removesuffix("Type").lower()
        refused.append(f"{imp.module}.{imp.name} ({kind})")
    return refused
