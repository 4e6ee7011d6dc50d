"""net._router.RouterServer's connection caps against real ZeroMQ sockets on loopback."""

from __future__ import annotations

import zmq

import protocol as p
from net._router import RouterServer
from tests.helpers import wait_for


class Late(RouterServer):
    """A server whose monitors seem late at the start of every turn: the connections'
    ACCEPTED events arrive after the turn's first look, as they may on a busy machine."""

    late = False

    def _watch_connections(self, now: float) -> None:
        if self.late:
            self.late = False
            return
        super()._watch_connections(now)


def test_a_connection_past_the_cap_is_never_answered_even_when_its_accept_is_read_late():
    server = Late("tcp://127.0.0.1:*", per_source=2)
    ctx = zmq.Context()
    clients = []
    try:
        for _ in range(4):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RECONNECT_IVL, 60_000)  # a shut client stays shut
            s.connect(server.public_endpoint)
            s.send(p.encode(p.Hello(1)))
            clients.append(s)
        answered: set[int] = set()

        def turned() -> bool:
            server.late = True
            server.turn()
            for i, s in enumerate(clients):
                while s.poll(0):
                    assert isinstance(p.decode(s.recv()), p.HelloReply)
                    answered.add(i)
            return server.connections.refused >= 2 and len(answered) >= 2

        wait_for(turned, 30, "two connections kept and answered, two refused")
        for _ in range(20):  # what the refused ones sent is never answered
            turned()
        assert len(answered) == 2, answered
        assert server.connections.live() == 2
    finally:
        for s in clients:
            s.close()
        ctx.term()
        server.close()


def test_a_new_connection_on_a_refused_connections_descriptor_is_answered():
    # a connection refused on descriptor X, closed since, and a new one given X: until
    # the monitors are read X still looks refused. Every descriptor looks so here; the
    # new client's ACCEPTED, read when its request comes, must clear its own.
    server = Late("tcp://127.0.0.1:*", per_source=2)
    server._refused_fds.update(range(4096))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(server.public_endpoint)
        s.send(p.encode(p.Hello(1)))

        def answered() -> bool:
            server.late = True
            server.turn()
            return bool(s.poll(0))

        wait_for(answered, 30, "the new connection answered")
        assert isinstance(p.decode(s.recv()), p.HelloReply)
        assert server.connections.refused == 0
    finally:
        s.close()
        ctx.term()
        server.close()
