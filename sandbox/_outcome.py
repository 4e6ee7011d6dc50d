"""How one job ended: the value every entry point of the sandbox returns."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import Status


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one job.

    status: how it ended (see docs/sandbox.md for which limit gives which status).
    stdout: what the payload wrote to fd 1, up to the output limit (for OUTPUT,
        exactly the first ``output_kb`` KiB).
    fuel: fuel used, identical on every run of the same job on every machine.
    wall_s: wall-clock seconds from instantiation to the end (compiling or
        loading the module is not counted; time spent suspended is). For a job
        that Slots ended while compiling (TIME or MEMORY, "compiling the module
        took ..."), the seconds from its start to then.
    detail: a human-readable reason: the limit reached, the trap message, the
        refused imports, the exit code. Empty for a clean exit.
    exit_code: the code given to ``proc_exit`` (0 when ``_start`` returned);
        None when the payload did not exit by itself.
    stderr: the first 8 KiB the payload wrote to fd 2; never part of the
        result a jobber reports, it is there for task authors.
    checkpoint: the last state the payload saved in its checkpoint directory
        (sandbox._scratch) during this run, or None if it saved none.
    """

    status: Status
    stdout: bytes
    fuel: int
    wall_s: float
    detail: str = ""
    exit_code: int | None = None
    stderr: bytes = b""
    checkpoint: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK
