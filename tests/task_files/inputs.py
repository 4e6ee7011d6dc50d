"""A task whose jobs read input files: a task-wide one from a path (--table), and one
of each job's own, from bytes. Its payload reads nothing (a dealer's tests fetch the
files by hand).

python tests/task_files/inputs.py --table PATH [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import InputFile, Job, Limits, Payload, Task  # noqa: E402

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
JOBS = 3


def own_file(i: int) -> bytes:
    """Job i's own input file."""
    return f"job {i}\n".encode() * (i + 1)


class Inputs(Task):
    """JOBS jobs, each reading /input/table.bin (the task's) and /input/own.txt (its own)."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self, table: str) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "inputs")
        self.files = {"table.bin": InputFile.from_path(table)}
        self.done_jobs = 0

    def jobs(self):
        for i in range(JOBS):
            yield Job((str(i),), files={"own.txt": InputFile.from_bytes(own_file(i))})

    def on_output(self, job, output):
        self.done_jobs += 1

    def result(self):
        return f"{self.done_jobs} done"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--table", required=True)

    @classmethod
    def from_args(cls, args):
        return cls(args.table)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Inputs))
