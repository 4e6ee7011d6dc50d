"""A batch with a payload bug, for rerunning what failed: N jobs that each write their
own digit (job i: i % 10), summed. The buggy kernel (the default) exits with code 3 on
digits 5 to 9, so half the jobs fail on every machine; `DIGITS_KERNEL=fixed` in the
environment gives the fixed one, a new payload for the same jobs. The same command
with `--retry-failed` then reruns only the failed jobs.

python tests/task_files/digits.py N [dealer options]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

# writes its one argument (a digit) to stdout; BUG: exits 3 first if the digit is >= '5'
WAT = """
(module
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $args_get (i32.const 0) (i32.const 64)))
    (if (i32.ge_u (i32.load8_u (i32.load (i32.const 4))) (i32.const LIMIT))
      (then (call $proc_exit (i32.const 3))))
    (i32.store (i32.const 128) (i32.load (i32.const 4)))
    (i32.store (i32.const 132) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 128) (i32.const 1) (i32.const 136)))))
"""


class Digits(Task):
    limits = Limits(fuel=10**6, memory_mb=1, time_s=10, output_kb=1)
    max_errors = 0  # a failure is the job's at once: the batch ends quickly

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.sum, self.outputs = n, 0, 0
        fixed = os.environ.get("DIGITS_KERNEL") == "fixed"
        limit = 256 if fixed else ord("5")  # no byte reaches 256: the fixed one never exits
        self.payload = Payload.from_wat(WAT.replace("LIMIT", str(limit)), "digits")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("n", type=int)

    @classmethod
    def from_args(cls, args) -> Digits:
        return cls(args.n)

    def jobs(self):
        return [Job((str(i % 10),)) for i in range(self.n)]

    def total(self) -> int:
        return self.n

    def on_output(self, job, output):
        self.sum += int(output)
        self.outputs += 1

    def result(self):
        return f"sum {self.sum} of {self.outputs} outputs, {len(self.failures)} jobs failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Digits))
