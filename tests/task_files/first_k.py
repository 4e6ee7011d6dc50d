"""The factoring example cut to its first K jobs (--k, 5 by default): a batch run with
one K, then on the same journal with a smaller one, meets a journal holding more jobs
than its task yields.

python tests/task_files/first_k.py N --k K [dealer options]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from factoring import Factoring  # noqa: E402


class FirstK(Factoring):
    def __init__(self, n: int, chunk: int | None = None, k: int = 5) -> None:
        super().__init__(n, chunk)
        self.k = k

    def jobs(self):
        return itertools.islice(super().jobs(), self.k)

    def total(self) -> int:
        return min(self.k, super().total())

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--k", type=int, default=5, help="the first K jobs only")

    @classmethod
    def from_args(cls, args) -> FirstK:
        return cls(args.n, args.chunk, args.k)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(FirstK))
