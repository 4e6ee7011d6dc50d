"""A task with one job whose stdin is over the wire's cap: it must fail as it is drawn,
naming the job and the cap, and the rest of the batch must finish.

python tests/task_files/oversize.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from protocol._wire import MAX_STDIN_BYTES  # noqa: E402
from tasks import Job, Limits, Payload, Task  # noqa: E402

# Returns quietly whatever its arguments and stdin.
WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
JOBS = 6
BIG = 2  # the job whose stdin is one byte over the cap


class Oversize(Task):
    """JOBS jobs; job BIG has MAX_STDIN_BYTES + 1 bytes of stdin."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)
    max_errors = 0

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "oversize")
        self.settled: list[str] = []

    def jobs(self):
        for i in range(JOBS):
            yield Job((str(i),), b"\0" * (MAX_STDIN_BYTES + 1) if i == BIG else b"")

    def on_output(self, job, output):
        self.settled.append(job.args[0])

    def result(self):
        return f"{len(self.settled)} done, {len(self.failures)} failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Oversize))
