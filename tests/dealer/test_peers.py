"""What a dealer knows of its peers (dealer._peers), driven directly with a fake clock, and
the service's referrals and work offers built on it (a real SQLite journal, no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from dealer._core import Policy
from dealer._journal import Journal
from dealer._peers import (
    ASK_EVERY_S,
    MAX_ADDRESS,
    MAX_BACKOFF_S,
    MAX_REFERRED,
    MIN_BACKOFF_S,
    RETRY_NONE_S,
    STALE_S,
    TIMEOUT_S,
    Offer,
    Peers,
)
from dealer._service import RETRY_BUSY_S, RETRY_IDLE_S, Peer, Service
from tasks import Job, Limits, Payload, Task

A, B, C, D = (f"tcp://127.0.0.1:{7000 + 2 * i}" for i in range(4))
SMALL = p.Limits(fuel=10**6, memory_mb=64, time_s=5.0, output_kb=1)
HOST = p.HostFacts(cpus=1, memory_mb=256, slots=1)


def offer(peers: Peers, address: str, now: float, jobs: int, limits=SMALL, **kw) -> None:
    """`address` answers the query out to it (asked now if none is) with `jobs`."""
    link = peers.links[address]
    if link.query_id is None:
        assert address in dict(peers.due(now))
    assert peers.heard(address, p.WorkOffer(link.query_id, jobs, limits, **kw), now)


def asked(peers: Peers, now: float) -> dict[str, p.WorkQuery]:
    return dict(peers.due(now))


# --- asking -----------------------------------------------------------------------


def test_the_constants_docs_protocol_md_and_docs_federation_md_state():
    assert (ASK_EVERY_S, TIMEOUT_S, STALE_S) == (2.0, 3.0, 10.0)
    assert (MIN_BACKOFF_S, MAX_BACKOFF_S) == (2.0, 120.0)
    assert (MAX_REFERRED, MAX_ADDRESS) == (64, 256)  # the wire's caps on a referral
    assert RETRY_NONE_S == 10.0
    o = Offer(1, None, None, False, 0.0)
    with pytest.raises(AttributeError):
        o.jobs = 2  # type: ignore[misc]


def test_queries_have_distinct_ids_that_go_on_the_wire():
    peers = Peers([A, B], ask_every_s=1.0)
    ids = []
    for t in range(5):
        for address, q in peers.due(float(t)):
            assert p.decode(p.encode(q)) == q  # a valid id (u64)
            ids.append(q.id)
            assert peers.heard(address, p.WorkOffer(q.id, 1, SMALL), float(t)) is True
    assert len(ids) == 10 and len(set(ids)) == 10 and ids == sorted(ids)


def test_next_due_in_each_state_of_a_link():
    peers = Peers([A], rng=random.Random(3))
    link = peers.links[A]
    assert peers.next_due(5.0) == 0.0  # never asked: now
    q = asked(peers, 5.0)[A]
    assert peers.next_due(5.5) == pytest.approx(TIMEOUT_S - 0.5)  # out: when it expires
    assert peers.heard(A, p.WorkOffer(q.id, 1, SMALL), 5.6)
    assert peers.next_due(6.0) == pytest.approx(ASK_EVERY_S - 1.0)  # the period, from the ask
    assert peers.status(6.0)[0]["next_try"] == pytest.approx(5.0 + ASK_EVERY_S)
    assert peers.next_due(9.0) == 0.0  # overdue: now, never negative
    asked(peers, 9.0)
    peers.expire(9.0 + TIMEOUT_S + 1e-6)
    now = 9.0 + TIMEOUT_S + 1e-6
    assert peers.next_due(now) == pytest.approx(link.backoff.until - now)  # backing off
    assert peers.status(now)[0]["next_try"] == pytest.approx(link.backoff.until)
    assert peers.next_due(link.backoff.until) == 0.0  # its backoff over: at once
    assert Peers([]).next_due(0.0) == ASK_EVERY_S


def test_a_link_the_shell_cannot_use_is_a_failed_link():
    peers = Peers([A, B])
    asked(peers, 0.0)
    peers.unreachable(A, 0.1, "cannot send: no route")
    peers.unreachable("tcp://elsewhere:1", 0.1, "ignored")  # not a peer: nothing
    a, b = peers.links[A], peers.links[B]
    assert a.query_id is None and a.backoff.failures == 1 and a.error == "cannot send: no route"
    assert b.query_id is not None and b.backoff.failures == 0


def test_every_peer_is_asked_at_once_then_every_period_while_it_answers():
    peers = Peers([A, B])
    first = asked(peers, 0.0)
    assert set(first) == {A, B} and first[A].id != first[B].id
    assert asked(peers, 0.1) == {}  # one query out per peer
    for a, q in first.items():
        assert peers.heard(a, p.WorkOffer(q.id, 3, SMALL), 0.1)
    assert asked(peers, ASK_EVERY_S - 0.01) == {}
    assert set(asked(peers, ASK_EVERY_S)) == {A, B}
    assert peers.next_due(ASK_EVERY_S) == pytest.approx(TIMEOUT_S)  # both out


def test_a_reply_to_another_query_changes_nothing():
    peers = Peers([A])
    q = asked(peers, 0.0)[A]
    assert peers.heard(A, p.WorkOffer(q.id + 1, 5, SMALL), 0.1) is False  # not the query out
    assert peers.heard(B, p.WorkOffer(q.id, 5, SMALL), 0.1) is False  # not a peer
    assert peers.links[A].offer is None and peers.links[A].query_id == q.id
    assert peers.heard(A, p.WorkOffer(q.id, 5, SMALL), 0.2)
    assert not peers.heard(A, p.WorkOffer(q.id, 9, SMALL), 0.3)  # a duplicate: stale
    assert peers.links[A].offer.jobs == 5


def test_an_unanswered_query_backs_the_link_off_doubling_up_to_the_cap():
    peers = Peers([A], rng=random.Random(1))
    now, waits = 0.0, []
    for _ in range(12):
        assert set(asked(peers, now)) == {A}
        assert peers.expire(now + TIMEOUT_S - 0.01) == []
        now += TIMEOUT_S + 1e-6  # (past float rounding)
        assert peers.expire(now) == [A]  # the shell resets its socket
        link = peers.links[A]
        waits.append(link.backoff.until - now)
        assert asked(peers, link.backoff.until - 0.01) == {}
        now = link.backoff.until
    bases = [min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2**n) for n in range(12)]
    assert all(b / 2 <= w <= b for w, b in zip(waits, bases, strict=True)), waits
    assert peers.links[A].backoff.failures == 12
    assert "no answer within" in peers.links[A].error
    q = asked(peers, now)[A]
    assert peers.heard(A, p.WorkOffer(q.id, 1, SMALL), now)  # an answer resets it all
    assert peers.links[A].backoff.failures == 0 and peers.links[A].error is None
    assert peers.referral(HOST, now) == (A,)


def test_an_error_or_another_reply_is_a_failed_link():
    peers = Peers([A, B])
    q = asked(peers, 0.0)
    assert peers.heard(A, p.Error(q[A].id, p.ErrorCode.MALFORMED, "unknown message type"), 0.1)
    assert peers.heard(B, p.HelloReply(q[B].id, "ab" * 32), 0.1)
    assert peers.links[A].error == "answered malformed: unknown message type"
    assert peers.links[B].error == "answered hello_reply"
    assert all(link.backoff.failures == 1 for link in peers.links.values())
    assert asked(peers, 0.2) == {}  # backing off (at least MIN_BACKOFF_S / 2)


def test_bad_peer_lists_are_refused():
    with pytest.raises(ValueError, match="given twice"):
        Peers([A, A])
    longest = "tcp://" + "h" * (MAX_ADDRESS - 8) + ":1"
    assert len(longest) == MAX_ADDRESS and Peers([longest])
    with pytest.raises(ValueError, match="characters"):
        Peers([longest + "0"])
    with pytest.raises(ValueError, match="characters"):
        Peers([""])
    for bad in ({"ask_every_s": 0.0}, {"timeout_s": -1.0}, {"stale_s": 0.0}):
        with pytest.raises(ValueError, match="positive"):
            Peers([A], **bad)
    assert Peers([A], ask_every_s=0.01, timeout_s=0.01, stale_s=0.01)
    assert not Peers([])


# --- deciding ---------------------------------------------------------------------


def test_only_peers_with_work_this_jobber_can_run_are_referred_most_first():
    peers = Peers([A, B, C, D])
    offer(peers, A, 0.0, 5)
    offer(peers, B, 0.0, 50)
    offer(peers, C, 0.0, 500, limits=p.Limits(memory_mb=4096))  # too big for HOST
    offer(peers, D, 0.0, 0)  # all its work is out
    assert peers.referral(HOST, 1.0) == (B, A)
    big = p.HostFacts(cpus=1, memory_mb=8192, slots=1)
    assert peers.referral(big, 1.0) == (C, B, A)


@pytest.mark.parametrize(
    "host",
    [
        p.HostFacts(1, 63, 1),
        p.HostFacts(1, 256, 1, max_time_s=4.0),
        p.HostFacts(1, 256, 1, max_fuel=10**6 - 1),
        p.HostFacts(1, 256, 1, max_output_kb=0),
    ],
    ids=["memory", "time", "fuel", "output"],
)
def test_a_peer_whose_jobs_a_jobber_refuses_is_not_referred_to_it(host):
    peers = Peers([A])
    offer(peers, A, 0.0, 10)
    assert peers.referral(host, 0.0) == ()
    assert peers.referral(HOST, 0.0) == (A,)


def test_finished_peers_referrers_and_never_heard_peers_are_not_referred():
    peers = Peers([A, B, C])
    offer(peers, A, 0.0, 10, finished=True)
    offer(peers, B, 0.0, 10, limits=None)  # hands out no jobs itself
    assert C in dict(peers.due(0.0)) or peers.links[C].query_id  # C asked, never answers
    assert peers.referral(HOST, 0.5) == ()
    assert peers.may_have_work(HOST, 0.5) is False  # nothing may come: no `more`
    rows = peers.status(0.5)
    assert rows[0]["finished"] is True and rows[1]["limits"] is None and rows[1]["jobs"] == 10


def test_a_peer_with_all_its_work_out_may_have_work_for_jobbers_that_fit_it():
    peers = Peers([A])
    offer(peers, A, 0.0, 0)
    assert peers.referral(HOST, 0.5) == ()
    assert peers.may_have_work(HOST, 0.5)
    assert not peers.may_have_work(p.HostFacts(1, 32, 1), 0.5)  # too small for its jobs
    assert not peers.may_have_work(HOST, STALE_S + 0.1)  # no longer heard


def test_ties_go_by_left_then_by_the_order_given():
    peers = Peers([A, B, C])
    offer(peers, A, 0.0, 10)
    offer(peers, B, 0.0, 10, left=100)
    offer(peers, C, 0.0, 10)
    assert peers.referral(HOST, 0.0) == (B, A, C)


def test_a_stale_offer_is_not_used():
    peers = Peers([A])
    offer(peers, A, 0.0, 10)
    assert peers.referral(HOST, STALE_S) == (A,)
    assert peers.referral(HOST, STALE_S + 0.01) == ()
    (row,) = peers.status(STALE_S + 0.01)
    assert row["stale"] and row["jobs"] == 10


def test_a_dead_peer_is_never_referred_and_a_live_one_keeps_its_place():
    """A answers every query; B answered once, then died: within STALE_S of its last
    answer it is no longer referred, and it stays backed off while A is asked on time."""
    peers = Peers([A, B], rng=random.Random(7))
    offer(peers, A, 0.0, 1)
    offer(peers, B, 0.0, 100)
    assert peers.referral(HOST, 0.0) == (B, A)
    now = 0.0
    while now < 60.0:
        now += 0.25
        peers.expire(now)
        for address, q in peers.due(now):
            if address == A:
                assert peers.heard(A, p.WorkOffer(q.id, 1, SMALL), now)
        assert peers.referral(HOST, now) == ((B, A) if now <= STALE_S else (A,))
    assert peers.links[B].backoff.failures >= 4
    assert now - peers.links[A].offer.at <= ASK_EVERY_S + 0.25


def test_status_shows_what_each_peer_said_when_and_its_failures():
    peers = Peers([A, B])
    offer(peers, A, 10.0, 7, left=30)
    asked(peers, 10.0)
    peers.expire(10.0 + TIMEOUT_S)
    assert peers.status(14.0)[0]["said_at"] == 10.0  # no wall clock given: the same clock
    a, b = peers.status(14.0, wall=1000.0)
    assert a["address"] == A and a["jobs"] == 7 and a["left"] == 30 and not a["finished"]
    assert a["limits"] == {"memory_mb": 64, "time_s": 5.0, "fuel": 10**6, "output_kb": 1}
    assert a["said_at"] == pytest.approx(996.0) and a["failures"] == 0 and a["error"] is None
    assert a["stale"] is False and b["stale"] is True
    assert b["said_at"] is None and b["jobs"] is None and b["failures"] == 1
    assert "no answer" in b["error"] and b["next_try"] > 1000.0 - 1


# --- the rule, against a model, under any sequence of events -----------------------

events = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]),
        st.sampled_from(["answer", "silent", "error"]),
        st.integers(0, 20),  # jobs offered
        st.sampled_from([32, 64, 512]),  # memory per job
        st.booleans(),  # finished
        st.floats(0.0, 6.0),  # time passing before
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(0, 2**32))
def test_referrals_are_exactly_the_fresh_fitting_offers_with_work_best_first(evs, seed):
    peers = Peers([A, B, C], rng=random.Random(seed))
    said: dict[str, tuple[float, int, int, bool]] = {}  # the model: last answer per peer
    now = 0.0
    for address, what, jobs, memory, finished, dt in evs:
        now += dt
        peers.expire(now)
        for a, q in peers.due(now):
            if a != address or what == "silent":
                continue
            if what == "error":
                peers.heard(a, p.Error(q.id, p.ErrorCode.INTERNAL, "x"), now)
                continue
            limits = p.Limits(memory_mb=memory)
            peers.heard(a, p.WorkOffer(q.id, jobs, limits, finished=finished), now)
            said[a] = (now, jobs, memory, finished)
        got = peers.referral(HOST, now)
        want = sorted(
            (-jobs, [A, B, C].index(a), a)
            for a, (at, jobs, memory, fin) in said.items()
            if now - at <= STALE_S and jobs > 0 and memory <= HOST.memory_mb and not fin
        )
        assert got == tuple(a for *_, a in want)
        for link in peers.links.values():  # a link is asked no sooner than its backoff
            assert link.query_id is None or link.asked_at >= link.backoff.until - 1e-9


# --- the service: referrals and offers --------------------------------------------

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


class Few(Task):
    limits = Limits(fuel=10**6, memory_mb=128, time_s=5, output_kb=1)

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n
        self.payload = Payload.from_wat(WAT, "few")

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n))

    def total(self):
        return self.n

    def on_output(self, job, output):
        pass


def service(tmp_path, peers, n: int = 3) -> Service:
    journal = Journal(tmp_path / "j.sqlite", "Few")
    policy = Policy(redundancy=1, quorum=1, backups=0)  # no backup replicas at the tail
    return Service(Few(n), journal, now=0.0, policy=policy, peers=peers)


def bored(s: Service, who: Peer, now: float, host=HOST, want: int = 4) -> p.Message:
    reply = s.handle(p.Bored(1, "j", host, want), now, who)
    s.commit()
    s.after_turn(now)
    return reply


def test_a_dealer_with_nothing_for_a_jobber_refers_it_only_to_peers_with_work(tmp_path):
    peers = Peers([A, B, C])
    s = service(tmp_path, peers)
    offer(peers, A, 0.0, 9)
    offer(peers, B, 0.0, 0)
    offer(peers, C, 0.0, 40, limits=p.Limits(memory_mb=1024))
    first, second = Peer("aa" * 32, "127.0.0.2"), Peer("bb" * 32, "127.0.0.3")
    assert len(bored(s, first, 0.1).jobs) == 2  # its own work first (two per slot)
    assert len(bored(s, second, 0.1).jobs) == 1
    reply = bored(s, second, 0.2)  # all three out: none here for now
    assert reply == p.Referral(1, (A,))
    assert isinstance(bored(s, second, STALE_S + 1), p.RetryLater)  # A's offer went stale
    s.close()


def test_with_no_peer_that_has_work_it_answers_retry_later(tmp_path):
    peers = Peers([A])
    s = service(tmp_path, peers, n=1)
    offer(peers, A, 0.0, 5, limits=p.Limits(memory_mb=4096))
    bored(s, Peer("aa" * 32, "127.0.0.2"), 0.1)
    reply = bored(s, Peer("bb" * 32, "127.0.0.3"), 0.1)
    assert isinstance(reply, p.RetryLater) and reply.seconds == RETRY_BUSY_S and reply.more
    s.close()


def test_a_jobber_too_small_for_this_dealer_is_referred_to_a_peer_it_fits(tmp_path):
    peers = Peers([A])
    s = service(tmp_path, peers)  # jobs of 128 MiB
    tiny = p.HostFacts(cpus=1, memory_mb=100, slots=1)
    no_time = p.HostFacts(cpus=1, memory_mb=1024, slots=1, max_time_s=1.0)
    who = Peer("aa" * 32, "127.0.0.2")
    for host in (tiny, no_time):
        reply = bored(s, who, 0.0, host)
        assert isinstance(reply, p.RetryLater) and reply.seconds == RETRY_IDLE_S
    offer(peers, A, 0.0, 3, limits=p.Limits(memory_mb=64, time_s=1.0))
    assert bored(s, who, 0.1, tiny) == p.Referral(1, (A,))
    assert bored(s, who, 0.1, no_time) == p.Referral(1, (A,))
    s.close()


def test_a_finished_dealer_passes_jobbers_on_to_a_peer_with_work(tmp_path):
    peers = Peers([A])
    s = service(tmp_path, peers, n=1)
    who = Peer("aa" * 32, "127.0.0.2")
    (job,) = bored(s, who, 0.0).jobs
    s.handle(p.Results(2, "j", (p.Result(job.tag, p.Status.OK, b"1", 1),)), 0.0, who)
    s.commit()
    s.after_turn(0.0)
    assert s.finished()
    r = bored(s, who, 0.1)
    assert (type(r), r.re, r.about.task) == (p.Finished, 1, "Few")  # nobody else has work
    offer(peers, A, 0.1, 3)
    assert bored(s, who, 0.2) == p.Referral(1, (A,))
    r = bored(s, who, 0.2, want=0)
    assert (type(r), r.re) == (p.Finished, 1)
    assert s.handle(p.WorkQuery(5), 0.3, who) == p.WorkOffer(5, 0, s._job_limits, 0, True)
    s.close()


def test_the_work_offer_counts_jobs_wanting_a_replica_and_jobs_left_to_draw(tmp_path):
    s = service(tmp_path, Peers([]), n=5)
    who = Peer("aa" * 32, "127.0.0.2")
    o = s.handle(p.WorkQuery(1), 0.0, Peer("", ""))
    assert (o.re, o.jobs, o.left, o.finished) == (1, 5, 5, None)
    assert o.limits.memory_mb == 128 and o.limits.fuel == 10**6
    assert len(bored(s, who, 0.0).jobs) == 2
    o = s.work_offer(2)
    assert (o.jobs, o.left) == (3, 5)  # two out, three to draw, none settled
    s.close()


def test_status_lists_the_peers(tmp_path):
    peers = Peers([A, B])
    s = service(tmp_path, peers)
    offer(peers, A, 0.0, 4)
    rows = s.status(1.0)["peers"]
    assert [r["address"] for r in rows] == [A, B] and rows[0]["jobs"] == 4
    assert rows[1]["said_at"] is None
    s.close()


# --- rules the mutation run found unstated (docs/testing.md, "Mutation testing") -------


def test_query_ids_count_from_one_across_every_peer():
    peers = Peers([A, B])
    first = asked(peers, 0.0)
    assert (first[A].id, first[B].id) == (1, 2)
    offer(peers, A, 0.5, 1)
    offer(peers, B, 0.5, 1)
    again = asked(peers, ASK_EVERY_S)
    assert (again[A].id, again[B].id) == (3, 4)
    assert "rng" not in repr(peers)  # (a Random's repr is only its address)


def test_an_offer_carries_its_fields_and_nothing_else():
    o = Offer(1, SMALL, None, False, 0.0)
    assert not hasattr(o, "__dict__")  # slotted: one per peer, replaced every ask
    with pytest.raises(AttributeError):
        o.jobs = 2  # type: ignore[misc]


def test_an_address_not_a_peer_is_never_reset():
    peers = Peers([A])
    assert peers.unreachable("tcp://127.0.0.1:1", 0.0, "refused") is False
    assert peers.links[A].backoff.failures == 0


def test_a_peer_the_shell_cannot_reach_is_reset_once():
    peers = Peers([A])
    asked(peers, 0.0)
    assert peers.unreachable(A, 0.5, "refused") is True
    assert peers.expire(0.6) == []  # its reset was asked already
