"""Count the primes below N with a sieve too big for small jobbers.

    python examples/primes.py 1000000000 --jobbers 2 --out primes.csv

Each job sieves 2^26 numbers at once, which takes 64 MiB of memory (one byte
per odd number is 32 MiB, and malloc rounds a block that large up to the next
power of two: `python -m sandbox run sieve.wasm 0 67108864 --memory 40` says
"memory.grow to 65.12 MiB refused"). So the task asks for 80 MiB a job, and a
dealer sends its jobs only to jobbers that offer that much (`python -m jobber
--memory MB`; the default is the machine's memory divided by its slots); the
others are told why and asked to come back later. The task writes a CSV of the
count in each range.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402

SEGMENT = 2**26  # numbers sieved by one job
MAX_N = 2**50  # what sieve.c accepts


class Primes(Task):
    """Count the primes below N."""
    output_options = ("out",)  # where the results go: not part of the journal's name

    limits = Limits(fuel=10**11, memory_mb=80, time_s=120, output_kb=1)

    def __init__(self, n: int, out: str = "primes.csv") -> None:
        super().__init__()
        if not 2 <= n <= MAX_N:
            raise ValueError(f"N must be in [2, {MAX_N}]")
        self.n, self.out = n, Path(out)
        self.payload = Payload.from_c("sieve.c")  # next to this file
        self.counts: dict[int, int] = {}  # the start of each range -> primes in it

    def jobs(self):
        for lo in range(0, self.n, SEGMENT):
            yield Job((str(lo), str(min(lo + SEGMENT, self.n))))

    def total(self) -> int:
        return -(-self.n // SEGMENT)

    def on_output(self, job: Job, output: bytes) -> None:
        lo, hi = int(job.args[0]), int(job.args[1])
        count = int(output)
        if not 0 <= count <= (hi - lo + 1) // 2 + 1:  # cheap to check, so checked
            raise ValueError(f"{count} primes in [{lo}, {hi}) cannot be")
        self.counts[lo] = count

    def result(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        with open(self.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("lo", "hi", "primes"))
            for lo in sorted(self.counts):
                w.writerow((lo, min(lo + SEGMENT, self.n), self.counts[lo]))
        return f"{self.result()} primes below {self.n}; wrote {self.out}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("n", type=int, metavar="N", help="count the primes below this")
        parser.add_argument("--out", default="primes.csv", help="the CSV to write")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Primes:
        try:
            return cls(args.n, args.out)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Primes))
