"""A task with one job that always traps: the batch must end, listing it.

python tests/task_files/flaky.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

# Traps (unreachable) when it gets any argument, else returns quietly.
WAT = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (if (i32.gt_u (i32.load (i32.const 0)) (i32.const 1)) (then unreachable))))
"""


class Flaky(Task):
    """Three jobs; the second always traps."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)
    max_errors = 1

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "flaky")
        self.settled: list[str] = []

    def jobs(self):
        return [Job(()), Job(("boom",)), Job(())]

    def on_output(self, job, output):
        self.settled.append(" ".join(job.args) or "-")

    def result(self):
        return f"{len(self.settled)} done, {len(self.failures)} failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Flaky))
