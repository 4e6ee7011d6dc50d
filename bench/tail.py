"""The tail of a batch: how long from the last job drawn to the batch's end, with one
straggler among the jobbers, with and without backup replicas.

    python bench/tail.py [--jobbers 2] [--cpu-limit 3] [--chunk 45000000]

Runs the factoring example on loopback: `--jobbers` ordinary jobbers and one
straggler (`--cpu-limit`, so its jobs take about 100/limit times as long), first
with `--backups 0` (the straggler's last jobs wait for it), then with the
default backups (idle jobbers take a backup replica of the jobs out longest).
Prints both tails and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from net._ask import query_status  # noqa: E402
from tests.helpers import free_port  # noqa: E402

N = str(1000000007 * 1000000009)


def tail(backups: int, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds from the last job drawn to the end, whole batch seconds)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        dealer = subprocess.Popen(
            [sys.executable, ROOT / "examples" / "factoring.py", N, "--chunk", args.chunk]
            + ["--bind", f"tcp://127.0.0.1:{port}", "--quiet", "--db", f"{tmp}/j.sqlite"]
            + ["--backups", str(backups)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start = time.monotonic()
        jobber = [sys.executable, "-m", "jobber", f"127.0.0.1:{port}", "--slots", "1", "--quiet"]
        jobber += ["--min-backoff", "0.2", "--max-backoff", "1", "--max-idle", "30"]
        procs = [
            subprocess.Popen(jobber + ["--data-dir", f"{tmp}/j{i}", "--source", f"127.0.0.{2 + i}"])
            for i in range(args.jobbers)
        ]
        procs.append(
            subprocess.Popen(
                jobber
                + ["--data-dir", f"{tmp}/straggler", "--source", "127.0.0.99"]
                + ["--cpu-limit", str(args.cpu_limit)]
            )
        )
        drawn_at = None
        while dealer.poll() is None:
            try:
                info = query_status(f"127.0.0.1:{port}", timeout_s=1.0)
            except (TimeoutError, RuntimeError):
                info = None
            if drawn_at is None and info and info["total"] and info["drawn"] >= info["total"]:
                drawn_at = time.monotonic()
            time.sleep(0.05)
        end = time.monotonic()
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(30)
    assert dealer.returncode == 0, dealer.returncode
    return end - (drawn_at or end), end - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobbers", type=int, default=2)
    ap.add_argument("--cpu-limit", type=float, default=3.0)
    ap.add_argument("--chunk", default="45000000", help="23 jobs of about 0.15 s here")
    args = ap.parse_args()
    off, off_all = tail(0, args)
    print(f"no backups:   tail {off:6.2f} s  (batch {off_all:6.2f} s)", flush=True)
    on, on_all = tail(1, args)
    print(f"with backups: tail {on:6.2f} s  (batch {on_all:6.2f} s)", flush=True)
    print(f"tail ratio (with / without): {on / off:.2f}")
    print(
        json.dumps(
            {
                "tail_without_backups_s": round(off, 2),
                "tail_with_backups_s": round(on, 2),
                "batch_without_backups_s": round(off_all, 2),
                "batch_with_backups_s": round(on_all, 2),
                "ratio": round(on / off, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
