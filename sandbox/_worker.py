"""The worker process behind one slot: runs jobs one at a time, forever.

Started by Slots with the multiprocessing *spawn* method (a fresh interpreter,
never a fork of a process holding ZeroMQ sockets or wasmtime threads). It
first lowers its priority (niceness, and SCHED_IDLE on Linux where allowed;
not with BOREDNET_JOB_PRIORITY=normal, for tests and demos), before any thread
exists so that every later thread inherits it, then loads the engine and says
``("ready", pid)``.

Messages on its end of the pipe are maps keyed by field name (pickled by
multiprocessing; both ends are the same installation), each with its `kind`::

    parent -> worker   {kind: "job", key, sha256, args, stdin,
                        limits: {fuel, memory_mb, time_s, output_kb, native_nans},
                        compile_s, compile_memory_mb,
                        files: {guest path: host path (str) or bytes}}
                       None: exit
    worker -> parent   {kind: "ready", pid}
                       {kind: "compiling", key, at: time.monotonic(),
                        cpu_s: this process's CPU seconds so far}: a compile begins
                       {kind: "compiled", key}: it ended (well or not)
                       {kind: "outcome", key, status, stdout, fuel, wall_s, detail,
                        exit_code, stderr, checkpoint[, stuck: True]}

Jobs run on the watched engines (_flavors: no epoch checks in the compiled code, up
to a third faster on tight loops), so nothing in the worker can stop a payload:
once a job must stop (its time is up, its memory was refused), the engine's ticker
sends its outcome, marked `stuck`, and the worker exits at once; the parent puts
another in its place (_slots). Each job's outcome is sent once, whichever thread
sends it first (_Pipe).

OS fences, under the sandbox's own limits, re-armed for each job:

- RLIMIT_CPU: CPU seconds used so far + 2 * time_s + CPU_SLACK_S. Past it the
  kernel kills the worker with SIGXCPU; the job is reported as CRASH.
- RLIMIT_DATA: private writable memory at start-up + memory_mb +
  HOST_MARGIN. Linear memory becomes writable page by page as it grows, so
  this bounds what a payload can really use even if the sandbox's accounting
  were wrong; the growth is refused and the job ends as MEMORY.
- RLIMIT_AS: address space at start-up + one linear memory's reservation
  (4 GiB plus guards on 64-bit hosts, so that bounds checks are elided) +
  memory_mb + HOST_MARGIN + the job's input files mapped (whole pages of each
  host file, mapped once however many guest paths it has; see _tree): catches a
  runaway host-side allocation.
- RLIMIT_CORE 0: a crashing worker leaves no core files behind.

A worker whose parent dies (a jobber killed with SIGKILL) exits within
PARENT_CHECK_S, even in the middle of a job; on Linux the kernel kills it at once
(PR_SET_PDEATHSIG), even while it is stopped (suspended by an --idle-only or
--cpu-limit jobber), where no thread of its own could run.

Compiling a module (once per module and machine: the compiled form is stored
in the ModuleCache) runs under fences of its own, after the pre-check of
_precheck has passed, and says ("compiling", ...) first so that the parent
knows what a death means:

- RLIMIT_DATA: private writable memory before the compile + compile_memory_mb
  (the job's, as Slots send it: the owner's memory per job, their compile
  ceiling and COMPILE_MEMORY_MB, whichever is least). Past it wasmtime's
  allocations fail and it aborts (SIGABRT); the parent reports MEMORY. A
  Python MemoryError, or a wasmtime error from a failed allocation, is reported
  MEMORY from here.
- RLIMIT_CPU: CPU used so far + compile_s on every core + COMPILE_CPU_SLACK_S
  (compiling is parallel). Past it: SIGXCPU, reported TIME by the parent.
- RLIMIT_AS is lifted while compiling: compiler threads reserve address space
  (stacks, malloc arenas) in proportion to the cores, not to the module.
- The wall clock: the parent kills a worker still compiling after compile_s
  (the job's time_s or Slots' COMPILE_TIME_S, whichever is less): TIME.

Before compiling, the cache is asked whether this module already failed to
compile under fences no larger than the job's (see _cache, "Failed
compiles"): if so the job ends at once, as it did then. A compile that fails
here (invalid bytes, the memory fence, a compiled form over its cap) is
remembered there; one that kills the worker is remembered by the parent.

A job's input files are mapped here, from the host paths the parent sent
(bytes come down the pipe): the page cache is shared between workers, and
nothing is copied. One that cannot be read ends the job CRASH ("input file:
..."): the machine's failure, not the payload's.

Loading a stored compiled form (its size capped by the cache) runs with the
fences lifted. A job whose limits say native_nans runs on the native engine
(compiled and cached for it separately), any other with canonical NaNs (its module
with NaN guards, compiled under the same fences; see _flavors).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import wasmtime

from protocol import Limits, Status
from sandbox import _engine, _flavors, _tree
from sandbox._cache import ModuleCache
from sandbox._job import MIB
from sandbox._precheck import Refused

CPU_SLACK_S = 60  # host work around a job: instantiating, WASI calls, the ticker
# on top of compile_s on every core: RLIMIT_CPU counts whole seconds, and the wall-clock
# watchdog in the parent is the fence meant to fire first
COMPILE_CPU_SLACK_S = 2
HOST_MARGIN = 1024 * MIB  # host-side allocations on top of the payload's memory
SAVE_EVERY_S = 1.0  # a job's saved states reach the parent at most this often
PARENT_CHECK_S = 0.5  # how soon an orphaned worker (its jobber was killed) stops
# one linear memory's mapping (see _memory), twice: the payload's memory, and the GC heap
# wasmtime gives a store for exception objects (the exceptions proposal), made by the same
# memory creator and counted in the job's memory limit
_RESERVATION = 2 * ((4 << 30) + 2 * (32 << 20))


# For tests and demos only: "normal" leaves a worker at its parent's priority, so that a
# test waiting on jobs does not depend on how busy the machine is. A lender never sets it:
# jobs are to yield to the owner's work (docs/testing.md, tests/e2e/test_priority.py).
PRIORITY_ENV = "BOREDNET_JOB_PRIORITY"


def lower_priority(nice: int) -> None:
    """Niceness `nice` (never raised above the current one) and SCHED_IDLE if nice >= 19;
    nothing if the environment says BOREDNET_JOB_PRIORITY=normal."""
    if os.environ.get(PRIORITY_ENV) == "normal":
        return
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    if nice >= 19 and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):  # PermissionError in some containers
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Fences:
    def __init__(self) -> None:
        self.address0 = _status_kb("VmSize")
        self.data0 = _status_kb("VmData")
        self._memory: tuple[int, int] | None = None
        self._set(resource.RLIMIT_CORE, 0)

    @staticmethod
    def _set(which: int, soft: int) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, hard))

    def rebase(self) -> None:
        """A module was loaded: its code is the worker's own memory from now on, not the
        job's (a language runtime's is hundreds of MiB), so the job fences count from
        here."""
        self.address0 = max(self.address0, _status_kb("VmSize"))
        self.data0 = max(self.data0, _status_kb("VmData"))
        self._memory = None

    def lift(self) -> None:
        """No fences (while loading or compiling a module)."""
        for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_DATA):
            self._set(which, resource.getrlimit(which)[1])
        self._memory = None

    def arm_compile(self, compile_s: float, memory_mb: int) -> None:
        """The compile fences: memory_mb more writable memory, compile_s on every core."""
        self.lift()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        cpu = usage.ru_utime + usage.ru_stime + compile_s * cores + COMPILE_CPU_SLACK_S
        self._set(resource.RLIMIT_CPU, int(cpu) + 1)
        data = _status_kb("VmData")
        if data:
            self._set(resource.RLIMIT_DATA, data + memory_mb * MIB)

    def arm(self, limits: Limits, mapped: int = 0) -> None:
        """The job's fences; `mapped`: bytes of input files mapped for it (address space)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime + 2 * limits.time_s + CPU_SLACK_S
        self._set(resource.RLIMIT_CPU, int(cpu) + 1)
        if not (self.address0 and self.data0):
            return
        payload = limits.memory_mb * MIB
        memory = (
            self.address0 + _RESERVATION + payload + HOST_MARGIN + mapped,
            self.data0 + payload + HOST_MARGIN,
        )
        if memory != self._memory:
            self._set(resource.RLIMIT_AS, memory[0])
            self._set(resource.RLIMIT_DATA, memory[1])
            self._memory = memory


_ALLOCATION_WORDS = ("os error 12", "cannot allocate", "out of memory", "failed to allocate")


def _load(
    conn,
    key: str,
    cache: ModuleCache,
    sha256: str,
    fences: _Fences,
    compile_s: float,
    memory_mb: int,
    canonical: bool,
) -> wasmtime.Module:
    """The job's module for its engine: its stored compiled form, else compiled under the
    compile fences (unless it failed to compile before, under fences no larger)."""
    fences.lift()
    module = cache.load(sha256, canonical)
    if module is not None:
        fences.rebase()
        return module
    failed = cache.failure(sha256, canonical, memory_mb, compile_s)
    if failed is not None:  # not in this process's memory either: the fences may differ
        raise Refused(*failed, remember=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fences.arm_compile(compile_s, memory_mb)
    conn.send(  # the fences are up
        {
            "kind": "compiling",
            "key": key,
            "at": time.monotonic(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )
    try:
        module = cache.build(sha256, canonical)
        fences.lift()
        fences.rebase()
        return module
    except MemoryError:
        raise _memory_refused(cache, sha256, canonical, memory_mb) from None
    except wasmtime.WasmtimeError as e:
        if any(word in str(e).lower() for word in _ALLOCATION_WORDS):
            raise _memory_refused(cache, sha256, canonical, memory_mb) from None
        detail = f"not a valid module: {_engine.first_line(str(e))}"
        cache.remember_failure(sha256, canonical, Status.INVALID, detail)
        raise
    except Refused as e:  # a cap, or a compiled form too big to keep: the same under any fence
        if e.remember:
            cache.remember_failure(sha256, canonical, e.status, e.detail)
        raise
    finally:
        fences.lift()
        conn.send({"kind": "compiled", "key": key})


def _memory_refused(cache: ModuleCache, sha256: str, canonical: bool, memory_mb: int) -> Refused:
    # the words Slots reads (sandbox._slots.COMPILE_MEMORY_DETAIL): below its fixed fence,
    # the owner's limit stopped this compile, and the job is given back unrun
    detail = f"compiling the module took more than the compile memory fence of {memory_mb} MiB"
    cache.remember_failure(sha256, canonical, Status.MEMORY, detail, memory_mb=memory_mb)
    return Refused(Status.MEMORY, detail, remember=False)


class _Pipe:
    """The worker's end of its pipe, written by two threads: the job's, and the ticker's
    when a job on the watched engine must stop (`stuck`). Each job's outcome goes once."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.recv = conn.recv
        self._lock = threading.Lock()
        self._ended = -1  # the serial number of the last job whose outcome was sent

    def send(self, msg: dict) -> None:
        with self._lock:
            self.conn.send(msg)

    def end(self, serial: int, reply: dict) -> bool:
        """Send job `serial`'s outcome, unless it (or a later job's) was sent already."""
        with self._lock:
            if serial <= self._ended:
                return False
            self._ended = serial
            self.conn.send(reply)
            return True

    def stuck(self, serial: int, key: str, o) -> None:
        """The ticker: job `serial` must stop and its payload cannot be stopped here. Its
        outcome goes to the parent, which kills this worker and starts another (_slots)."""
        reply = _outcome(key, o.status.value, o.stdout, o.fuel, o.wall_s, o.detail)
        reply.update(exit_code=o.exit_code, stderr=o.stderr, checkpoint=o.checkpoint, stuck=True)
        if self.end(serial, reply):
            os._exit(0)  # nothing else of this process is worth waiting for


def _serve(conn, cache: ModuleCache, compile_memory_mb: int) -> None:
    fences = _Fences()
    conn = _Pipe(conn)
    conn.send({"kind": "ready", "pid": os.getpid()})
    serial = 0
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        serial += 1
        key, sha256, compile_s = msg["key"], msg["sha256"], msg["compile_s"]
        args, stdin, files = msg["args"], msg["stdin"], msg.get("files", {})
        memory_mb = msg.get("compile_memory_mb", compile_memory_mb)
        try:
            limits = Limits(**msg["limits"])
            canonical = not limits.native_nans
            load = functools.partial(
                _load, conn, key, cache, sha256, fences, compile_s, memory_mb, canonical
            )
            prepared = _engine.prepare(sha256, load, canonical, watched=True)
            if files:  # the last job's address-space fence may not leave room for them
                fences.lift()
            try:
                volume = _tree.Volume(_tree.Tree(files))
            except (OSError, ValueError) as e:
                reply = _outcome(key, Status.CRASH.value, b"", 0, 0.0, f"input file: {e}")
            else:
                with volume:
                    fences.arm(limits, volume.mapped)
                    saves = _Saves(conn, key)
                    stuck = functools.partial(conn.stuck, serial, key)
                    o = _engine.execute(
                        prepared, args, stdin, limits, volume, msg.get("checkpoint"), saves, stuck
                    )
                reply = _outcome(key, o.status.value, o.stdout, o.fuel, o.wall_s, o.detail)
                reply.update(exit_code=o.exit_code, stderr=o.stderr, checkpoint=o.checkpoint)
        except BaseException as e:  # a bug or an OS fence here: report it, then make way
            detail = f"worker failed: {type(e).__name__}: {e}"
            with contextlib.suppress(OSError):
                conn.end(serial, _outcome(key, Status.CRASH.value, b"", 0, 0.0, detail))
            raise
        try:
            conn.end(serial, reply)
        except OSError:  # the parent is gone
            return


class _Saves:
    """A job's saved states (sandbox._scratch), sent to the parent as they are made: at
    most one every SAVE_EVERY_S of running time (the others are dropped; the job's last
    state comes with its outcome), so a payload saving in a loop cannot flood the pipe."""

    def __init__(self, conn, key: str, clock=time.monotonic) -> None:
        self.conn, self.key, self.clock = conn, key, clock
        self.sent_at = -math.inf
        self.start = clock()

    def __call__(self, state: bytes, fuel: int) -> None:
        now = self.clock()
        if now - self.sent_at < SAVE_EVERY_S:
            return
        self.sent_at = now
        msg = {"kind": "saved", "key": self.key, "state": state, "fuel": fuel}
        self.conn.send(msg | {"wall_s": now - self.start})


def _outcome(key: str, status: str, stdout: bytes, fuel: int, wall_s: float, detail: str):
    return {
        "kind": "outcome",
        "key": key,
        "status": status,
        "stdout": stdout,
        "fuel": fuel,
        "wall_s": wall_s,
        "detail": detail,
        "exit_code": None,
        "stderr": b"",
        "checkpoint": None,
    }


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its jobber dies, stopped or not."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _exit_with_parent(parent: int) -> None:
    """A thread: end this worker, even mid-job, once the process that started it is gone."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def main(conn, cache_root: str, nice: int, compile_memory_mb: int) -> None:
    """Entry point of a worker process (multiprocessing target)."""
    code = 0
    try:
        parent = os.getppid()
        _die_with_parent()
        if os.getppid() != parent:  # it died before that took hold
            os._exit(0)
        lower_priority(nice)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the jobber decides when workers stop
        threading.Thread(
            target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True
        ).start()
        cache = ModuleCache(Path(cache_root))
        for flavor in _flavors.FLAVORS:  # every engine made before the first job, not in it
            if _flavors.watched(flavor):  # (a worker's jobs are stopped from outside)
                _flavors.named(flavor)
        _serve(conn, cache, compile_memory_mb)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the jobber is gone (killed): nobody to tell, nothing to say
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # wasmtime's threads can panic in interpreter teardown: skip it
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
