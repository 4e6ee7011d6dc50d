"""End to end, steady: real jobbers on the factoring kernel for minutes, against the
same kernel run natively.

    python bench/end_to_end.py [--jobbers 1 2] [--job-s 3] [--work-s 60]

Native, like for like: tasks/payloads/factor.c built for this machine with -O2 (as
the payload is built for wasm) tries every candidate of [2, isqrt(N)] for N the
largest prime below 2^63: a time per candidate, best of --repeat.

Steady work: a dealer (bench/_rounds.py: the factoring ranges, several rounds over)
hands out ranges of --job-s seconds of native work each, enough for --work-s seconds
of native work per jobber, to J jobber processes with one slot each, warm (their
module caches hold the compiled payload). From the journal (each replica's Sent.at
and Returned.at): each jobber's steady efficiency is the native time of the jobs it
returned after its first result, over the time from its first result to its last.
The whole run's efficiency (native time of every job / (J x the wall time from
"listening on" to the end)) counts start-up and the tail too.

Start-up, warm: a jobber started against a dealer of one tiny job; the time from the
jobber's start (before its interpreter) to the dealer's receipt of the result, as the
journal's Returned.at says.

Everything shares this machine's cores: the dealer, the jobbers' loops and their
workers. The last line is one JSON object. Runs by hand, not in CI; figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # this file's folder must not shadow the `sandbox` package

from bench.sandbox import LIKE_FOR_LIKE, build_native  # noqa: E402
from dealer._history import read_history  # noqa: E402

PRIME = 9223372036854775783  # the largest prime below 2^63: every candidate is tried
TINY = 1000003  # a prime whose one job takes a millisecond


def native_s(exe: Path, n: int, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([exe, str(n), "2", str(math.isqrt(n) + 1)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def dealer(cmd: list, tmp: Path, name: str) -> tuple[subprocess.Popen, str]:
    """A dealer started and listening: (its process, its address)."""
    argv = [sys.executable, *map(str, cmd), "--bind", "tcp://127.0.0.1:*"]
    argv += ["--db", str(tmp / f"{name}.sqlite"), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("listening on "):
            return proc, line.split()[2]
    raise SystemExit(f"dealer {name} did not start: {proc.wait()}")


def jobber(address: str, tmp: Path, i: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "jobber", address, "--slots", "1", "--quiet"]
    argv += ["--data-dir", str(tmp / f"jobber-{i}"), "--source", f"127.0.0.{2 + i}"]
    argv += ["--exit-with", str(os.getpid())]  # this process: if it dies, they go too
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def finish(d: subprocess.Popen, jobbers: list[subprocess.Popen], timeout: float) -> str:
    out, err = d.communicate(timeout=timeout)
    for j in jobbers:  # nothing left to do: they stop at once
        j.send_signal(signal.SIGTERM)
        j.wait(timeout=60)
    if d.returncode != 0:
        raise SystemExit(f"the batch failed ({d.returncode}): {err[-2000:]}")
    return out.strip()


def start_up(tmp: Path, i: int) -> float:
    """Seconds from jobber `i`'s start to its first result at the dealer."""
    d, address = dealer([ROOT / "examples" / "factoring.py", TINY], tmp, f"tiny-{i}-{time.time()}")
    t0 = time.time()
    finish(d, [jobber(address, tmp, i)], 120)
    [path] = [p for p in tmp.glob(f"tiny-{i}-*.sqlite") if p.stat().st_mtime >= t0 - 1]
    _, h = read_history(path)
    back = [h.returned_at[r.tag] for j in h.jobs.values() for r in j.replicas]
    path.unlink()
    return min(back) - t0


def steady(tmp: Path, jobbers: int, chunk: int, rounds: int, per_candidate: float) -> dict:
    name = f"steady-{jobbers}"
    d, address = dealer(
        [ROOT / "bench" / "_rounds.py", PRIME, "--chunk", chunk, "--rounds", rounds], tmp, name
    )
    t0 = time.time()
    procs = [jobber(address, tmp, i) for i in range(jobbers)]
    answer = finish(d, procs, 3600)
    wall = time.time() - t0
    _, h = read_history(tmp / f"{name}.sqlite")
    per: dict[str, list[tuple[float, float]]] = {}  # jobber -> (returned at, native s)
    total_native = 0.0
    for j in h.jobs.values():
        lo, hi = int(j.args[1]), int(j.args[2])
        native = (hi - lo) * per_candidate
        total_native += native
        for r in j.replicas:
            if r.status == "ok":
                per.setdefault(r.jobber, []).append((h.returned_at[r.tag], native))
    rows = []
    for done in per.values():
        done.sort()
        span = done[-1][0] - done[0][0]
        work = sum(n for _, n in done[1:])
        rows.append({"jobs": len(done), "span_s": span, "native_s": work})
    eff = sum(r["native_s"] for r in rows) / sum(r["span_s"] for r in rows)
    return {
        "jobbers": jobbers,
        "jobs": sum(r["jobs"] for r in rows),
        "wall_s": round(wall, 2),
        "native_s": round(total_native, 2),
        "steady_efficiency": round(eff, 4),
        "per_jobber": [round(r["native_s"] / r["span_s"], 4) for r in rows],
        "whole_efficiency": round(total_native / (jobbers * wall), 4),
        "answer": answer,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobbers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--job-s", type=float, default=3.0, help="native seconds of one job")
    ap.add_argument("--work-s", type=float, default=60.0, help="native seconds per jobber")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--starts", type=int, default=5, help="warm start-ups measured")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        exe = tmp / "factor"
        compiler = build_native(ROOT / "tasks" / "payloads" / "factor.c", exe, *LIKE_FOR_LIKE)
        native = native_s(exe, PRIME, args.repeat)
        candidates = math.isqrt(PRIME) - 1
        per_candidate = native / candidates
        chunk = max(1, int(args.job_s / per_candidate))
        rounds = math.ceil(max(args.jobbers) * args.work_s / native)
        print(f"native ({compiler}), one process: {native:.2f} s for {candidates} candidates")
        print(f"jobs of {chunk} candidates ({chunk * per_candidate:.2f} s native), {rounds} rounds")
        for i in range(max(args.jobbers)):  # cold: each jobber compiles the payload once
            start_up(tmp, i)
        starts = [start_up(tmp, i % max(args.jobbers)) for i in range(args.starts)]
        print(
            f"warm start to first result: median {statistics.median(starts):.3f} s "
            f"(min {min(starts):.3f}, max {max(starts):.3f})"
        )
        runs = []
        for j in args.jobbers:
            r = steady(tmp, j, chunk, math.ceil(rounds * j / max(args.jobbers)), per_candidate)
            runs.append(r)
            print(
                f"{j} jobber{'s' if j > 1 else ''}: {r['jobs']} jobs in {r['wall_s']} s; steady "
                f"efficiency {r['steady_efficiency']:.1%} (per jobber "
                f"{', '.join(f'{e:.1%}' for e in r['per_jobber'])}), whole run "
                f"{r['whole_efficiency']:.1%}"
            )
    print(
        json.dumps(
            {
                "native_s": round(native, 3),
                "compiler": compiler,
                "chunk": chunk,
                "start_up_s": [round(s, 3) for s in starts],
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
