"""`python -m jobber DEALER [DEALER ...]`: lend this machine to dealers."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from jobber._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S
from jobber._client import Config, Jobber, JobberError


def default_data_dir() -> Path:
    env = os.environ.get("BOREDNET_JOBBER_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "borednet" / "jobber"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobber",
        description="Run borednet jobs from dealers on this machine, at low priority, sandboxed.",
    )
    ap.add_argument(
        "dealers",
        nargs="+",
        metavar="DEALER",
        help="host, host:port or tcp://host:port (default port 7117)",
    )
    ap.add_argument(
        "--slots",
        type=int,
        default=os.cpu_count() or 1,
        help="jobs run at once (default: the CPU count)",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="spool, payload cache and identity (default: $BOREDNET_JOBBER_DIR or "
        "~/.local/share/borednet/jobber)",
    )
    ap.add_argument("--name", default=None, help="this jobber's name (default: host name + random)")
    ap.add_argument(
        "--max-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long with no work from any dealer",
    )
    ap.add_argument(
        "--memory",
        type=int,
        default=None,
        metavar="MB",
        help="memory one job may use (default: physical memory / slots)",
    )
    ap.add_argument(
        "--min-backoff",
        type=float,
        default=MIN_BACKOFF_S,
        metavar="SECONDS",
        help=f"first wait after a failed contact (default {MIN_BACKOFF_S:g})",
    )
    ap.add_argument(
        "--max-backoff",
        type=float,
        default=MAX_BACKOFF_S,
        metavar="SECONDS",
        help=f"longest wait after failed contacts (default {MAX_BACKOFF_S:g})",
    )
    ap.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a dealer that does not answer in this long has failed (default 10)",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on shutdown, how long running jobs may finish (default 30)",
    )
    ap.add_argument("--quiet", action="store_true", help="warnings only")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every job")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s jobber %(levelname)s %(message)s")
    cfg = Config(
        dealers=args.dealers,
        data_dir=args.data_dir or default_data_dir(),
        slots=args.slots,
        name=args.name,
        max_idle_s=args.max_idle,
        min_backoff_s=args.min_backoff,
        max_backoff_s=args.max_backoff,
        request_timeout_s=args.request_timeout,
        memory_mb=args.memory,
        grace_s=args.grace,
    )
    try:
        jobber = Jobber(cfg)
    except (JobberError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        jobber.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return jobber.run()
