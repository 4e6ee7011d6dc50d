"""net._gate driven directly: sources, rations and connection caps, with `now` given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from net._gate import Conn, Connections, Ration, source_of

WORK, PUBLIC = 0, 1  # a server's two listening sockets, as net._router numbers them


def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64():
    assert source_of("127.0.0.2") == "127.0.0.2"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9")
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("[::1]") == "::/64"
    assert source_of("::ffff:10.0.0.1") == "10.0.0.1"  # an IPv4 peer on a dual-stack socket
    assert source_of("") == ""  # ipc and inproc: no address, one source


def test_a_ration_gives_its_burst_then_its_rate_per_source():
    r = Ration(per_s=2, burst=3, all_per_s=100, all_burst=100)
    assert [r.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert r.take("a", 0.0) == pytest.approx(0.5)  # one token every half second
    assert r.take("b", 0.0) == 0.0  # another source has its own bucket
    assert r.take("a", 0.5) == 0.0
    assert r.take("a", 0.5) > 0
    assert r.refused == 2


def test_a_ration_in_all_holds_however_many_sources_ask():
    r = Ration(per_s=10, burst=10, all_per_s=1, all_burst=5)
    granted = sum(r.take(f"10.0.0.{i}", 0.0) == 0.0 for i in range(50))
    assert granted == 5
    assert r.take("10.0.1.1", 0.0) == pytest.approx(1.0)
    assert r.take("10.0.1.1", 1.0) == 0.0


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 0.5)), max_size=200))
def test_a_ration_never_grants_more_than_its_burst_and_rate(asks):
    r = Ration(per_s=4, burst=8, all_per_s=20, all_burst=30, max_buckets=8)
    now, granted = 0.0, 0
    for who, dt in asks:
        now += dt
        granted += r.take(str(who), now) == 0.0
    # a forgotten bucket starts full again: past max_buckets, the ration in all binds
    assert granted <= 30 + 20 * now + 1e-9
    assert len(r) <= 8  # buckets are bounded too


def test_connections_are_capped_per_source_and_in_all_and_freed_when_closed():
    c = Connections(per_source=2, total=3, handshakes=Ration(100, 100, 100, 100))
    assert c.accepted(Conn(WORK, 10), "a", 0.0) is None
    assert c.accepted(Conn(PUBLIC, 11), "a", 0.0) is None
    assert "2 connections open from a" in c.accepted(Conn(WORK, 12), "a", 0.0)
    assert c.accepted(Conn(WORK, 13), "b", 0.0) is None
    assert "3 connections open in all" in c.accepted(Conn(WORK, 14), "c", 0.0)
    c.disconnected(Conn(WORK, 12))  # the refused one closing changes nothing
    assert c.live("a") == 2 and c.live() == 3
    c.disconnected(Conn(WORK, 10))
    assert c.live("a") == 1
    assert c.accepted(Conn(WORK, 14), "c", 0.0) is None
    assert c.refused == 2
    assert c.status()["open"] == 3


def test_a_reused_descriptor_closes_the_connection_it_named():
    c = Connections(per_source=1, total=10, handshakes=Ration(100, 100, 100, 100))
    assert c.accepted(Conn(WORK, 7), "a", 0.0) is None
    # 7 was closed and reused on the same socket before we heard (an event lost)
    assert c.accepted(Conn(WORK, 7), "b", 0.0) is None
    assert c.live("a") == 0 and c.live("b") == 1
    c.forget(Conn(WORK, 7))  # a sweep found it closed
    assert c.live() == 0


def test_a_descriptor_reused_by_the_other_socket_counts_each_connection_once_in_either_order():
    # a plaintext connection from b on descriptor 7 closes, and the kernel gives 7 to a
    # work connection from a. The loop reads the work monitor, then the plaintext one, so
    # the older DISCONNECTED may be read after the newer ACCEPTED: counted by descriptor,
    # it struck a's connection off, and a second one from a was kept past the cap of 1
    # (33 flood connections answered where the cap was 32)
    for late_disconnect in (True, False):
        c = Connections(per_source=1, total=10, handshakes=Ration(100, 100, 100, 100))
        assert c.accepted(Conn(PUBLIC, 7), "b", 0.0) is None
        if not late_disconnect:
            c.disconnected(Conn(PUBLIC, 7))
        assert c.accepted(Conn(WORK, 7), "a", 0.0) is None
        if late_disconnect:
            c.disconnected(Conn(PUBLIC, 7))
        assert c.live("a") == 1 and c.live() == 1
        assert "1 connections open from a" in c.accepted(Conn(WORK, 8), "a", 0.0)
        c.disconnected(Conn(WORK, 7))
        assert c.live() == 0


@st.composite
def _churn(draw):
    """Connections opened and closed on two sockets from two sources, with each socket's
    monitor read at moments of its own: (what, socket, source or index) steps."""
    step = st.one_of(
        st.tuples(st.just("open"), st.sampled_from((WORK, PUBLIC)), st.sampled_from("ab")),
        st.tuples(st.just("close"), st.just(0), st.integers(0, 7)),
        st.tuples(st.just("read"), st.sampled_from((WORK, PUBLIC)), st.integers(1, 3)),
    )
    return draw(st.lists(step, max_size=60))


@given(_churn())
def test_no_source_ever_holds_more_kept_connections_than_its_cap(steps):
    # a model of the kernel and of net._router: descriptors are the lowest free, each
    # socket's events queue in order on its own monitor, an ACCEPTED read names whoever
    # holds the descriptor then, and one refused is shut (its holder closes). A connection
    # counts as kept (answered) once its own ACCEPTED was read and kept it.
    cap = 1
    c = Connections(per_source=cap, total=100, handshakes=Ration(1e9, 1e9, 1e9, 1e9))
    holder: dict[int, int] = {}  # descriptor -> connection
    conns: list[tuple[int, str, int]] = []  # connection -> (socket, source, descriptor)
    queues: tuple[list, list] = ([], [])  # each socket's unread events
    kept: set[int] = set()  # open, and kept by their own ACCEPTED

    def close(i: int) -> None:
        sock, _, fd = conns[i]
        del holder[fd]
        kept.discard(i)
        queues[sock].append(("disconnected", fd, i))

    def read(sock: int) -> None:
        what, fd, i = queues[sock].pop(0)
        if what == "disconnected":
            c.disconnected(Conn(sock, fd))
            return
        now_on = holder.get(fd)
        if now_on is None:  # gone already
            return
        if c.accepted(Conn(sock, fd), conns[now_on][1], 0.0) is not None:
            close(now_on)  # shut
        elif now_on == i:
            kept.add(i)

    for what, sock, arg in steps:
        if what == "open":
            fd = min(set(range(len(holder) + 1)) - set(holder))
            holder[fd] = len(conns)
            conns.append((sock, arg, fd))
            queues[sock].append(("accepted", fd, len(conns) - 1))
        elif what == "close" and holder:
            close(sorted(holder.values())[arg % len(holder)])
        elif what == "read":
            for _ in range(min(arg, len(queues[sock]))):
                read(sock)
        for source in "ab":
            assert sum(conns[i][1] == source for i in kept) <= cap
    while queues[WORK] or queues[PUBLIC]:  # every event read: the count is the truth
        read(WORK if queues[WORK] else PUBLIC)
    for source in "ab":
        assert c.live(source) == sum(conns[i][1] == source for i in kept)


def test_connections_opened_faster_than_the_handshake_ration_are_refused():
    c = Connections(per_source=100, total=100, handshakes=Ration(1, 2, 100, 100))
    assert [c.accepted(Conn(WORK, fd), "a", 0.0) is None for fd in range(3)] == [
        True,
        True,
        False,
    ]
    assert "connects faster than 1 a second" in c.accepted(Conn(WORK, 3), "a", 0.1)
    assert c.accepted(Conn(WORK, 4), "a", 1.0) is None
