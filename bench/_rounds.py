"""The factoring example's ranges, R rounds over: as much steady work as a benchmark
wants, in jobs of the size it picks (bench/end_to_end.py).

python bench/_rounds.py N --chunk C --rounds R [dealer options]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # this file's folder must not shadow the `sandbox` package
sys.path.insert(1, str(ROOT / "examples"))

from factoring import Factoring  # noqa: E402


class Rounds(Factoring):
    def __init__(self, n: int, chunk: int | None, rounds: int) -> None:
        super().__init__(n, chunk)
        self.rounds = rounds

    def jobs(self):
        ranges = super().jobs
        return itertools.chain.from_iterable(ranges() for _ in range(self.rounds))

    def total(self) -> int:
        return self.rounds * super().total()

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--rounds", type=int, default=1, help="times over every range")

    @classmethod
    def from_args(cls, args) -> Rounds:
        return cls(args.n, args.chunk, args.rounds)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Rounds))
