"""A task over an input file shared by every job: each job hashes its slice of the task's
table (/input/table.bin, from --table) and reads a file of its own (/input/own.txt).
The report is what tests/e2e/test_input_files_batch.py computes alone: every job's line.

python tests/task_files/table_sum.py --table PATH [--jobs N] [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import InputFile, Job, Limits, Payload, Task  # noqa: E402


def own_file(i: int) -> bytes:
    """Job i's own input file."""
    return b"own\n" * (i + 1)


class TableSum(Task):
    limits = Limits(fuel=10**10, memory_mb=16, time_s=60, output_kb=1)

    def __init__(self, table: str, jobs: int) -> None:
        super().__init__()
        self.payload = Payload.from_c("table_sum.c")
        self.files = {"table.bin": InputFile.from_path(table)}
        self.n = jobs
        self.lines: dict[int, str] = {}

    def jobs(self):
        for i in range(self.n):
            yield Job((str(i), str(self.n)), files={"own.txt": InputFile.from_bytes(own_file(i))})

    def on_output(self, job, output):
        self.lines[int(job.args[0])] = output.decode().strip()

    def result(self):
        return ";".join(self.lines[i] for i in sorted(self.lines))

    def total(self):
        return self.n

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--table", required=True)
        parser.add_argument("--jobs", type=int, default=8)

    @classmethod
    def from_args(cls, args):
        return cls(args.table, args.jobs)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(TableSum))
