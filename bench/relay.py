"""A batch through a relay against the same batch direct: what the relay costs.

    python bench/relay.py [--chunk 2000000] [--jobbers 2] [--repeat 1]

The factoring example (N = 1000000007 * 1000000009, every candidate up to its
square root tried) in chunks of --chunk candidates, so short jobs (about 6 ms at
the default) in hundreds: the case where a relay's extra hop, journal and
batching show most. Each run starts a dealer, optionally a relay, and J jobbers
(one slot each, each from its own loopback address), all on this machine, and
times from the first jobber's start to the dealer's answer. The ratio is the
relayed wall time over the direct one (1.0: the relay costs nothing).

The last line is one JSON object. Runs by hand, not in CI.
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
sys.path[0] = str(ROOT)

from tests.helpers import free_port  # noqa: E402

N = 1000000007 * 1000000009
LINE = f"{N} = 1000000007 * 1000000009"


def run(chunk: int, jobbers: int, relayed: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen] = []
        try:
            up = free_port()
            dealer = subprocess.Popen(
                [sys.executable, ROOT / "examples" / "factoring.py", str(N), "--quiet"]
                + ["--chunk", str(chunk), "--bind", f"tcp://127.0.0.1:{up}"]
                + ["--db", f"{tmp}/up.sqlite"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp,
            )
            procs.append(dealer)
            assert dealer.stderr.readline().startswith("listening on")
            target = up
            if relayed:
                target = free_port()
                relay = subprocess.Popen(
                    [sys.executable, "-m", "dealer", "relay", f"127.0.0.1:{up}"]
                    + ["--bind", f"tcp://127.0.0.1:{target}", "--db", f"{tmp}/r/relay.sqlite"],
                    stdout=subprocess.DEVNULL,
                    stderr=open(f"{tmp}/relay.err", "w"),  # noqa: SIM115 - closed with tmp
                    cwd=ROOT,
                )
                procs.append(relay)
                while "listening on" not in Path(f"{tmp}/relay.err").read_text():
                    assert relay.poll() is None, "the relay did not start"
                    time.sleep(0.05)
            t0 = time.perf_counter()
            for i in range(jobbers):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "jobber", f"127.0.0.1:{target}", "--slots", "1"]
                        + ["--data-dir", f"{tmp}/j{i}", "--source", f"127.0.0.{i + 2}"]
                        + ["--max-idle", "5", "--quiet"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        cwd=ROOT,
                    )
                )
            answer = dealer.stdout.readline().strip()
            wall = time.perf_counter() - t0
            assert answer == LINE, answer
            return wall
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=2_000_000)
    ap.add_argument("--jobbers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    jobs = -(-1000000008 // args.chunk)
    direct = min(run(args.chunk, args.jobbers, False) for _ in range(args.repeat))
    relayed = min(run(args.chunk, args.jobbers, True) for _ in range(args.repeat))
    print(f"{jobs} jobs, {args.jobbers} jobbers: direct {direct:.2f} s, relayed {relayed:.2f} s")
    print(
        json.dumps(
            {
                "jobs": jobs,
                "jobbers": args.jobbers,
                "direct_s": round(direct, 3),
                "relayed_s": round(relayed, 3),
                "ratio": round(relayed / direct, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
