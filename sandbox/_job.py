"""Per-job state shared by the host code that runs while a payload runs.

The memory creator, the WASI functions the sandbox defines itself and the
epoch callback are all engine-wide: wasmtime calls them on the thread that is
running the payload, so they find the job through a thread-local. A job runs
start to end on one thread, and one thread runs one job at a time.

Host code never raises into wasmtime: it records why the job must end in
``Job.stop`` (first reason wins) and makes the payload trap; the engine turns
``stop`` into the job's status afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from protocol import Limits, Status

MIB = 1024 * 1024
STDERR_KEEP = 8 * 1024  # bytes of the payload's stderr kept for the task author

_local = threading.local()


class Job:
    __slots__ = (
        "limits",
        "clock",
        "memory_limit",
        "memory_used",
        "out",
        "out_cap",
        "err",
        "stop",
        "started",
        "slept_ns",
        "random",
        "random_block",
        "internal",
        "exit_code",
        "files",
        "guest",
        "scratch",
        "watch",
        "perf0",
    )

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock  # seconds of running time (the engine's ticker)
        self.memory_limit = limits.memory_mb * MIB
        self.memory_used = 0  # bytes of linear memory, summed over the job's memories
        self.out = bytearray()
        self.out_cap = limits.output_kb * 1024
        self.err = bytearray()
        self.stop: tuple[Status, str] | None = None
        self.started = clock()
        self.slept_ns = 0  # virtual time the payload slept through (poll_oneoff)
        self.random = bytearray()  # unread bytes of the random_get stream
        self.random_block = 0
        self.internal: str | None = None  # a bug in host code, reported as CRASH
        self.exit_code: int | None = None  # given to proc_exit
        self.files = None  # its file descriptors: stdin, stdout, stderr, input files (_files)
        self.guest = None  # its instance's memory, once a host call has looked it up (_guest)
        self.scratch = None  # its checkpoint scratch (_scratch), if it has an allowance
        # on a watched engine: what ends it from the ticker once it must stop (_engine)
        self.watch: Callable | None = None
        self.perf0 = 0.0  # time.perf_counter() as it began

    def halt(self, status: Status, detail: str) -> None:
        """Record why the job must end; the first reason is the one reported."""
        if self.stop is None:
            self.stop = (status, detail)

    def must_stop(self) -> bool:
        """True once the job has to end: its time is up, or another reason was recorded."""
        if self.stop is None and self.clock() - self.started >= self.limits.time_s:
            self.halt(Status.TIME, f"wall-clock limit of {self.limits.time_s:g} s reached")
        return self.stop is not None or self.internal is not None


def current() -> Job | None:
    return getattr(_local, "job", None)


def enter(job: Job | None) -> None:
    _local.job = job
