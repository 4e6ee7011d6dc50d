"""A parameter sweep: stochastic SIR epidemics over a grid of R0 and vaccination.

    python examples/sweep.py --jobbers 2 --out sweep.csv
    python examples/sweep.py --r0 0.5 4 36 --vaccinated 0 0.9 46 --runs 1000 --out fine.csv

Each job runs sir.c: a few hundred simulated outbreaks at one point of the
grid, seeded by the point's place in the grid, so that the job gives the same
bytes on every machine. Every job runs on two jobbers (redundancy 2) and is
accepted only if their outputs, floating-point numbers printed to 17 digits,
agree byte for byte. The task writes a CSV and, if matplotlib is installed
(pip install 'borednet[examples]'), a heat map next to it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

COLUMNS = ("r0", "vaccinated", "attack_rate", "major_outbreaks", "duration")


def grid(lo: float, hi: float, n: int) -> list[float]:
    """n evenly spaced values from lo to hi, rounded for a readable CSV."""
    return [round(lo + (hi - lo) * k / max(1, n - 1), 12) for k in range(n)]


def _edges(values: list[float]) -> tuple[float, float]:
    half = (values[-1] - values[0]) / (len(values) - 1) / 2 if len(values) > 1 else 0.5
    return values[0] - half, values[-1] + half


class Sweep(Task):
    """Stochastic SIR epidemics over a grid of R0 and vaccinated fraction."""
    output_options = ("out",)  # where the results go: not part of the journal's name

    limits = Limits(fuel=10**11, memory_mb=16, time_s=60, output_kb=1)
    redundancy = 2  # each point on two jobbers, whose outputs must agree byte for byte

    def __init__(self, r0s, vaccinated, population=1000, runs=200, seed=1, out="sweep.csv"):
        super().__init__()
        self.points = [(r0, v) for v in vaccinated for r0 in r0s]
        self.r0s, self.vaccinated = r0s, vaccinated
        self.population, self.runs, self.seed = population, runs, seed
        self.out = Path(out)
        self.payload = Payload.from_c("sir.c")  # next to this file
        self.rows: dict[tuple[float, float], list[str]] = {}

    def jobs(self):
        for index, (r0, v) in enumerate(self.points):
            seed = self.seed * 1_000_000_007 + index  # each point its own random numbers
            yield Job((repr(r0), repr(v), str(self.population), str(self.runs), str(seed)))

    def total(self) -> int:
        return len(self.points)

    def on_output(self, job: Job, output: bytes) -> None:
        values = output.decode().split()
        if len(values) != 3:
            raise ValueError(f"expected 3 numbers, got {output!r}")
        list(map(float, values))  # numbers, else this raises and the job fails
        self.rows[(float(job.args[0]), float(job.args[1]))] = values  # as printed: exact

    def result(self) -> list[list]:
        return [[r0, v, *self.rows[r0, v]] for r0, v in self.points if (r0, v) in self.rows]

    def report(self) -> str:
        rows = self.result()
        with open(self.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(rows)
        return f"wrote {self.out} ({len(rows)} points); {self.plot(rows)}"

    def plot(self, rows: list[list]) -> str:
        try:
            import matplotlib
        except ImportError:
            return "no plot: matplotlib is not installed (pip install 'borednet[examples]')"
        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt

        major = {(r0, v): float(m) for r0, v, _, m, _ in rows}
        image = [[major.get((r0, v), float("nan")) for r0 in self.r0s] for v in self.vaccinated]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        extent = (*_edges(self.r0s), *_edges(self.vaccinated))  # cells centred on the points
        shown = ax.imshow(image, origin="lower", aspect="auto", extent=extent, vmin=0, vmax=1)
        fig.colorbar(shown, label="fraction of runs that were major outbreaks")
        r0s = [r for r in self.r0s if r >= 1]
        ax.plot(r0s, [1 - 1 / r for r in r0s], "w--", label="herd immunity, 1 - 1/R0")
        ax.set(xlabel="R0", ylabel="fraction vaccinated", title=f"SIR, N = {self.population}")
        ax.legend(loc="upper left")
        path = self.out.with_suffix(".png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return f"plotted {path}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        lo_hi_n = {"nargs": 3, "type": float, "metavar": ("LO", "HI", "N")}
        parser.add_argument("--r0", default=(0.5, 4, 15), help="default 0.5 4 15", **lo_hi_n)
        parser.add_argument(
            "--vaccinated", default=(0, 0.9, 10), help="default 0 0.9 10", **lo_hi_n
        )
        parser.add_argument("--population", type=int, default=1000, help="default 1000")
        parser.add_argument("--runs", type=int, default=200, help="outbreaks per point (200)")
        parser.add_argument("--seed", type=int, default=1, help="another seed, other runs")
        parser.add_argument("--out", default="sweep.csv", help="the CSV to write")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sweep:
        (r_lo, r_hi, r_n), (v_lo, v_hi, v_n) = args.r0, args.vaccinated
        if not (0 <= v_lo <= v_hi < 1 and 0 < r_lo <= r_hi and r_n >= 1 and v_n >= 1):
            raise SystemExit("error: need 0 < R0 LO <= HI, 0 <= vaccinated LO <= HI < 1, N >= 1")
        r0s, vaccinated = grid(r_lo, r_hi, int(r_n)), grid(v_lo, v_hi, int(v_n))
        return cls(r0s, vaccinated, args.population, args.runs, args.seed, args.out)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Sweep))
