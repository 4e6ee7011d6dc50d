"""Long MCMC chains that survive their machines: each job is one Metropolis chain on
Haario's banana-shaped density, run for as long as you like, saving its state as it
goes.

    python examples/mcmc.py --jobbers 2
    python examples/mcmc.py --chains 16 --steps 2000000000 --send-every 300 --out chains.csv
    python examples/mcmc.py --kernel python --steps 20000000 --jobbers 2

The kernel is a C program (examples/mcmc.c, about 2.5 million steps a second in the
sandbox of a current core: 2e9 steps are a quarter of an hour) or, with --kernel
python, the same chain in plain Python (examples/mcmc_kernel.py, run in the sandbox's
Python; about 20 times slower). Each saves its whole state every --save-every steps by
writing /checkpoint/state.tmp and renaming it onto /checkpoint/state, and reads it at
start if it is there: plain file calls. The jobber keeps the latest state on its disk,
so a chain stopped by its lender (quit, reboot) goes on when the jobber starts again,
and sends it to the dealer every --send-every seconds, so a chain whose machine goes
away for good goes on elsewhere from there, when its lease runs out, or at once as a
backup when nothing else is left to run. A chain resumed from a state prints what it
prints run straight through: everything that decides the output is in the state.

The task writes each chain's means, variances and acceptance rate to a CSV and
prints the pooled means with the Gelman-Rubin statistic R-hat (near 1 when the chains
agree: run longer chains while it is not).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

FIELDS = ("mean_x", "mean_y", "var_x", "var_y", "acceptance", "steps")


class Chains(Task):
    """One long Metropolis chain per job; the report pools them."""
    output_options = ("out",)  # where the results go: not part of the journal's name

    # fuel: about 850 a step in C, 40 times that in Python; time: an owner's default
    # --max-job-time is an hour, so ask for less (a lender who lends longer raises both)
    limits = Limits(fuel=2**62, memory_mb=64, time_s=3000, output_kb=1, checkpoint_kb=4)

    def __init__(
        self,
        chains: int,
        steps: int,
        save_every: int,
        send_every: float,
        kernel: str,
        seed: int,
        out: Path,
    ) -> None:
        super().__init__()
        if kernel == "python":
            self.payload = Payload.python("mcmc_kernel.py")  # next to this file
            self.limits = dataclasses.replace(self.limits, memory_mb=256, checkpoint_kb=16)
        else:
            self.payload = Payload.from_c("mcmc.c")
        self.limits = dataclasses.replace(self.limits, checkpoint_every_s=send_every)
        self.n, self.steps, self.save_every, self.seed, self.out = (
            chains,
            steps,
            save_every,
            seed,
            out,
        )
        self.stats: dict[int, tuple[float, ...]] = {}

    def jobs(self):
        for c in range(self.n):
            yield Job((str(self.seed * 1_000_003 + c), str(self.steps), str(self.save_every)))

    def total(self) -> int:
        return self.n

    def on_output(self, job: Job, output: bytes) -> None:
        values = [float(v) for v in output.split()]
        if len(values) != len(FIELDS):
            raise ValueError(f"expected {len(FIELDS)} numbers, got {output[:80]!r}")
        self.stats[int(job.args[0]) - self.seed * 1_000_003] = tuple(values)

    def result(self) -> dict[int, tuple[float, ...]]:
        return dict(sorted(self.stats.items()))

    def report(self) -> str:
        with open(self.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("chain", *FIELDS))
            w.writerows((c, *map(repr, s)) for c, s in self.result().items())
        if not self.stats:
            return f"wrote {self.out}: no chain finished"
        parts = [f"{len(self.stats)} chains of {self.steps:,} steps"]
        for k, name in ((0, "x"), (1, "y")):
            means = [s[k] for s in self.stats.values()]
            variances = [s[k + 2] for s in self.stats.values()]
            parts.append(f"mean {name} {statistics.fmean(means):.4f}")
            if len(means) > 1:
                parts.append(f"R-hat({name}) {r_hat(means, variances, self.steps):.4f}")
        acceptance = statistics.fmean(s[4] for s in self.stats.values())
        return f"{', '.join(parts)}, acceptance {acceptance:.3f}; wrote {self.out}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--chains", type=int, default=4, help="jobs, one chain each (4)")
        parser.add_argument(
            "--steps", type=int, default=200_000_000, help="per chain (2e8: a minute or so)"
        )
        parser.add_argument(
            "--save-every", type=int, default=1_000_000, help="steps between saves (1e6)"
        )
        parser.add_argument(
            "--send-every",
            type=float,
            default=60.0,
            help="seconds between the states a jobber sends the dealer (60)",
        )
        parser.add_argument("--kernel", choices=("c", "python"), default="c")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--out", type=Path, default=Path("chains.csv"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Chains:
        return cls(
            args.chains,
            args.steps,
            args.save_every,
            args.send_every,
            args.kernel,
            args.seed,
            args.out,
        )


def r_hat(means: list[float], variances: list[float], n: int) -> float:
    """Gelman and Rubin's potential scale reduction of m chains of n steps each, from
    each chain's mean and variance (the within-chain variance taken with n - 1)."""
    w = statistics.fmean(v * n / max(1, n - 1) for v in variances)
    b = n * statistics.variance(means)
    if w <= 0:
        return math.nan
    return math.sqrt(((n - 1) / n * w + b / n) / w)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Chains))
