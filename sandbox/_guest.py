"""The plumbing of the sandbox's own WASI functions: guest memory, errnos, callbacks.

Every WASI function the sandbox defines itself (_wasi, _files) is a raw ctypes
callback (``wasmtime_linker_define_func_unchecked``) over wasmtime's own
(``Linker.allow_shadowing``), not a wasmtime-py ``Func``: it runs without
Python-level exception plumbing, which wasmtime-py keeps in a module global
that threads would share. ``host`` wraps a body so that nothing it raises
reaches wasmtime; ``Guest`` bounds-checks every pointer the payload passes.
"""

from __future__ import annotations

import ctypes
import operator
import struct

import wasmtime
from wasmtime import _ffi as ffi

from protocol import Status
from sandbox import _job, _memory

WASI = "wasi_snapshot_preview1"

# WASI preview 1 errno values (the ones the sandbox returns)
SUCCESS = 0
EBADF = 8
EEXIST = 20
EFAULT = 21
EINVAL = 28
EISDIR = 31
EMFILE = 33
ENAMETOOLONG = 37
ENOENT = 44
ENOTDIR = 54
ENOTSOCK = 57
ENOTSUP = 58
EOVERFLOW = 61
EROFS = 69
ESPIPE = 70

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
IOVEC = struct.Struct("<II")
FUEL_BYTES = 16  # bytes of files copied (read, listed, written) per unit of fuel
MAX_OFFSET = (1 << 63) - 1  # a file position, as WASI's filedelta allows


def seek(guest: Guest, entry, base: int, offset: int, out: int) -> int:
    """fd_seek's end, for any open file (`entry.pos`): to `base` + `offset`, written at
    `out` (checked already); EINVAL before 0, EOVERFLOW past MAX_OFFSET."""
    pos = base + offset
    if pos < 0:
        return EINVAL
    if pos > MAX_OFFSET:
        return EOVERFLOW
    entry.pos = pos
    guest.put_u64(out, pos)
    return SUCCESS


def read_fuel(n: int) -> int:
    """The fuel copying `n` bytes of files costs: one per FUEL_BYTES, rounded up."""
    return -(-n // FUEL_BYTES)


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MEMORY_NAME = b"memory"
_MEMORY_KIND = ffi.WASMTIME_EXTERN_MEMORY.value


class Fault(Exception):
    """A guest pointer outside its memory: the call returns EFAULT."""


class Stopped(Exception):
    """The job must end (its reason is recorded in ``Job.stop``): the payload traps."""


class Errno(Exception):
    """Ends a host call with this errno (bodies wrapped by `host`)."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


def trap(message: str) -> int:
    """A wasmtime_trap_t* (as an int) for a callback to return: the payload traps."""
    t = ffi.wasmtime_trap_new(ctypes.create_string_buffer(message.encode()), len(message))
    return ctypes.cast(t, ctypes.c_void_p).value or 0


class Guest:
    """The calling instance's exported memory and its store's context, for one job (see
    `of`); `size` is as of the current host call.

    `view` is a memoryview of the memory's whole reservation (it never moves), so that
    guest bytes are read and written by slicing, with no ctypes call; only
    [0, size) may be touched, which `check` makes sure of.
    """

    __slots__ = ("context", "view", "size", "memory", "_fuel", "_fuel_ref")

    def __init__(self, caller: int) -> None:
        caller = ctypes.cast(caller, ctypes.POINTER(ffi.wasmtime_caller_t))
        ext = ffi.wasmtime_extern_t()
        found = ffi.wasmtime_caller_export_get(caller, _MEMORY_NAME, 6, ctypes.byref(ext))
        if not found or ext.kind != _MEMORY_KIND:
            raise Fault
        self.context = ffi.wasmtime_caller_context(caller)
        memory = ctypes.byref(ext.of.memory)
        base = ctypes.cast(ffi.wasmtime_memory_data(self.context, memory), ctypes.c_void_p).value
        self.memory = _memory.at(base)
        if self.memory is None:
            raise RuntimeError("a guest memory the sandbox's memory creator did not make")
        self.view = _memory.view(base, self.memory.capacity)
        self.size = self.memory.size
        self._fuel = ctypes.c_uint64(0)  # where wasmtime writes the fuel left
        self._fuel_ref = ctypes.byref(self._fuel)

    @staticmethod
    def of(job: _job.Job, caller) -> Guest:
        """The job's Guest, its memory's size as of now: looked up on the job's first
        host call, then kept (one instance per job; its memory never moves)."""
        g = job.guest
        if g is None:
            g = job.guest = Guest(caller)
        else:
            g.size = g.memory.size
        return g

    def check(self, ptr: int, n: int) -> None:
        """Fault unless guest bytes [ptr, ptr + n) are all in its memory."""
        if ptr + n > self.size:
            raise Fault

    def read(self, ptr: int, n: int) -> bytes:
        if ptr + n > self.size:
            raise Fault
        return self.view[ptr : ptr + n].tobytes()

    def write(self, ptr: int, data: bytes) -> None:
        if ptr + len(data) > self.size:
            raise Fault
        self.view[ptr : ptr + len(data)] = data

    def put_u32(self, ptr: int, value: int) -> None:
        if ptr + 4 > self.size:
            raise Fault
        _U32.pack_into(self.view, ptr, value)

    def put_u64(self, ptr: int, value: int) -> None:
        if ptr + 8 > self.size:
            raise Fault
        _U64.pack_into(self.view, ptr, value)

    def fuel_left(self) -> int:
        if ffi.wasmtime_context_get_fuel(self.context, self._fuel_ref):
            raise RuntimeError("fuel is not on")  # cannot happen: both engines consume it
        return self._fuel.value

    def fuel_used(self, job: _job.Job) -> int:
        return job.limits.fuel - self.fuel_left()

    def charge(self, job: _job.Job, fuel: int) -> None:
        """Burn `fuel` of the job's store, as if the payload had run that many
        instructions; if less is left, the job ends as FUEL (Stopped)."""
        if not fuel:
            return
        left = self.fuel_left()
        if left < fuel:
            fuel = left
            job.halt(Status.FUEL, f"fuel limit of {job.limits.fuel} exhausted")
        err = ffi.wasmtime_context_set_fuel(self.context, left - fuel)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        if job.stop is not None:
            raise Stopped


# An unchecked callback gets its arguments as an array of 16-byte wasmtime_val_raw_t,
# read here as u32 words: argument k's low half is word 4 * k (an i32 is all there,
# the rest of its slot undefined), an i64's high half word 4 * k + 1. Plain ints come
# out of such a pointer, with none of a union's per-field objects.
_Callback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_size_t,
)


def _decoder(params: str):
    """raw arguments -> list of ints, for a function of `params` ("i" i32, "I" i64):
    each i32 as unsigned (u32), each i64 as signed."""
    if params == "i":
        return lambda raw: (raw[0],)
    words = [4 * k + half for k, kind in enumerate(params) for half in range(1 + (kind == "I"))]
    get = operator.itemgetter(*words)
    if "I" not in params:
        return get
    wide = [kind == "I" for kind in params]

    def decode(raw) -> list[int]:
        it = iter(get(raw))
        values = []
        for is_wide in wide:
            value = next(it)
            if is_wide:
                value |= next(it) << 32
                value -= (value >> 63) << 64
            values.append(value)
        return values

    return decode


def host(fn, params: str):
    """Wrap a host function body for a function of `params` ("i" i32, "I" i64): the
    body gets (job, caller, args), args the values (i32 as u32, i64 signed; see
    _decoder), and returns an errno.

    The body may raise Fault (EFAULT), Errno (its errno), Stopped (the payload traps;
    the job ends as recorded in Job.stop) or return a trap (an int > 0xFFFF, from
    `trap`). Anything else raised is a bug here: it is recorded
    and the payload traps, and the job is reported as CRASH.
    """
    decode = _decoder(params)

    @_Callback
    def callback(env, caller, raw, nargs):  # noqa: ARG001
        job = _job.current()
        try:
            if job is None:
                return trap("borednet sandbox: host call outside a job")
            result = fn(job, caller, decode(raw))
        except Fault:
            result = EFAULT
        except Errno as e:
            result = e.errno
        except Stopped:
            return trap("borednet sandbox: job stopped")
        except BaseException as e:
            if job is not None:
                job.internal = f"{fn.__name__}: {e!r}"
            return trap("borednet sandbox: internal error")
        if result > 0xFFFF:
            return result
        raw[0] = result
        return 0

    callback.__name__ = fn.__name__
    return callback


_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(env):  # noqa: ARG001
    pass


def shadow(
    linker: wasmtime.Linker,
    functions: dict[str, tuple[str, bool, object]],
    module_name: str = WASI,
) -> None:
    """Define `functions` (name -> (params, has a result, callback); params a string of
    "i" for i32 and "I" for i64) in `linker`'s module `module_name` (WASI's unless
    said), over what is there."""
    linker.allow_shadowing = True
    module = module_name.encode()
    for name, (params, result, callback) in functions.items():
        ty = wasmtime.FuncType(
            [_I64 if k == "I" else _I32 for k in params], [_I32] if result else []
        )
        err = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(),
            module,
            len(module),
            name.encode(),
            len(name),
            ty.ptr(),
            ctypes.cast(callback, ffi.wasmtime_func_unchecked_callback_t),
            None,
            _no_finalizer,
        )
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
    linker.allow_shadowing = False
