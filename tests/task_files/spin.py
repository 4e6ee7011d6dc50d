"""Many identical jobs that each spin a loop: work to divide among dealers by share.

python tests/task_files/spin.py [--jobs N] [--iters N] [dealer options]

Every job counts a loop down from --iters and writes nothing: each accepted job
is worth the same fuel, so the credit of two dealers' batches compares the work
their jobbers gave each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

WAT = """
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32)
    (local.set $i (i32.const %d))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (i32.ne (local.get $i) (i32.const 0))))))
"""


class Spin(Task):
    """N jobs of a counting loop."""

    limits = Limits(fuel=10**10, memory_mb=1, time_s=30, output_kb=1)

    def __init__(self, jobs: int, iters: int) -> None:
        super().__init__()
        self.n = jobs
        self.payload = Payload.from_wat(WAT % iters, "spin")
        self.count = 0

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--jobs", type=int, default=100)
        parser.add_argument("--iters", type=int, default=1_000_000)

    @classmethod
    def from_args(cls, args) -> Spin:
        return cls(args.jobs, args.iters)

    def jobs(self):
        return [Job((str(i),)) for i in range(self.n)]

    def total(self) -> int:
        return self.n

    def on_output(self, job, output):
        self.count += 1

    def result(self):
        return f"{self.count} jobs done"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Spin))
