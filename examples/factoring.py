"""Factor an integer by trial division spread over jobbers.

    python examples/factoring.py 1000000016000000063

serves the task on tcp://*:7117 until it is done and prints
`N = p1 * p2 * ...`. Point jobbers at it with `python -m jobber HOST`, or add
`--jobbers 2` to start two on this machine.

The task divides [2, isqrt(N)] into ranges; each job runs a C kernel that
prints the divisors of N in its range. Every prime factor of N except at most
one lies at or below isqrt(N), and the smallest divisor above 1 of any number
is prime, so the divisors found give the whole factorization.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import Job, Limits, Payload, Task, builtin  # noqa: E402

MAX_N = 2**63 - 1  # the kernel works in unsigned 64-bit arithmetic


def factorize(n: int, divisors: set[int]) -> list[int]:
    """Prime factors of n (ascending, with multiplicity), given every divisor of n in
    [2, isqrt(n)]."""
    # Ascending, each divisor's own prime factors (smaller divisors) are already
    # divided out when it comes up, so only primes divide `rest`; what remains
    # above 1 is the one prime factor above isqrt(n), if any.
    factors = []
    rest = n
    for d in sorted(divisors):
        while d > 1 and rest % d == 0:
            factors.append(d)
            rest //= d
    if rest > 1:
        factors.append(rest)
    return factors


class Factoring(Task):
    """Factor N by trial division."""

    limits = Limits(fuel=10**12, memory_mb=16, time_s=300, output_kb=64)

    def __init__(self, n: int, chunk: int | None = None) -> None:
        super().__init__()
        if not 2 <= n <= MAX_N:
            raise ValueError(f"N must be in [2, {MAX_N}]")
        self.n = n
        self.top = math.isqrt(n)  # try divisors up to and including this
        # about 64 jobs, none smaller than 100k candidates
        self.chunk = chunk or max(100_000, -(-self.top // 64))
        self.payload = Payload.from_c(builtin("factor"))
        self.divisors: set[int] = set()
        self.searched = 0  # ranges whose divisors are in

    def jobs(self):
        for lo in range(2, self.top + 1, self.chunk):
            hi = min(lo + self.chunk, self.top + 1)
            yield Job((str(self.n), str(lo), str(hi)))

    def total(self) -> int:
        return len(range(2, self.top + 1, self.chunk))

    def on_output(self, job: Job, output: bytes) -> None:
        # Only true divisors in the job's range are kept: a wrong output can
        # hide a factor (redundancy guards against that) but never add a false one.
        lo, hi = int(job.args[1]), int(job.args[2])
        for word in output.split():
            d = int(word) if word.isdigit() else 0
            if lo <= d < hi and self.n % d == 0:
                self.divisors.add(d)
        self.searched += 1

    def summary(self) -> str:
        """The dashboard's line while the batch runs: how far the search is, what it found."""
        found = ", ".join(map(str, sorted(self.divisors))) or "none yet"
        return f"{self.searched} of {self.total()} ranges searched; divisors found: {found}"

    def result(self) -> list[int]:
        return factorize(self.n, self.divisors)

    def report(self) -> str:
        return f"{self.n} = {' * '.join(map(str, self.result()))}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("n", type=int, metavar="N", help=f"the number to factor (2 to {MAX_N})")
        parser.add_argument("--chunk", type=int, default=None, help="candidates per job")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Factoring:
        try:
            return cls(args.n, args.chunk)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Factoring))
