"""Long jobs whose machines are killed: the work lost per interruption, as a ratio of
the interval at which a jobber sends the job's state to its dealer.

    python bench/checkpoints.py [--minutes 10] [--send-every 60] [--lease 30] [--at 0.5]
                                [--backups]

One chain of examples/mcmc.py (the C kernel, saving its state every million steps,
about every half second), sized to run MINUTES minutes here. Baseline, in the same
run: the chain run straight through by one real jobber under a real dealer, its
running time T0 from the journal (sent to returned). Then the same batch again: once
the job has run AT x T0, its jobber is killed (kill -9) and a fresh jobber is started;
the dealer sends the job to it when the killed one's lease (--lease) runs out, from
the latest state it holds (`--backups 0`: no backup replica hides the lease). With
--backups, the dealer's default tail backups: the fresh jobber gets a backup replica
at once, from the latest state of the killed one's replica (still out).

Prints, from the journal and the clocks here:
- lost: the running time the killed jobber had done beyond the state the job resumed
  from (its time from the job's sending to the kill, less the state's fuel at the
  baseline's fuel rate; the killed jobber's start-up and compile count as lost too),
  and that as a ratio of --send-every (at most about 1: a state goes every interval);
- after the kill: the time to the answer, against what is left of T0 plus the lease;
- whether the answer is the baseline's, byte for byte.
The last line is one JSON object. Runs by hand, not in CI; figures in docs/benchmarks.md.
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
from protocol import Limits  # noqa: E402
from tasks import Payload  # noqa: E402
from tests.helpers import free_port  # noqa: E402

SAVE_EVERY = 1_000_000  # steps between saves: about half a second of the C kernel


def steps_per_s() -> float:
    """The C kernel's speed here, in the sandbox as a jobber runs it (native NaNs)."""
    payload = Payload.from_c(ROOT / "examples" / "mcmc.c")
    lim = Limits(fuel=10**13, memory_mb=16, time_s=60, output_kb=1, native_nans=True)
    n = 5_000_000
    payload.run(["1", "1", "0"], limits=lim)  # compiled once, not timed
    t = time.monotonic()
    out = payload.run(["1", str(n), "0"], limits=lim)
    assert out.ok, out.detail
    return n / (time.monotonic() - t)


def jobber(tmp: str, port: int, name: str, source: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobber", f"127.0.0.1:{port}", "--name", name, "--quiet"]
    cmd += ["--data-dir", f"{tmp}/{name}", "--source", source, "--max-job-time", "86400"]
    cmd += ["--min-backoff", "0.2", "--max-backoff", "1", "--max-idle", "30"]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL)


def replicas(db: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "dealer", "jobs", db, "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["jobs"][0]["replicas"]


def batch(tmp: str, steps: int, args: argparse.Namespace, kill_at_s: float | None) -> dict:
    """One batch of one chain; with `kill_at_s`, its first jobber killed once the job has
    run that long and a second started. Returns the journal's replicas and the times."""
    port = free_port()
    db = f"{tmp}/d.sqlite"
    cmd = [sys.executable, ROOT / "examples" / "mcmc.py", "--chains", "1"]
    cmd += ["--steps", str(steps), "--save-every", str(SAVE_EVERY)]
    cmd += ["--send-every", str(args.send_every), "--lease", str(args.lease)]
    cmd += [] if args.backups else ["--backups", "0"]
    cmd += ["--bind", f"tcp://127.0.0.1:{port}", "--quiet", "--db", db, "--out", f"{tmp}/c.csv"]
    dealer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs = [jobber(tmp, port, "first", "127.0.0.2")]
    killed_at = None
    try:
        while kill_at_s is not None and killed_at is None:
            try:
                info = query_status(f"127.0.0.1:{port}", timeout_s=1.0)
                rows = info.get("long_jobs") or []
            except (TimeoutError, RuntimeError):
                rows = []
            if rows and (rows[0]["run_s"] or 0) >= kill_at_s:
                procs[0].kill()
                killed_at = time.time()
                procs.append(jobber(tmp, port, "second", "127.0.0.3"))
            time.sleep(0.2)
        dealer.communicate(timeout=args.minutes * 60 * 4 + 600)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    answer = Path(f"{tmp}/c.csv").read_text()  # the chain's numbers, every digit
    return {"replicas": replicas(db), "killed_at": killed_at, "answer": answer}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="the job's length here (10)")
    ap.add_argument("--send-every", type=float, default=60.0, help="seconds (60)")
    ap.add_argument("--lease", type=float, default=30.0, help="the dealer's lease, s (30)")
    ap.add_argument("--at", type=float, default=0.5, help="the kill, as a share of T0 (0.5)")
    ap.add_argument("--backups", action="store_true", help="the dealer's tail backups on")
    args = ap.parse_args()
    rate = steps_per_s()
    steps = int(rate * args.minutes * 60)
    print(f"the C kernel runs {rate:,.0f} steps/s here: {steps:,} steps a job", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = batch(tmp, steps, args, None)
    (ok,) = base["replicas"]
    t0 = ok["returned_at"] - ok["sent_at"]
    fuel_rate = ok["fuel"] / t0
    print(f"baseline: straight through in {t0:.1f} s ({ok['fuel']:,} fuel)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cut = batch(tmp, steps, args, args.at * t0)
    first, second = cut["replicas"][0], cut["replicas"][-1]
    done_before = cut["killed_at"] - first["sent_at"]
    kept = (second["resumed_fuel"] or 0) / fuel_rate
    lost = done_before - kept
    after = second["returned_at"] - cut["killed_at"]
    expected = (t0 - kept) + (0.0 if args.backups else args.lease)
    same = cut["answer"] == base["answer"]
    print(
        f"killed after {done_before:.1f} s of running; resumed from a state {kept:.1f} s "
        f"into the job: {lost:.1f} s lost = {lost / args.send_every:.2f} of the interval "
        f"({args.send_every:g} s)"
    )
    print(
        f"answer {after:.1f} s after the kill (what was left, {t0 - kept:.1f} s, plus the "
        f"lease ({0 if args.backups else args.lease:g} s with backups {args.backups}): "
        f"{expected:.1f} s; ratio {after / expected:.3f}); "
        f"the same answer as straight through: {same}"
    )
    print(
        json.dumps(
            {
                "t0_s": round(t0, 2),
                "killed_after_s": round(done_before, 2),
                "lost_s": round(lost, 2),
                "lost_per_interval": round(lost / args.send_every, 3),
                "after_kill_s": round(after, 2),
                "expected_s": round(expected, 2),
                "same_answer": same,
                "send_every_s": args.send_every,
                "lease_s": args.lease,
                "backups": args.backups,
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
