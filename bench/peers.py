"""What peers that know cost: a work_query round trip to a real dealer, the bytes each
way, the dealer's time to answer one, a referral decided among many peers, and a turn of
the peer links when nothing is due. JSON last line.

    nice -n 15 .venv/bin/python bench/peers.py [--queries N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

# run from a checkout; this file's folder must not shadow the `dealer` package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import protocol as p  # noqa: E402
from bench._common import Trivial  # noqa: E402
from dealer._journal import Journal  # noqa: E402
from dealer._peerlink import PeerLinks, public_endpoint  # noqa: E402
from dealer._peers import Peers  # noqa: E402
from dealer._server import Dealer  # noqa: E402


def _us(seconds: float, n: int) -> float:
    return round(1e6 * seconds / n, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5000)
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "j.sqlite", "Trivial")
        dealer = Dealer(Trivial(100_000), "tcp://127.0.0.1:*", journal)
        server = threading.Thread(target=dealer.run, kwargs={"linger": False}, daemon=True)
        server.start()
        try:
            # the dealer answering: Service.work_offer alone, in this thread (counters only)
            t0 = time.perf_counter()
            for i in range(args.queries):
                dealer.service.work_offer(i)
            out["answer_us"] = _us(time.perf_counter() - t0, args.queries)
            # round trips on the plaintext port, one at a time
            ctx = zmq.Context.instance()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(public_endpoint(dealer.address))
            query = p.encode(p.WorkQuery(1))
            sock.send(query)
            sock.poll(5000)
            reply = sock.recv()
            out["query_bytes"], out["offer_bytes"] = len(query), len(reply)
            t0 = time.perf_counter()
            for _ in range(args.queries):
                sock.send(query)
                sock.recv()
            took = time.perf_counter() - t0
            out["round_trip_us"] = _us(took, args.queries)
            out["round_trips_per_s"] = round(args.queries / took)
            sock.close()
        finally:
            dealer.stop()
            server.join(10)
            dealer.close()
    # deciding a referral among n peers with fresh offers (what one bored costs)
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
    limits = p.Limits(memory_mb=64)
    for n in (1, 8, 64):
        peers = Peers([f"tcp://10.0.{i // 250}.{i % 250}:7117" for i in range(n)])
        for address, q in peers.due(0.0):
            peers.heard(address, p.WorkOffer(q.id, 1 + hash(address) % 100, limits), 0.0)
        t0 = time.perf_counter()
        for _ in range(args.queries):
            peers.referral(host, 1.0)
        out[f"referral_{n}_peers_us"] = _us(time.perf_counter() - t0, args.queries)
    # a turn of the peer links when nothing is due (every dealer turn pays it)
    ctx = zmq.Context()
    peers = Peers([f"tcp://127.0.0.1:{9 + 2 * i}" for i in range(8)])  # nothing listens
    links = PeerLinks(ctx, peers)
    links.turn(time.time())  # the first queries go out; none is answered
    t0 = time.perf_counter()
    for _ in range(args.queries):
        links.turn(time.time(), ())  # as the dealer's loop calls it: nothing was readable
    out["idle_turn_8_peers_us"] = _us(time.perf_counter() - t0, args.queries)
    t0 = time.perf_counter()
    for _ in range(args.queries):
        links.turn(time.time())  # every socket looked at (a turn outside the loop)
    out["drain_8_peers_us"] = _us(time.perf_counter() - t0, args.queries)
    links.close()
    ctx.term()
    for k, v in out.items():
        print(f"{k:24} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
