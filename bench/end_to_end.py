"""End to end: the factoring example with real jobbers, against its kernel run natively.

    python bench/end_to_end.py [--n 9223372036854775783] [--jobbers 1 2]

The kernel (tasks/payloads/factor.c) built with gcc -O2 runs over every candidate
in [2, isqrt(N)] in one process: the native time. Then
`python examples/factoring.py N --jobbers J` (a dealer and J local jobbers, one
slot each, everything on this machine) factors the same N. Efficiency is native
time / (J x wall time): 1.0 means J cores did J times the native work per second.
Two walls are reported: the whole command (start-up included: interpreters,
imports, workers, the payload's compile) and from the dealer's "listening on" to
the answer.

The last line is one JSON object. Runs by hand, not in CI; figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # this file's folder must not shadow the `sandbox` package

from bench.sandbox import build_native  # noqa: E402

PRIME = 9223372036854775783  # the largest prime below 2^63: every candidate is tried


def native_s(n: int, exe: Path, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([exe, str(n), "2", str(math.isqrt(n) + 1)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def system_s(n: int, jobbers: int) -> tuple[float, float, str]:
    """(whole command, listening to answer) seconds, and the answer line."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, ROOT / "examples" / "factoring.py", str(n), "--quiet"]
        cmd += ["--jobbers", str(jobbers), "--bind", "tcp://127.0.0.1:*"]
        cmd += ["--db", f"{tmp}/j.sqlite"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        listening = None
        for line in proc.stderr:
            if line.startswith("listening on"):
                listening = time.perf_counter()
                break
        answer = proc.stdout.readline().strip()
        t_answer = time.perf_counter()
        proc.communicate(timeout=120)
    if listening is None or proc.returncode != 0:
        raise SystemExit(f"the batch failed: {proc.returncode}")
    return t_answer - t0, t_answer - listening, answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=PRIME)
    ap.add_argument("--jobbers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "factor"
        compiler = build_native(ROOT / "tasks" / "payloads" / "factor.c", exe)
        native = native_s(args.n, exe, args.repeat)
    print(f"native ({compiler}), one process: {native:.2f} s")
    runs = []
    for j in args.jobbers:
        best = None
        for _ in range(args.repeat):
            whole, work, answer = system_s(args.n, j)
            if best is None or whole < best[0]:
                best = (whole, work)
        whole, work = best
        runs.append(
            {
                "jobbers": j,
                "wall_s": round(whole, 2),
                "work_s": round(work, 2),
                "efficiency": round(native / (j * whole), 3),
                "efficiency_after_startup": round(native / (j * work), 3),
            }
        )
        print(
            f"{j} jobber{'s' if j > 1 else ''}: {whole:.2f} s in all ({work:.2f} s from "
            f"'listening on'): efficiency {native / (j * whole):.0%} "
            f"({native / (j * work):.0%} after start-up); {answer}"
        )
    print(json.dumps({"native_s": round(native, 2), "n": args.n, "runs": runs}))


if __name__ == "__main__":
    main()
