"""The jobber's settings, each with its default defined here once.

`Settings` is what the core is told: this machine, its owner's limits, the timing
rules. The shell (jobber._client.Config) takes its defaults from the constants here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
