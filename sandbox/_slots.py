"""Slots: long-lived worker processes, each running one job at a time.

Theory of operation
-------------------
Each slot is a worker process (see _worker) started with multiprocessing's
*spawn* method and connected by a duplex Pipe. A slot is idle or runs one job
(its key); started with ``depth`` above 1, a busy slot also takes jobs to run
next, sent down its pipe at once, so a worker goes from one short job to the
next without waiting for the parent (pipelining). The parent never blocks on a
worker: the jobber polls ``fds()``
(the parent ends of the pipes, readable when a result arrives or the worker
dies) and calls ``collect()``.

Every started job comes back from ``collect()`` exactly once:

============================== ===================================================
what happened                  collect() yields
============================== ===================================================
the job ended                  its Outcome, as ``run()`` would give it
the job had to stop (time,     its Outcome, sent by the worker's ticker (the payload
memory) and its payload        cannot be stopped inside: no epoch checks); the
could not                      worker is killed and replaced, the jobs queued
                               behind it go to the new one
the worker died (segfault,     Outcome(CRASH), with the exit code or signal; the
OOM kill, an rlimit)           worker is replaced
compiling went past the        Outcome(TIME): the worker is killed and replaced
compile time limit
the worker died compiling      Outcome(MEMORY) for SIGABRT or SIGKILL (an allocation
                               refused by the compile memory fence, or the OOM
                               killer), Outcome(TIME) for SIGXCPU (the compile CPU
                               fence), else CRASH; the worker is replaced
cancel(key)                    Outcome(ABANDONED); a running job's worker is killed
                               and replaced (the jobs queued behind it go to the
                               new worker); a queued job is run and its outcome
                               dropped (queues are only for jobs of milliseconds)
no news for WATCHDOG           Outcome(CRASH): the worker is killed and replaced
close() while still running    (returned by close) Outcome(ABANDONED)
============================== ===================================================

Compiling is fenced (see _worker for the rlimits): a worker says when a compile
begins and ends, and one still compiling after ``min(time_s, compile_time_s)``
seconds of unsuspended time is killed; its job ends TIME, "compiling the
module took longer than ...". The compiled form is stored in the ModuleCache,
so a module is compiled once per machine. Slots' ``compile_time_s``
(COMPILE_TIME_S) and ``compile_memory_mb`` (COMPILE_MEMORY_MB) set the fences;
a jobber passes the least of its owner's memory per job, the owner's compile
ceiling and these, so compiling never takes more than the owner allows a job.
``compile_memory_mb`` may be lowered or raised between jobs (it goes with each
job to its worker).

A compile that failed is remembered in the ModuleCache (see _cache, "Failed
compiles"), with the fence it failed under: ``start`` gives a job of such a
module the same end at once (collect() yields it; no worker is used), unless
its fences are larger now. Remembered here: a death by the memory fence
(SIGABRT) or the CPU fence (SIGXCPU), and a compile stopped by the wall clock
that used at least COMPILE_CPU_SHARE of its time limit in CPU (one that got
less was starved by a busy machine: not the module's doing, so not kept).
Remembered by the worker: invalid bytes, a refused allocation, a compiled form
over its cap. Not remembered: a SIGKILL (the OOM killer: the machine's state).

The watchdog is a last fence for a worker that hangs outside wasm (the
sandbox's own time limit cannot fire there): a job gets ``2 * time_s +
WATCHDOG_SLACK_S`` seconds of unsuspended time. It fires from collect(), so
call collect() now and then even when no fd is readable.

suspend() sends SIGSTOP to every worker and resume() SIGCONT. A stopped worker
does not advance its ticker, so a suspension does not use up a job's
time limit (the ticker's next tick after SIGCONT counts once), and the
watchdog leaves out time spent suspended. Outcome.wall_s includes it.

A script that creates Slots must guard its entry point with
``if __name__ == "__main__":``: spawn re-imports the parent's main module.

Why one module: the slots are one state machine (each worker idle, running,
compiling, with jobs queued behind it, suspended, or dying and replaced), and
every transition of it goes through ``start``, ``collect``, ``cancel`` and
``close``; the helpers beside the class (how a death reads, the owner's compile
fences) are small and used only here. Split, the promise of the table above,
every started job back exactly once, would be spread over files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path

from protocol import Limits, Status
from sandbox import _worker
from sandbox._cache import ModuleCache
from sandbox._outcome import Outcome
from sandbox._tree import NO_FILES, Tree

log = logging.getLogger(__name__)

WATCHDOG_SLACK_S = 120.0  # a last fence: compiling has its own (compile_time_s) inside it
# the longest a module may take to compile (less if the job's time_s is less): a module
# within the pre-check's caps takes seconds; minutes mean a bomb or a starved machine
COMPILE_TIME_S = 30.0
# memory a compile may use on top of what the worker holds: factor.c's 24 KB module takes
# 15 MB, 50,000 empty functions (the pre-check's cap) 300 MB, the 4 MB bomb of a million
# functions took 5.9 GB; a real module of 32 MB (the largest payload) fits
COMPILE_MEMORY_MB = 2048
# a compile stopped by the wall clock is remembered as the module's fault only if it had at
# least this share of its time limit in CPU: a starved one (SCHED_IDLE on a busy machine)
# says nothing about the module
COMPILE_CPU_SHARE = 0.5
# Workers dying this many times in a row before they are even ready means the
# installation is broken (they print why on stderr): raise rather than respawn forever.
MAX_START_FAILURES = 5
_JOIN_S = 5.0  # how long to wait for a killed worker to be reaped


@dataclasses.dataclass(frozen=True, slots=True)
class Saved:
    """A state a running job saved (sandbox._scratch): its key, the state, and the fuel
    and seconds of running time it had used then."""

    key: str
    state: bytes
    fuel: int
    wall_s: float


class _Worker:
    __slots__ = (
        "process",
        "conn",
        "ready",
        "key",
        "started",
        "paused0",
        "limits",
        "compile_s",
        "msg",
        "compiling",
        "compile_cpu_s",
        "compile_paused0",
        "queue",
        "discard",
    )

    def __init__(self, process, conn) -> None:
        self.process = process
        self.conn = conn
        self.ready = False  # said "ready": it started up
        self.key: str | None = None  # the job it runs
        self.started = 0.0
        self.paused0 = 0.0  # Slots._paused_s when the job started
        self.limits: Limits | None = None
        self.compile_s = 0.0  # the job's compile time limit
        self.msg: dict = {}  # the job's message, as sent (its payload, engine, fences)
        self.compiling: float | None = None  # when its compile began (time.monotonic())
        self.compile_cpu_s = 0.0  # the worker's CPU seconds then
        self.compile_paused0 = 0.0  # Slots._paused_s then
        self.queue: list[tuple[dict, Limits]] = []  # sent, to run after the current job
        self.discard: set[str] = set()  # queued keys cancelled: their outcome is dropped


def _describe_death(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = {
            "SIGKILL": " (perhaps the OOM killer)",
            "SIGXCPU": " (the RLIMIT_CPU fence)",
            "SIGSEGV": " (segmentation fault)",
            "SIGABRT": " (aborted, perhaps out of memory)",
        }.get(name, "")
        return f"worker killed by {name}{why}"
    return f"worker exited with code {exitcode}"


def _cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used (user + system); 0.0 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


COMPILE_MEMORY_DETAIL = "compiling the module took more than the compile memory fence of"


def _owner_fenced(outcome: Outcome) -> Outcome:
    """A compile stopped by a memory fence below COMPILE_MEMORY_MB was stopped by this
    machine's owner (their memory per job, or their compile ceiling), not by the payload:
    the job is given back unrun (ABANDONED, "refused: ..."), so that its dealer sends it
    to a larger machine instead of failing it as the payload's own MEMORY. The fence is
    the one the detail names (a remembered failure's, not today's)."""
    if outcome.status is not Status.MEMORY or not outcome.detail.startswith(COMPILE_MEMORY_DETAIL):
        return outcome
    try:
        memory_mb = int(outcome.detail[len(COMPILE_MEMORY_DETAIL) :].split()[0])
    except (IndexError, ValueError):
        return outcome
    if memory_mb >= COMPILE_MEMORY_MB:
        return outcome
    why = f"refused: compiling it needs more than the {memory_mb} MiB this machine allows: "
    return dataclasses.replace(outcome, status=Status.ABANDONED, detail=why + outcome.detail)


COMPILE_TIME_DETAIL = "compiling the module took"


def _owner_limited(outcome: Outcome, compile_s: float, time_s: float) -> Outcome:
    """_owner_fenced, and the same for time: a compile stopped by a compile time limit
    below both COMPILE_TIME_S and the job's own time limit was stopped by the owner's
    ceiling (`compile_time_s`), so the job is given back unrun, not counted as this
    machine's error again and again while the failure is remembered."""
    outcome = _owner_fenced(outcome)
    if (
        outcome.status is not Status.TIME
        or not outcome.detail.startswith(COMPILE_TIME_DETAIL)
        or compile_s >= min(COMPILE_TIME_S, time_s)
    ):
        return outcome
    why = f"refused: compiling it takes more than the {compile_s:g} s this machine allows: "
    return dataclasses.replace(outcome, status=Status.ABANDONED, detail=why + outcome.detail)


def _compile_death(exitcode: int | None, memory_mb: int) -> tuple[Status, str]:
    """How a job ends whose worker died compiling its module."""
    sig = -exitcode if exitcode is not None and exitcode < 0 else None
    if sig == signal.SIGXCPU:
        return Status.TIME, "compiling the module took more than its CPU fence (SIGXCPU)"
    if sig in (signal.SIGABRT, signal.SIGKILL):
        name = signal.Signals(sig).name
        return Status.MEMORY, (
            f"{COMPILE_MEMORY_DETAIL} {memory_mb} MiB (the worker was killed by {name})"
        )
    return Status.CRASH, f"{_describe_death(exitcode)} while compiling the module"


class Slots:
    """Long-lived worker processes (multiprocessing spawn context), one job per worker at a time."""

    def __init__(
        self,
        n: int,
        cache_root: Path,
        *,
        nice: int = 19,
        compile_time_s: float = COMPILE_TIME_S,
        compile_memory_mb: int = COMPILE_MEMORY_MB,
    ) -> None:
        if n < 1:
            raise ValueError("need at least one slot")
        if compile_time_s <= 0 or compile_memory_mb < 1:
            raise ValueError("compile limits must be positive")
        self._compile_time_s = float(compile_time_s)
        # the compile memory fence of the jobs started from now on (a jobber lowers it to
        # its owner's memory per job, and follows a pool's preferences)
        self.compile_memory_mb = int(compile_memory_mb)
        self._ctx = multiprocessing.get_context("spawn")
        self._cache_root = Path(cache_root)
        # the layout made before the workers race to; and where failed compiles are kept
        self._cache = ModuleCache(self._cache_root)
        self._nice = nice
        self._suspended_since: float | None = None
        self._paused_s = 0.0  # total time spent suspended
        self._queued: list[tuple[str, Outcome]] = []
        # each running job's latest save not yet taken: one state per job at most, however
        # long nobody takes them (python -m sandbox run never does)
        self._saves: dict[str, Saved] = {}
        self._start_failures = 0  # workers in a row that died before they were ready
        self._closed = False
        self._workers: list[_Worker] = []
        # workers new jobs may go to (the first `in_use`): fewer than `n` while a pool's
        # preferences say so; the rest stay idle, and a job running on one finishes
        self.in_use = n
        for _ in range(n):
            self._workers.append(self._spawn())

    def __enter__(self) -> Slots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- workers ---------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker.main,
            args=(child, str(self._cache_root), self._nice, self.compile_memory_mb),
            name="borednet-slot",
            daemon=True,
        )
        process.start()
        child.close()  # so that the worker's death reads as EOF here
        if self._suspended_since is not None:
            self._signal(process, signal.SIGSTOP)
        log.debug("slot worker %s started", process.pid)
        return _Worker(process, parent)

    @staticmethod
    def _signal(process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(process.pid, sig)

    def _kill(self, w: _Worker) -> int | None:
        self._signal(w.process, signal.SIGKILL)
        w.process.join(_JOIN_S)
        w.conn.close()
        return w.process.exitcode

    def _replace(self, w: _Worker) -> None:
        """A new worker in `w`'s place; the jobs queued behind `w`'s go to it."""
        i = self._workers.index(w)
        new = self._workers[i] = self._spawn()
        for msg, limits in w.queue:
            if msg["key"] in w.discard:
                continue  # cancelled already
            try:
                new.conn.send(msg)
            except OSError:  # the new one died at once: the next collect() says so
                break
            if new.key is None:
                self._assign(new, msg, limits)
            else:
                new.queue.append((msg, limits))

    def _assign(self, w: _Worker, msg: dict, limits: Limits) -> None:
        """`w` runs `msg`'s job from now on."""
        w.key = msg["key"]
        w.started = time.monotonic()
        w.paused0 = self._paused_s
        w.limits = limits
        w.compile_s = msg["compile_s"]
        w.msg = msg
        w.compiling = None

    def _ended(self, w: _Worker, out: list, key: str, outcome: Outcome) -> None:
        """`w`'s job ended with `outcome`: report it (unless cancelled), start the next.
        Its save not taken goes: its last state comes with the outcome."""
        self._saves.pop(key, None)
        if key in w.discard:
            w.discard.discard(key)
        else:
            limited = _owner_limited(outcome, w.compile_s, w.msg["limits"]["time_s"])
            out.append((key, limited))
        w.key = None
        w.compiling = None
        if w.queue:
            self._assign(w, *w.queue.pop(0))

    def _remember(self, w: _Worker, exitcode: int | None, status: Status, detail: str) -> None:
        """`w`'s compile failed in a way that is the module's doing: keep it (see the
        module docstring for which). `exitcode` None: stopped by the wall clock."""
        sig = -exitcode if exitcode is not None and exitcode < 0 else None
        fences: dict = {}
        if status is Status.MEMORY and sig == signal.SIGABRT:
            fences["memory_mb"] = w.msg["compile_memory_mb"]
        elif status is Status.TIME and (exitcode is None or sig == signal.SIGXCPU):
            fences["compile_s"] = w.compile_s
        else:
            return
        canonical = not w.msg["limits"]["native_nans"]
        self._cache.remember_failure(w.msg["sha256"], canonical, status, detail, **fences)

    def _active_s(self, since: float, paused0: float, now: float) -> float:
        """Unsuspended seconds from `since` (when Slots._paused_s was `paused0`) to `now`."""
        paused = self._paused_s - paused0
        if self._suspended_since is not None:
            paused += now - max(self._suspended_since, since)
        return now - since - paused

    # --- public ----------------------------------------------------------------------

    @property
    def free(self) -> int:
        """Idle workers."""
        return sum(1 for w in self._workers if w.key is None)

    def running(self) -> list[str]:
        """Keys of jobs running or queued to run."""
        keys = [w.key for w in self._workers if w.key is not None]
        return keys + [m["key"] for w in self._workers for m, _ in w.queue]

    def fds(self) -> list[int]:
        """File descriptors that become readable when a job finishes or a worker dies."""
        return [w.conn.fileno() for w in self._workers]

    def start(
        self,
        key: str,
        sha256: str,
        args: Sequence[str],
        stdin: bytes,
        limits: Limits,
        depth: int = 1,
        files: Mapping[str, str | bytes] = NO_FILES,
        checkpoint: bytes | None = None,
    ) -> None:
        """Start a job in an idle worker, or with `depth` > 1 queue it behind a busy one's
        (at most `depth` jobs per worker). The payload must be in ModuleCache(cache_root).
        `files`: its input files, guest absolute path -> host file path or bytes (the
        worker maps the host files itself; see _tree). `checkpoint`: the state a job with
        `limits.checkpoint_kb` resumes from; the states it saves while it runs come out
        of `take_saves` (at most one a second, the latest of each job kept until taken),
        its last with its outcome.

        RuntimeError if no slot is free or `key` is already running; ValueError for a
        bad guest path.
        """
        if self._closed:
            raise RuntimeError("slots are closed")
        Tree(files)  # a bad path fails here, not in the worker
        files = {
            path: os.fspath(source) if isinstance(source, os.PathLike) else source
            for path, source in files.items()
        }
        if key in self.running():
            raise RuntimeError(f"job {key!r} is already running")
        compile_s = min(limits.time_s, self._compile_time_s)
        memory_mb = self.compile_memory_mb
        if memory_mb < 1:
            raise ValueError("compile_memory_mb must be positive")
        failed = self._cache.failure(sha256, not limits.native_nans, memory_mb, compile_s)
        if (
            failed is not None
            and not self._cache.compiled_path(sha256, not limits.native_nans).exists()
        ):
            status, detail = failed
            log.info("job %s: payload %s failed to compile before: %s", key, sha256[:12], detail)
            outcome = Outcome(status, b"", 0, 0.0, f"{detail} (remembered)")
            self._queued.append((key, _owner_limited(outcome, compile_s, limits.time_s)))
            return
        msg = {
            "kind": "job",
            "key": key,
            "sha256": sha256,
            "args": tuple(args),
            "stdin": bytes(stdin),
            "limits": {
                "fuel": limits.fuel,
                "memory_mb": limits.memory_mb,
                "time_s": limits.time_s,
                "output_kb": limits.output_kb,
                "native_nans": limits.native_nans,
                "checkpoint_kb": limits.checkpoint_kb,
            },
            "checkpoint": checkpoint,
            "compile_s": compile_s,
            "compile_memory_mb": memory_mb,
            "files": files,
        }
        usable = self._workers[: max(1, self.in_use)]
        for w in usable:
            if w.key is not None:
                continue
            try:
                w.conn.send(msg)
            except OSError as e:  # died while idle: replace it, try the next
                log.info("slot worker %s is gone (%s); replacing it", w.process.pid, e)
                self._kill(w)
                self._replace(w)
                continue
            self._assign(w, msg, limits)
            return

        # cancelled queued jobs still run, but count for nothing: the caller has their
        # outcome (ABANDONED) already and may start another in their place
        def load(w: _Worker) -> int:
            return 1 + len(w.queue) - len(w.discard)

        for w in sorted(usable, key=load):
            if load(w) >= depth:
                break
            try:
                w.conn.send(msg)
            except OSError:
                continue  # dying: the next collect() replaces it
            w.queue.append((msg, limits))
            return
        raise RuntimeError("no free slot")

    def take_saves(self) -> list[Saved]:
        """The latest state each running job saved since the last call (collect reads
        them; an earlier one not taken is replaced): for each, the job's key, the state,
        and the fuel and seconds it had used."""
        saves, self._saves = self._saves, {}
        return list(saves.values())

    def collect(self) -> list[tuple[str, Outcome]]:
        """Finished jobs, without blocking; dead or hung workers are replaced."""
        out, self._queued = self._queued, []
        now = time.monotonic()
        try:  # one system call for every worker (Connection.poll makes a selector each time)
            ready = set(select.select([w.conn for w in self._workers], [], [], 0)[0])
        except (OSError, ValueError):  # a closed pipe: look at each one
            ready = {w.conn for w in self._workers}
        for w in list(self._workers):
            more = w.conn in ready
            while more:
                try:
                    msg = w.conn.recv()
                    more = bool(select.select([w.conn], [], [], 0)[0])
                except (EOFError, OSError):
                    exitcode = self._kill(w)
                    status, detail = Status.CRASH, _describe_death(exitcode)
                    if w.key is not None and w.compiling is not None:
                        memory_mb = w.msg["compile_memory_mb"]
                        status, detail = _compile_death(exitcode, memory_mb)
                        self._remember(w, exitcode, status, detail)
                    if w.key is not None:
                        log.warning("job %s: %s", w.key, detail)
                        wall_s = time.monotonic() - w.started
                        if w.key not in w.discard:
                            outcome = Outcome(status, b"", 0, wall_s, detail)
                            time_s = w.msg["limits"]["time_s"]
                            out.append((w.key, _owner_limited(outcome, w.compile_s, time_s)))
                    else:
                        log.info("idle slot worker %s: %s", w.process.pid, detail)
                    self._replace(w)
                    if not w.ready:
                        self._start_failures += 1
                        if self._start_failures >= MAX_START_FAILURES:
                            self._queued = out  # not lost: the next collect() returns them
                            raise RuntimeError(
                                f"slot workers die before they are ready ({detail}, "
                                f"{self._start_failures} in a row); see their stderr"
                            ) from None
                    break
                kind = msg["kind"]
                if kind == "ready":
                    w.ready = True
                    self._start_failures = 0
                    continue
                if kind == "compiling":
                    w.compiling, w.compile_paused0 = msg["at"], self._paused_s
                    w.compile_cpu_s = msg.get("cpu_s", 0.0)
                    continue
                if kind == "compiled":
                    w.compiling = None
                    continue
                if kind == "saved":
                    if msg["key"] == w.key and w.key not in w.discard:
                        self._saves[w.key] = Saved(w.key, msg["state"], msg["fuel"], msg["wall_s"])
                    continue
                key = msg["key"]
                if key != w.key:  # cannot happen: one job at a time per worker, in order
                    log.error(
                        "slot worker %s answered for %r, running %r", w.process.pid, key, w.key
                    )
                outcome = Outcome(
                    Status(msg["status"]),
                    msg["stdout"],
                    msg["fuel"],
                    msg["wall_s"],
                    msg["detail"],
                    msg["exit_code"],
                    msg["stderr"],
                    msg.get("checkpoint"),
                )
                self._ended(w, out, key, outcome)
                if msg.get("stuck"):  # its payload could not be stopped: the worker goes
                    if w.key is not None:  # (the next job, sent down its pipe, goes too)
                        w.queue.insert(0, (w.msg, w.limits))
                    self._kill(w)
                    self._replace(w)
                    break
            if w.key is not None and w.compiling is not None and w in self._workers:
                took = self._active_s(w.compiling, w.compile_paused0, now)
                if took > w.compile_s:
                    log.warning("job %s: compile past %g s; worker killed", w.key, w.compile_s)
                    cpu_s = _cpu_s(w.process.pid) - w.compile_cpu_s
                    self._kill(w)
                    detail = (
                        f"compiling the module took longer than {w.compile_s:g} s "
                        "(the compile time limit: the job's time_s or the slots' "
                        "compile_time_s, whichever is less); stopped"
                    )
                    if cpu_s >= COMPILE_CPU_SHARE * w.compile_s:
                        self._remember(w, None, Status.TIME, detail)
                    wall_s = now - w.started
                    if w.key not in w.discard:
                        outcome = Outcome(Status.TIME, b"", 0, wall_s, detail)
                        time_s = w.msg["limits"]["time_s"]
                        out.append((w.key, _owner_limited(outcome, w.compile_s, time_s)))
                    self._replace(w)
                    continue
            if w.key is not None and w in self._workers:
                limit = 2 * w.limits.time_s + WATCHDOG_SLACK_S
                if self._active_s(w.started, w.paused0, now) > limit:
                    log.warning("job %s: worker %s unresponsive; killed", w.key, w.process.pid)
                    self._kill(w)
                    detail = f"worker unresponsive for {limit:g} s; killed"
                    wall_s = now - w.started
                    if w.key not in w.discard:
                        out.append((w.key, Outcome(Status.CRASH, b"", 0, wall_s, detail)))
                    self._replace(w)
        return out

    def cancel(self, key: str) -> None:
        """Kill that job's worker (it is replaced); collect() then yields the job as ABANDONED.

        A key that is not running is ignored (it may have finished meanwhile).
        """
        cancelled = Outcome(Status.ABANDONED, b"", 0, 0.0, "cancelled by the jobber")
        for w in self._workers:
            if w.key == key and key not in w.discard:
                self._kill(w)
                wall_s = time.monotonic() - w.started
                self._queued.append(
                    (key, Outcome(Status.ABANDONED, b"", 0, wall_s, "cancelled by the jobber"))
                )
                self._replace(w)
                return
            if any(m["key"] == key for m, _ in w.queue) and key not in w.discard:
                w.discard.add(key)  # already down its pipe: it runs, and is not reported
                self._queued.append((key, cancelled))
                return

    def suspend(self) -> None:
        """SIGSTOP every worker (idle-only mode). Time limits stop counting."""
        if self._suspended_since is None and not self._closed:
            self._suspended_since = time.monotonic()
            for w in self._workers:
                self._signal(w.process, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT every worker."""
        if self._suspended_since is not None:
            for w in self._workers:
                self._signal(w.process, signal.SIGCONT)
            self._paused_s += time.monotonic() - self._suspended_since
            self._suspended_since = None

    @property
    def suspended(self) -> bool:
        return self._suspended_since is not None

    def close(self, grace_s: float = 0.0) -> list[tuple[str, Outcome]]:
        """Wait up to grace_s for running jobs, then stop every worker.

        Returns what finished meanwhile (and anything not yet collected); jobs
        still running are returned as ABANDONED.
        """
        if self._closed:
            return []
        self.resume()
        out: list[tuple[str, Outcome]] = []
        deadline = time.monotonic() + grace_s
        while True:
            try:
                out += self.collect()
            except RuntimeError:  # workers that cannot start: nothing more will finish
                out += self._queued
                self._queued = []
                break
            left = deadline - time.monotonic()
            if not self.running() or left <= 0:
                break
            wait([w.conn for w in self._workers if w.key is not None], timeout=left)
        self._closed = True
        for w in self._workers:
            if w.key is not None:
                self._signal(w.process, signal.SIGKILL)
                wall_s = time.monotonic() - w.started
                detail = "the jobber stopped before the job finished"
                for key in [w.key, *(m["key"] for m, _ in w.queue)]:
                    if key not in w.discard:
                        out.append((key, Outcome(Status.ABANDONED, b"", 0, wall_s, detail)))
                        wall_s = 0.0
            else:
                with contextlib.suppress(OSError):
                    w.conn.send(None)  # idle: let it exit by itself
        deadline = time.monotonic() + _JOIN_S
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                self._signal(w.process, signal.SIGKILL)
                w.process.join(_JOIN_S)
            w.conn.close()
        self._workers = []
        return out
