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


KEY_C = "cc" * 32


def mismatches(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "key mismatch" in r.getMessage()]


def test_the_owner_naming_a_referred_dealer_makes_it_the_owners_for_good():
    """It is asked like any dealer the owner names, never evicted for one, and its
    referrals start a new chain."""
    j = core([f"{D1}#{KEY_A}"])
    others = tuple(f"tcp://127.0.0.1:{8000 + i}" for i in range(c.MAX_DEALERS - 2))
    refer(j, 0.0, f"{D3}#{FAKE}", *others)  # D3 first: the first a room would be made of
    assert len(j.links) == c.MAX_DEALERS
    j.add_dealer(f"{D3}#{KEY_B}", depth=0)
    j.add_dealer(f"{D2}#{KEY_C}", depth=0)  # room made of a referred dealer: not D3
    assert D3 in j.links and D2 in j.links and len(j.links) == c.MAX_DEALERS
    assert others[0] not in j.links
    j.links[D1].ask_after = j.links[D2].ask_after = 1e9
    j.tick(0.5)
    assert sent(j.take_actions(), p.Bored, D3)


def test_a_referred_dealer_the_owner_names_with_another_key_names_both_keys(caplog):
    j = core([f"{D1}#{KEY_A}"], request_timeout_s=1.0)
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.add_dealer(f"{D3}#{KEY_B}", depth=0)
    (line,) = mismatches(caplog)
    assert f"with key {FAKE}, but it is {KEY_B} (given by the owner)" in line and D1 in line
    # the owner's key is not doubted: after a failed contact it is asked for work again,
    # not for its key
    j.links[D1].ask_after = 1e9
    j.tick(0.5)
    assert sent(j.take_actions(), p.Bored, D3)
    j.tick(2.0)  # no answer
    assert j.links[D3].backoff.failures == 1 and not j.links[D3].check_key
    j.tick(j.links[D3].backoff.until + 0.1)
    acts = j.take_actions()
    assert sent(acts, p.Bored, D3) and not of(acts, c.Hello)


def test_a_referred_dealer_the_owner_names_plain_learns_its_key_from_it(caplog):
    caplog.set_level(logging.INFO, logger="jobber._core")
    j = core([f"{D1}#{KEY_A}"])
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.add_dealer(D3, depth=0)
    assert not mismatches(caplog)  # not yet: its key is not known
    j.links[D1].ask_after = 1e9
    hello = hello_to(j, 0.5, D3)
    j.received(D3, p.HelloReply(hello.id, KEY_B), 0.6)
    assert D3 in j.links and j.links[D3].key == KEY_B and c.Pin(D3, KEY_B) in j.take_actions()
    (line,) = mismatches(caplog)
    assert KEY_B in line and FAKE in line and D1 in line


def test_a_referred_dealer_the_owner_names_with_the_referrals_key_is_pinned_with_it():
    """The key is the owner's now: pinned, the sockets kept, and not doubted later."""
    j = core([f"{D1}#{KEY_A}"], request_timeout_s=1.0)
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.links[D1].ask_after = 1e9
    j.tick(0.5)
    (bored,) = sent(j.take_actions(), p.Bored, D3)
    j.add_dealer(f"{D3}#{FAKE}", depth=0)
    acts = j.take_actions()
    assert c.Pin(D3, FAKE) in acts and not of(acts, c.Reset)
    j.received(D3, p.RetryLater(bored.id, 0.0), 0.6)  # the ask out is still its ask
    assert j.links[D3].unasked == 0 and j.links[D3].answered
    j.tick(1.0)
    (bored,) = sent(j.take_actions(), p.Bored, D3)
    j.tick(2.5)  # no answer: its key is the owner's, not checked against its plain port
    j.tick(j.links[D3].backoff.until + 0.1)
    acts = j.take_actions()
    assert sent(acts, p.Bored, D3) and not of(acts, c.Hello)


def test_a_referred_dealer_asked_for_its_key_keeps_that_ask_when_the_owner_names_it():
    """Its key given by the owner, where none was known: the socket is the same, and so is
    the hello out on it."""
    j = core([f"{D1}#{KEY_A}"])
    refer(j, 0.0, D3)
    j.links[D1].ask_after = 1e9
    hello = hello_to(j, 0.5, D3)
    j.add_dealer(f"{D3}#{KEY_B}", depth=0)
    acts = j.take_actions()
    assert c.Pin(D3, KEY_B) in acts and not of(acts, c.Reset)
    j.received(D3, p.HelloReply(hello.id, KEY_B), 0.6)
    assert j.links[D3].unasked == 0 and not j.links[D3].refused
    j.tick(0.7)
    assert sent(j.take_actions(), p.Bored, D3)


def test_a_referral_naming_a_known_dealer_with_its_own_key_or_none_is_no_mismatch(caplog):
    j = core([f"{D1}#{KEY_A}", f"{D2}#{KEY_B}"])
    refer(j, 0.0, f"{D2}#{KEY_B}", D2, f"{D1}#{KEY_A}", D1)
    assert not mismatches(caplog)
    assert j.links[D2].key == KEY_B and j.links[D2].depth == 0


def test_a_dealers_other_keys_are_each_logged_once_and_at_most_four(caplog):
    keys = [f"{i:02x}" * 32 for i in range(1, 7)]
    j = core([f"{D1}#{KEY_A}", f"{D2}#{KEY_B}"])
    refer(j, 0.0, *(f"{D2}#{k}" for k in [keys[0], *keys]))
    lines = mismatches(caplog)
    assert len(lines) == 4, lines
    assert [k for k in keys if any(k in line for line in lines)] == keys[:4]


def test_a_key_unknown_yet_is_checked_against_the_referrals_once_only(caplog):
    """The first test's D2, asked for its key again after a failure: the key a referral
    named is a mismatch said once, not at every hello."""
    j = core([f"{D1}#{KEY_A}", D2], request_timeout_s=1.0)
    j.tick(0.0)
    acts = j.take_actions()
    (hello,) = [a.msg for a in of(acts, c.Hello) if a.dealer == D2]
    (bored,) = sent(acts, p.Bored, D1)
    j.received(D1, p.Referral(bored.id, (f"{D2}#{FAKE}",)), 0.1)
    j.links[D1].ask_after = 1e9
    j.received(D2, p.HelloReply(hello.id, KEY_B), 0.6)
    assert len(mismatches(caplog)) == 1
    j.tick(1.0)
    assert sent(j.take_actions(), p.Bored, D2)
    # no answer: a key learnt on first use is checked again, at once (a probe)
    hello = hello_to(j, 2.5, D2)
    link = j.links[D2]
    assert link.check_key and link.backoff.until > 2.5
    j.received(D2, p.HelloReply(hello.id, KEY_B), 2.6)
    assert len(mismatches(caplog)) == 1 and link.usable()


def test_a_referrals_key_proven_by_its_plain_port_is_not_checked_again():
    j = core([f"{D1}#{KEY_A}"], request_timeout_s=1.0)
    refer(j, 0.0, f"{D3}#{FAKE}")
    j.links[D1].ask_after = 1e9
    link = j.links[D3]
    j.tick(0.5)
    assert sent(j.take_actions(), p.Bored, D3)
    j.contact_failed(D3, 0.6, "no contact", "cannot connect")
    assert link.check_key  # never worked: is it the dealer's key?
    hello = hello_to(j, link.backoff.until + 0.1, D3)
    j.received(D3, p.HelloReply(hello.id, FAKE), link.backoff.until + 0.2)  # it is
    assert link.usable()
    t = link.backoff.until + 0.3
    j.tick(t)
    assert sent(j.take_actions(), p.Bored, D3)
    j.contact_failed(D3, t + 0.1, "no contact", "cannot connect")
    assert D3 in j.links and not link.check_key  # its key is known good: asked for work
    j.tick(link.backoff.until + 0.1)
    acts = j.take_actions()
    assert sent(acts, p.Bored, D3) and not of(acts, c.Hello)


def test_a_referred_dealer_holding_our_results_under_a_wrong_key_is_refused_not_dropped(
    caplog,
):
    """Its results are kept and listed, never sent to a dealer that is not the one named."""
    j = core([f"{D1}#{KEY_A}"], spooled=[(D3, ok("t.0"))])  # D3: known from the spool
    j.tick(0.0)
    acts = j.take_actions()
    (hello,) = [a.msg for a in of(acts, c.Hello) if a.dealer == D3]
    (bored,) = sent(acts, p.Bored, D1)
    j.received(D1, p.Referral(bored.id, (f"{D3}#{FAKE}",)), 0.1)
    link = j.links[D3]
    assert link.key == FAKE and link.key_referred_by == D1
    j.received(D3, p.HelloReply(hello.id, KEY_B), 0.2)
    assert D3 in j.links and "key mismatch" in link.refused
    assert c.Reset(D3) in j.take_actions()
    assert j.unacked[D3]
    j.tick(link.backoff.until + 100.0)
    assert not [a for a in j.take_actions() if getattr(a, "dealer", None) == D3]
    assert mismatches(caplog)


def test_a_dealer_referred_by_two_projects_goes_with_the_first_that_referred_it():
    j = core([])
    j.set_projects({f"{D1}#{KEY_A}": 1.0, f"{D2}#{KEY_B}": 1.0})
    j.tick(0.0)
    acts = j.take_actions()
    (b1,) = sent(acts, p.Bored, D1)
    (b2,) = sent(acts, p.Bored, D2)
    j.received(D1, p.Referral(b1.id, (f"{D3}#{KEY_C}",)), 0.1)
    j.received(D2, p.Referral(b2.id, (f"{D3}#{KEY_C}",)), 0.1)
    assert j.links[D3].via == D1
    j.set_projects({f"{D1}#{KEY_A}": 1.0})  # D2 goes; D3 came by D1
    j.tick(0.5)
    assert not j.links[D3].retired and sent(j.take_actions(), p.Bored, D3)


def test_a_retired_dealer_referred_again_by_a_listed_project_is_asked_again_while_it_is(
    caplog,
):
    caplog.set_level(logging.INFO, logger="jobber._core")
    j = core([])
    j.set_projects({f"{D1}#{KEY_A}": 1.0, f"{D2}#{KEY_B}": 1.0})
    j.tick(0.0)
    acts = j.take_actions()
    (b1,) = sent(acts, p.Bored, D1)
    (b2,) = sent(acts, p.Bored, D2)
    j.received(D1, p.Referral(b1.id, (f"{D3}#{KEY_C}",)), 0.1)
    j.tick(0.5)
    (bored,) = sent(j.take_actions(), p.Bored, D3)
    j.received(D3, p.Jobs(bored.id, (spec("t.0"),)), 0.6)
    j.tick(0.6)
    acts = j.take_actions()
    (more,) = sent(acts, p.Bored, D3)
    assert of(acts, c.Start)
    j.received(D3, p.RetryLater(more.id, 0.0), 0.6)
    j.set_projects({f"{D2}#{KEY_B}": 1.0})  # D3 holds a job: kept, asked for nothing
    assert j.links[D3].retired and j.links[D3].depth == 1
    for _ in range(2):  # said at once, and once
        (line,) = [r.getMessage() for r in caplog.records if "for nothing more" in r.getMessage()]
        assert D3 in line and D1 in line
        j.set_projects({f"{D2}#{KEY_B}": 1.0})
    j.tick(0.7)
    assert not sent(j.take_actions(), p.Bored, D3)
    j.received(D2, p.Referral(b2.id, (f"{D3}#{KEY_C}",)), 0.8)  # a listed project's
    assert not j.links[D3].retired and j.links[D3].via == D2 and j.links[D3].depth == 1
    j.tick(0.9)
    assert sent(j.take_actions(), p.Bored, D3)
    j.set_projects({})  # and it goes with that project in turn
    assert j.links[D3].retired
