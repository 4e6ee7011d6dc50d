"""A task whose payload is within every compile cap but costs more than 64 MiB to compile
(one function of 50,000 nested blocks; 0.3 s within 512 MiB): a jobber started with
--memory 64 gives its jobs back unrun at its own fence, compiling once, and a larger
jobber runs them.

python tests/task_files/deep.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402
from tests.wat import nested_blocks  # noqa: E402

JOBS = 3


class Deep(Task):
    """JOBS jobs of one payload that needs more than 64 MiB to compile."""

    limits = Limits(fuel=10**6, memory_mb=16, time_s=30, output_kb=1)
    max_errors = 0

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload(nested_blocks(1, 50_000), "deep")
        self.settled: list[str] = []

    def jobs(self):
        return [Job((str(i),)) for i in range(JOBS)]

    def on_output(self, job, output):
        self.settled.append(job.args[0])

    def result(self):
        return f"{len(self.settled)} done, {len(self.failures)} failed"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Deep))
