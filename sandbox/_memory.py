"""Linear memories made by the sandbox, so that a refused memory.grow is seen.

Theory of operation
-------------------
Wasmtime's own store limiter refuses a ``memory.grow`` past the limit by
returning -1 to the payload (malloc returns NULL) and tells nobody, and the
C API cannot make it trap. So the engine is given a host memory creator: every
linear memory is an anonymous mapping made here, and growing it calls back
here. That is where the job's memory limit is enforced, summed over all the
job's memories, and where a refusal is recorded (``Job.halt(MEMORY)``); the
ticker then stops the payload within one tick (the epoch callback in-process,
the worker's end in a slot: see _engine), and the job ends as MEMORY whatever
the payload did with the -1.

Layout of one memory, as wasmtime's own allocator does it::

    [guard][ accessible | reserved, PROT_NONE ][guard]
            ^ base       ^ size                ^ capacity

The reservation is what the engine configuration promises compiled code (4
GiB on 64-bit hosts), so bounds checks stay elided and an access past
``size`` faults into PROT_NONE pages, which wasmtime reports as a trap.
Pages become accessible with mprotect, which counts against RLIMIT_DATA: in a
worker that is the OS fence under this limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

from wasmtime import _ffi as ffi

from protocol import Status
from sandbox import _job
from sandbox._job import MIB

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_PAGE = mmap.PAGESIZE
_PROT_NONE = 0
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
# Capacity of a memory made outside a job (no limit to honour): wasm32's 4 GiB.
_NO_JOB_CAPACITY = 4 << 30


def _round_up(n: int) -> int:
    return (n + _PAGE - 1) // _PAGE * _PAGE


def _error(message: str) -> int:
    """A wasmtime_error_t* (as an int, the callbacks' return type) owned by wasmtime."""
    err = ffi.wasmtime_error_new(ctypes.create_string_buffer(message.encode()))
    return ctypes.cast(err, ctypes.c_void_p).value or 0


class _Memory:
    __slots__ = ("base", "total", "guard", "size", "capacity", "job")

    def __init__(self, base: int, total: int, guard: int, size: int, capacity: int, job):
        self.base = base  # start of the mapping (the leading guard)
        self.total = total  # length of the mapping
        self.guard = guard
        self.size = size  # bytes the payload may touch
        self.capacity = capacity  # bytes it could grow to without moving
        self.job = job


_memories: dict[int, _Memory] = {}
_next_key = iter(range(1, 1 << 62))


def _describe(nbytes: int) -> str:
    return f"{nbytes / MIB:.4g} MiB"


@ffi.wasmtime_new_memory_callback_t
def _new_memory(env, ty, minimum, maximum, reserved, guard, out):  # noqa: ARG001
    try:
        job = _job.current()
        if job is not None:
            if job.memory_used + minimum > job.memory_limit:
                job.halt(
                    Status.MEMORY,
                    f"the module needs {_describe(minimum)} of linear memory to start; "
                    f"the memory limit is {job.limits.memory_mb} MiB",
                )
                return _error("memory limit: minimum size too large")
            limit = job.memory_limit
        else:
            limit = _NO_JOB_CAPACITY
        capacity = _round_up(max(reserved, min(maximum, limit), minimum))
        guard = _round_up(guard)
        total = guard + capacity + guard
        base = _libc.mmap(
            None,
            total,
            _PROT_NONE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            -1,
            0,
        )
        if base is None or base == _MAP_FAILED:
            err = ctypes.get_errno()
            if job is not None:
                job.halt(Status.MEMORY, f"cannot reserve linear memory: {os.strerror(err)}")
            return _error(f"mmap failed: {os.strerror(err)}")
        if minimum and _libc.mprotect(base + guard, _round_up(minimum), _PROT_RW) != 0:
            err = ctypes.get_errno()
            _libc.munmap(base, total)
            if job is not None:
                job.halt(
                    Status.MEMORY,
                    f"the OS refused {_describe(minimum)} of linear memory: {os.strerror(err)}",
                )
            return _error(f"mprotect failed: {os.strerror(err)}")
        key = next(_next_key)
        _memories[key] = _Memory(base, total, guard, minimum, capacity, job)
        if job is not None:
            job.memory_used += minimum
        mem = out[0]
        mem.env = key
        mem.get_memory = _get_memory
        mem.grow_memory = _grow_memory
        mem.finalizer = _free_memory
        return 0
    except BaseException as e:  # never unwind into wasmtime
        job = _job.current()
        if job is not None:
            job.internal = f"memory creator: {e!r}"
        return _error(f"internal error: {e!r}")


@ffi.wasmtime_memory_get_callback_t
def _get_memory(env, size_p, capacity_p):
    m = _memories[env]
    size_p[0] = m.size
    capacity_p[0] = m.capacity
    return m.base + m.guard


@ffi.wasmtime_memory_grow_callback_t
def _grow_memory(env, new_size):
    try:
        m = _memories[env]
        job = m.job
        delta = new_size - m.size
        if delta <= 0:
            return 0
        if job is not None and job.memory_used + delta > job.memory_limit:
            job.halt(
                Status.MEMORY,
                f"memory.grow to {_describe(new_size)} refused: "
                f"the memory limit is {job.limits.memory_mb} MiB",
            )
            return _error("memory limit reached")
        if new_size > m.capacity:
            return _error("memory cannot grow past its reservation")
        old_end = _round_up(m.size)
        new_end = _round_up(new_size)
        if new_end > old_end and _libc.mprotect(
            m.base + m.guard + old_end, new_end - old_end, _PROT_RW
        ):
            err = ctypes.get_errno()
            if job is not None:
                job.halt(
                    Status.MEMORY,
                    f"the OS refused to grow linear memory to {_describe(new_size)}: "
                    f"{os.strerror(err)}",
                )
            return _error(f"mprotect failed: {os.strerror(err)}")
        m.size = new_size
        if job is not None:
            job.memory_used += delta
        return 0
    except BaseException as e:  # never unwind into wasmtime
        job = _job.current()
        if job is not None:
            job.internal = f"memory grow: {e!r}"
        return _error(f"internal error: {e!r}")


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _free_memory(env):
    m = _memories.pop(env, None)
    if m is not None:
        _libc.munmap(m.base, m.total)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _free_creator(env):  # noqa: ARG001
    pass


_CREATOR = ffi.wasmtime_memory_creator_t(None, _new_memory, _free_creator)


def install(config) -> None:
    """Make every linear memory of engines built from `config` come from here."""
    # wasmtime's copy-on-write memory images only work with its own mappings
    config.memory_init_cow = False
    ffi.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(_CREATOR))


def at(address: int) -> _Memory | None:
    """The memory whose payload bytes start at `address`, if this module made it."""
    for m in list(_memories.values()):  # a copy: jobs on other threads add to it
        if m.base + m.guard == address:
            return m
    return None


def view(address: int, size: int) -> memoryview:
    """Bytes [address, address + size) of this process, as a writable memoryview (no
    copy; the caller makes sure the mapping outlives it and touches only what is
    mapped accessible)."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def live() -> int:
    """Linear memories currently mapped (for tests: a finished job leaves none)."""
    return len(_memories)
