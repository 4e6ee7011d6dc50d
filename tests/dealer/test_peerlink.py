"""The peer links' sockets (dealer._peerlink) against a peer played by hand on a real
ROUTER, and what `python -m dealer status` prints of the peers."""

from __future__ import annotations

import time

import pytest
import zmq

import protocol as p
from dealer._peerlink import PeerLinks
from dealer._peers import Peers
from dealer._print import print_peers
from protocol import public_endpoint
from tests.helpers import free_port, wait_for

SMALL = p.Limits(fuel=10**6, memory_mb=64, time_s=5.0, output_kb=1)
HOST = p.HostFacts(cpus=1, memory_mb=256, slots=1)


def test_public_endpoint_is_the_next_port_or_the_public_name():
    assert public_endpoint("tcp://10.0.0.1:7117#" + "ab" * 32) == "tcp://10.0.0.1:7118"
    assert public_endpoint("ipc:///run/d") == "ipc:///run/d.public"


def _peer_by_hand(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    port = free_port()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port + 1}")  # the plaintext port of a dealer on `port`
    return router, f"tcp://127.0.0.1:{port}"


def _serve_one(router: zmq.Socket, reply) -> p.Message:
    """Take one query and answer it with reply(query) (bytes or a message; None: silence)."""
    assert router.poll(5000), "no query came"
    ident, frame = router.recv_multipart()
    query = p.decode(frame)
    out = reply(query)
    if out is not None:
        router.send_multipart([ident, out if isinstance(out, bytes) else p.encode(out)])
    return query


def _turn_until(links: PeerLinks, pred, what: str) -> None:
    def turned():
        links.turn(time.time())
        return pred()

    wait_for(turned, 5, what, every_s=0.01)


def test_offers_garbage_and_silence_on_real_sockets():
    ctx = zmq.Context()
    router, address = _peer_by_hand(ctx)
    peers = Peers([address], ask_every_s=0.05, timeout_s=0.3, min_backoff_s=0.05)
    links = PeerLinks(ctx, peers)
    link = peers.links[address]
    try:
        links.turn(time.time())  # the first query goes out at once
        q = _serve_one(router, lambda q: p.WorkOffer(q.id, 7, SMALL, 20))
        assert isinstance(q, p.WorkQuery)
        _turn_until(links, lambda: link.offer is not None, "the offer heard")
        assert peers.referral(HOST, time.time()) == (address,)

        _turn_until(links, lambda: link.query_id is not None, "the next query")
        _serve_one(router, lambda q: b"\x93not a message")
        _turn_until(links, lambda: link.error is not None, "the garbage refused")
        assert "malformed" in link.error and link.backoff.failures == 1
        assert links.sockets() == []  # reset: a fresh socket for the next query

        _turn_until(links, lambda: link.query_id is not None, "a query after the backoff")
        silent = _serve_one(router, lambda q: None)
        _turn_until(links, lambda: link.backoff.failures == 2, "the silence timed out")
        assert "no answer" in link.error

        _turn_until(links, lambda: link.query_id not in (None, silent.id), "a fresh query")
        _serve_one(router, lambda q: p.WorkOffer(silent.id, 99, SMALL))  # the old query's
        _turn_until(links, lambda: link.backoff.failures == 3, "the stale reply ignored")
        assert link.offer.jobs == 7  # the late answer to an old query changed nothing
    finally:
        links.close()
        router.close()
        ctx.term()


def test_status_prints_each_peer_what_it_said_and_its_failures(capsys):
    peers = Peers(["tcp://a:1", "tcp://b:1", "tcp://c:1"])
    for address, q in peers.due(100.0):
        if address == "tcp://a:1":
            peers.heard(address, p.WorkOffer(q.id, 51, SMALL, 60), 100.0)
        if address == "tcp://b:1":
            peers.heard(address, p.WorkOffer(q.id, 0, SMALL, 0, True), 100.0)
    peers.expire(104.0)
    print_peers(peers.status(104.0), now=104.0)
    a, b, c = capsys.readouterr().out.splitlines()
    assert a == "peer tcp://a:1: 51 jobs (60 left), 64 MiB per job, said 4 s ago"
    assert b == "peer tcp://b:1: finished, said 4 s ago"
    assert c.startswith("peer tcp://c:1: never answered; 1 failed contacts (no answer within 3 s)")


def test_peers_are_taken_in_any_form_and_named_in_the_canonical_one():
    from dealer._server import Referrer

    r = Referrer("tcp://127.0.0.1:*", ["127.0.0.1:7000", "example.org#" + "AB" * 32])
    try:
        assert r.peers.addresses == ["tcp://127.0.0.1:7000", "tcp://example.org:7117#" + "ab" * 32]
    finally:
        r.close()
    for bad, why in ((["udp://x"], "only tcp"), (["h:1", "tcp://h:1"], "given twice")):
        with pytest.raises(ValueError, match=why):
            Referrer("tcp://127.0.0.1:*", bad)


def test_the_referrer_refers_by_what_its_peers_said():
    from dealer._peers import ASK_EVERY_S, RETRY_NONE_S
    from dealer._server import Referrer
    from dealer._service import Peer

    a, b = "tcp://127.0.0.1:7000", "tcp://127.0.0.1:7002"
    r = Referrer("tcp://127.0.0.1:*", [a, b])
    try:
        who = Peer("aa" * 32, "127.0.0.2")
        bored = p.Bored(1, "j", HOST, 4)
        none = r.handle(bored, 0.0, who)  # nothing heard yet
        assert isinstance(none, p.RetryLater) and none.seconds == RETRY_NONE_S and not none.more
        q = dict(r.peers.due(0.0))
        r.peers.heard(a, p.WorkOffer(q[a].id, 0, SMALL), 0.0)  # all its work out
        r.peers.heard(b, p.WorkOffer(q[b].id, 0, p.Limits(memory_mb=4096)), 0.0)
        soon = r.handle(bored, 0.1, who)
        assert isinstance(soon, p.RetryLater) and soon.seconds == ASK_EVERY_S and soon.more
        q = dict(r.peers.due(ASK_EVERY_S))
        r.peers.heard(a, p.WorkOffer(q[a].id, 3, SMALL), ASK_EVERY_S)
        r.peers.heard(b, p.WorkOffer(q[b].id, 30, p.Limits(memory_mb=4096)), ASK_EVERY_S)
        assert r.handle(bored, ASK_EVERY_S, who) == p.Referral(1, (a,))  # b's jobs too big
        assert r.handle_public(p.WorkQuery(7), 0.0) == p.WorkOffer(7, 0)  # none of its own
        info = r.handle_public(p.StatusQuery(8), ASK_EVERY_S).info
        assert info["task"] is None and [row["jobs"] for row in info["peers"]] == [3, 30]
    finally:
        r.close()
