"""A task whose payload has a bug: every job given one argument exits 3, on every
machine. Two machines must agree (redundancy and quorum 2): the job fails by its own
bug and no jobber is counted an error for it. One job spins a while (two arguments) so
that the batch is still running when its status is read; jobs with none succeed.

python tests/task_files/exits3.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

# argc 2: proc_exit(3); argc 3: count to 2^30, then return; else return at once
WAT = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 2)) (then (call $exit (i32.const 3))))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 3))
      (then (loop $spin
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $i) (i32.const 1073741824))))))))
"""

BUGGY = 4


class Exits3(Task):
    limits = Limits(fuel=10**10, memory_mb=1, time_s=60, output_kb=1)
    redundancy = 2
    quorum = 2

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "exits3")
        self.settled: list[str] = []

    def jobs(self):
        return [Job(("spin", "a while")), *[Job(("bug",))] * BUGGY, Job(())]

    def on_output(self, job, output):
        self.settled.append(" ".join(job.args) or "-")

    def result(self):
        return f"{len(self.settled)} done, {len(self.failures)} failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Exits3))
