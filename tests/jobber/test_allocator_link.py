"""jobber/_allocator_link.py: its typed events, and its link (net._link) over real sockets."""

from __future__ import annotations

import zmq

import protocol as p
from allocator.cli import ask
from jobber._allocator_link import AllocatorLink, ContactFailed, InstructionsCame, KeyLearnt
from net._keys import KeyPair
from net._link import Backoff
from protocol._alloc import allocator_address
from tests.helpers import wait_for

KEY = "ab" * 32


def test_events_are_typed_records_that_still_read_as_the_old_tuples():
    assert KeyLearnt("tcp://h:1", KEY)[:] == ("pin", "tcp://h:1", KEY)
    assert ContactFailed("no answer")[0] == "failed" and ContactFailed("x")[1] == "x"
    e = InstructionsCame(msg="m")  # (the message itself, not a copy taken apart)
    assert e[0] == "instructions" and e[1] == "m"


def test_a_key_is_learnt_on_first_use_then_a_silent_allocator_is_a_failed_contact():
    ctx = zmq.Context.instance()
    plain = ctx.socket(zmq.ROUTER)
    plain.setsockopt(zmq.LINGER, 0)
    port = plain.bind_to_random_port("tcp://127.0.0.1", min_port=20001, max_port=60000)
    pub, sec = zmq.curve_keypair()
    link = AllocatorLink(
        ctx,
        f"tcp://127.0.0.1:{port - 1}",  # its work port: nothing answers there
        "pool",
        KeyPair(pub, sec),
        name="j",
        pinned_key=None,
        connect=lambda endpoint: endpoint,
        backoff=Backoff(30.0, 60.0),
        timeout_s=0.3,
    )
    link.facts = p.HostFacts(1, 64, 1)
    try:
        link.start()
        assert wait_for(lambda: plain.poll(0), 10.0, "a hello on the plaintext port")
        who, data = plain.recv_multipart()
        hello = p.decode(data)
        assert isinstance(hello, p.Hello) and hello.id == 1
        plain.send_multipart([who, p.encode(p.HelloReply(hello.id, KEY))])
        events = [link.events.get(timeout=10.0) for _ in range(2)]  # (each waits, to a deadline)
        assert events[0] == KeyLearnt(link.endpoint, KEY) and link.key == KEY
        assert isinstance(events[1], ContactFailed) and "no answer within 0.3 s" in events[1].why
        assert link.backoff.failures == 1 and not link.line.busy()
    finally:
        link.stop()
        plain.close()


def test_with_check_s_a_change_comes_within_it_and_the_same_instructions_are_not_handed_on(
    served,
):
    server, root = served
    server.alloc.check_s = 0.2  # refresh_s stays 5 s
    pub, sec = zmq.curve_keypair()
    keys = KeyPair(pub, sec)
    ask(server.address, root, "pool_add", {"name": "lab", "supplier": "physics"})
    ask(server.address, root, "admit", {"pool": "lab", "key": keys.public_hex})
    endpoint, server_key = p.split_key(allocator_address(server.address))
    link = AllocatorLink(
        zmq.Context.instance(),
        endpoint,
        "lab",
        keys,
        name="j",
        pinned_key=server_key,
        connect=lambda endpoint: endpoint.replace("0.0.0.0", "127.0.0.1"),
        backoff=Backoff(30.0, 60.0),
        timeout_s=5.0,
    )
    link.facts = p.HostFacts(1, 64, 1)
    try:
        link.start()
        first = link.events.get(timeout=10.0)
        assert isinstance(first, InstructionsCame) and first.msg.check_s == 0.2
        # asked again (and answered) twice more, the same instructions: nothing handed on
        answered = wait_for(lambda: link.ok_at, 10.0, "an answer")
        answered = wait_for(lambda: link.ok_at > answered and link.ok_at, 10.0, "another")
        wait_for(lambda: link.ok_at > answered, 10.0, "a third answer")
        assert link.events.empty()
        ask(server.address, root, "pool_prefs", {"name": "lab", "prefs": {"memory_mb": 256}})
        got = link.events.get(timeout=2.0)  # well within refresh_s (5 s)
        assert isinstance(got, InstructionsCame) and got.msg.serial > first.msg.serial
        assert got.msg.prefs.memory_mb == 256
    finally:
        link.stop()
