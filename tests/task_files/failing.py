"""A batch where jobs fail alike, for the dashboard: most jobs spin a while and succeed
(their credit reads in M fuel); five exit with status 3 and three trap, each after
spinning as long as its arguments are (so no two failures have the same fuel, and
their reasons differ by the numbers in them: the dashboard groups them). Redundancy 1:
one machine's failure is the job's own. It has a summary line (Task.summary).

python tests/task_files/failing.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

# args_sizes_get: argc at 0, the bytes of the args at 4. Spin 2^20 times (argc 2: "ok"),
# or 4096 times the args' bytes, then exit 3 (argc 3) or trap (argc 4).
WAT = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $spin (param $n i32) (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n)))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 2))
      (then (call $spin (i32.const 1048576)) (return)))
    (call $spin (i32.mul (i32.load (i32.const 4)) (i32.const 4096)))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 3)) (then (call $exit (i32.const 3))))
    unreachable))
"""

OK, EXITS, TRAPS = 12, 5, 3


class Failing(Task):
    limits = Limits(fuel=10**9, memory_mb=1, time_s=60, output_kb=1)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "failing")
        self.done_jobs = 0

    def jobs(self):
        for i in range(OK + EXITS + TRAPS):
            if i % 4 == 1 and i < 4 * EXITS:
                yield Job(("exit", "x" * i))
            elif i % 4 == 3 and i < 4 * TRAPS:
                yield Job(("trap", "y", "z" * i))
            else:
                yield Job(("ok",))

    def total(self) -> int:
        return OK + EXITS + TRAPS

    def on_output(self, job, output):
        self.done_jobs += 1

    def summary(self) -> str:
        return f"{self.done_jobs} jobs succeeded so far"

    def result(self):
        return f"{self.done_jobs} done, {len(self.failures)} failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Failing))
