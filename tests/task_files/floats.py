"""A small float task, every job on two jobbers whose outputs must agree byte for byte.

python tests/task_files/floats.py [--cross-platform] [dealer options]

Each output ends with the bits of a NaN the payload made (see floats.c): the
CPU's own by default (replicas vote only with replicas of their platform),
canonical with --cross-platform. The report line says which bits were accepted.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402


class Floats(Task):
    limits = Limits(fuel=10**9, memory_mb=2, time_s=30, output_kb=1)
    redundancy = 2

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_c("floats.c")
        self.outputs: dict[str, str] = {}

    def jobs(self):
        return [Job(("20000", x)) for x in ("0.5", "1.5", "2.5", "3.5")]

    def total(self) -> int:
        return 4

    def on_output(self, job, output):
        self.outputs[job.args[1]] = output.decode().strip()

    def result(self):
        return self.outputs

    def report(self) -> str:
        nans = sorted({line.split()[1] for line in self.outputs.values()})
        return f"{len(self.outputs)} accepted, {len(self.failures)} failed; nan {' '.join(nans)}"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--cross-platform", action="store_true", help="canonical NaNs")

    @classmethod
    def from_args(cls, args) -> Task:
        return CrossPlatformFloats() if args.cross_platform else cls()


class CrossPlatformFloats(Floats):
    cross_platform = True


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Floats))
