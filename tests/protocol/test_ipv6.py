"""IPv6: source addresses, what a machine is, and a real dealer's sockets on `::1`.

An IPv6 host usually holds a whole /64, so under `--distinct host` a /64 is one
machine (as one IPv4 address is) and under `subnet` a /48 is one network. IPv4
clients of a dual-stack socket arrive as `::ffff:a.b.c.d` and are counted as
`a.b.c.d`.
"""

from __future__ import annotations

import ipaddress
import threading

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from dealer import Dealer
from dealer._core import Policy
from dealer._journal import Journal
from dealer._service import Peer, Service
from net._router import connectable
from tests.helpers import CurveClient, Few

HOST = p.HostFacts(cpus=1, memory_mb=256, slots=1)


def has_ipv6_loopback() -> bool:
    ctx = zmq.Context()
    ctx.set(zmq.IPV6, 1)
    s = ctx.socket(zmq.ROUTER)
    try:
        s.bind("tcp://[::1]:*")
        return True
    except zmq.ZMQError:
        return False
    finally:
        s.close(0)
        ctx.term()


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")


# --- addresses and machines ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("::ffff:127.0.0.2", "127.0.0.2"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::1", "::1"),
        ("", ""),
        ("not an address", "not an address"),
    ],
)
def test_source_address_is_written_one_way(raw, address):
    assert p.source_address(raw) == address


@pytest.mark.parametrize(
    ("address", "host", "subnet"),
    [
        ("192.0.2.7", "192.0.2.7", "192.0.2.0/24"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.0/24"),
        ("2001:db8:1:2:a:b:c:d", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("::1", "::/64", "::/48"),
        ("", "", ""),
    ],
)
def test_machine_of_an_address(address, host, subnet):
    assert p.machine_of(address) == host
    assert p.machine_of(address, subnet=True) == subnet
    peer = Peer("aa" * 32, address)
    assert peer.machine("host") == host
    assert peer.machine("subnet") == subnet
    assert peer.machine("key") == "aa" * 32


v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(v6, st.integers(0, 2**64 - 1))
def test_every_address_of_one_ipv6_64_is_one_machine(a, low):
    b = ipaddress.IPv6Address((int(a) >> 64 << 64) | low)
    assert p.machine_of(str(a)) == p.machine_of(str(b))


@given(v6, st.integers(1, 2**64 - 1))
def test_addresses_of_distinct_ipv6_64s_are_distinct_machines(a, step):
    b = ipaddress.IPv6Address((int(a) + (step << 64)) % 2**128)
    assert p.machine_of(str(a)) != p.machine_of(str(b))


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
def test_an_ipv4_address_is_the_same_machine_mapped_or_not(a):
    assert p.machine_of(f"::ffff:{a}") == p.machine_of(str(a)) == str(a)


def test_two_keys_in_one_ipv6_64_get_one_replica_of_a_job_between_them(tmp_path):
    """Redundancy 2: a second key on another address of the same /64 is the same machine,
    so it gets no replica of the job the first holds; another /64 gets it."""
    s = Service(
        Few(1),
        Journal(tmp_path / "j.sqlite", "Few"),
        now=0.0,
        policy=Policy(redundancy=2, quorum=2, backups=0),
    )

    def bored(peer: Peer) -> p.Message:
        reply = s.handle(p.Bored(1, "j", HOST, 4), 0.1, peer)
        s.commit()
        s.after_turn(0.1)
        return reply

    first = bored(Peer("aa" * 32, "2001:db8:0:1::10"))
    assert isinstance(first, p.Jobs) and len(first.jobs) == 1
    assert not getattr(bored(Peer("bb" * 32, "2001:db8:0:1:ffff::2")), "jobs", ())
    other = bored(Peer("cc" * 32, "2001:db8:0:2::10"))
    assert isinstance(other, p.Jobs) and len(other.jobs) == 1
    assert other.jobs[0].tag != first.jobs[0].tag
    s.close()


# --- a real dealer's sockets ----------------------------------------------------------


@pytest.fixture
def serve(tmp_path):
    """A dealer of `Few(n)` run in a thread on `bind`, stopped at the end."""
    started: list[tuple[Dealer, threading.Thread]] = []

    def start(n: int, bind: str) -> Dealer:
        journal = Journal(tmp_path / f"d{len(started)}.sqlite", "Few")
        dealer = Dealer(Few(n), bind, journal, policy=Policy(redundancy=1, quorum=1))
        thread = threading.Thread(target=dealer.run, kwargs={"max_s": 60}, daemon=True)
        thread.start()
        started.append((dealer, thread))
        return dealer

    yield start
    for dealer, thread in started:
        dealer.stop()
        thread.join(timeout=30)
        dealer.close()


@pytest.fixture
def ctx6():
    """A context whose sockets speak IPv6 (a jobber's does the same)."""
    ctx = zmq.Context()
    ctx.set(zmq.IPV6, 1)
    yield ctx
    ctx.destroy(linger=0)


def machines_over(c: CurveClient) -> dict[str, str]:
    """Each jobber's key and the machine the dealer counts it as, from its status."""
    reply = c.ask(p.StatusQuery(7))
    assert isinstance(reply, p.StatusReply)
    return {j["key"]: j["machine"] for j in reply.info["jobbers"]}


@needs_ipv6
def test_a_dealer_bound_to_ipv6_loopback_serves_a_jobber_over_ipv6(serve, ctx6):
    dealer = serve(2, "tcp://[::1]:*")
    assert dealer.address.startswith("tcp://[::1]:")
    c = CurveClient(dealer.address, ctx=ctx6)
    jobs = c.ask(p.Bored(1, "six", HOST, 1))
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1
    assert machines_over(c)[c.key] == "::/64"
    c.close()


@pytest.mark.parametrize(
    ("bound", "shown"),
    [
        ("tcp://0.0.0.0:7117", "tcp://127.0.0.1:7117"),
        ("tcp://[::]:7117", "tcp://127.0.0.1:7117"),
        ("tcp://[::ffff:127.0.0.1]:7117", "tcp://127.0.0.1:7117"),
        ("tcp://[::ffff:192.0.2.7]:7117", "tcp://192.0.2.7:7117"),
        ("tcp://[::1]:7117", "tcp://[::1]:7117"),
        ("tcp://[2001:db8::1]:7117", "tcp://[2001:db8::1]:7117"),
        ("tcp://192.0.2.7:7117", "tcp://192.0.2.7:7117"),
        ("ipc:///tmp/d", "ipc:///tmp/d"),
    ],
)
def test_a_bound_endpoint_is_shown_as_clients_reach_it(bound, shown):
    assert connectable(bound) == shown


def test_a_dealer_bound_to_an_ipv4_address_shows_it_as_ipv4(serve):
    """Dual-stack sockets bind an IPv4 literal as [::ffff:a.b.c.d]: shown as it was given."""
    dealer = serve(1, "tcp://127.0.0.1:*")
    assert dealer.address.startswith("tcp://127.0.0.1:")
    c = CurveClient(dealer.address, source="127.0.0.6")
    assert isinstance(c.ask(p.Bored(1, "four", HOST, 1)), p.Jobs)
    c.close()


@needs_ipv6
def test_a_wildcard_dealer_takes_ipv4_and_ipv6_and_counts_ipv4_as_itself(serve, ctx6):
    dealer = serve(4, "tcp://*:*")
    endpoint, key = p.split_key(dealer.address)
    assert endpoint.startswith("tcp://127.0.0.1:"), "a wildcard is shown as loopback"
    port = endpoint.rpartition(":")[2]
    four = CurveClient(dealer.address, source="127.0.0.5", ctx=ctx6)
    assert isinstance(four.ask(p.Bored(1, "four", HOST, 1)), p.Jobs)
    six = CurveClient(f"tcp://[::1]:{port}#{key}", ctx=ctx6)
    assert isinstance(six.ask(p.Bored(1, "six", HOST, 1)), p.Jobs)
    seen = machines_over(six)
    four.close()
    six.close()
    assert seen[four.key] == "127.0.0.5"  # not ::ffff:127.0.0.5
    assert seen[six.key] == "::/64"
