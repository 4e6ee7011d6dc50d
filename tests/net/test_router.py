"""net._router.RouterServer's connection caps against real ZeroMQ sockets on loopback."""

from __future__ import annotations

import os

import zmq
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from net._gate import Conn, source_of
from net._router import DEALER_SNDHWM, SNDHWM, RouterServer, _peer_of, hwm_for
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
    server._refused.update(Conn(which, fd) for which in (0, 1) for fd in range(4096))
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


class Answering(RouterServer):
    """A server whose work port answers everything it is let read."""

    def handle(self, msg: p.Message, now: float, peer: p.Peer) -> p.Message | None:
        return self.unexpected(msg, "this test server")


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_work_connection_on_a_closed_plaintext_connections_descriptor_counts_toward_its_cap():
    # the flood test's "33 answered where the cap is 32": the test's status connection (the
    # plaintext port) closed, the kernel gave its descriptor to a flood connection (the
    # work port), and the loop read the work monitor's ACCEPTED before the plaintext
    # monitor's DISCONNECTED, which then struck the flood connection off its source's count
    server = Answering("tcp://127.0.0.1:*", per_source=1)
    work = server.endpoint.rpartition(":")[2]
    ctx = zmq.Context()
    flood = []
    for _ in range(2):  # made now: a socket's own descriptors are taken when it is made
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.curve_serverkey = server.keys.public
        flood.append(s)
    held: list[int] = []
    try:
        asker = ctx.socket(zmq.DEALER)
        asker.setsockopt(zmq.LINGER, 0)
        asker.connect(server.public_endpoint)
        asker.send(p.encode(p.Hello(1)))
        wait_for(lambda: (server.turn(), asker.poll(0))[1], 30, "the plaintext port's answer")
        ((_, fd),) = server.connections.conns()
        asker.close()
        wait_for(lambda: not _open(fd), 30, "the plaintext connection closed")
        # no turn from here to the flood's connection: both events wait unread. Every free
        # descriptor below `fd` held but one, which the flood client's own socket takes, so
        # that the kernel gives `fd` to the dealer's side of its connection
        while (h := os.open(os.devnull, os.O_RDONLY)) != fd:
            assert h < fd, "the closed descriptor was taken"
            held.append(h)
        os.close(fd)
        assert held, "no descriptor free below the closed one"
        os.close(held.pop(0))
        flood[0].connect(f"tcp://127.0.6.1:0;127.0.0.1:{work}")
        wait_for(lambda: _open(fd), 30, "the flood connection accepted")
        for h in held:
            os.close(h)
        held = []
        assert source_of(_peer_of(fd) or "") == "127.0.6.1"  # the descriptor reused

        server.turn()  # the work monitor first, then the plaintext one's late DISCONNECTED
        assert server.connections.live("127.0.6.1") == 1
        flood[1].connect(f"tcp://127.0.6.1:0;127.0.0.1:{work}")
        for s in flood:
            s.send(p.encode(p.StatusQuery(1)))
        answered: set[int] = set()

        def turned() -> bool:
            server.turn()
            for i, s in enumerate(flood):
                while s.poll(0):
                    s.recv()
                    answered.add(i)
            return server.connections.refused >= 2 and 0 in answered

        wait_for(turned, 30, "the first kept and answered, the second refused (twice)")
        assert answered == {0}
        assert server.connections.live() == 1
    finally:
        for h in held:
            os.close(h)
        ctx.destroy(linger=0)
        server.close()


def _drops(hwm: int, replies: int, steps: list[int]) -> int:
    """Replies dropped by a model of one libzmq pipe of mark `hwm`: the server writes
    while the client has fewer than `replies` out; the I/O thread takes them one by one
    and reports every (hwm + 1) // 2 taken (pipe_t::check_hwm and the activate_write
    command). `steps`: the replies each turn of the client reads, then asks again."""
    lwm = (hwm + 1) // 2
    written = taken = reported = 0
    queue = 0  # written, not yet taken by the I/O thread
    out = 0  # the client's requests not yet answered or dropped
    dropped = 0
    for read in steps:
        while out < replies:  # the client asks, the server answers at once
            out += 1
            if written - reported >= hwm:
                dropped += 1  # never answered: out until the client's timeout
            else:
                written += 1
                queue += 1
        for _ in range(min(read, queue)):
            queue -= 1
            taken += 1
            out -= 1
            if taken % lwm == 0:
                reported = taken
    return dropped


@given(st.integers(1, 16), st.lists(st.integers(0, 20), max_size=60))
def test_a_mark_from_hwm_for_drops_no_reply_however_the_client_reads(replies, steps) -> None:
    assert _drops(hwm_for(replies), replies, steps) == 0


def test_the_marks_are_those_of_the_requests_out_and_one_less_drops() -> None:
    assert (SNDHWM, DEALER_SNDHWM) == (hwm_for(3), hwm_for(3 + p.MAX_FETCHES)) == (4, 20)
    # one less than the mark for 11 replies out: a client that read 9 of its 11 (taken,
    # not yet reported: the I/O thread reports every 10) asks 9 more, and one is lost.
    # So was one at 12, the mark before (a jobber's 8 chunks and 3 requests out)
    assert _drops(19, 11, [9, 0]) == 1
    assert _drops(20, 11, [9, 0]) == 0
    assert _drops(12, 11, [5, 5, 5, 5]) > 0
