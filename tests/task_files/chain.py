"""Long jobs that checkpoint: each runs a chain of STEPS steps and saves its state every
EVERY steps in /checkpoint (tests/task_files/chain.c); the report is each job's last
value. python tests/task_files/chain.py [--jobs N] [--steps N] [--every N]
[--send-every S] [--pad B] [options]; --send-every: how often a jobber sends a job's
state to the dealer (limits.checkpoint_every_s); --pad: bytes padding each state (a
state of several chunks).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402


class Chain(Task):
    limits = Limits(fuel=10**12, memory_mb=16, time_s=300, output_kb=1, checkpoint_kb=1)

    def __init__(
        self, jobs: int, steps: int, every: int, send_every: float | None = None, pad: int = 0
    ) -> None:
        super().__init__()
        if send_every is not None:
            self.limits = dataclasses.replace(self.limits, checkpoint_every_s=send_every)
        if pad:  # states of 16 + pad bytes
            self.limits = dataclasses.replace(self.limits, checkpoint_kb=(16 + pad) // 1024 + 1)
        self.pad = pad
        self.payload = Payload.from_c("chain.c")
        self.n, self.steps, self.every = jobs, steps, every
        self.values: dict[int, str] = {}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--jobs", type=int, default=1)
        parser.add_argument("--steps", type=int, default=200_000)
        parser.add_argument("--every", type=int, default=500)
        parser.add_argument("--send-every", type=float, default=None)
        parser.add_argument("--pad", type=int, default=0, help="bytes padding each state")

    @classmethod
    def from_args(cls, args) -> Chain:
        return cls(args.jobs, args.steps, args.every, args.send_every, args.pad)

    def jobs(self):
        for i in range(self.n):  # each job its own chain: the steps differ by one
            pad = ("rename", str(self.pad)) if self.pad else ()
            yield Job((str(self.steps + i), str(self.every), *pad))

    def on_output(self, job, output):
        self.values[int(job.args[0]) - self.steps] = output.decode().strip()

    def result(self):
        return ";".join(self.values[i] for i in sorted(self.values))


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Chain))
