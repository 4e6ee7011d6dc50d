"""The factoring example, cross-platform on request: a batch whose replicas vote within
their platform by default, or across platforms (canonical NaNs) with --cross-platform.

python tests/task_files/factoring_platforms.py N [--chunk C] [--cross-platform] [dealer options]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "examples"))

from factoring import Factoring  # noqa: E402

from tasks import Task  # noqa: E402


class Factor(Factoring):
    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--cross-platform", action="store_true", help="canonical NaNs")

    @classmethod
    def from_args(cls, args) -> Task:
        kind = CrossPlatformFactor if args.cross_platform else cls
        try:
            return kind(args.n, args.chunk)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e


class CrossPlatformFactor(Factor):
    cross_platform = True


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Factor))
