"""The jobber's settings, each with its default defined here once.

`Settings` is what the core is told: this machine, its owner's limits, the timing
rules. The shell (jobber._client.Config) takes its defaults from the constants here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from net._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S

MIB = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # a request unanswered this long is a failed contact
MAX_JOB_TIME_S = 3600.0  # the owner's ceiling for one job's time, whatever a dealer asks
SPOOL_MB = 256  # results one dealer may leave unacknowledged before it gets no work
# Results held in the spool for all dealers together, in shares of one dealer's
# (`spool_share_bytes`): a few dealers may each fill theirs while one does not ack,
# but dealers made up by referrals (up to MAX_DEALERS) cannot fill MAX_DEALERS shares
SPOOL_SHARES_IN_ALL = 4


@dataclass(frozen=True)
class Settings:
    """What the core is told once: this machine, its owner's limits, the timing rules."""

    name: str
    slots: int
    cpus: int
    memory_mb: int  # per job
    buffer: int | None = None  # jobs held beyond running ones; default: one per slot
    max_idle_s: float | None = None
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    max_job_time_s: float = MAX_JOB_TIME_S
    max_fuel: int | None = None
    max_output_kb: int | None = None
    # results one dealer may leave unacknowledged before it is asked for no more work
    spool_share_bytes: int = SPOOL_MB * MIB
    # The most a dealer can make the jobber hold, decided before a `jobs` is taken
    # (docs/jobber.md, "What a dealer can make this machine hold"). None: derived.
    # Jobs' inputs (stdin, args, tags) in hand, buffered and running, in all dealers;
    # default slots x memory_mb MiB: as much as the running jobs themselves may use
    input_bytes: int | None = None
    # payload bytes (and compiled forms known) of the jobs in hand, which the cache
    # keeps whatever its size: at most this (the shell: --cache-mb); None: unbounded
    cache_bytes: int | None = None
    # results unacknowledged plus what held jobs may write, in all dealers; default
    # SPOOL_SHARES_IN_ALL shares
    spool_bytes: int | None = None
    # the platform its sandbox runs native-NaN jobs for (sandbox.PLATFORM, which the shell
    # passes: the core imports no sandbox); None: not said
    platform: str | None = None

    def input_budget(self) -> int:
        if self.input_bytes is not None:
            return self.input_bytes
        return self.slots * self.memory_mb * MIB

    def spool_budget(self) -> int:
        if self.spool_bytes is not None:
            return self.spool_bytes
        return SPOOL_SHARES_IN_ALL * self.spool_share_bytes


@dataclass
class Config:
    dealers: list[str]
    data_dir: Path
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    name: str | None = None
    max_idle_s: float | None = None
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    memory_mb: int | None = None  # per job; default: physical memory / slots
    grace_s: float = 30.0  # on shutdown, how long running jobs may go on
    buffer: int | None = None  # jobs held beyond running ones; default: one per slot
    idle_only: bool = False  # run only while the machine is otherwise idle
    idle_after_s: float = 60.0  # quiet this long before the machine counts as idle
    load_threshold: float = 0.5  # other processes' load per CPU that means "in use"
    cpu_limit: float = 100.0  # percent of each period jobs may run
    control: bool = True  # serve the local control socket
    source: str | None = None  # connect from this local IP address (one machine, many jobbers)
    cache_mb: int = 1024  # disk for payloads and their compiled forms; least used go first
    spool_mb: int = SPOOL_MB  # results one dealer may leave unacknowledged before it gets no work
    max_job_time_s: float = (
        MAX_JOB_TIME_S  # the owner's ceilings for one job, whatever a dealer asks
    )
    max_fuel: int | None = None
    max_output_kb: int | None = None
    # the owner's ceilings for compiling a module (None: the sandbox's fixed fences); the
    # memory fence is never more than memory_mb either
    compile_memory_mb: int | None = None
    compile_time_s: float | None = None
    exit_with: int | None = None  # the pid of our parent: stop when we are no longer its child
    # author keys (files) whose signed payloads alone may run; empty: any payload may
    trust: list[Path] = field(default_factory=list)
    # an allocator to take dealers, shares and preferences from, for the machines of `pool`
    allocator: str | None = None
    pool: str | None = None
    join: str | None = None  # the pool's join token, presented to the allocator once
    # the fields above its owner set (command line, --config): a pool never loosens these
    explicit: frozenset[str] = frozenset()


class JobberError(Exception):
    """The jobber cannot start (data directory in use, bad option)."""


def physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (ValueError, OSError):
        return 1024
