"""Scale: many jobbers against one dealer, and a batch of a million jobs.

    python bench/scale.py identities [--identities 2000] [--procs 4] [--seconds 180]
    python bench/scale.py million [--jobs 1000000]
    python bench/scale.py alive [--identities 200] [--procs 2] [--seconds 10]

`identities`: IDENTITIES simulated jobbers (a CurveZMQ key and socket each, spread
over PROCS processes) against one real dealer for SECONDS: each asks for two jobs,
holds them for 1 to 3 s as if running them, says `alive` every 5 s while it holds
work (the default interval) and returns the results. Reports jobs settled, failed
jobs and refused results (both should be 0), how evenly work was spread (jobs per
identity: min, median, max), and the dealer's CPU and resident memory.

`million`: one real dealer serves JOBS jobs to 16 simulated jobbers that answer at
once (batch 64); its resident memory is sampled throughout, the journal's size per
job is reported, and a dealer restarted on the finished journal is timed while it
replays it: restored from the finished batch's settled jobs, and (with the
finished mark removed, as for a batch interrupted at its last job) replaying
every record.

`alive`: what one liveness message costs the dealer. IDENTITIES simulated jobbers
each take two jobs and then say `alive` over and over, one message in flight
each, for SECONDS: the dealer's `alive` messages answered per second at full
speed, its CPU seconds per message, and from those the share of one core that
10,000 and 100,000 machines saying `alive` every 5 s would take.

The last line is one JSON object with the figures. Runs by hand, not in CI.
Latest figures: docs/benchmarks.md and docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq

# run from a checkout; this file's folder must not shadow the `sandbox` package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import protocol as p  # noqa: E402
from bench._common import Trivial, cpu_s, curve_client, more_files, rss_mb, take  # noqa: E402

# --- many identities ------------------------------------------------------------------


def dealer_many(db: str, seconds: float, ready_q, out_q) -> None:
    from dealer import Dealer, Journal

    more_files()
    task = Trivial(None)
    dealer = Dealer(task, "tcp://127.0.0.1:*", Journal(db, "scale"), distinct="key")
    ready_q.put((dealer.address, os.getpid()))
    dealer.run(max_s=seconds, linger=False)
    out_q.put(
        {
            "accepted": dealer.core.accepted,
            "failed": dealer.core.failed,
            "jobbers": len(dealer.core.jobbers),
            "gone": sum(1 for r in dealer.core.jobbers.values() if r.gone),
        }
    )
    dealer.stop()
    dealer.close()


def many_jobbers(address: str, n: int, stop_at: float, seed: int, out_q) -> None:
    """`n` simulated jobbers that run each job for 1 to 3 s and say alive while holding."""
    more_files()
    rng = random.Random(seed)
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, 4 * n + 64)
    socks = [curve_client(ctx, address) for _ in range(n)]
    poller = zmq.Poller()
    st = {}
    rid = 0
    cached: tuple[str, ...] = ()
    now = time.monotonic()
    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        # ask at a random moment in the first 5 s: machines do not start in step
        st[s] = {"name": f"s{seed}-{i}", "jobs": (), "due": 0.0, "ask": now + rng.uniform(0, 5)}
        st[s].update(alive=now, done=0, refused=0, waiting=False)
    while time.monotonic() < stop_at:
        now = time.monotonic()
        for s in socks:
            me = st[s]
            if me["waiting"]:
                continue
            if me["jobs"] and now >= me["due"]:
                rid += 1
                results = tuple(p.Result(j.tag, p.Status.OK, b"42\n", 1) for j in me["jobs"])
                s.send(p.encode(p.Results(rid, me["name"], results)))
                me["waiting"] = True
            elif me["jobs"] and now - me["alive"] >= p.ALIVE_INTERVAL_S:
                rid += 1
                me["alive"] = now
                s.send(p.encode(p.Alive(rid, me["name"], None)))
                me["waiting"] = True
            elif not me["jobs"] and now >= me["ask"]:
                rid += 1
                s.send(p.encode(p.Bored(rid, me["name"], p.HostFacts(1, 1024, 1, cached), 2)))
                me["waiting"] = True
        for s, _ in poller.poll(50):
            me = st[s]
            me["waiting"] = False
            reply = p.decode(s.recv())
            now = time.monotonic()
            if isinstance(reply, p.Jobs):
                if reply.payloads:
                    cached = tuple(reply.payloads)
                if reply.jobs:
                    me["jobs"], me["due"], me["alive"] = reply.jobs, now + rng.uniform(1, 3), now
                else:
                    me["ask"] = now + 1.0
            elif isinstance(reply, p.Ack):
                me["done"] += len(reply.tags)
                me["refused"] += len(reply.rejected)
                me["jobs"], me["ask"] = (), now
            elif isinstance(reply, p.RetryLater):
                me["ask"] = now + reply.seconds
    out_q.put([(me["done"], me["refused"]) for me in st.values()])
    for s in socks:
        s.close(0)
    ctx.term()


def run_identities(args) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, counts = ctx.Queue(), ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(
            target=dealer_many, args=(str(Path(tmp) / "j.sqlite"), args.seconds, ready, out)
        )
        server.start()
        address, pid = take(ready, [server])
        stop_at = time.monotonic() + args.seconds - 1.0
        each = args.identities // args.procs
        clients = [
            ctx.Process(target=many_jobbers, args=(address, each, stop_at, i, counts))
            for i in range(args.procs)
        ]
        for c in clients:
            c.start()
        cpu0, t0, rss = cpu_s(pid), time.monotonic(), []
        while time.monotonic() < stop_at - 1.0:
            time.sleep(2.0)
            rss.append(rss_mb(pid))
            print(f"  {time.monotonic() - t0:5.0f} s: dealer RSS {rss[-1]:.0f} MB", flush=True)
        cpu = (cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        per = [x for _ in clients for x in take(counts, [server, *clients])]
        dealer = take(out, [server, *clients])
        for c in clients:
            c.join()
        server.join()
    done = sorted(d for d, _ in per)
    return {
        "identities": len(per),
        "seconds": args.seconds,
        "jobs_accepted": dealer["accepted"],
        "jobs_failed": dealer["failed"],
        "results_refused": sum(r for _, r in per),
        "jobs_per_identity": {
            "min": done[0],
            "median": statistics.median(done),
            "max": done[-1],
        },
        "identities_gone": dealer["gone"],
        "dealer_cpu": round(cpu, 3),
        "dealer_rss_mb": {"median": statistics.median(rss), "max": max(rss)},
    }


# --- a million jobs -------------------------------------------------------------------


def dealer_million(db: str, n: int, ready_q, out_q) -> None:
    from dealer import Dealer, Journal

    task = Trivial(n)
    dealer = Dealer(task, "tcp://127.0.0.1:*", Journal(db, "scale"), distinct="key")
    ready_q.put((dealer.address, os.getpid()))
    t0 = time.perf_counter()
    dealer.run(linger=False)
    out_q.put({"accepted": task.count, "seconds": time.perf_counter() - t0})
    dealer.close()


def fast_jobbers(address: str, n: int, batch: int, out_q) -> None:
    ctx = zmq.Context()
    socks = [curve_client(ctx, address) for _ in range(n)]
    poller = zmq.Poller()
    names = {s: f"fast{os.getpid()}-{i}" for i, s in enumerate(socks)}
    rid = 0
    cached: tuple[str, ...] = ()
    for s in socks:
        poller.register(s, zmq.POLLIN)
        rid += 1
        s.send(p.encode(p.Bored(rid, names[s], p.HostFacts(1, 1024, batch, cached), batch)))
    live = set(socks)
    done = 0
    while live:
        ready = poller.poll(3000)
        if not ready:
            break
        for s, _ in ready:
            reply = p.decode(s.recv())
            rid += 1
            if isinstance(reply, p.Jobs) and reply.jobs:
                cached = tuple(reply.payloads) or cached
                results = tuple(p.Result(j.tag, p.Status.OK, b"42\n", 1) for j in reply.jobs)
                s.send(p.encode(p.Results(rid, names[s], results)))
                continue
            if isinstance(reply, p.Finished):
                live.discard(s)
                continue
            if isinstance(reply, p.Ack):
                done += len(reply.tags)
            host = p.HostFacts(1, 1024, batch, cached)
            s.send(p.encode(p.Bored(rid, names[s], host, batch)))
    out_q.put(done)
    for s in socks:
        s.close(0)
    ctx.term()


def replay(db: str, n: int, out_q) -> None:
    from dealer import Dealer, Journal

    t0 = time.perf_counter()
    dealer = Dealer(Trivial(n), "tcp://127.0.0.1:*", Journal(db, "scale"), distinct="key")
    took = time.perf_counter() - t0
    out_q.put({"replay_s": took, "accepted": dealer.core.accepted, "rss_mb": rss_mb(os.getpid())})
    dealer.close()


def run_million(args) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, counts = ctx.Queue(), ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "j.sqlite")
        server = ctx.Process(target=dealer_million, args=(db, args.jobs, ready, out))
        server.start()
        address, pid = take(ready, [server])
        clients = [
            ctx.Process(target=fast_jobbers, args=(address, 8, 64, counts)) for _ in range(2)
        ]
        for c in clients:
            c.start()
        rss, t0 = [], time.monotonic()
        while server.is_alive():
            try:
                rss.append(rss_mb(pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            if len(rss) % 10 == 0:
                print(f"  {time.monotonic() - t0:5.0f} s: dealer RSS {rss[-1]:.0f} MB", flush=True)
            time.sleep(1.0)
        got = take(out, [server, *clients])
        for c in clients:
            c.join()
        server.join()
        journal = sum(f.stat().st_size for f in Path(tmp).glob("j.sqlite*"))
        rep = ctx.Process(target=replay, args=(db, args.jobs, out))
        rep.start()
        replayed = take(out, [rep])
        rep.join()
        # the same journal without its finished mark: what a batch interrupted at its last
        # job costs to restart (every record replayed)
        with sqlite3.connect(db) as con:
            con.execute("DELETE FROM meta WHERE key = 'finished'")
            records = con.execute("SELECT count(*) FROM records").fetchone()[0]
        rep = ctx.Process(target=replay, args=(db, args.jobs, out))
        rep.start()
        full = take(out, [rep])
        rep.join()
    return {
        "jobs": args.jobs,
        "accepted": got["accepted"],
        "batch_s": round(got["seconds"], 1),
        "jobs_per_s": round(got["accepted"] / got["seconds"], 1),
        "dealer_rss_mb_max": max(rss),
        "journal_bytes_per_job": round(journal / args.jobs, 1),
        "replay_s": round(replayed["replay_s"], 2),
        "replayed_accepted": replayed["accepted"],
        "replay_rss_mb": replayed["rss_mb"],
        "records": records,
        "full_replay_s": round(full["replay_s"], 2),
        "full_replay_rss_mb": full["rss_mb"],
    }


def chatty_jobbers(address: str, n: int, stop_at: float, out_q) -> None:
    """`n` simulated jobbers that hold two jobs each and say `alive` without pause."""
    more_files()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, 4 * n + 64)
    socks = [curve_client(ctx, address) for _ in range(n)]
    poller = zmq.Poller()
    names = {s: f"chatty{os.getpid()}-{i}" for i, s in enumerate(socks)}
    holding: dict[zmq.Socket, tuple[str, ...]] = {}
    rid = 0
    for s in socks:
        poller.register(s, zmq.POLLIN)
        rid += 1
        s.send(p.encode(p.Bored(rid, names[s], p.HostFacts(1, 1024, 1, ()), 2)))
    alive = 0
    counting_from = time.monotonic() + 2.0  # every identity holds its jobs by then
    while time.monotonic() < stop_at:
        for s, _ in poller.poll(100):
            reply = p.decode(s.recv())
            if isinstance(reply, p.Jobs) and reply.jobs:
                holding[s] = tuple(j.tag for j in reply.jobs)
            elif isinstance(reply, p.AliveAck) and time.monotonic() >= counting_from:
                alive += 1
            rid += 1
            if s in holding:
                s.send(p.encode(p.Alive(rid, names[s], holding[s])))
            else:  # no jobs for it yet: ask again
                s.send(p.encode(p.Bored(rid, names[s], p.HostFacts(1, 1024, 1, ()), 2)))
    out_q.put((alive, stop_at - counting_from))
    for s in socks:
        s.close(0)
    ctx.term()


def run_alive(args) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, counts = ctx.Queue(), ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(
            target=dealer_many, args=(str(Path(tmp) / "j.sqlite"), args.seconds + 3, ready, out)
        )
        server.start()
        address, pid = take(ready, [server])
        stop_at = time.monotonic() + args.seconds + 2.0
        each = args.identities // args.procs
        clients = [
            ctx.Process(target=chatty_jobbers, args=(address, each, stop_at, counts))
            for _ in range(args.procs)
        ]
        for c in clients:
            c.start()
        time.sleep(2.0)
        cpu0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(max(0.5, stop_at - time.monotonic() - 0.2))
        cpu, wall = cpu_s(pid) - cpu0, time.monotonic() - t0
        per = [take(counts, [server, *clients]) for _ in clients]
        take(out, [server, *clients])
        for c in clients:
            c.join()
        server.join()
    rate = sum(n / s for n, s in per)
    cpu_per_msg = cpu / (rate * wall)
    return {
        "identities": args.identities,
        "alive_per_s": round(rate, 1),
        "dealer_cpu": round(cpu / wall, 3),
        "dealer_cpu_us_per_alive": round(cpu_per_msg * 1e6, 1),
        "core_share_10k_machines": round(10_000 / p.ALIVE_INTERVAL_S * cpu_per_msg, 3),
        "core_share_100k_machines": round(100_000 / p.ALIVE_INTERVAL_S * cpu_per_msg, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("identities")
    a.add_argument("--identities", type=int, default=2000)
    a.add_argument("--procs", type=int, default=4)
    a.add_argument("--seconds", type=float, default=180.0)
    b = sub.add_parser("million")
    b.add_argument("--jobs", type=int, default=1_000_000)
    c = sub.add_parser("alive")
    c.add_argument("--identities", type=int, default=200)
    c.add_argument("--procs", type=int, default=2)
    c.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    run = {"identities": run_identities, "million": run_million, "alive": run_alive}
    result = run[args.what](args)
    for k, v in result.items():
        print(f"{k}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
