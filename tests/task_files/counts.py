"""A small task with an output-only option: N jobs that write their own number, and
`--out FILE` where the sum goes. `--out` decides no job (`output_options`), so the
same N run again with another `--out` reads the same journal.

python tests/task_files/counts.py N [--out FILE] [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

# writes its one argument (a digit) to stdout
WAT = """
(module
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $args_get (i32.const 0) (i32.const 64)))
    (i32.store (i32.const 128) (i32.load (i32.const 4)))
    (i32.store (i32.const 132) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 128) (i32.const 1) (i32.const 136)))))
"""


class Counts(Task):
    limits = Limits(fuel=10**6, memory_mb=1, time_s=10, output_kb=1)
    output_options = ("out",)

    def __init__(self, n: int, out: str) -> None:
        super().__init__()
        self.n, self.out, self.sum = n, out, 0
        self.payload = Payload.from_wat(WAT, "counts")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("n", type=int)
        parser.add_argument("--out", default="total.txt")

    @classmethod
    def from_args(cls, args) -> Counts:
        return cls(args.n, args.out)

    def jobs(self):
        return [Job((str(i % 10),)) for i in range(self.n)]

    def on_output(self, job, output):
        self.sum += int(output)

    def result(self):
        Path(self.out).write_text(f"{self.sum}\n")
        return f"total {self.sum}; wrote {self.out}"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Counts))
