"""Machines that vanish: how long a batch waits for a frozen and a killed jobber.

    python bench/vanish.py [--deadline 120] [--lease 20]

A 23-job factoring batch on three jobbers, its deadline far beyond the lease.
Once two of them hold jobs, one is frozen (SIGSTOP: its sockets stay open, the
kernel says nothing) and one is killed (kill -9). Prints the time from then to
the dealer printing the answer, with the lease alone (`--backups 0`) and with
the default tail backups; before leases the batch waited out the whole deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
ANSWER = f"{N} = 1000000007 * 1000000009"


def holding(port: int) -> dict[str, int]:
    try:
        info = query_status(f"127.0.0.1:{port}", timeout_s=1.0)
    except (TimeoutError, RuntimeError):
        return {}
    return {j["name"]: j["holding"] for j in info["jobbers"]}


def once(backups: int | None, args: argparse.Namespace) -> float:
    """Seconds from the freeze and the kill to the answer."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, ROOT / "examples" / "factoring.py", N, "--chunk", "45000000"]
        cmd += ["--bind", f"tcp://127.0.0.1:{port}", "--quiet", "--db", f"{tmp}/j.sqlite"]
        cmd += ["--deadline", str(args.deadline), "--lease", str(args.lease)]
        cmd += [] if backups is None else ["--backups", str(backups)]
        dealer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        jobber = [sys.executable, "-m", "jobber", f"127.0.0.1:{port}", "--slots", "1", "--quiet"]
        jobber += ["--min-backoff", "0.2", "--max-backoff", "1", "--max-idle", "60"]
        procs = {
            name: subprocess.Popen(
                jobber
                + ["--name", name, "--data-dir", f"{tmp}/{name}", "--source", f"127.0.0.{2 + i}"]
            )
            for i, name in enumerate(("frozen", "killed", "survivor"))
        }
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = holding(port)
            if held.get("frozen") and held.get("killed"):
                break
            time.sleep(0.02)
        else:
            raise SystemExit("the jobbers never held work")
        os.kill(procs["frozen"].pid, signal.SIGSTOP)
        procs["killed"].kill()
        since = time.monotonic()
        line = dealer.stdout.readline().strip()
        took = time.monotonic() - since
        os.kill(procs["frozen"].pid, signal.SIGCONT)
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(30)
        dealer.wait(60)
    if line != ANSWER:
        raise SystemExit(f"the dealer printed {line!r}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--lease", type=float, default=20.0)
    args = ap.parse_args()
    alone = once(0, args)
    print(f"lease alone (--backups 0):   answer {alone:6.1f} s after the freeze and the kill")
    both = once(None, args)
    print(f"lease and tail backups:      answer {both:6.1f} s after the freeze and the kill")
    print(f"deadlines only would wait:   {args.deadline:6.1f} s")
    print(
        json.dumps(
            {
                "lease_alone_s": round(alone, 2),
                "lease_and_backups_s": round(both, 2),
                "deadline_s": args.deadline,
            }
        )
    )


if __name__ == "__main__":
    main()
