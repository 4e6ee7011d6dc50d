"""net._gate driven directly: sources, rations and connection caps, with `now` given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from net._gate import Connections, Ration, source_of


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
    assert c.accepted(10, "a", 0.0) is None
    assert c.accepted(11, "a", 0.0) is None
    assert "2 connections open from a" in c.accepted(12, "a", 0.0)
    assert c.accepted(13, "b", 0.0) is None
    assert "3 connections open in all" in c.accepted(14, "c", 0.0)
    c.disconnected(12)  # the refused one closing changes nothing
    assert c.live("a") == 2 and c.live() == 3
    c.disconnected(10)
    assert c.live("a") == 1
    assert c.accepted(14, "c", 0.0) is None
    assert c.refused == 2
    assert c.status()["open"] == 3


def test_a_reused_descriptor_closes_the_connection_it_named():
    c = Connections(per_source=1, total=10, handshakes=Ration(100, 100, 100, 100))
    assert c.accepted(7, "a", 0.0) is None
    assert c.accepted(7, "b", 0.0) is None  # 7 was closed and reused before we heard
    assert c.live("a") == 0 and c.live("b") == 1
    c.forget(7)  # a sweep found it closed
    assert c.live() == 0


def test_connections_opened_faster_than_the_handshake_ration_are_refused():
    c = Connections(per_source=100, total=100, handshakes=Ration(1, 2, 100, 100))
    assert [c.accepted(fd, "a", 0.0) is None for fd in range(3)] == [True, True, False]
    assert "connects faster than 1 a second" in c.accepted(3, "a", 0.1)
    assert c.accepted(4, "a", 1.0) is None
