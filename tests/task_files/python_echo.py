"""A Python task (Payload.python: a pinned runtime, over the wire's payload cap): each
job's script prints its argument. A dealer's tests ask for its jobs and fetch its
runtime by hand; nothing here compiles or runs the runtime.

python tests/task_files/python_echo.py [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

SCRIPT = "import sys\nprint(sys.argv[1])\n"
NAME = "echo"  # the script is /task/echo.py
JOBS = 3


class PythonEcho(Task):
    """JOBS jobs, job i printing i."""

    limits = Limits(fuel=10**10, memory_mb=256, time_s=60, output_kb=1)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.python(source=SCRIPT, name=NAME)
        self.outputs: list[bytes] = []

    def jobs(self):
        for i in range(JOBS):
            yield Job((str(i),))

    def on_output(self, job, output):
        self.outputs.append(output)

    def result(self):
        return f"{len(self.outputs)} done"


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(PythonEcho))
