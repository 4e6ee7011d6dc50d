"""The jobber core's referrals, driven directly (issue 21, items 3 and 4): a key a referral
names never replaces or pre-empts the key of an address the owner gave, and is never
pinned; a mismatch is logged at once naming both keys; under an allocator, dealers
referred by a project are asked only while that project is listed."""

from __future__ import annotations

import logging

import protocol as p
from jobber import _core as c
from tests.jobber.test_jobber_core import KEY_A, KEY_B, core, of, ok, sent, spec

D1 = "tcp://127.0.0.1:7200"
D2 = "tcp://127.0.0.1:7300"
D3 = "tcp://127.0.0.1:7400"
FAKE = "ff" * 32


def refer(j: c.JobberCore, now: float, *dealers: str, by: str = D1) -> None:
    """`by` answers the jobber's ask with a referral to `dealers`."""
    j.tick(now)
    (bored,) = sent(j.take_actions(), p.Bored, by)
    j.received(by, p.Referral(bored.id, dealers), now)


def hello_to(j: c.JobberCore, now: float, dealer: str) -> p.Hello:
    j.tick(now)
    (hello,) = [a.msg for a in of(j.take_actions(), c.Hello) if a.dealer == dealer]
    return hello


def test_a_referral_cannot_pin_a_key_for_an_address_the_owner_gave(caplog):
    """The issue's poisoning: D2 given as plain host:port, down at start; D1 refers to
    D2#<made-up key>. D2 still learns its key from D2, and works."""
    caplog.set_level(logging.INFO, logger="jobber._core")
    j = core([f"{D1}#{KEY_A}", D2], request_timeout_s=1.0)
    j.tick(0.0)  # D1 is asked for work; D2, on first use, for its key
    acts = j.take_actions()
    assert [a.dealer for a in of(acts, c.Hello)] == [D2]
    (bored,) = sent(acts, p.Bored, D1)
    j.received(D1, p.Referral(bored.id, (f"{D2}#{FAKE}",)), 0.1)
    j.links[D1].ask_after = 1e9  # D1 has nothing more to say
    j.tick(1.5)  # D2 is down: its hello times out
    link = j.links[D2]
    assert link.backoff.failures == 1
    assert link.key is None and link.pinned and link.depth == 0
    assert not [a for a in j.take_actions() if isinstance(a, c.Pin)]
    assert f"referred to it with key {FAKE}" in caplog.text
    # D2 up: it is asked for its key again, and trusted with its own
    hello = hello_to(j, link.backoff.until + 0.1, D2)
    j.received(D2, p.HelloReply(hello.id, KEY_B), link.backoff.until + 0.2)
    assert link.key == KEY_B and c.Pin(D2, KEY_B) in j.take_actions()
    mismatch = [r.getMessage() for r in caplog.records if "key mismatch" in r.getMessage()]
    assert len(mismatch) == 1 and KEY_B in mismatch[0] and FAKE in mismatch[0], mismatch
    j.tick(link.backoff.until + 5.0)
    assert sent(j.take_actions(), p.Bored, D2)  # and D2 gets asked for work, with its key


def test_a_referral_naming_another_key_for_a_known_dealer_is_a_mismatch_at_once(caplog):
    j = core([f"{D1}#{KEY_A}", f"{D2}#{KEY_B}"])
    refer(j, 0.0, f"{D2}#{FAKE}")
    assert j.links[D2].key == KEY_B
    (line,) = [r.getMessage() for r in caplog.records if "key mismatch" in r.getMessage()]
    assert FAKE in line and KEY_B in line and D1 in line
    # a key pinned before (known_dealers) is not pre-empted by a referral either
    j = core([f"{D1}#{KEY_A}"], pins={D3: KEY_B})
    refer(j, 0.0, f"{D3}#{FAKE}")
    assert j.links[D3].key == KEY_B and j.links[D3].depth == 1
    assert not of(j.take_actions(), c.Pin)


def test_a_referred_key_is_for_its_entry_only_and_the_owner_replaces_it():
    j = core([f"{D1}#{KEY_A}"])
    refer(j, 0.0, f"{D3}#{FAKE}")
    link = j.links[D3]
    assert link.key == FAKE and link.key_referred_by == D1
    assert not of(j.take_actions(), c.Pin)  # never pinned
    # the owner names D3 (plain): the referral's key goes, D3 is asked for its own
    j.add_dealer(D3, depth=0)
    assert link.key is None and link.pinned and c.Reset(D3) in j.take_actions()
    # ... or names it with a key: that key, pinned
    j = core([f"{D1}#{KEY_A}"])
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.add_dealer(f"{D3}#{KEY_B}", depth=0)
    assert j.links[D3].key == KEY_B and c.Pin(D3, KEY_B) in j.take_actions()


def test_a_referred_entry_whose_key_is_wrong_is_named_a_key_mismatch_and_dropped(caplog):
    j = core([f"{D1}#{KEY_A}"], request_timeout_s=1.0)
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.links[D1].ask_after = 1e9  # D1 has nothing more to say
    j.tick(0.5)
    assert sent(j.take_actions(), p.Bored, D3)
    # the handshake fails (the transport says so): the key is checked on the plain port
    j.contact_failed(D3, 0.6, "no contact", "cannot connect")
    assert j.links[D3].check_key
    hello = hello_to(j, j.links[D3].backoff.until + 0.1, D3)
    j.received(D3, p.HelloReply(hello.id, KEY_B), j.links[D3].backoff.until + 0.2)
    assert D3 not in j.links
    (line,) = [r.getMessage() for r in caplog.records if "key mismatch" in r.getMessage()]
    assert KEY_B in line and FAKE in line and D1 in line


def test_under_an_allocator_referred_dealers_go_with_the_project_that_referred_them():
    j = core([])
    j.set_projects({f"{D1}#{KEY_A}": 1.0})
    j.take_actions()
    refer(j, 0.0, f"{D3}#{KEY_B}", f"{D2}#{FAKE}")
    assert j.links[D3].via == D1 and j.links[D2].via == D1
    j.tick(0.5)
    (bored,) = sent(j.take_actions(), p.Bored, D3)
    j.received(D3, p.Jobs(bored.id, (spec("t.0"),)), 0.6)
    j.tick(0.7)
    acts = j.take_actions()
    (start,) = of(acts, c.Start)
    (more,) = sent(acts, p.Bored, D3)
    j.received(D3, p.RetryLater(more.id, 600.0), 0.7)
    # the project is removed: D2 (holding nothing) is forgotten at once; D3 holds a job:
    # it is asked for nothing more, its result still goes, then it is forgotten
    j.set_projects({})
    assert D2 not in j.links and j.links[D3].retired
    j.job_done(start.key, ok("t.0"), 0.1, 0.8)
    j.spooled([(D3, "t.0")])
    j.tick(1.0)
    acts = j.take_actions()
    assert not sent(acts, p.Bored)
    (results,) = sent(acts, p.Results, D3)
    j.received(D3, p.Ack(results.id, ("t.0",), ()), 1.1)
    assert D3 not in j.links
    # and a referral from a dealer the allocator does not list is not followed
    j.set_projects({f"{D2}#{KEY_B}": 1.0})
    j.links[D1].ask_after = 0.0
    j.received(D1, p.Referral(0, (f"{D3}#{KEY_B}",)), 2.0)
    assert D3 not in j.links


def test_a_dealer_the_owner_names_is_never_crowded_out_by_referrals():
    j = core([f"{D1}#{KEY_A}"])
    many = tuple(f"tcp://127.0.0.1:{8000 + i}" for i in range(c.MAX_DEALERS))
    refer(j, 0.0, *many)
    assert len(j.links) == c.MAX_DEALERS
    j.add_dealer(f"{D2}#{KEY_B}", depth=0)
    assert D2 in j.links and len(j.links) == c.MAX_DEALERS


def test_the_ask_out_under_a_referrals_key_is_forgotten_when_the_owner_names_the_dealer():
    j = core([f"{D1}#{KEY_A}"])
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.links[D1].ask_after = 1e9  # D1 has nothing more to say
    j.tick(0.5)
    (bored,) = sent(j.take_actions(), p.Bored, D3)
    j.add_dealer(f"{D3}#{KEY_B}", depth=0)
    link = j.links[D3]
    assert (link.bored_id, link.bored_want) == (None, 0)
    # its answer came on the socket of the other key: no answer to an ask of ours
    j.received(D3, p.Jobs(bored.id, (spec("t.0"),)), 0.6)
    assert link.unasked == 1 and not j.buffer
