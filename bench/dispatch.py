"""Dispatch: how fast one dealer hands out and settles jobs, against a bare ZeroMQ ROUTER
carrying the same messages.

    python bench/dispatch.py [--seconds 10] [--procs 2] [--identities 8]
                             [--batch N ...] [--redundancy 1 2] [--repeat 1]
                             [--profile FILE]

One real Dealer process (core, SQLite journal with WAL and synchronous=FULL, so
every turn is fsynced before any reply; CurveZMQ) serves a task of trivial jobs
to PROCS client processes, each playing IDENTITIES jobbers (a CurveZMQ key and
socket each) that speak the protocol and answer at once: `bored(want=BATCH)`,
then one `results` with every job's output, then ask again; `alive` every 5 s.
Replicas of a job go to distinct identities (`--distinct key`), so redundancy 2
works from one address.

Baseline, in the same run, like for like: a bare CurveZMQ ROUTER in one Python
process, answering the same clients with the same messages: each `bored` with a
`jobs` message of BATCH jobs as the dealer writes them (the same task's JobSpecs,
limits, `about` and `account`), each `results` with an `ack` of its tags. It
decodes each request and encodes each reply with msgpack, as any server must,
and does nothing else per job. The clients are the same code in both runs: they
read a reply with msgpack and write a `results` of the tags it carried (the
same bytes a jobber sends), so what they cost is the same on both sides.

Figures, for each batch and server:
- jobs/s: the dealer's jobs settled (accepted) per second; the bare ROUTER's jobs
  moved per second: the results its `results` requests carried, each of which
  went out in a `jobs` reply first. A job costs two round trips either way.
- ratio: dealer jobs/s over bare jobs/s at the same batch (like for like).
- CPU per job: the server process's CPU time (every thread: libzmq's I/O and
  CurveZMQ, the ZAP handler, the journal) over the measured seconds, divided by
  its jobs; and how much of a core it used.

`--repeat N` runs each point N times, the bare ROUTER and the dealer alternating,
and prints the medians. The very last line is one JSON object with `jobs_per_s`,
`bare_jobs_per_s`, `ratio`, `dealer_us_per_job` and `bare_us_per_job` at the
batch the reference jobber asks for on this machine on jobs this short (one slot
per CPU; it buffers MAX_BUFFER_PER_SLOT jobs per slot of jobs under a millisecond
and asks for half its buffer at a time: 256 on 2 CPUs), redundancy 1, and every
measured point under `runs`.

Runs by hand, not in CI. Latest figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

# run from a checkout; this file's folder must not shadow the `sandbox` package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import protocol as p  # noqa: E402
from bench._common import Trivial, curve_client, curve_router, take  # noqa: E402
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
    a0, t0, c0 = dealer.core.accepted, time.perf_counter(), time.process_time()
    if profile:  # the measured seconds under cProfile: where the dealer's time goes
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(dealer.run, max_s=seconds, linger=False)
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(30)
    else:
        dealer.run(max_s=seconds, linger=False)
    a1, t1, c1 = dealer.core.accepted, time.perf_counter(), time.process_time()
    out_q.put(
        {
            "jobs": a1 - a0,
            "seconds": t1 - t0,
            "cpu_s": c1 - c0,
            "journal_bytes": os.path.getsize(db),
        }
    )
    dealer.stop()
    dealer.close()


def bare_replies(batch: int) -> tuple[dict, dict]:
    """What the dealer answers a `bored` and a `results` with, as msgpack maps: `jobs`
    of `batch` JobSpecs of the benchmark's task (its limits as a dealer sends them,
    `about`, an `account`), and an `ack` of as many tags."""
    task = Trivial()
    limits = p.Limits(**{**task.limits._to_wire(), "native_nans": True})
    specs = tuple(
        p.JobSpec(
            f"abcdef01.{i + 0x10000:x}", task.payload.sha256, (str(i + 100000),), b"", limits, 180.0
        )
        for i in range(batch)
    )
    about, account = p.About("Trivial"), p.Account(12345, 0, 0, 12345)
    jobs = p.Jobs(0, specs, {}, None, about, account)
    ack = p.Ack(0, tuple(s.tag for s in specs), (), None, about, account)
    return tuple(msgpack.unpackb(p.encode(m)) for m in (jobs, ack))


def bare_server(window: tuple[float, float], batch: int, ready_q, out_q) -> None:
    """A bare CurveZMQ ROUTER in one Python process answering `bored` with the bytes of a
    dealer's `jobs` of `batch` jobs and `results` with an `ack` of their tags (each
    request decoded and each reply encoded with msgpack). Puts its address on
    `ready_q`, then what it did within `window` (monotonic start and end, from now)."""
    ctx = zmq.Context()
    sock, address = curve_router(ctx)
    jobs, ack = bare_replies(batch)
    other = {"v": p.VERSION, "type": "alive_ack", "lease_s": 20.0, "cancel": []}
    ready_q.put(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    now = time.monotonic()
    start, end = now + window[0], now + window[1]

    def serve(until: float) -> int:
        moved = 0
        while time.monotonic() < until:
            if not poller.poll(100):
                continue
            for _ in range(512):
                try:
                    ident, frame = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                body = msgpack.unpackb(frame)
                kind = body["type"]
                reply = jobs if kind == "bored" else ack if kind == "results" else other
                if kind == "results":
                    moved += len(body["results"])
                reply["re"] = body["id"]
                sock.send_multipart([ident, msgpack.packb(reply)])
        return moved

    serve(start)
    t0, c0 = time.monotonic(), time.process_time()
    moved = serve(end)
    t1, c1 = time.monotonic(), time.process_time()
    out_q.put({"jobs": moved, "seconds": t1 - t0, "cpu_s": c1 - c0})
    serve(end + 1.0)  # the clients stop after the window
    sock.close(0)
    ctx.term()


# --- the clients ------------------------------------------------------------------------


def jobbers(address: str, identities: int, batch: int, stop_at: float) -> None:
    """IDENTITIES simulated jobbers in one process, one request out each: the same code
    against the dealer and the bare ROUTER. A reply is read with msgpack alone; the
    dealer checks what they send as it checks any jobber's."""
    ctx = zmq.Context()
    socks = [curve_client(ctx, address) for _ in range(identities)]
    poller = zmq.Poller()
    state = {}
    cached: list[str] = []
    rid = 0
    host = {"cpus": 1, "memory_mb": 1024, "slots": batch, "cached": cached}
    result = {"tag": "", "status": "ok", "output": OUTPUT, "fuel": 1, "detail": ""}

    def bored(rid: int, name: str) -> bytes:
        msg = {"v": p.VERSION, "type": "bored", "id": rid, "jobber": name, "host": host}
        return msgpack.packb({**msg, "want": batch})

    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        name = f"sim{os.getpid()}-{i}"
        rid += 1
        s.send(bored(rid, name))
        state[s] = {"name": name, "alive_at": time.monotonic(), "later": 0.0}
    while time.monotonic() < stop_at:
        now = time.monotonic()
        for s, st in state.items():  # told to come back later: ask again now
            if st["later"] and now >= st["later"]:
                st["later"] = 0.0
                rid += 1
                s.send(bored(rid, st["name"]))
        for s, _ in poller.poll(10):
            reply = msgpack.unpackb(s.recv())
            st = state[s]
            rid += 1
            kind = reply["type"]
            if kind == "jobs" and reply["jobs"]:
                if reply.get("payloads"):
                    cached[:] = list(reply["payloads"])
                results = [{**result, "tag": j["tag"]} for j in reply["jobs"]]
                msg = {"v": p.VERSION, "type": "results", "id": rid, "jobber": st["name"]}
                s.send(msgpack.packb({**msg, "results": results}))
                continue
            if kind == "alive_ack":
                pass
            elif now - st["alive_at"] >= p.ALIVE_INTERVAL_S:  # liveness, as a real jobber
                st["alive_at"] = now
                alive = {"v": p.VERSION, "type": "alive", "id": rid, "jobber": st["name"]}
                s.send(msgpack.packb(alive))
                continue
            if kind in ("retry_later", "jobs"):  # nothing for it now
                st["later"] = now + 0.001
                continue
            s.send(bored(rid, st["name"]))
    for s in socks:
        s.close(0)
    ctx.term()


# --- runs -----------------------------------------------------------------------------------


def _clients(ctx, args, address: str, batch: int, stop_at: float) -> list:
    clients = [
        ctx.Process(target=jobbers, args=(address, args.identities, batch, stop_at))
        for _ in range(args.procs)
    ]
    for c in clients:
        c.start()
    return clients


def _figures(got: dict) -> dict:
    jobs = max(1, got["jobs"])
    return {
        "jobs_per_s": got["jobs"] / got["seconds"],
        "us_per_job": 1e6 * got["cpu_s"] / jobs,
        "cores": got["cpu_s"] / got["seconds"],
    }


def run_bare(args, batch: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    window = (WARMUP_S, WARMUP_S + args.seconds)
    server = ctx.Process(target=bare_server, args=(window, batch, ready, out))
    server.start()
    address = take(ready, [server])
    clients = _clients(ctx, args, address, batch, time.monotonic() + WARMUP_S + args.seconds + 0.5)
    got = take(out, [server, *clients])
    for c in clients:
        c.join()
    server.join()
    return _figures(got)


def run_dealer(args, batch: int, redundancy: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "j.sqlite")
        server = ctx.Process(
            target=dealer_server, args=(db, redundancy, args.seconds, ready, out, args.profile)
        )
        server.start()
        address = take(ready, [server])
        stop_at = time.monotonic() + WARMUP_S + args.seconds + 1.0
        clients = _clients(ctx, args, address, batch, stop_at)
        got = take(out, [server, *clients])
        for c in clients:
            c.join()
        server.join()
    return {**_figures(got), "journal_bytes": got["journal_bytes"]}


def reference_batch(slots: int) -> int:
    """What the reference jobber (jobber/_core.py) asks for at once on jobs of well under
    a millisecond: its high-water mark is the slots plus MAX_BUFFER_PER_SLOT buffered per
    slot, and it asks once it is down to its low-water mark, for the difference."""
    hi_water = min(p.MAX_BATCH, slots * (1 + MAX_BUFFER_PER_SLOT))
    return max(1, (hi_water - slots) // 2)


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    reference = reference_batch(os.cpu_count() or 1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--identities", type=int, default=8, help="jobbers per client process")
    ap.add_argument("--batch", type=int, nargs="+", default=sorted({1, 4, 64, reference}))
    ap.add_argument("--redundancy", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="runs per point (medians shown)")
    ap.add_argument("--profile", metavar="FILE", help="profile the dealer (cProfile) into FILE")
    args = ap.parse_args()
    clients = args.procs * args.identities
    print(f"{args.procs} client processes x {args.identities} identities = {clients} jobbers")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = []
    for batch in args.batch:
        bares: list[dict] = []
        dealers: dict[int, list[dict]] = {r: [] for r in args.redundancy}
        for _ in range(args.repeat):  # the bare ROUTER and the dealer alternating
            bares.append(run_bare(args, batch))
            for r in args.redundancy:
                dealers[r].append(run_dealer(args, batch, r))
        bare = _median(bares)
        print(
            f"batch {batch:3}: bare ROUTER  {bare['jobs_per_s']:10,.0f} jobs moved/s, "
            f"{bare['us_per_job']:7.2f} us CPU/job ({bare['cores']:.2f} of a core)",
            flush=True,
        )
        for r in args.redundancy:
            d = _median(dealers[r])
            ratio = d["jobs_per_s"] / bare["jobs_per_s"]
            runs.append(
                {
                    "batch": batch,
                    "redundancy": r,
                    "jobs_per_s": d["jobs_per_s"],
                    "bare_jobs_per_s": bare["jobs_per_s"],
                    "ratio": ratio,
                    "dealer_us_per_job": d["us_per_job"],
                    "bare_us_per_job": bare["us_per_job"],
                    "dealer_cores": d["cores"],
                    "bare_cores": bare["cores"],
                    "journal_bytes": d["journal_bytes"],
                    "repeat": args.repeat,
                }
            )
            print(
                f"batch {batch:3}: redundancy {r} {d['jobs_per_s']:10,.0f} jobs settled/s "
                f"= {ratio:.3f} x bare, {d['us_per_job']:7.2f} us CPU/job "
                f"({d['cores']:.2f} of a core)",
                flush=True,
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = next((x for x in runs if x["batch"] == reference and x["redundancy"] == 1), runs[0])
    print(
        json.dumps(
            {
                "jobs_per_s": round(head["jobs_per_s"], 1),
                "bare_jobs_per_s": round(head["bare_jobs_per_s"], 1),
                "ratio": round(head["ratio"], 4),
                "dealer_us_per_job": round(head["dealer_us_per_job"], 2),
                "bare_us_per_job": round(head["bare_us_per_job"], 2),
                "batch": head["batch"],
                "clients": clients,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
