"""Dispatch: how fast one dealer hands out and settles jobs, against bare ZeroMQ.

    python bench/dispatch.py [--seconds 10] [--procs 2] [--identities 8]
                             [--batch N ...] [--redundancy 1 2]

One real Dealer process (core, SQLite journal with WAL and synchronous=FULL, so
every turn is fsynced before any reply; CurveZMQ) serves a task of trivial jobs
to PROCS client processes, each playing IDENTITIES jobbers (a CurveZMQ key and
socket each) that speak the protocol and answer at once: `bored(want=BATCH)`,
then one `results` with every job's output, then ask again; `alive` every 5 s
while they hold work. Replicas of a job go to distinct identities
(`--distinct key`), so redundancy 2 works from one address.

Baseline, in the same run: a bare ZeroMQ ROUTER (CurveZMQ too) in one Python
process, the same clients and identities, requests and replies of the same
sizes; it decodes each request and encodes each reply, as any server must.

Prints figures as it goes; the very last line is one JSON object with
`jobs_per_s`, `raw_roundtrips_per_s` and `ratio` (jobs settled per second over
bare round trips per second) at the batch the reference jobber asks for on
this machine on jobs this short (one slot per CPU; it buffers MAX_BUFFER_PER_SLOT
jobs per slot of jobs under a millisecond and asks for half its buffer at a time:
256 on 2 CPUs), redundancy 1, and every measured point under `runs`. A job
settled at batch B costs two round trips per B jobs (one `bored`, one
`results`).

Runs by hand, not in CI. Latest figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
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
from jobber._core import MAX_BUFFER_PER_SLOT  # noqa: E402

WARMUP_S = 2.0
OUTPUT = b"42\n"  # what every simulated job writes


# --- the servers ----------------------------------------------------------------------


def dealer_server(db: str, redundancy: int, seconds: float, ready_q, out_q, profile=None) -> None:
    from dealer import Dealer, Journal
    from dealer._service import policy_for

    task = Trivial()
    policy = policy_for(task, redundancy=redundancy, quorum=redundancy, quota=4096)
    dealer = Dealer(
        task,
        "tcp://127.0.0.1:*",
        Journal(db, "bench"),
        policy=policy,
        distinct="key",
    )
    ready_q.put(dealer.address)
    dealer.run(max_s=WARMUP_S, linger=False)
    a0, t0 = dealer.core.accepted, time.perf_counter()
    if profile:  # the measured seconds under cProfile: where the dealer's time goes
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(dealer.run, max_s=seconds, linger=False)
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(25)
    else:
        dealer.run(max_s=seconds, linger=False)
    a1, t1 = dealer.core.accepted, time.perf_counter()
    out_q.put({"jobs_per_s": (a1 - a0) / (t1 - t0), "journal_bytes": os.path.getsize(db)})
    dealer.stop()
    dealer.close()


# --- the clients ------------------------------------------------------------------------


def jobbers(address: str, identities: int, batch: int, stop_at: float, out_q) -> None:
    """IDENTITIES simulated jobbers in one process, one request out each."""
    ctx = zmq.Context()
    socks = [curve_client(ctx, address) for _ in range(identities)]
    poller = zmq.Poller()
    state = {}
    cached: tuple[str, ...] = ()
    rid = 0
    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        rid += 1
        host = p.HostFacts(1, 1024, batch, cached)
        s.send(p.encode(p.Bored(rid, f"sim{os.getpid()}-{i}", host, batch)))
        state[s] = {"name": f"sim{os.getpid()}-{i}", "alive_at": time.monotonic(), "held": 0}
    done = 0
    while time.monotonic() < stop_at:
        for s, _ in poller.poll(200):
            reply = p.decode(s.recv())
            st = state[s]
            rid += 1
            now = time.monotonic()
            if isinstance(reply, p.Jobs) and reply.jobs:
                if reply.payloads:
                    cached = tuple(reply.payloads)
                results = tuple(p.Result(j.tag, p.Status.OK, OUTPUT, 1) for j in reply.jobs)
                st["held"] = len(results)
                s.send(p.encode(p.Results(rid, st["name"], results)))
                continue
            if isinstance(reply, p.Ack):
                done += len(reply.tags)
                st["held"] = 0
            elif isinstance(reply, p.RetryLater | p.Jobs):
                time.sleep(0.001)
            if now - st["alive_at"] >= p.ALIVE_INTERVAL_S:  # liveness, as a real jobber
                st["alive_at"] = now
                s.send(p.encode(p.Alive(rid, st["name"], None)))
                rid += 1
                if not s.poll(2000):
                    break
                s.recv()
            host = p.HostFacts(1, 1024, batch, cached)
            s.send(p.encode(p.Bored(rid, st["name"], host, batch)))
    out_q.put(done)
    for s in socks:
        s.close(0)
    ctx.term()


def echo_clients(address: str, identities: int, batch: int, stop_at: float, out_q) -> None:
    """The same clients against the bare ROUTER: a `bored`-sized request, then a
    `results`-sized one, per round."""
    ctx = zmq.Context()
    socks = [curve_client(ctx, address) for _ in range(identities)]
    poller = zmq.Poller()
    host = p.HostFacts(1, 1024, batch, ("ab" * 32,))
    results = tuple(p.Result(f"abcdef01.{i:x}", p.Status.OK, OUTPUT, 1) for i in range(batch))
    rid = 0
    turn = {}
    for s in socks:
        poller.register(s, zmq.POLLIN)
        rid += 1
        s.send(p.encode(p.Bored(rid, "echo", host, batch)))
        turn[s] = 0
    n = 0
    while time.monotonic() < stop_at:
        for s, _ in poller.poll(200):
            msgpack.unpackb(s.recv())
            n += 1
            rid += 1
            turn[s] ^= 1
            msg = p.Results(rid, "echo", results) if turn[s] else p.Bored(rid, "echo", host, batch)
            s.send(p.encode(msg))
    out_q.put(n)
    for s in socks:
        s.close(0)
    ctx.term()


# --- runs -----------------------------------------------------------------------------------


def _jobs_reply_size(batch: int) -> int:
    spec = p.JobSpec("abcdef01.1f", "ab" * 32, ("123456",), b"", Trivial.limits, 179.0)
    return (len(p.encode(p.Jobs(1, (spec,) * batch))) + len(p.encode(p.Ack(1, ("x" * 11,))))) // 2


def run_echo(args, batch: int) -> float:
    ctx = mp.get_context("spawn")
    ready, out, counts = ctx.Queue(), ctx.Queue(), ctx.Queue()
    window = (WARMUP_S, WARMUP_S + args.seconds)
    server = ctx.Process(target=echo_router, args=(window, _jobs_reply_size(batch), ready, out))
    server.start()
    address = take(ready, [server])
    stop_at = time.monotonic() + WARMUP_S + args.seconds + 0.5
    clients = [
        ctx.Process(target=echo_clients, args=(address, args.identities, batch, stop_at, counts))
        for _ in range(args.procs)
    ]
    for c in clients:
        c.start()
    rate = take(out, [server, *clients])
    for c in clients:
        c.join()
    server.join()
    return rate


def run_dealer(args, batch: int, redundancy: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, counts = ctx.Queue(), ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "j.sqlite")
        server = ctx.Process(
            target=dealer_server, args=(db, redundancy, args.seconds, ready, out, args.profile)
        )
        server.start()
        address = take(ready, [server])
        stop_at = time.monotonic() + WARMUP_S + args.seconds + 1.0
        clients = [
            ctx.Process(target=jobbers, args=(address, args.identities, batch, stop_at, counts))
            for _ in range(args.procs)
        ]
        for c in clients:
            c.start()
        got = take(out, [server, *clients])
        for c in clients:
            c.join()
        server.join()
    return got


def reference_batch(slots: int) -> int:
    """What the reference jobber (jobber/_core.py) asks for at once on jobs of well under
    a millisecond: its high-water mark is the slots plus MAX_BUFFER_PER_SLOT buffered per
    slot, and it asks once it is down to its low-water mark, for the difference."""
    hi_water = min(p.MAX_BATCH, slots * (1 + MAX_BUFFER_PER_SLOT))
    return max(1, (hi_water - slots) // 2)


def main() -> None:
    reference = reference_batch(os.cpu_count() or 1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--identities", type=int, default=8, help="jobbers per client process")
    ap.add_argument("--batch", type=int, nargs="+", default=sorted({1, 4, 64, reference}))
    ap.add_argument("--redundancy", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--profile", metavar="FILE", help="profile the dealer (cProfile) into FILE")
    args = ap.parse_args()
    clients = args.procs * args.identities
    print(f"{args.procs} client processes x {args.identities} identities = {clients} jobbers")
    runs = []
    raw_at: dict[int, float] = {}
    for batch in args.batch:
        raw = raw_at[batch] = run_echo(args, batch)
        print(f"batch {batch:3}: bare ZeroMQ ROUTER (CURVE): {raw:9,.0f} round trips/s", flush=True)
        for r in args.redundancy:
            got = run_dealer(args, batch, r)
            rate = got["jobs_per_s"]
            runs.append(
                {
                    "batch": batch,
                    "redundancy": r,
                    "jobs_per_s": rate,
                    "raw_roundtrips_per_s": raw,
                    "ratio": rate / raw,
                    "journal_bytes": got["journal_bytes"],
                }
            )
            print(
                f"batch {batch:3}, redundancy {r}: {rate:9,.0f} jobs/s settled "
                f"= {rate / raw:.2f} x bare round trips/s",
                flush=True,
            )
    head = next((x for x in runs if x["batch"] == reference and x["redundancy"] == 1), runs[0])
    print(
        json.dumps(
            {
                "jobs_per_s": round(head["jobs_per_s"], 1),
                "raw_roundtrips_per_s": round(head["raw_roundtrips_per_s"], 1),
                "ratio": round(head["ratio"], 3),
                "batch": head["batch"],
                "clients": clients,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
