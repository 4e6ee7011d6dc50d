"""Throughput: jobs settled per second, against raw ZeroMQ round trips.

    python bench/throughput.py [--jobs 20000] [--clients 4] [--batch 1 16 64]
                               [--e2e-jobs 3000] [--jobbers 2]

Baseline: a bare ROUTER in one Python process answering ~100-byte msgpack
requests from CLIENTS client processes, each with one request in flight: the
round-trip rate one Python event loop sustains here.

Measured: a real Dealer (scheduling core + SQLite journal with fsync, WAL)
serving a task of JOBS jobs to CLIENTS fake jobber processes that skip the
sandbox: each asks with `bored(want=BATCH)`, and answers every job at once
with one `results` message. A job costs the dealer one draw, one assignment,
one result, one acceptance and their journal records. The ratio printed is
jobs settled per second over baseline round trips per second: with BATCH=1 a
job needs two round trips (so 0.5 would be as fast as bare ZeroMQ allows);
batching is how a dealer goes past the message rate.

Whole system: the same dealer serves E2E_JOBS trivial jobs (a WASI module
whose _start returns at once) to JOBBERS real `python -m jobber` processes
with one slot each. Every job crosses the wire both ways, is spooled to disk
by the jobber, runs in a sandboxed worker process and is journaled by the
dealer.

Runs by hand, not in CI. Latest figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

# run from a checkout; this file's folder must not shadow the `dealer` package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import protocol as p  # noqa: E402
from tasks import Job, Limits, Payload, Task  # noqa: E402

NOP_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


class Trivial(Task):
    """N jobs whose outputs are thrown away."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=10, output_kb=1)

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.payload = Payload.from_wat(NOP_WAT)
        self.count = 0

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n))

    def total(self):
        return self.n

    def on_output(self, job, output):
        self.count += 1

    def result(self):
        return self.count


# --- baseline: bare ZeroMQ ----------------------------------------------------------


def echo_server(endpoint_q, seconds: float) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    endpoint_q.put(f"tcp://127.0.0.1:{port}")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    end = time.monotonic() + seconds + 5
    while time.monotonic() < end:
        if not poller.poll(100):
            continue
        for _ in range(512):
            try:
                ident, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            body = msgpack.unpackb(frame)  # decode and re-encode, as a real server must
            sock.send_multipart([ident, msgpack.packb({"re": body["id"], "ok": True})])
    sock.close(0)
    ctx.term()


def echo_client(endpoint: str, seconds: float, out_q) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    payload = {"id": 0, "jobber": "bench-client", "pad": "x" * 60}
    n = 0
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        payload["id"] = n
        t = time.perf_counter()
        sock.send(msgpack.packb(payload))
        msgpack.unpackb(sock.recv())
        lat.append(time.perf_counter() - t)
        n += 1
    out_q.put((n, statistics.median(lat)))
    sock.close(0)
    ctx.term()


def baseline(clients: int, seconds: float) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=echo_server, args=(q, seconds))
    server.start()
    endpoint = q.get()
    procs = [ctx.Process(target=echo_client, args=(endpoint, seconds, out)) for _ in range(clients)]
    for pr in procs:
        pr.start()
    results = [out.get() for _ in procs]
    for pr in procs:
        pr.join()
    server.terminate()
    server.join()
    total = sum(n for n, _ in results)
    return total / seconds, statistics.median(m for _, m in results)


# --- the dealer -----------------------------------------------------------------------


def dealer_server(n: int, db: str, endpoint_q, out_q) -> None:
    from dealer import Dealer, Journal

    task = Trivial(n)
    dealer = Dealer(task, "tcp://127.0.0.1:*", Journal(db, "bench"))
    endpoint_q.put(dealer.address)
    t0 = time.perf_counter()
    dealer.run()
    elapsed = time.perf_counter() - t0
    assert task.count == n, (task.count, n)
    out_q.put(elapsed)
    dealer.close()


def fake_jobber(address: str, name: str, batch: int, source: str, out_q) -> None:
    """A jobber that answers every job at once, with its own key, from its own address."""
    from protocol._keys import z85_of_hex

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint, key = p.split_key(address)
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = z85_of_hex(key)
    sock.connect(f"tcp://{source}:0;{endpoint[len('tcp://') :]}")
    rid = 0
    done = 0
    cached: tuple[str, ...] = ()
    while True:
        rid += 1
        sock.send(p.encode(p.Bored(rid, name, p.HostFacts(1, 1024, batch, cached), batch)))
        if not sock.poll(2000):
            break  # the dealer finished and left
        reply = p.decode(sock.recv())
        if isinstance(reply, p.RetryLater):
            time.sleep(0.01)
            continue
        if not isinstance(reply, p.Jobs):
            break
        if reply.payloads:
            cached = tuple(reply.payloads)
        rid += 1
        results = tuple(p.Result(j.tag, p.Status.OK, b"", 1) for j in reply.jobs)
        sock.send(p.encode(p.Results(rid, name, results)))
        if not sock.poll(2000):
            break
        p.decode(sock.recv())
        done += len(results)
    out_q.put(done)
    sock.close(0)
    ctx.term()


def dealer_rate(jobs: int, clients: int, batch: int) -> float:
    ctx = mp.get_context("spawn")
    q, out, done_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(target=dealer_server, args=(jobs, str(Path(tmp) / "j.sqlite"), q, out))
        server.start()
        endpoint = q.get()
        procs = [
            ctx.Process(
                target=fake_jobber, args=(endpoint, f"fake{i}", batch, f"127.0.0.{2 + i}", done_q)
            )
            for i in range(clients)
        ]
        for pr in procs:
            pr.start()
        elapsed = out.get()
        server.join()
        for pr in procs:
            pr.join()
    return jobs / elapsed


def e2e_rate(jobs: int, jobbers: int) -> float:
    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(target=dealer_server, args=(jobs, str(Path(tmp) / "j.sqlite"), q, out))
        server.start()
        endpoint = q.get()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jobber",
                    endpoint,
                    "--slots",
                    "1",
                    "--quiet",
                    "--data-dir",
                    str(Path(tmp) / f"jobber{i}"),
                    "--max-idle",
                    "2",
                    "--min-backoff",
                    "0.2",
                    "--max-backoff",
                    "1",
                    "--source",
                    f"127.0.0.{2 + i}",
                ]
            )
            for i in range(jobbers)
        ]
        elapsed = out.get()
        server.join()
        for pr in procs:
            pr.wait(60)
    return jobs / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="baseline duration")
    ap.add_argument("--e2e-jobs", type=int, default=3000)
    ap.add_argument("--jobbers", type=int, default=2)
    args = ap.parse_args()
    rt, med = baseline(args.clients, args.seconds)
    print(
        f"baseline: bare ZeroMQ ROUTER, {args.clients} clients: {rt:,.0f} round trips/s "
        f"(median {med * 1e6:.0f} us)"
    )
    for batch in args.batch:
        rate = dealer_rate(args.jobs, args.clients, batch)
        print(
            f"dealer, {args.jobs} jobs, {args.clients} clients, batch {batch:3}: "
            f"{rate:,.0f} jobs/s settled = {rate / rt:.2f} x baseline round trips/s"
        )
    if args.e2e_jobs:
        rt1, _ = baseline(args.jobbers, args.seconds)
        rate = e2e_rate(args.e2e_jobs, args.jobbers)
        print(f"baseline: bare ZeroMQ ROUTER, {args.jobbers} clients: {rt1:,.0f} round trips/s")
        print(
            f"whole system, {args.e2e_jobs} trivial wasm jobs, {args.jobbers} real jobbers: "
            f"{rate:,.0f} jobs/s settled = {rate / rt1:.2f} x baseline round trips/s"
        )


if __name__ == "__main__":
    main()
