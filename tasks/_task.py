"""What a task author writes: a Task that divides into Jobs.

A Task is plain Python and knows nothing of sockets or SQLite. The dealer
draws jobs from `jobs()` lazily (a bounded window at a time), sends each as one
or more replicas, and calls `on_output(job, output)` once per job, in the order
jobs are accepted, with the output a quorum of jobbers agreed on. A job that
cannot be done (too many errors, replicas that never agree) is passed to
`on_failure(job, reasons)` instead. When every job is settled, or `done()`
says so early, the dealer asks for `result()` and prints `report()`.

A dealer restarted on its journal builds a fresh Task and replays the
accepted outputs into it in their original order, so a Task must be
deterministic: the same constructor arguments give the same jobs, and its
state depends only on the outputs it was given.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from protocol import Limits
from protocol._frozen import frozen
from tasks._files import InputFile, named_files
from tasks._payload import Payload


@frozen
class Job:
    """One unit of work: the arguments, stdin and input files a payload runs with.

    `files`: the job's own input files by name (a mapping, or pairs), which the payload
    sees read-only at /input/NAME beside the task's (Task.files); kept as a tuple of
    (name, InputFile) sorted by name, so that a Job stays hashable."""

    args: tuple[str, ...] = ()
    stdin: bytes = b""
    files: tuple[tuple[str, InputFile], ...] = ()

    def __post_init__(self) -> None:
        for a in self.args:  # (a loop: a job is made for every one a task has)
            if not isinstance(a, str):
                raise TypeError("Job.args must be strings")
        if not isinstance(self.stdin, bytes):
            raise TypeError("Job.stdin must be bytes")
        if self.files:
            object.__setattr__(self, "files", named_files(self.files, "Job.files"))


@dataclass(frozen=True, slots=True)
class Failure:
    """A job the dealer gave up on, and why."""

    job: Job
    reasons: tuple[str, ...]


class Task:
    """Subclass this. Class attributes are the defaults every dealer honours.

    payload:     the Payload every job runs (set it in __init__ or as a class attribute)
    limits:      per-job Limits (fuel, memory_mb, time_s, output_kb)
    redundancy:  replicas sent per job, each to a distinct jobber
    quorum:      matching outputs (bytes and fuel used) needed to accept a job (None:
                 the redundancy; one over the redundancy is taken as the redundancy)
    max_errors:  errored or overdue replicas a job may have before it fails
    deadline_s:  seconds a jobber has to return a replica (None: from limits)
    lease_s:     seconds of silence before a jobber holding work is taken as gone and
                 its replicas sent to others (None: the dealer's default, 20 s)
    signing_key: the author key the dealer signs the payload with, a path to
                 KEY.sign_secret or KEY (None: unsigned; `--sign KEYPATH` overrides it)
    files:       input files every job sees, by name (a mapping name -> InputFile, set in
                 __init__ or as a class attribute), read-only at /input/NAME; a job's own
                 (Job.files) may not repeat a name of these. See docs/writing-tasks.md.
    name:        the task's name, shown to the lenders whose machines run it (None: the
                 class's name); at most 128 characters
    contact:     how lenders reach the researcher (an e-mail address or a URL; None: not
                 said); at most 256 characters. Both go to every jobber as they are.
    cross_platform: False (the default): replicas of a job vote only with replicas run
                 on the same platform (CPU architecture, OS, wasmtime version), which
                 leave NaN bits as the CPU makes them, at native float speed. True: every
                 jobber canonicalizes NaNs, several times slower on float-heavy code, and
                 replicas of any platforms vote together. See docs/sandbox.md.
    """

    payload: Payload
    files: Mapping[str, InputFile] = MappingProxyType({})  # every job's, by name
    limits: ClassVar[Limits] = Limits()
    redundancy: ClassVar[int] = 1
    quorum: ClassVar[int | None] = None  # None: equal to redundancy
    max_errors: ClassVar[int] = 3
    deadline_s: ClassVar[float | None] = None
    lease_s: ClassVar[float | None] = None  # silence before a jobber is taken as gone
    signing_key: ClassVar[str | os.PathLike[str] | None] = None  # see docs/security.md
    cross_platform: ClassVar[bool] = False  # True: canonical NaNs, any platforms vote together
    name: ClassVar[str | None] = None  # for lenders; None: the class's name
    # the options of `add_arguments` (by their argparse dest) that only say where or how
    # results are written: they decide no job, so the journal's name ignores them and a
    # batch rerun with another `--out` reads its results from the same journal
    output_options: ClassVar[tuple[str, ...]] = ()
    contact: ClassVar[str | None] = None  # the researcher's address or URL, for lenders

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    # --- the author's part -------------------------------------------------

    def jobs(self) -> Iterable[Job]:
        """All jobs of the task, in a fixed order. Drawn lazily by the dealer."""
        raise NotImplementedError

    def on_output(self, job: Job, output: bytes) -> None:
        """Called once per accepted job with its validated output."""
        raise NotImplementedError

    def on_failure(self, job: Job, reasons: list[str]) -> None:
        """Called once per job that could not be done. Default: remember it."""
        self.failures.append(Failure(job, tuple(reasons)))

    def done(self) -> bool:
        """True to finish before every job is settled (e.g. the answer is known)."""
        return False

    def result(self) -> Any:
        """The final result, once the task is finished."""
        raise NotImplementedError

    def report(self) -> str:
        """The line the dealer prints when the task is finished."""
        return str(self.result())

    def total(self) -> int | None:
        """How many jobs `jobs()` yields, if known (for progress bars)."""
        return None

    def summary(self) -> str | None:
        """One line on where the batch stands, for the dashboard (a running estimate,
        the best so far), or None (the default: none). Called once a second while a
        dashboard is served, and when the dealer stops (the line is kept in the journal
        for `python -m dealer dashboard`): keep it cheap. A raising summary() is logged
        once and shown as none."""
        return None

    # --- command line ------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the task's own command-line arguments."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Task:
        """Build the task from parsed arguments. Default: no arguments."""
        return cls()

    # --- derived policy (the rest, and the quorum's rule: dealer._policy.policy_for) ---

    def effective_deadline_s(self) -> float:
        """Default deadline: twice the wall-clock limit plus a minute of slack."""
        if self.deadline_s is not None:
            return float(self.deadline_s)
        return 2 * self.limits.time_s + 60.0
