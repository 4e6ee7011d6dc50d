"""The whole system on short jobs: real jobbers, real wasm, against bare ZeroMQ.

    python bench/system.py [--jobs 5000] [--jobbers 2] [--slots 1]

One real dealer (journal fsynced every turn, CurveZMQ) serves JOBS trivial wasm
jobs (a WASI module whose _start returns at once) to JOBBERS real `python -m
jobber` processes: every job crosses the wire both ways, is run in a sandboxed
worker process, spooled to disk by the jobber before its result is sent, and
journaled by the dealer. Baseline in the same run: a bare CurveZMQ ROUTER in
one Python process answering JOBBERS clients, one request in flight each.

The last line is one JSON object: `jobs_per_s`, `raw_roundtrips_per_s`, `ratio`.
Runs by hand, not in CI. Latest figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

# run from a checkout; this file's folder must not shadow the `sandbox` package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import protocol as p  # noqa: E402
from bench._common import Trivial, curve_client, echo_router, take  # noqa: E402


def echo_client(address: str, seconds: float) -> None:
    ctx = zmq.Context()
    s = curve_client(ctx, address)
    host = p.HostFacts(1, 1024, 1, ("ab" * 32,))
    end = time.monotonic() + seconds
    rid = 0
    while time.monotonic() < end:
        rid += 1
        s.send(p.encode(p.Bored(rid, "echo", host, 2)))
        msgpack.unpackb(s.recv())
    s.close(0)
    ctx.term()


def baseline(clients: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=echo_router, args=((0.5, seconds - 0.5), 16, ready, out))
    server.start()
    address = take(ready, [server])
    procs = [ctx.Process(target=echo_client, args=(address, seconds)) for _ in range(clients)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    rate = take(out, [server, *procs])
    server.join()
    return rate


def dealer_server(n: int, db: str, ready_q, out_q, profile: str | None) -> None:
    from dealer import Dealer, Journal

    task = Trivial(n)
    dealer = Dealer(task, "tcp://127.0.0.1:*", Journal(db, "bench"))
    ready_q.put(dealer.address)
    # the clock starts with the first job handed out
    while dealer.core.drawn == 0:
        dealer.turn()
    t0 = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(dealer.run, linger=False)
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(25)
    else:
        dealer.run(linger=False)
    elapsed = time.perf_counter() - t0
    out_q.put((task.count, elapsed))
    dealer.close()


def whole_system(args) -> float:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(
            target=dealer_server,
            args=(args.jobs, str(Path(tmp) / "j.sqlite"), ready, out, args.profile_dealer),
        )
        server.start()
        address = take(ready, [server])
        procs = []
        for i in range(args.jobbers):
            cmd = [sys.executable, "-m", "jobber", address, "--slots", str(args.slots)]
            cmd += ["--quiet", "--data-dir", str(Path(tmp) / f"jobber{i}"), "--max-idle", "2"]
            cmd += ["--min-backoff", "0.2", "--max-backoff", "1", "--source", f"127.0.0.{2 + i}"]
            if args.profile_jobber and i == 0:  # py-spy, or a script run in its place
                if args.profile_jobber.endswith(".py"):
                    cmd = [sys.executable, args.profile_jobber, *cmd[3:]]
                else:
                    spy = ["py-spy", "record", "--idle", "-o", args.profile_jobber, "-f", "raw"]
                    cmd = [*spy, "--", *cmd]
            procs.append(subprocess.Popen(cmd))
        settled, elapsed = take(out, [server])
        server.join()
        for pr in procs:
            pr.wait(60)
    assert settled == args.jobs, (settled, args.jobs)
    return settled / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--jobbers", type=int, default=2)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0, help="baseline duration")
    ap.add_argument("--profile-dealer", metavar="FILE", help="cProfile the dealer into FILE")
    ap.add_argument(
        "--profile-jobber", metavar="FILE", help="py-spy the first jobber into FILE (raw)"
    )
    args = ap.parse_args()
    raw = baseline(args.jobbers, args.seconds)
    print(f"bare ZeroMQ ROUTER (CURVE), {args.jobbers} clients: {raw:,.0f} round trips/s")
    rate = whole_system(args)
    print(
        f"whole system, {args.jobs} trivial wasm jobs, {args.jobbers} jobbers x {args.slots} "
        f"slots: {rate:,.0f} jobs/s settled = {rate / raw:.2f} x bare round trips/s"
    )
    print(
        json.dumps(
            {
                "jobs_per_s": round(rate, 1),
                "raw_roundtrips_per_s": round(raw, 1),
                "ratio": round(rate / raw, 3),
                "jobbers": args.jobbers,
                "slots": args.slots,
            }
        )
    )


if __name__ == "__main__":
    main()
