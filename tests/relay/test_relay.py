"""The relay's pure core (relay._core) driven directly with a fake clock, and its
journal (relay._journal) on a real SQLite file."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest

import protocol as p
from dealer._journal import JournalError
from net._backoff import Backoff
from protocol import MAX_RESULTS_BYTES, MAX_RESULTS_PER_MESSAGE
from relay._core import (
    DENY_AFTER,
    GIVEN_BACK,
    HORIZON_S,
    LEASE_S,
    MAX_BUFFER,
    QUOTA,
    Drop,
    Hold,
    Payload,
    RelayCore,
)
from relay._downstream import MAX_JOBS_BYTES
from relay._holdings import MAX_LATE, PACE_WINDOW_S
from relay._journal import RelayJournal
from relay._records import (
    HELD_TRANSITIONS,
    MAX_ALLOWANCE,
    OPS,
    Held,
    HeldState,
    Jobber,
    Local,
    RelayError,
)
from relay._upstream import REQUEST_TIMEOUT_S

WASM = b"\0asm\1\0\0\0"  # bytes only: the core never runs them
SHA = hashlib.sha256(WASM).hexdigest()
ANN, BOB = "aa" * 32, "bb" * 32
HOST = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
LIMITS = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1)


def spec(tag: str, deadline_s: float = 100.0, limits: p.Limits = LIMITS) -> p.JobSpec:
    return p.JobSpec(tag, SHA, (tag,), b"", limits, deadline_s)


def core(**kw) -> RelayCore:
    kw.setdefault("backoff", Backoff(min_s=1.0, max_s=8.0))
    return RelayCore("feedf00d", **kw)


def bored(c: RelayCore, key: str, now: float, want: int = 2, holding=None, host=HOST, rid=1):
    return c.bored(p.Bored(rid, key[:3], host, want, holding), now, key, "10.0.0." + key[0])


def results(c: RelayCore, key: str, now: float, *rs: p.Result) -> p.Ack:
    return c.results(p.Results(9, key[:3], rs), now, key, "10.0.0." + key[0])


def ok(tag: str, out: bytes = b"7") -> p.Result:
    return p.Result(tag, p.Status.OK, out, 10)


def request(c: RelayCore, now: float, kind: type) -> p.Message:
    """The one request of `kind` the core sends upstream now (fails if none)."""
    reqs = [m for m in c.upstream_requests(now) if isinstance(m, kind)]
    assert len(reqs) == 1, reqs
    return reqs[0]


def fill(c: RelayCore, now: float, *tags: str, deadline_s: float = 100.0) -> p.Bored:
    """A jobber asks, the relay asks upstream and takes `tags`."""
    bored(c, ANN, now, want=0)
    ask = request(c, now, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, tuple(spec(t, deadline_s) for t in tags), {SHA: WASM}), now)
    return ask


def test_no_jobber_no_fetch_then_two_per_slot_and_holding():
    c = core()
    assert c.upstream_requests(0.0) == []  # it serves nobody: it holds nothing
    reply = bored(c, ANN, 0.0, host=p.HostFacts(cpus=4, memory_mb=2048, slots=3))
    assert isinstance(reply, p.RetryLater) and reply.more is None  # nothing out anywhere
    ask = request(c, 0.0, p.Bored)
    assert ask.want == 6 and ask.holding == ()  # two per slot served, nothing held yet
    assert (ask.host.cpus, ask.host.slots, ask.host.memory_mb) == (4, 3, 2048)
    assert ask.host.platform is None
    assert c.upstream_requests(0.0) == []  # one bored at a time
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"), spec("u2")), {SHA: WASM}), 0.0)
    assert c.counts() == {"queued": 2, "out": 0, "done": 0}
    ops = c.take_ops()
    assert [type(o) for o in ops] == [Payload, Hold, Hold]
    # at half the target or below it asks for the rest, naming what it holds
    more = request(c, 0.5, p.Bored)
    assert more.want == 4 and set(more.holding) == {"u1", "u2"}
    c.upstream_reply(p.Jobs(more.id, tuple(spec(f"v{i}") for i in range(4)), {}), 0.5)
    assert not [m for m in c.upstream_requests(0.6) if isinstance(m, p.Bored)]  # full


def test_a_jobber_gets_local_tags_the_rest_of_the_deadline_and_canonical_nans():
    c = core()
    native = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1, native_nans=True)
    bored(c, ANN, 0.0, want=0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1", 50.0, native),), {SHA: WASM}), 0.0)
    jobs = bored(c, ANN, 20.0)
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1
    j = jobs.jobs[0]
    assert j.tag.startswith("feedf00d.") and j.tag != "u1"
    assert j.deadline_s == pytest.approx(30.0)  # 50 s from when the relay got it
    assert j.limits.native_nans is None and j.limits.fuel == 1000
    assert jobs.payloads == {SHA: WASM}
    cached = p.HostFacts(cpus=1, memory_mb=1024, slots=1, cached=(SHA,))
    c.upstream_reply(p.Jobs(request(c, 20.0, p.Bored).id, (spec("u2"),), {}), 20.0)
    again = bored(c, BOB, 20.0, host=cached)
    assert again.payloads == {}  # it holds the module already


def test_results_wait_until_the_upstream_acknowledges_them():
    c = core()
    fill(c, 0.0, "u1", "u2")
    jobs = bored(c, ANN, 1.0)
    ltags = [j.tag for j in jobs.jobs]
    ack = results(c, ANN, 2.0, ok(ltags[0]), ok(ltags[1], b"8"))
    assert ack.tags == tuple(ltags) and ack.rejected == ()
    assert c.counts()["done"] == 2
    sent = request(c, 2.0, p.Results)
    assert {r.tag: r.output for r in sent.results} == {"u1": b"7", "u2": b"8"}
    # each names the jobber that ran it, as the relay saw it (its key and address)
    assert {r.by for r in sent.results} == {p.Attribution(ANN, "10.0.0.a")}
    # the upstream takes one, names neither the other: it stays and goes again
    c.upstream_reply(p.Ack(sent.id, ("u1",)), 2.1)
    assert set(c.held) == {"u2"}
    assert Drop("u1") in c.take_ops()
    again = request(c, 2.2, p.Results)
    assert [r.tag for r in again.results] == ["u2"]
    c.upstream_reply(p.Ack(again.id, (), (p.Rejection("u2", p.ErrorCode.SETTLED, "late"),)), 2.3)
    assert c.held == {} and c.up.delivered == 1 and c.up.rejected == 1


def test_upstream_down_back_off_then_everything_delivered():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    results(c, ANN, 1.0, ok(j.tag))
    sent = request(c, 1.0, p.Results)
    wait = c.upstream_failed(3.0)  # no reply in time
    assert 0.5 <= wait <= 1.0
    assert c.upstream_requests(3.0 + wait - 0.01) == []  # backing off
    c.upstream_reply(p.Ack(sent.id, ("u1",)), 3.2)  # the lost request's late reply: stale
    assert "u1" in c.held
    again = request(c, 3.0 + wait, p.Results)
    assert again.id != sent.id and [r.tag for r in again.results] == ["u1"]
    c.upstream_reply(p.Ack(again.id, ("u1",)), 5.0)
    assert c.held == {} and c.up.backoff.failures == 0


def test_a_silent_jobber_loses_its_jobs_to_another_and_its_late_result_still_counts():
    c = core()
    fill(c, 0.0, "u1")
    [first] = bored(c, ANN, 0.0).jobs
    c.tick(LEASE_S + 0.1)  # ann silent a whole lease
    assert c.counts() == {"queued": 1, "out": 0, "done": 0}
    [second] = bored(c, BOB, LEASE_S + 0.2).jobs
    assert second.tag != first.tag
    # ann comes back with the result first: it counts; bob is told to cancel his
    assert results(c, ANN, LEASE_S + 1, ok(first.tag)).tags == (first.tag,)
    cancel = c.alive(p.Alive(3, "bob", (second.tag,)), LEASE_S + 1.1, BOB, "10.0.0.b")
    assert cancel.cancel == (second.tag,)
    late = results(c, BOB, LEASE_S + 2, ok(second.tag))
    assert late.tags == () and late.rejected[0].code is p.ErrorCode.SETTLED
    assert results(c, BOB, LEASE_S + 2, ok("feedf00d.99")).rejected[0].code is (
        p.ErrorCode.UNKNOWN_TAG
    )


def test_holding_releases_what_a_jobber_lost_and_abandoned_jobs_go_to_another():
    c = core()
    fill(c, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.0).jobs
    bored(c, ANN, 1.0, want=0, holding=(a.tag,))  # it restarted without b
    assert c.counts() == {"queued": 1, "out": 1, "done": 0}
    ack = results(c, ANN, 2.0, p.Result(a.tag, p.Status.ABANDONED))
    assert ack.tags == (a.tag,) and c.counts() == {"queued": 2, "out": 0, "done": 0}
    assert len(bored(c, BOB, 2.0).jobs) == 2


def test_an_implausible_result_is_refused_and_the_job_goes_to_another():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    ack = results(c, ANN, 1.0, p.Result(j.tag, p.Status.OK, b"", 10**6))  # fuel > limit
    assert ack.rejected[0].code is p.ErrorCode.IMPLAUSIBLE
    assert c.counts() == {"queued": 1, "out": 0, "done": 0}


def test_a_queued_job_past_its_deadline_is_given_back_unrun():
    c = core()
    fill(c, 0.0, "u1", "u2", deadline_s=10.0)
    [j, _] = bored(c, ANN, 0.0).jobs
    c.tick(10.5)  # u2 went out too; u1 out as well: both keep running
    assert c.counts()["done"] == 0
    results(c, ANN, 11.0, ok(j.tag))
    fill(c, 11.0, "u3", deadline_s=1.0)
    c.tick(12.5)
    r = c.held["u3"].result
    assert r is not None and r.status is p.Status.ABANDONED and r.detail == GIVEN_BACK
    assert (r.output, r.fuel) == (b"", 0)
    assert c.given_back == 1


def test_alive_upstream_vouches_for_all_it_holds_and_cancels_drop():
    c = core()
    fill(c, 0.0, "u1", "u2")
    bored(c, ANN, 0.0)
    alive = request(c, 5.0, p.Alive)
    assert set(alive.holding) == {"u1", "u2"}
    c.upstream_reply(p.AliveAck(alive.id, 8.0, ("u1",)), 5.1)
    assert set(c.held) == {"u2"} and c.up.lease_s == 8.0
    assert not [m for m in c.upstream_requests(6.0) if isinstance(m, p.Alive)]
    assert isinstance(request(c, 7.1, p.Alive), p.Alive)  # lease 8 s: alive every 2 s


def test_finished_upstream_finishes_our_jobbers_once_nothing_is_out():
    c = core()
    bored(c, ANN, 0.0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Finished(ask.id), 0.1)
    assert isinstance(bored(c, ANN, 0.2, rid=5), p.Finished)
    assert c.upstream_requests(1.0) == []  # asks again only much later


def test_the_buffer_grows_with_the_rate_results_come_back():
    c = core(horizon_s=10.0, max_buffer=50)
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
    now, n = 0.0, 0
    for _ in range(200):  # the upstream gives what is asked; the jobber runs 4 a second
        for ask in [m for m in c.upstream_requests(now) if not isinstance(m, p.Alive)]:
            if isinstance(ask, p.Bored):
                tags = [f"u{n + i}" for i in range(ask.want)]
                n += ask.want
                c.upstream_reply(p.Jobs(ask.id, tuple(spec(t) for t in tags), {SHA: WASM}), now)
            else:
                c.upstream_reply(p.Ack(ask.id, tuple(r.tag for r in ask.results)), now)
        jobs = bored(c, ANN, now, want=1, host=host)
        if isinstance(jobs, p.Jobs):
            results(c, ANN, now + 0.2, *(ok(j.tag) for j in jobs.jobs))
        now += 0.25
    rate = c.rate(now)
    assert rate == pytest.approx(4.0, rel=0.15)
    assert c.target(now) == min(50, math.ceil(rate * 10.0))  # 40: the rate over 10 s
    assert c.counts()["queued"] >= 20  # and it holds about that (asking at half of it)
    assert core(horizon_s=1000.0, max_buffer=50).max_buffer == 50
    with pytest.raises(ValueError):
        core(max_buffer=0)


def test_a_payload_that_does_not_hash_to_its_name_is_dropped_and_its_job_given_back():
    c = core()
    bored(c, ANN, 0.0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"),), {SHA: b"not it"}), 0.0)
    r = c.held["u1"].result
    assert r is not None and r.status is p.Status.INVALID and SHA not in c.payloads


def test_attributed_each_jobber_s_jobs_are_fetched_for_it_and_run_only_by_it():
    c = core(attribute=True)
    native = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1, native_nans=True)
    ann_host = p.HostFacts(cpus=2, memory_mb=512, slots=1, platform="x86", input_mb=9, files=())
    bored(c, ANN, 0.0, want=0, host=ann_host)
    bored(c, BOB, 0.0, want=0)
    first = request(c, 0.0, p.Bored)
    assert first.behalf is not None and first.want == 2
    who = first.behalf.key
    assert first.behalf.machine == "10.0.0." + who[0]
    if who == ANN:  # its own facts: memory, platform
        assert (first.host.memory_mb, first.host.platform) == (512, "x86")
    # the jobber's own input files allowance and files held: they come through the relay
    assert (first.host.input_mb, first.host.files) == ((9, ()) if who == ANN else (None, None))
    c.upstream_reply(p.Jobs(first.id, (spec("u1", limits=native), spec("u2")), {SHA: WASM}), 0.0)
    second = request(c, 0.1, p.Bored)
    other = second.behalf.key
    assert other != who and set(second.holding) == {"u1", "u2"}
    c.upstream_reply(p.Jobs(second.id, (spec("u3"),), {}), 0.1)
    assert isinstance(bored(c, other, 0.2), p.Jobs) and len(c.local) == 1  # only u3
    jobs = bored(c, who, 0.2)
    assert len(jobs.jobs) == 2 and jobs.jobs[0].limits.native_nans is True  # kept for it
    # it gives one back: that goes upstream (it was fetched for it), not to the other
    results(c, who, 0.3, p.Result(jobs.jobs[0].tag, p.Status.ABANDONED))
    assert c.held["u1"].result.status is p.Status.ABANDONED
    # it vanishes: what was fetched for it goes back upstream, unrun, as no one's fault
    bored(c, other, LEASE_S, want=0)
    c.tick(LEASE_S + 0.3)
    r = c.held["u2"].result
    assert r is not None and r.status is p.Status.ABANDONED and (r.output, r.fuel) == (b"", 0)


def test_the_journal_keeps_everything_across_a_restart(tmp_path):
    path = tmp_path / "relay.sqlite"
    j = RelayJournal(path)
    c = RelayCore(j.tag_prefix)
    sig = p.Signature("cd" * 32, b"s" * 64)
    bored(c, ANN, 0.0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(
        p.Jobs(ask.id, (spec("u1"), spec("u2"), spec("u3")), {SHA: WASM}, {SHA: sig}), 0.0
    )
    a, b = bored(c, ANN, 1.0).jobs
    results(c, ANN, 2.0, ok(a.tag))
    j.apply(c.take_ops())
    j.close()
    j2 = RelayJournal(path)
    c2 = RelayCore(j2.tag_prefix)
    c2.load(j2.held(), j2.payloads(), j2.local(), j2.next_tag(), 10.0)
    assert c2.counts() == {"queued": 1, "out": 1, "done": 1}
    by = p.Attribution(ANN, "10.0.0.a")
    assert c2.held["u1"].result == dataclasses.replace(ok("u1"), by=by)
    assert c2.held["u1"].by == ANN
    assert c2.signatures == {SHA: sig} and c2.payloads == {SHA: WASM}
    # b's result, sent after the restart, is taken; new local tags do not repeat old ones
    assert results(c2, ANN, 11.0, ok(b.tag)).tags == (b.tag,)
    [fresh] = bored(c2, BOB, 11.0).jobs
    assert fresh.tag not in (a.tag, b.tag)
    j2.close()
    with pytest.raises(JournalError, match="journal of task 'borednet relay', not 'Factoring'"):
        from dealer._journal import Journal

        Journal(path, "Factoring")


def test_attributed_a_retry_later_for_one_jobber_does_not_starve_the_other():
    c = core(attribute=True)
    bored(c, ANN, 0.0, want=0)
    bored(c, BOB, 0.0, want=0)
    first = request(c, 0.0, p.Bored)
    c.upstream_reply(p.RetryLater(first.id, 2.0, "nothing for that machine"), 0.0)
    second = request(c, 0.1, p.Bored)  # at once, for the other one
    assert {first.behalf.key, second.behalf.key} == {ANN, BOB}
    c.upstream_reply(p.RetryLater(second.id, 2.0, "nothing"), 0.1)
    assert not [m for m in c.upstream_requests(1.0) if isinstance(m, p.Bored)]
    third = request(c, 2.05, p.Bored)
    assert third.behalf.key == first.behalf.key  # the one asked for longest ago


def test_a_peer_dealer_is_told_what_the_buffer_holds():
    c = core()
    assert c.offer(1, 0.0) == p.WorkOffer(1, 0, None, None, None)
    native = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1, native_nans=True)
    bored(c, ANN, 0.0, want=0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"), spec("u2", 200.0, native)), {SHA: WASM}), 0.0)
    bored(c, ANN, 0.1, want=1)  # takes u1, the earliest deadline
    offer = c.offer(2, 0.1)
    assert offer.jobs == 1 and offer.limits.memory_mb == 64  # one left in the buffer
    assert offer.limits.native_nans is None  # as it would go down
    c.up.finished = True
    assert c.offer(3, 0.2).finished is None  # still holding work
    c.held.clear()
    assert c.offer(4, 0.3) == p.WorkOffer(4, 0, None, None, True)


def test_results_go_upstream_at_most_256_and_under_768_kib_a_message():
    c = core(max_buffer=400, quota=400)  # a jobber allowed to hold 200 at once
    bored(c, ANN, 0.0, want=0, host=p.HostFacts(cpus=1, memory_mb=1024, slots=200))
    ask = request(c, 0.0, p.Bored)
    assert ask.want == 400
    c.upstream_reply(p.Jobs(ask.id, tuple(spec(f"u{i}") for i in range(300)), {SHA: WASM}), 0.0)
    for _ in range(2):
        jobs = bored(c, ANN, 1.0, want=200, host=p.HostFacts(cpus=1, memory_mb=1024, slots=200))
        results(c, ANN, 1.0, *(ok(j.tag) for j in jobs.jobs))
    first = request(c, 1.0, p.Results)
    assert len(first.results) == 256  # the rest go next
    c.upstream_reply(p.Ack(first.id, tuple(r.tag for r in first.results)), 1.0)
    assert len(request(c, 1.1, p.Results).results) == 300 - 256


def test_a_results_message_stays_under_768_kib_unless_it_carries_one():
    big = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1024)
    c = core()
    bored(c, ANN, 0.0, want=0, host=p.HostFacts(cpus=1, memory_mb=1024, slots=2))
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(
        p.Jobs(ask.id, tuple(spec(f"u{i}", limits=big) for i in range(3)), {SHA: WASM}), 0.0
    )
    jobs = bored(c, ANN, 1.0, want=3, host=p.HostFacts(cpus=1, memory_mb=1024, slots=2))
    sizes = (700 * 1024, 60 * 1024, 900 * 1024)
    results(c, ANN, 1.0, *(ok(j.tag, b"x" * n) for j, n in zip(jobs.jobs, sizes, strict=True)))
    first = request(c, 1.0, p.Results)
    assert [len(r.output) for r in first.results] == [700 * 1024, 60 * 1024]  # 760 KiB
    c.upstream_reply(p.Ack(first.id, tuple(r.tag for r in first.results)), 1.0)
    assert [len(r.output) for r in request(c, 1.1, p.Results).results] == [900 * 1024]


def test_the_core_refuses_a_buffer_or_times_out_of_range():
    for bad in ({"max_buffer": 0}, {"max_buffer": 4097}, {"horizon_s": 0.0}, {"lease_s": 0.0}):
        with pytest.raises(ValueError):
            core(**bad)
    assert core(max_buffer=4096, horizon_s=0.001, lease_s=0.001).max_buffer == 4096


def test_attributed_each_jobber_s_buffer_grows_with_its_own_rate():
    c = core(attribute=True, horizon_s=10.0, max_buffer=60)
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
    now, n, asked = 0.0, 0, {}
    for _ in range(200):  # ann returns 4 a second, bob nothing after his first two
        for ask in [m for m in c.upstream_requests(now) if not isinstance(m, p.Alive)]:
            if isinstance(ask, p.Bored):
                asked[ask.behalf.key] = ask.want
                tags = [f"u{n + i}" for i in range(ask.want)]
                n += ask.want
                c.upstream_reply(p.Jobs(ask.id, tuple(spec(t) for t in tags), {SHA: WASM}), now)
            else:
                c.upstream_reply(p.Ack(ask.id, tuple(r.tag for r in ask.results)), now)
        jobs = bored(c, ANN, now, want=1, host=host)
        if isinstance(jobs, p.Jobs):
            results(c, ANN, now + 0.2, *(ok(j.tag) for j in jobs.jobs))
        bored(c, BOB, now, want=0, host=host)
        now += 0.25
    ann, bob = c.jobbers[ANN], c.jobbers[BOB]
    assert c._rate_of(ann, now) == pytest.approx(4.0, rel=0.15)
    assert c._target_of(ann, now) == math.ceil(c._rate_of(ann, now) * 10.0)  # about 40
    assert c._target_of(bob, now) == 2  # two per slot: it returns nothing
    mine = sum(1 for h in c.held.values() if h.for_key == ANN and h.result is None)
    assert mine >= 20  # ann's own buffer, asked for at half of its target
    assert sum(1 for h in c.held.values() if h.for_key == BOB) == 2


def test_an_error_from_upstream_is_a_failed_contact():
    c = core()
    bored(c, ANN, 0.0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Error(ask.id, p.ErrorCode.INTERNAL, "busy"), 0.0)
    assert c.up.backoff.failures == 1 and c.up.bored is None
    assert c.up.contacts == 0 and c.up.last_reply == 0.0
    assert c.upstream_requests(0.4) == []  # backing off (1 s, times 0.5 to 1)
    again = request(c, 1.0, p.Bored)
    assert again.id > ask.id
    c.upstream_reply(p.RetryLater(again.id, 5.0), 1.0)
    assert c.up.backoff.failures == 0 and c.up.contacts == 1 and c.up.last_reply == 1.0


def test_retry_later_referral_and_finished_hold_back_asking_not_delivering():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    ask = request(c, 0.1, p.Bored)
    c.upstream_reply(p.RetryLater(ask.id, 5.0), 0.1)
    results(c, ANN, 0.2, ok(j.tag))
    kinds = [type(m) for m in c.upstream_requests(0.3)]
    assert p.Results in kinds and p.Bored not in kinds  # results go; asking waits
    assert [type(m) for m in c.upstream_requests(5.1) if isinstance(m, p.Bored)] == [p.Bored]
    c.upstream_reply(p.Referral(c.up.bored, ("tcp://elsewhere:7117",)), 5.2)
    assert not [m for m in c.upstream_requests(5.9) if isinstance(m, p.Bored)]  # min backoff
    ask = request(c, 6.3, p.Bored)
    c.upstream_reply(p.Finished(ask.id), 6.3)
    assert c.up.finished and not [m for m in c.upstream_requests(60.0) if isinstance(m, p.Bored)]
    bored(c, ANN, 66.3, want=0)
    ask = request(c, 66.4, p.Bored)  # a minute later: a new batch, maybe
    c.upstream_reply(p.Jobs(ask.id, (spec("v1"),), {}), 66.4)
    assert not c.up.finished


def test_signatures_are_kept_and_sent_with_every_job_that_names_the_payload():
    c = core()
    sig = p.Signature("cd" * 32, b"s" * 64)
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)
    bored(c, ANN, 0.0, want=0, host=four)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"),), {SHA: WASM}), 0.0)  # unsigned at first
    assert c.signatures == {}
    c.take_ops()
    ask = request(c, 0.1, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u2"), spec("u1")), {}, {SHA: sig}), 0.1)
    assert c.signatures == {SHA: sig} and len(c.held) == 2  # u1 sent twice: held once
    assert Payload(SHA, WASM, sig._to_wire()) in c.take_ops()
    jobs = bored(c, ANN, 0.2, want=1, host=four)
    assert jobs.signatures == {SHA: sig}
    cached = p.HostFacts(cpus=1, memory_mb=1024, slots=1, cached=(SHA,))
    ask = request(c, 0.3, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u3"),), {SHA: WASM}, {SHA: sig}), 0.3)
    assert not [o for o in c.take_ops() if isinstance(o, Payload)]  # nothing new to keep
    again = bored(c, BOB, 0.4, host=cached)
    assert again.payloads == {} and again.signatures == {SHA: sig}


def test_the_relay_describes_itself_as_the_jobbers_it_serves():
    c = core()
    small = p.HostFacts(cpus=2, memory_mb=512, slots=2, max_time_s=10.0, max_fuel=50)
    big = p.HostFacts(
        cpus=8, memory_mb=4096, slots=6, max_time_s=30.0, max_fuel=None, input_mb=64, files=(SHA,)
    )
    bored(c, ANN, 0.0, want=0, host=small)
    bored(c, BOB, 0.0, want=0, host=big)
    h = c.host(0.0)
    assert (h.cpus, h.slots, h.memory_mb) == (10, 8, 4096)
    assert h.max_time_s == 30.0  # the most any of them allows
    assert h.max_fuel is None  # one of them sets no limit
    assert h.max_output_kb is None and h.platform is None
    # input files come through the relay: the most any of them takes; none held of its own
    assert h.input_mb == 64 and h.files is None
    assert c.host(LEASE_S + 1).cpus == 1  # nobody served: the least there is
    assert c.host(LEASE_S + 1).memory_mb == 0


def test_requests_have_distinct_ids_and_a_lost_one_is_sent_again():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    results(c, ANN, 0.0, ok(j.tag))
    reqs = c.upstream_requests(5.0)
    assert {type(m) for m in reqs} == {p.Results, p.Bored, p.Alive}
    assert len({m.id for m in reqs}) == 3
    c.upstream_failed(5.5)  # all three lost
    assert c.up.in_flight == () and (c.up.bored, c.up.results, c.up.alive) == (None,) * 3
    again = c.upstream_requests(10.1)
    assert {type(m) for m in again} == {p.Results, p.Bored, p.Alive}
    assert not {m.id for m in again} & {m.id for m in reqs}
    # an ack naming what was not in the request changes nothing
    res = next(m for m in again if isinstance(m, p.Results))
    c.upstream_reply(p.Ack(res.id, ("u9",)), 10.2)
    assert "u1" in c.held


def test_a_jobber_gets_what_it_runs_soon_and_no_more():
    c = core(max_buffer=40)
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
    bored(c, ANN, 0.0, want=0, host=p.HostFacts(cpus=1, memory_mb=1024, slots=10))
    c.upstream_reply(
        p.Jobs(request(c, 0.0, p.Bored).id, tuple(spec(f"u{i}") for i in range(20)), {SHA: WASM}),
        0.0,
    )
    first = bored(c, BOB, 0.0, want=5, host=host)
    assert len(first.jobs) == 2  # two per slot
    full = bored(c, BOB, 0.1, want=5, host=host)
    assert isinstance(full, p.RetryLater) and full.more is True and full.seconds == 0.2
    results(c, BOB, 0.5, *(ok(j.tag) for j in first.jobs))
    more = bored(c, BOB, 0.6, want=5, host=host)
    assert len(more.jobs) == 2
    results(c, BOB, 0.9, *(ok(j.tag) for j in more.jobs))
    fast = bored(c, BOB, 1.0, want=10, host=host)
    assert len(fast.jobs) == 4  # it returned four in the last second
    results(c, BOB, 1.2, *(ok(j.tag) for j in fast.jobs))
    later = bored(c, BOB, 3.0, want=10, host=host)
    assert len(later.jobs) == 2  # none in the last second: two per slot again
    assert c.status(3.0, "up")["jobbers"][1]["results"] == 8


def test_a_job_too_big_for_a_jobber_waits_for_one_it_fits_and_a_late_one_is_not_served():
    c = core()
    big = p.Limits(fuel=1000, memory_mb=2048, time_s=5.0, output_kb=1)
    bored(c, ANN, 0.0, want=0, host=p.HostFacts(cpus=1, memory_mb=4096, slots=1))
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1", limits=big), spec("u2", 5.0)), {SHA: WASM}), 0.0)
    small = bored(c, BOB, 6.0)  # u2's deadline has passed, u1 needs 2048 MiB
    assert isinstance(small, p.RetryLater) and small.seconds == 30.0
    assert "2048 MiB" in small.reason
    assert [j.tag for j in bored(c, ANN, 6.0, host=p.HostFacts(1, 4096, 1)).jobs] == [
        next(iter(c.local))
    ]
    assert c.held["u1"].local and not c.held["u2"].local


def test_a_jobs_message_to_a_jobber_stays_under_16_mib_of_stdin():
    c = core()
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=4)
    bored(c, ANN, 0.0, want=0, host=host)
    specs = tuple(
        p.JobSpec(f"u{i}", SHA, ("x",), b"\0" * (7 * 1024 * 1024), LIMITS, 100.0) for i in range(3)
    )
    c.upstream_reply(p.Jobs(request(c, 0.0, p.Bored).id, specs, {SHA: WASM}), 0.0)
    first = bored(c, ANN, 0.1, want=3, host=host)
    assert len(first.jobs) == 2 and first.payloads == {SHA: WASM}  # 14 MiB and the module
    second = bored(c, ANN, 0.2, want=3, host=host)
    assert len(second.jobs) == 1


def test_retry_later_says_whether_work_may_come():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    busy = bored(c, BOB, 0.1)  # u1 is out with ann
    assert isinstance(busy, p.RetryLater) and busy.more is True and busy.seconds == 0.2
    results(c, ANN, 0.2, ok(j.tag))
    idle = bored(c, BOB, 0.3)
    assert idle.more is None and "asking upstream" in idle.reason and idle.seconds == 0.2
    c.upstream_failed(0.4)
    cut_off = bored(c, BOB, 0.5)
    assert cut_off.seconds == 1.0  # the upstream is not answering: no hurry


def test_alive_cancels_what_is_not_the_jobber_s_or_is_decided():
    c = core()
    fill(c, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.0).jobs
    results(c, ANN, 0.1, ok(a.tag))
    ack = c.alive(p.Alive(1, "ann", (a.tag, b.tag, "feedf00d.77")), 0.2, ANN, "10.0.0.a")
    assert set(ack.cancel) == {a.tag, "feedf00d.77"} and ack.lease_s == LEASE_S
    assert c.alive(p.Alive(2, "bob", (b.tag,)), 0.3, BOB, "10.0.0.b").cancel == (b.tag,)
    assert c.held["u2"].local == {b.tag}  # bob's word changes nothing of ann's
    c.alive(p.Alive(3, "ann", ()), 0.4, ANN, "10.0.0.a")  # ann lost it
    assert not c.held["u2"].local and c.jobbers[ANN].last_seen == 0.4


def test_the_offer_attributed_and_status():
    c = core(attribute=True)
    assert c.offer(1, 0.0).jobs == 1  # asks for each jobber: it may have one for anyone
    c.upstream_failed(0.0)
    assert c.offer(2, 0.1).jobs == 0
    s = c.status(0.2, "tcp://up:7117")
    assert s["relay"] == "tcp://up:7117" and s["task"] is None
    assert s["upstream"]["failures"] == 1 and s["upstream"]["last_reply"] is None
    assert (s["queued"], s["out"], s["done"], s["target"]) == (0, 0, 0, 0)


def test_asking_upstream_at_half_the_target_exactly():
    c = core()
    three = p.HostFacts(cpus=3, memory_mb=1024, slots=3)
    bored(c, ANN, 0.0, want=0, host=three)  # target 6
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, tuple(spec(f"u{i}") for i in range(4)), {SHA: WASM}), 0.0)
    assert not [m for m in c.upstream_requests(0.1) if isinstance(m, p.Bored)]  # 4 queued
    bored(c, ANN, 0.2, want=1, host=three)  # 3 queued, 1 out: 3 * 2 <= 6
    more = request(c, 0.3, p.Bored)
    assert more.want == 2  # up to the target of 6 held open
    c.upstream_reply(p.Jobs(more.id, (spec("v1"), spec("v2")), {}), 0.3)
    # an ack that names held tags it was not asked about drops nothing
    [j] = bored(c, ANN, 0.4, want=1, host=three).jobs
    results(c, ANN, 0.5, ok(j.tag))
    sent = request(c, 0.6, p.Results)
    c.upstream_reply(p.Ack(sent.id, ("u3",), (p.Rejection("v1", p.ErrorCode.SETTLED, "x"),)), 0.6)
    assert {"u3", "v1"} <= set(c.held) and len(c.held) == 6
    assert c.local == {k: v for k, v in c.local.items() if v.utag in c.held}


def test_attributed_a_jobber_s_own_buffer_is_topped_up_at_half_and_within_the_relay_s():
    c = core(attribute=True, max_buffer=6)
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)  # its own target: 8, the relay's 6
    bored(c, ANN, 0.0, want=0, host=four)
    ask = request(c, 0.0, p.Bored)
    assert ask.want == 6  # no more than the relay's buffer holds
    c.upstream_reply(p.Jobs(ask.id, tuple(spec(f"u{i}") for i in range(3)), {SHA: WASM}), 0.0)
    again = request(c, 0.1, p.Bored)  # 3 queued: 6 <= 6
    assert again.want == 3
    c.upstream_reply(p.Jobs(again.id, (spec("u3"),), {}), 0.1)
    assert not [m for m in c.upstream_requests(0.2) if isinstance(m, p.Bored)]  # 8 > 6
    c.upstream_reply(p.Jobs(999, (spec("u9"),), {}), 0.2)  # a stale reply: not taken
    assert "u9" not in c.held


def test_a_jobber_silent_ten_minutes_holding_nothing_is_forgotten():
    c = core()
    bored(c, ANN, 0.0)
    c.tick(599.0)
    assert ANN in c.jobbers
    c.tick(600.0)
    assert ANN not in c.jobbers


def test_payload_and_signature_together_and_a_job_sent_twice_in_one_reply():
    c = core()
    sig = p.Signature("cd" * 32, b"s" * 64)
    bored(c, ANN, 0.0, want=0, host=p.HostFacts(cpus=1, memory_mb=1024, slots=4))
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"), spec("u1")), {SHA: WASM}, {SHA: sig}), 0.0)
    assert c.signatures == {SHA: sig}
    ops = c.take_ops()
    assert [type(o) for o in ops] == [Payload, Hold]  # once each


def test_the_journal_forgets_released_and_dropped_replicas(tmp_path):
    path = tmp_path / "relay.sqlite"
    j = RelayJournal(path)
    c = RelayCore(j.tag_prefix)
    fill(c, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.0).jobs
    bored(c, ANN, 1.0, want=0, holding=(b.tag,))  # a released
    results(c, ANN, 1.0, ok(b.tag))
    c.upstream_reply(p.Ack(request(c, 1.0, p.Results).id, ("u2",)), 1.0)  # u2 dropped
    j.apply(c.take_ops())
    j.close()
    j2 = RelayJournal(path)
    assert list(j2.local()) == [] and [h[0] for h in j2.held()] == ["u1"]
    assert j2.next_tag() == 2
    j2.close()


# --- standing: the relay answers for its jobbers, and only for them -------------------


def fetched_for(c: RelayCore, key: str, now: float, *tags: str) -> None:
    """Attributed: `key` asks, the relay asks upstream on its behalf and takes `tags`."""
    bored(c, key, now, want=0)
    for _ in range(len(c.jobbers) + 1):  # others asked for first get nothing
        if c.up.bored is None:
            c.upstream_requests(now)
        if c.up.bored is not None and c.up.bored_for == key:
            c.upstream_reply(p.Jobs(c.up.bored, tuple(spec(t) for t in tags), {SHA: WASM}), now)
            return
        if c.up.bored is not None:
            c.upstream_reply(p.Jobs(c.up.bored, ()), now)
    raise AssertionError(f"the relay never asked on behalf of {key}")


def alive_ack(c: RelayCore, now: float, standing) -> None:
    """The upstream answers an alive of the relay's with `standing` (the alive sent now,
    or, if none is due, as if one were)."""
    sent = [m for m in c.upstream_requests(now) if isinstance(m, p.Alive)]
    if not sent:
        c.up.line.forget("alive")  # (one still out from before: as if a fresh one went)
        c.up.line.sent("alive", now)
    c.upstream_reply(p.AliveAck(c.up.alive, 20.0, (), standing), now)


def test_votes_lost_upstream_cost_the_jobber_that_lost_them_and_no_other():
    c = core(attribute=True)
    bored(c, ANN, 0.0, want=0)
    bored(c, BOB, 0.0, want=0)
    alive_ack(c, 0.0, (p.Standing(ANN, 0, 1, False), p.Standing(BOB, 2, 0, False)))
    assert c.up.attributes is True
    assert c.jobbers[ANN].allowance == QUOTA // 2  # one lost vote halves it
    assert c.jobbers[BOB].allowance == QUOTA + 2  # two won add two
    # totals, not changes: the same standing again changes nothing
    alive_ack(c, 10.0, (p.Standing(ANN, 0, 1, False), p.Standing(BOB, 2, 0, False)))
    assert (c.jobbers[ANN].allowance, c.jobbers[BOB].allowance) == (QUOTA // 2, QUOTA + 2)
    # and the allowance bounds what the jobber is given at once
    fetched_for(c, ANN, 10.0, "u1", "u2", "u3")
    got = bored(c, ANN, 10.1, want=3, host=p.HostFacts(cpus=4, memory_mb=1024, slots=4))
    assert len(got.jobs) == QUOTA // 2
    s = {j["key"]: j for j in c.status(10.2, "up")["jobbers"]}
    assert (s[ANN]["invalid"], s[BOB]["valid"], s[ANN]["denied"]) == (1, 2, None)


def test_a_jobber_that_loses_deny_after_votes_is_denied_here_and_its_work_goes_back():
    c = core(attribute=True)
    fetched_for(c, ANN, 0.0, "u1", "u2")
    fetched_for(c, BOB, 0.0, "v1")
    [a] = bored(c, ANN, 0.1, want=1).jobs
    alive_ack(c, 1.0, (p.Standing(ANN, 1, DENY_AFTER - 1, False),))
    assert not c.jobbers[ANN].denied  # lost 2, won 1: not yet
    alive_ack(c, 10.0, (p.Standing(ANN, 1, DENY_AFTER, False),))
    assert "lost 3 votes upstream and won 1" in c.jobbers[ANN].denied
    reply = bored(c, ANN, 10.1)
    assert isinstance(reply, p.Error) and reply.code is p.ErrorCode.DENIED
    # what was fetched for it goes back upstream unrun; its result is refused
    assert [c.held[u].result.status for u in ("u1", "u2")] == [p.Status.ABANDONED] * 2
    ack = results(c, ANN, 10.2, ok(a.tag))
    assert ack.tags == () and ack.rejected[0].code is p.ErrorCode.DENIED
    assert c.held["u1"].result.status is p.Status.ABANDONED and c.held["u1"].by == ""
    # bob goes on: his job, his asking on his own behalf
    assert len(bored(c, BOB, 10.3, want=1).jobs) == 1
    assert [j.key for j in c.served(10.4)] == [BOB]
    asks = [m for m in c.upstream_requests(10.5) if isinstance(m, p.Bored)]
    assert all(m.behalf.key == BOB for m in asks)


def test_the_upstream_s_denial_lands_on_the_jobber_by_standing_rejection_or_error():
    c = core(attribute=True)
    for key in (ANN, BOB, "cc" * 32):
        bored(c, key, 0.0, want=0)
    alive_ack(c, 0.0, (p.Standing(ANN, 0, 1, True),))  # said in standing
    assert c.jobbers[ANN].denied == "denied upstream"
    # a result of bob's refused upstream as denied
    fetched_for(c, BOB, 1.0, "v1")
    [b] = bored(c, BOB, 1.1, want=1).jobs
    results(c, BOB, 1.2, ok(b.tag))
    sent = request(c, 1.3, p.Results)
    assert sent.results[0].by.key == BOB
    rejection = p.Rejection("v1", p.ErrorCode.DENIED, "this identity is denied by the dealer")
    c.upstream_reply(p.Ack(sent.id, (), (rejection,)), 1.3)
    assert "denied upstream" in c.jobbers[BOB].denied
    # a bored on carol's behalf answered `denied`: carol is denied, the relay backs off not
    c.upstream_requests(2.0)
    assert c.up.bored is not None and c.up.bored_for == "cc" * 32  # the one not denied
    c.upstream_reply(p.Error(c.up.bored, p.ErrorCode.DENIED, "this identity is denied"), 2.0)
    assert c.jobbers["cc" * 32].denied and c.up.backoff.failures == 0


def test_an_implausible_result_halves_the_jobber_s_allowance():
    c = core()
    fill(c, 0.0, "u1", "u2")
    [a] = bored(c, ANN, 0.0, want=1).jobs
    bad = p.Result(a.tag, p.Status.OK, b"7", LIMITS.fuel + 1)
    assert results(c, ANN, 0.1, bad).rejected[0].code is p.ErrorCode.IMPLAUSIBLE
    assert (c.jobbers[ANN].implausible, c.jobbers[ANN].allowance) == (1, QUOTA // 2)


def test_without_standing_an_acknowledged_result_grows_the_allowance():
    c = core()  # one jobber upstream: the upstream names none of ours
    fill(c, 0.0, "u1")
    [a] = bored(c, ANN, 0.0, want=1).jobs
    results(c, ANN, 0.1, ok(a.tag))
    sent = request(c, 0.2, p.Results)
    c.upstream_reply(p.Ack(sent.id, ("u1",)), 0.2)
    assert c.jobbers[ANN].allowance == QUOTA + 1


def test_an_upstream_that_cannot_attribute_is_reported_at_start(caplog):
    c = core(attribute=True)
    alive = request(c, 0.0, p.Alive)  # at start, holding nothing: to learn it
    assert alive.holding == ()
    c.upstream_reply(p.AliveAck(alive.id, 20.0), 0.0)  # no standing: an older upstream
    assert c.up.attributes is False
    assert "THE UPSTREAM CANNOT ATTRIBUTE" in caplog.text
    assert not [m for m in c.upstream_requests(30.0) if isinstance(m, p.Alive)]  # once
    # one that can, heard at start, is not reported
    caplog.clear()
    d = core(attribute=True)
    alive_ack(d, 0.0, ())
    assert d.up.attributes is True and "CANNOT" not in caplog.text
    assert not [m for m in core().upstream_requests(0.0) if isinstance(m, p.Alive)]  # pooled


def test_attributing_the_relay_says_alive_while_it_serves_to_hear_its_jobbers_standing():
    c = core(attribute=True)
    alive_ack(c, 0.0, ())  # an upstream that attributes
    assert not [m for m in c.upstream_requests(1.0) if isinstance(m, p.Alive)]  # no one served
    bored(c, ANN, 1.0, want=0)
    request(c, 1.0, p.Bored)  # asked for her: nothing for now
    c.upstream_reply(p.RetryLater(c.up.bored, 60.0), 1.0)
    assert not c.held
    alive = request(c, 6.0, p.Alive)  # holding nothing, serving ann
    c.upstream_reply(p.AliveAck(alive.id, 20.0, (), (p.Standing(ANN, 0, 1, False),)), 6.0)
    assert c.jobbers[ANN].lost == 1 and c.jobbers[ANN].allowance == QUOTA // 2
    assert not [m for m in c.upstream_requests(8.0) if isinstance(m, p.Alive)]  # every 5 s


# --- the held replica's lifecycle, as a table ------------------------------------------


def test_a_held_replica_moves_only_as_its_table_allows():
    h = Held("u1", spec("u1"), 0.0)
    assert h.state is HeldState.QUEUED
    for event, state in (("sent", "out"), ("released", "queued"), ("given_back", "done")):
        h.fire(event)
        assert h.state.value == state
    with pytest.raises(RelayError, match="sent not allowed in state done"):
        h.fire("sent")
    assert h.state is HeldState.DONE  # the refused event changed nothing
    h.fire("dropped")
    assert all(s is not HeldState.DROPPED for s, _ in HELD_TRANSITIONS)  # dropped is the end


# --- the upstream link (net._link), on the core's one clock ----------------------------


def test_requests_upstream_time_out_on_the_core_clock_and_reset_the_socket():
    c = core(request_timeout_s=2.0)
    bored(c, ANN, 0.0)
    ask = request(c, 10.0, p.Bored)
    assert c.upstream.late(12.0) == []  # not past its deadline yet
    [late] = c.upstream.late(12.01)
    assert (late.id, late.kind, late.deadline) == (ask.id, "bored", 12.0)
    assert not c.upstream.take_reset()
    c.upstream_failed(12.01)
    assert c.upstream.take_reset() and not c.upstream.take_reset()
    assert c.up.bored is None and c.up.backoff.failures == 1


def test_an_error_keeps_the_other_requests_out_and_the_socket():
    c = core()
    fill(c, 0.0, "u1")
    [j] = bored(c, ANN, 0.0).jobs
    results(c, ANN, 0.5, ok(j.tag))
    res = request(c, 1.0, p.Results)
    other = next(r for k, r in c.up.line.out.items() if k != "results")  # an alive, a bored
    c.upstream_reply(p.Error(other.id, p.ErrorCode.INTERNAL, "busy"), 1.1)
    assert c.up.backoff.failures == 1 and other.kind not in c.up.line.out
    assert c.up.results == res.id
    assert not c.upstream.take_reset()
    c.upstream_reply(p.Ack(res.id, ("u1",)), 1.2)  # still taken: the socket answered
    assert "u1" not in c.held and c.up.backoff.failures == 0


def test_the_upstream_key_is_learnt_once_on_first_use_and_kept():
    c = core()
    c.upstream.given_key(None)
    hello = c.upstream.hello(0.0)
    assert hello == p.Hello(1) and c.upstream.hello(0.0) is None  # one out at a time
    assert c.upstream.hello_reply(p.HelloReply(1, "cd" * 32), 0.2).value == "learnt"
    assert c.up.line.key == "cd" * 32 and c.upstream.hello(0.3) is None
    c.upstream_failed(1.0)
    assert c.upstream.hello(100.0) is None  # pinned and kept: never asked again
    given = core()
    given.upstream.given_key("ef" * 32)
    assert given.upstream.hello(0.0) is None


# --- rules the mutation run found unstated (docs/testing.md, "Mutation testing") -------


def test_a_new_jobber_starts_with_a_clean_record_and_the_quota():
    c = core()
    bored(c, ANN, 3.0, want=0)
    [row] = c.status(3.0, "up")["jobbers"]
    assert row == {
        "key": ANN,
        "name": ANN[:3],
        "machine": "10.0.0.a",
        "results": 0,
        "allowance": QUOTA,
        "implausible": 0,
        "valid": 0,
        "invalid": 0,
        "denied": None,
        "holding": 0,
        "last_seen": 3.0,
        "gone": False,
    }


def test_journal_operations_and_local_replicas_are_facts_never_changed():
    for record in (Drop("u1"), Local("x.0", "u1", ANN, "10.0.0.a", 0.0)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.utag = "u2"  # type: ignore[misc]


def test_the_constants_docs_federation_md_and_docs_protocol_md_state():
    # the defaults of --horizon, --buffer and --request-timeout; the pace window; what
    # one results message upstream and one jobs message downstream carry at most
    assert (HORIZON_S, MAX_BUFFER, REQUEST_TIMEOUT_S, PACE_WINDOW_S) == (120.0, 1024, 10.0, 10.0)
    assert (MAX_RESULTS_PER_MESSAGE, MAX_RESULTS_BYTES) == (256, 768 * 1024)
    assert MAX_JOBS_BYTES == 16 * 1024 * 1024


def test_a_held_replica_made_as_a_journal_kept_it_starts_in_its_state():
    assert Held("u1", spec("u1"), 0.0).state is HeldState.QUEUED
    assert Held("u1", spec("u1"), 0.0, local={"x.0"}).state is HeldState.OUT
    done = Held("u1", spec("u1"), 0.0, ok("u1"), local={"x.0"})
    assert done.state is HeldState.DONE and done.deadline_at == 100.0


def test_the_records_carry_their_declared_fields_and_nothing_else():
    # slotted: thousands are kept (a buffer of 1,024 held, 65,536 late local replicas),
    # and a misspelt field set on a mutable one fails instead of adding an attribute
    h = Held("u1", spec("u1"), 0.0)
    ops = [cls(*(None,) * len(dataclasses.fields(cls))) for cls in OPS.values()]
    records = [h, Jobber(ANN), Local("x.0", "u1", ANN, "", 0.0), core().up, *ops]
    assert all(not hasattr(r, "__dict__") for r in records), records
    with pytest.raises(AttributeError):
        h.stat = HeldState.OUT  # type: ignore[attr-defined]


def test_an_allowance_halves_to_one_at_least_and_grows_to_the_cap_at_most():
    j = Jobber(ANN, allowance=5)
    j.bad()
    assert j.allowance == 2
    j.bad()
    j.bad()
    assert j.allowance == 1
    j.good()
    assert j.allowance == 2
    j.allowance = MAX_ALLOWANCE - 1
    j.good()
    j.good()
    assert j.allowance == MAX_ALLOWANCE


def test_the_core_takes_a_buffer_and_a_quota_anywhere_in_their_ranges():
    for bad in ({"quota": 0}, {"quota": MAX_ALLOWANCE + 1}, {"horizon_s": -1.0}):
        with pytest.raises(ValueError):
            core(**bad)
    for good in ({"max_buffer": 1}, {"quota": 1}, {"quota": MAX_ALLOWANCE}):
        core(**good)
    assert core(quota=MAX_ALLOWANCE).quota == MAX_ALLOWANCE
    plain = RelayCore("feedf00d")  # not attributing unless asked: no job promised a peer
    assert plain.offer(1, 0.0).jobs == 0


def test_status_counts_what_each_jobber_holds_and_who_is_gone_at_its_lease():
    c = core(lease_s=20.0)
    fill(c, 0.0, "u1")
    bored(c, ANN, 1.0)  # holds u1's local replica
    bored(c, BOB, 2.0, want=0)
    rows = {r["key"]: r for r in c.status(22.0, "up")["jobbers"]}
    assert (rows[ANN]["holding"], rows[BOB]["holding"]) == (1, 0)
    assert (rows[ANN]["gone"], rows[BOB]["gone"]) == (True, True)  # 21 s and 20 s silent
    assert c.status(21.9, "up")["jobbers"][1]["gone"] is False
    for i in range(101):
        bored(c, f"{i:064x}", 3.0, want=0)
    assert len(c.status(3.0, "up")["jobbers"]) == 100  # the first hundred


def test_the_late_replicas_remembered_are_bounded_the_oldest_forgotten_first():
    assert MAX_LATE == 65536  # (its memory: some 10 MB at most)
    c = core()
    bored(c, ANN, 0.0, want=0)
    for i in range(MAX_LATE + 1):
        c.local[f"x.{i}"] = Local(f"x.{i}", "gone", ANN, "", 0.0)
        c._release(f"x.{i}")
    assert len(c.late) == MAX_LATE and "x.0" not in c.late and "x.1" in c.late
    ack = results(c, ANN, 1.0, ok("x.0"), ok("x.1"))
    assert [r.code for r in ack.rejected] == [p.ErrorCode.UNKNOWN_TAG, p.ErrorCode.SETTLED]


def test_a_restart_keeps_out_what_is_out_and_forgets_replicas_of_jobs_it_no_longer_holds():
    c = core(lease_s=20.0)
    held = [("u1", spec("u1"), 0.0, None, "", ""), ("u2", spec("u2"), 0.0, None, "", "")]
    out = [Local("x.0", "u1", ANN, "10.0.0.a", 0.0), Local("x.1", "gone", ANN, "10.0.0.a", 0.0)]
    c.load(held, [(SHA, WASM, None)], out, 2, 50.0)
    assert list(c.local) == ["x.0"] and c.held["u1"].local == {"x.0"}
    assert c.counts() == {"queued": 1, "out": 1, "done": 0}
    assert c.jobbers[ANN].last_seen == 50.0 and c.jobbers[ANN].address == "10.0.0.a"
    [job] = bored(c, BOB, 51.0, want=2).jobs  # u1 stays with ANN
    assert job.tag == "feedf00d.2"
    c.tick(69.9)
    assert "x.0" in c.local  # ANN's lease runs from the restart
    c.tick(70.0)
    assert "x.0" not in c.local


def test_a_jobber_is_served_until_its_lease_and_its_results_count_for_the_pace_window():
    c = core(lease_s=20.0)
    fill(c, 0.0, "u1")
    [job] = bored(c, ANN, 0.0).jobs
    results(c, ANN, 5.0, ok(job.tag))
    assert c.rate(15.0) == pytest.approx(1 / PACE_WINDOW_S)  # the window's last instant
    assert c.rate(15.01) == 0.0
    assert c.target(24.9) == 2 and c.target(25.0) == 0  # served while its lease runs


def test_a_settled_replica_is_answered_settled_once_more_then_forgotten():
    c = core()
    fill(c, 0.0, "u1")
    [first] = bored(c, ANN, 0.0).jobs
    c.tick(LEASE_S + 0.1)
    [second] = bored(c, BOB, LEASE_S + 0.2).jobs
    results(c, ANN, LEASE_S + 1, ok(first.tag))
    codes = [results(c, BOB, LEASE_S + 2, ok(second.tag)).rejected[0].code for _ in range(3)]
    assert codes == [p.ErrorCode.SETTLED, p.ErrorCode.SETTLED, p.ErrorCode.UNKNOWN_TAG]
    assert c.local == {} and c.late == {}


def test_a_denial_keeps_its_first_reason_and_an_unknown_jobber_is_not_denied():
    c = core()
    bored(c, ANN, 0.0, want=0)
    c.deny(ANN, "first")
    c.deny(ANN, "second")
    c.deny("cc" * 32, "never seen")
    assert c.jobbers[ANN].denied == "first" and "cc" * 32 not in c.jobbers


def test_a_cancelled_replica_takes_its_local_replicas_with_it():
    c = core()
    fill(c, 0.0, "u1", "u2")
    [a, _] = bored(c, ANN, 0.0).jobs
    c.up.line.forget("alive")
    alive = c.up.line.sent("alive", 0.1)
    c.upstream_reply(p.AliveAck(alive.id, 20.0, ("u1", "u2")), 0.2)
    assert c.held == {} and c.local == {}
    assert c.status(0.3, "up")["jobbers"][0]["holding"] == 0


def test_a_held_replica_is_queued_again_only_once_its_last_local_replica_is_back():
    c = core()
    out = [Local("x.0", "u1", ANN, "", 0.0), Local("x.1", "u1", BOB, "", 0.0)]
    c.load([("u1", spec("u1"), 0.0, None, "", "")], [(SHA, WASM, None)], out, 2, 0.0)
    assert c.counts()["out"] == 1
    bored(c, ANN, 1.0, want=0, holding=())  # x.0 lost
    assert c.counts() == {"queued": 0, "out": 1, "done": 0}
    bored(c, BOB, 1.0, want=0, holding=())  # x.1 lost too
    assert c.counts() == {"queued": 1, "out": 0, "done": 0}


def test_a_queued_job_is_given_back_at_its_deadline_exactly():
    c = core()
    fill(c, 0.0, "u1", deadline_s=10.0)
    c.tick(9.99)
    assert c.given_back == 0
    c.tick(10.0)
    assert c.given_back == 1 and c.counts()["done"] == 1


@pytest.mark.parametrize("over", [0, 1])
def test_a_jobs_message_is_packed_to_16_mib_to_the_byte_of_its_estimate(over):
    # each job counts its stdin and 256 bytes; each module its bytes, once
    c = core()
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=4)
    bored(c, ANN, 0.0, want=0, host=host)
    other = WASM + b"\0" * 992
    sha = hashlib.sha256(other).hexdigest()
    second = MAX_JOBS_BYTES - (len(WASM) + 1000 + 256) - (len(other) + 256) + over
    specs = (
        p.JobSpec("u0", SHA, ("x",), b"\0" * 1000, LIMITS, 100.0),
        p.JobSpec("u1", sha, ("x",), b"\0" * second, LIMITS, 100.0),
    )
    c.upstream_reply(p.Jobs(request(c, 0.0, p.Bored).id, specs, {SHA: WASM, sha: other}), 0.0)
    assert len(bored(c, ANN, 0.1, want=2, host=host).jobs) == 2 - over


@pytest.mark.parametrize("over", [0, 1])
def test_a_results_message_is_packed_to_768_kib_to_the_byte_of_its_estimate(over):
    # each result counts its output, four bytes a character of its tag and detail, and 64
    first = p.Result("u0", p.Status.TRAP, b"x" * 1000, 10, "trap")
    rest = MAX_RESULTS_BYTES - (1000 + 4 * (2 + 4) + 64) - (4 * 2 + 64) + over
    second = p.Result("u1", p.Status.OK, b"y" * rest, 10)
    held = [(r.tag, spec(r.tag), 0.0, r, "", "") for r in (first, second)]
    c = core()
    c.load(held, [(SHA, WASM, None)], [], 0, 0.0)
    sent = request(c, 0.0, p.Results)
    assert [r.tag for r in sent.results] == ["u0", "u1"][: 2 - over]


def test_what_goes_down_caps_a_deadline_and_what_goes_up_an_address():
    c = core()
    fill(c, 0.0, "u1", deadline_s=1e10)
    long = "1" * 300
    [job] = c.bored(p.Bored(1, "ann", HOST, 1), 0.0, ANN, long).jobs
    assert job.deadline_s == 1e9
    c.results(p.Results(2, "ann", (ok(job.tag),)), 1.0, ANN, long)
    assert c.held["u1"].result.by == p.Attribution(ANN, "1" * 256)


def test_the_relay_says_itself_within_the_wire_s_bounds_serving_none_or_many():
    c = core(name="lab-3")
    assert c.host(0.0) == p.HostFacts(cpus=1, memory_mb=0, slots=0)  # serving nobody
    huge = p.HostFacts(cpus=1 << 20, memory_mb=1 << 20, slots=1 << 20)
    bored(c, ANN, 0.0, want=0, host=huge)
    bored(c, BOB, 0.0, want=0, host=huge)
    h = c.host(0.0)
    assert (h.cpus, h.slots, h.memory_mb) == (1 << 20, 1 << 20, 1 << 20)
    ask = request(c, 0.0, p.Bored)
    assert ask.jobber == "lab-3"  # its name upstream


def test_the_relay_s_alive_goes_every_quarter_lease_at_most_every_alive_interval():
    c = core()
    fill(c, 0.0, "u1")
    assert not [m for m in c.upstream_requests(4.99) if isinstance(m, p.Alive)]
    alive = request(c, 5.0, p.Alive)  # the upstream's lease (20 s) / 4, and 5 s at most
    assert alive.jobber == "relay"
    c.upstream_reply(p.AliveAck(alive.id, 8.0, ()), 5.0)  # its lease now 8 s
    assert not [m for m in c.upstream_requests(6.99) if isinstance(m, p.Alive)]
    c.upstream_reply(p.AliveAck(request(c, 7.0, p.Alive).id, 40.0, ()), 7.0)  # 8 s / 4
    assert not [m for m in c.upstream_requests(11.99) if isinstance(m, p.Alive)]
    request(c, 12.0, p.Alive)  # ALIVE_INTERVAL_S, not 40 s / 4


def test_attributed_the_emptiest_buffer_is_asked_for_first_then_the_longest_unasked():
    c = core(attribute=True)
    one = p.HostFacts(cpus=1, memory_mb=1024, slots=1)  # its own target 2
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)  # its own target 8
    c.up.attributes = True  # (no alive at start in the way)
    bored(c, ANN, 1.0, want=0, host=one)
    bored(c, BOB, 1.0, want=0, host=four)
    first = request(c, 1.0, p.Bored)
    assert first.behalf.key == ANN  # equals, neither asked yet: the first served
    c.upstream_reply(p.Jobs(first.id, ()), 1.0)
    assert request(c, 1.1, p.Bored).behalf.key == BOB  # equals: the one asked longest ago
    c.upstream_reply(p.Jobs(c.up.bored, tuple(spec(f"b{i}") for i in range(3)), {SHA: WASM}), 1.1)
    bored(c, BOB, 1.2, want=3, host=four)  # 3 of 8 out with BOB: 5/8 lacking; ANN: 2/2
    assert request(c, 1.3, p.Bored).behalf.key == ANN


def test_attributed_a_jobber_told_to_wait_is_asked_for_again_when_its_wait_is_over():
    c = core(attribute=True)
    c.up.attributes = True
    bored(c, ANN, 0.0, want=0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.RetryLater(ask.id, 5.0), 0.0)
    assert not [m for m in c.upstream_requests(4.99) if isinstance(m, p.Bored)]
    assert request(c, 5.0, p.Bored).behalf.key == ANN


def test_attributed_what_is_asked_on_a_jobber_s_behalf_names_its_address_capped():
    c = core(attribute=True)
    c.up.attributes = True
    c.bored(p.Bored(1, "ann", HOST, 0), 0.0, ANN, "2" * 300)
    assert request(c, 0.0, p.Bored).behalf == p.Attribution(ANN, "2" * 256)


def test_status_of_a_fresh_upstream_link():
    s = core().status(0.0, "tcp://up:7117")["upstream"]
    assert s == {
        "finished": False,
        "failures": 0,
        "last_reply": None,
        "delivered": 0,
        "rejected": 0,
        "attributes": None,
    }


def test_a_jobber_of_no_slots_still_runs_two_and_its_last_second_counts_from_its_start():
    c = core(quota=MAX_ALLOWANCE)
    fill(c, 0.0, *(f"u{i}" for i in range(12)))
    none = p.HostFacts(cpus=1, memory_mb=1024, slots=0)
    first = bored(c, BOB, 0.0, want=8, host=none)
    assert len(first.jobs) == 2
    results(c, BOB, 0.5, *(ok(j.tag) for j in first.jobs))
    more = bored(c, BOB, 0.6, want=8, host=none)
    results(c, BOB, 0.7, *(ok(j.tag) for j in more.jobs))
    assert len(bored(c, BOB, 1.5, want=8, host=none).jobs) == 4  # four in the last second


def test_a_job_goes_down_while_some_of_its_deadline_is_left():
    c = core()
    fill(c, 0.0, "u1", "u2", deadline_s=10.0)
    [job] = bored(c, ANN, 9.5, want=1).jobs
    assert job.deadline_s == pytest.approx(0.5)
    assert isinstance(bored(c, BOB, 10.0, want=1), p.RetryLater)  # none left: not sent


def test_a_jobs_message_carries_at_most_max_payloads_modules():
    c = core(quota=MAX_ALLOWANCE)
    mods = [WASM + bytes([i]) for i in range(p.MAX_PAYLOADS + 1)]
    shas = [hashlib.sha256(m).hexdigest() for m in mods]
    held = [
        (f"u{i}", dataclasses.replace(spec(f"u{i}"), payload=s), 0.0, None, "", "")
        for i, s in enumerate(shas)
    ]
    c.load(held, [(s, m, None) for s, m in zip(shas, mods, strict=True)], [], 0, 0.0)
    many = p.HostFacts(cpus=1, memory_mb=1024, slots=100)
    first = bored(c, ANN, 0.0, want=100, host=many)
    assert len(first.jobs) == len(first.payloads) == p.MAX_PAYLOADS
    [last] = bored(c, ANN, 0.1, want=100, host=many).jobs
    assert last.payload == shas[-1]


def test_an_output_of_the_job_s_limit_is_plausible_one_byte_more_is_not():
    c = core()
    fill(c, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.0).jobs
    ack = results(c, ANN, 1.0, ok(a.tag, b"x" * 1024), ok(b.tag, b"x" * 1025))
    assert ack.tags == (a.tag,) and ack.rejected[0].code is p.ErrorCode.IMPLAUSIBLE


def test_an_alive_names_what_it_holds_only_while_no_bored_is_out():
    c = core()
    fill(c, 0.0, "u1")
    sent = {type(m): m for m in c.upstream_requests(5.0)}
    assert set(sent) == {p.Bored, p.Alive}  # down to half its target of 2: it asks
    assert sent[p.Alive].holding is None  # a jobs reply in flight would read as lost


def test_attributed_nothing_is_asked_for_a_jobber_at_its_target_or_a_relay_at_its_buffer():
    c = core(attribute=True, max_buffer=3)
    c.up.attributes = True
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)  # its own target 8
    fetched_for(c, ANN, 0.0, "u1", "u2")
    bored(c, ANN, 0.1, want=2, host=four)  # both out with it
    assert request(c, 0.2, p.Bored).want == 1  # the one place left in the relay's buffer
    c.upstream_reply(p.Jobs(c.up.bored, (spec("u3"),)), 0.2)
    bored(c, ANN, 0.3, want=1, host=four)
    assert not [m for m in c.upstream_requests(0.4) if isinstance(m, p.Bored)]  # 3 of 3
    one = core(attribute=True)
    one.up.attributes = True
    fetched_for(one, BOB, 0.0, "v1", "v2")  # its own target 2
    bored(one, BOB, 0.1, want=2)
    assert not [m for m in one.upstream_requests(0.2) if isinstance(m, p.Bored)]


def test_a_jobber_that_won_as_many_votes_as_it_lost_is_not_denied():
    c = core(attribute=True)
    bored(c, ANN, 0.0, want=0)
    alive_ack(c, 0.0, (p.Standing(ANN, DENY_AFTER, DENY_AFTER, False),))
    assert not c.jobbers[ANN].denied
    alive_ack(c, 1.0, (p.Standing(ANN, DENY_AFTER, DENY_AFTER + 1, False),))
    assert c.jobbers[ANN].denied


def test_a_finished_upstream_hears_an_alive_at_once_for_how_our_jobbers_stand():
    c = core()
    fill(c, 0.0, "u1")
    c.upstream_reply(p.AliveAck(request(c, 5.0, p.Alive).id, 20.0, ()), 5.0)
    assert c.up.bored is not None  # (down to half its target: it asked for more)
    c.upstream_reply(p.Finished(c.up.bored), 5.2)
    assert isinstance(request(c, 5.3, p.Alive), p.Alive)  # not 5 s after the last


def test_the_hello_answered_is_no_longer_waited_for():
    c = core()
    c.upstream.given_key(None)
    c.upstream.hello(0.0)
    c.upstream.hello_reply(p.HelloReply(1, "cd" * 32), 0.2)
    assert c.upstream.late(100.0) == [] and not c.up.line.busy()


def test_attributed_only_a_denied_answering_a_bored_denies_the_jobber_it_was_for():
    c = core(attribute=True)
    c.up.attributes = True
    bored(c, ANN, 0.0, want=0)
    c.upstream_reply(p.Error(request(c, 0.0, p.Bored).id, p.ErrorCode.INTERNAL, "busy"), 0.0)
    assert not c.jobbers[ANN].denied and c.up.backoff.failures == 1
    c.up.line.backoff.succeeded()
    alive = c.up.line.sent("alive", 1.0)  # (c.up.bored_for is still ANN)
    c.upstream_reply(p.Error(alive.id, p.ErrorCode.DENIED, "this identity is denied"), 1.0)
    assert not c.jobbers[ANN].denied and c.up.backoff.failures == 1
    c.up.line.backoff.succeeded()
    ask = request(c, 2.0, p.Bored)
    c.upstream_reply(p.Error(ask.id, p.ErrorCode.DENIED, "this identity is denied"), 2.5)
    assert c.jobbers[ANN].denied and c.up.last_reply == 2.5
    assert c.up.bored is None  # answered: the others may be asked for at once


def test_a_reply_of_another_kind_than_its_request_asked_is_ignored():
    c = core()
    fill(c, 0.0, "u1")
    [job] = bored(c, ANN, 0.0).jobs
    results(c, ANN, 0.1, ok(job.tag))
    sent = {type(m): m for m in c.upstream_requests(5.0)}
    res, alive, ask = sent[p.Results], sent[p.Alive], sent[p.Bored]
    c.upstream_reply(p.AliveAck(ask.id, 1.0, ("u1",)), 5.1)  # to the bored
    c.upstream_reply(p.Jobs(res.id, (spec("x1"),), {}), 5.1)  # to the results
    c.upstream_reply(p.Ack(alive.id, ("u1",)), 5.1)  # to the alive
    assert set(c.held) == {"u1"} and c.up.lease_s == LEASE_S
    sent = {type(m): m for m in c.upstream_requests(5.2)}
    res, ask = sent[p.Results], sent[p.Bored]
    c.upstream_reply(p.RetryLater(res.id, 50.0), 5.3)  # to the results
    c.upstream_reply(p.Ack(ask.id, ("u1",)), 5.3)  # to the bored
    assert "u1" in c.held and c.up.quiet_until == 0.0
    for make in (p.Finished, lambda rid: p.Referral(rid, ("tcp://x:1",))):
        res = {type(m): m for m in c.upstream_requests(5.4)}[p.Results]
        c.upstream_reply(make(res.id), 5.5)  # to the results
        assert not c.up.finished and c.up.quiet_until == 0.0


def test_a_buffer_all_out_at_its_target_asks_for_nothing_more():
    c = core()
    fill(c, 0.0, "u1", "u2")  # ANN's target: 2
    bored(c, ANN, 0.1)  # both out
    assert not [m for m in c.upstream_requests(0.2) if isinstance(m, p.Bored)]


def test_attributed_a_jobber_is_asked_for_up_to_its_own_target():
    c = core(attribute=True)
    c.up.attributes = True
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)  # its own target 8
    bored(c, ANN, 0.0, want=0, host=four)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1"), spec("u2")), {SHA: WASM}), 0.0)
    bored(c, ANN, 0.1, want=2, host=four)  # both out
    assert request(c, 0.2, p.Bored).want == 6


def test_an_ack_counts_what_was_delivered_and_rejected_and_says_how_our_jobbers_stand():
    c = core(attribute=True)
    c.up.attributes = True
    fetched_for(c, ANN, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.1).jobs
    results(c, ANN, 0.2, ok(a.tag), ok(b.tag))
    sent = request(c, 0.3, p.Results)
    settled = (p.Rejection("u2", p.ErrorCode.SETTLED, "decided"),)
    standing = (p.Standing(ANN, 3, 0, False), p.Standing("cc" * 32, 1, 5, True))  # (unknown)
    c.upstream_reply(p.Ack(sent.id, ("u1",), settled, standing), 0.3)
    assert (c.up.delivered, c.up.rejected) == (1, 1) and c.held == {}
    assert (c.jobbers[ANN].won, c.jobbers[ANN].lost) == (3, 0)
    assert c.jobbers[ANN].allowance == QUOTA + 3  # its standing told: nothing for the ack
    assert not c.jobbers[ANN].denied and "cc" * 32 not in c.jobbers  # (settled: no fault)


def test_a_jobber_s_replicas_go_back_at_its_lease_exactly():
    c = core(lease_s=20.0)
    fill(c, 0.0, "u1")
    bored(c, ANN, 1.0)
    c.tick(20.99)
    assert c.counts()["out"] == 1
    c.tick(21.0)
    assert c.counts() == {"queued": 1, "out": 0, "done": 0}


def test_a_jobber_holds_no_more_than_its_allowance_whatever_it_runs_soon():
    c = core(quota=2)
    four = p.HostFacts(cpus=4, memory_mb=1024, slots=4)
    fill(c, 0.0, "u1", "u2", "u3", "u4")
    assert len(bored(c, ANN, 0.1, want=8, host=four).jobs) == 2
    full = bored(c, ANN, 0.2, want=8, host=four)
    assert isinstance(full, p.RetryLater) and full.more is True


def test_what_a_jobber_is_told_to_wait_when_the_buffer_has_nothing_for_it():
    c = core()
    fill(c, 0.0, "u1")
    bored(c, ANN, 0.0, want=1)  # u1 out with ann; ann could run one more
    ask = request(c, 0.1, p.Bored)
    c.upstream_reply(p.RetryLater(ask.id, 5.0), 0.1)  # the upstream: nothing before 5.1
    assert bored(c, BOB, 0.2, want=0).more is True  # (asking nothing: told all the same)
    assert bored(c, ANN, 0.2, want=1).seconds == 1.0  # no jobs come before 5.1
    assert bored(c, ANN, 5.1, want=1).seconds == 0.2  # they may come within a round trip
    c.upstream_failed(5.2)
    empty = core()
    bored(empty, ANN, 0.0, want=0)  # holding nothing, asking nothing, nothing out
    assert bored(empty, BOB, 0.0, want=0).more is None
    held = bored(c, ANN, 5.3, want=1)  # room for one more, none here: not "full"
    assert held.seconds == 1.0 and held.more is True


def test_a_denied_jobber_s_result_is_refused_once_and_decides_nothing():
    c = core()
    fill(c, 0.0, "u1")
    [job] = bored(c, ANN, 0.0).jobs
    c.deny(ANN, "lost too many votes")
    ack = results(c, ANN, 0.1, ok(job.tag))
    assert ack.tags == () and [r.code for r in ack.rejected] == [p.ErrorCode.DENIED]
    assert c.held["u1"].result is None and c.counts()["queued"] == 1


def test_not_attributing_the_relay_says_alive_only_while_it_holds_something():
    c = core()
    bored(c, ANN, 0.0, want=0)
    c.upstream_reply(p.Jobs(request(c, 0.0, p.Bored).id, ()), 0.0)  # nothing to hold
    assert not [m for m in c.upstream_requests(10.0) if isinstance(m, p.Alive)]


def test_attributed_a_referral_holds_back_asking_for_the_least_backoff_to_its_instant():
    c = core(attribute=True)
    c.up.attributes = True
    bored(c, ANN, 0.0, want=0)
    c.upstream_reply(p.Referral(request(c, 0.0, p.Bored).id, ("tcp://x:1",)), 0.5)
    assert not [m for m in c.upstream_requests(1.49) if isinstance(m, p.Bored)]
    assert request(c, 1.5, p.Bored).behalf.key == ANN  # 0.5 + min_s


def test_a_replica_given_back_with_output_or_fuel_is_implausible_not_given_back():
    c = core()
    fill(c, 0.0, "u1", "u2")
    a, b = bored(c, ANN, 0.0).jobs
    ack = results(
        c,
        ANN,
        0.1,
        p.Result(a.tag, p.Status.ABANDONED, b"x", 0),
        p.Result(b.tag, p.Status.ABANDONED, b"", 5),
    )
    assert ack.tags == () and {r.code for r in ack.rejected} == {p.ErrorCode.IMPLAUSIBLE}
    assert c.jobbers[ANN].implausible == 2


def test_attributed_an_implausible_result_from_the_jobber_it_was_fetched_for_goes_back():
    c = core(attribute=True)
    c.up.attributes = True
    fetched_for(c, ANN, 0.0, "u1")
    [job] = bored(c, ANN, 0.1).jobs
    ack = results(c, ANN, 0.2, ok(job.tag, b"x" * 2000))  # over its 1 KiB
    assert ack.rejected[0].code is p.ErrorCode.IMPLAUSIBLE
    r = c.held["u1"].result
    assert r is not None and r.status is p.Status.ABANDONED and "implausible" in r.detail


def test_a_result_taken_is_forgotten_with_its_local_tag():
    c = core()
    fill(c, 0.0, "u1")
    [job] = bored(c, ANN, 0.0).jobs
    assert results(c, ANN, 0.1, ok(job.tag)).tags == (job.tag,)
    again = results(c, ANN, 0.2, ok(job.tag))
    assert [r.code for r in again.rejected] == [p.ErrorCode.UNKNOWN_TAG]


def test_a_jobber_is_forgotten_ten_minutes_after_it_was_last_seen():
    c = core()
    bored(c, ANN, 100.0, want=0)
    c.tick(699.0)
    assert ANN in c.jobbers
    c.tick(700.0)
    assert ANN not in c.jobbers


def test_a_peer_is_offered_none_of_what_is_out():
    c = core()
    fill(c, 0.0, "u1")
    bored(c, ANN, 0.0)
    assert c.offer(7, 0.1) == p.WorkOffer(7, 0, None, None, None)


def test_attributed_a_peer_is_offered_a_job_s_own_nan_rule():
    c = core(attribute=True)
    c.up.attributes = True
    native = dataclasses.replace(LIMITS, native_nans=True)
    bored(c, ANN, 0.0, want=0)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u1", limits=native),), {SHA: WASM}), 0.0)
    assert c.offer(3, 0.1).limits.native_nans is True  # each jobber asked for with its own


def test_what_is_out_with_our_jobbers_is_not_counted_as_queued():
    c = core()
    three = p.HostFacts(cpus=3, memory_mb=1024, slots=3)  # target 6
    bored(c, ANN, 0.0, want=0, host=three)
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, tuple(spec(f"u{i}") for i in range(5)), {SHA: WASM}), 0.0)
    bored(c, ANN, 0.1, want=1, host=three)  # 4 queued, 1 out: 4 * 2 > 6
    assert not [m for m in c.upstream_requests(0.2) if isinstance(m, p.Bored)]


def test_attributed_nothing_is_asked_for_anyone_once_the_relay_s_buffer_is_full():
    c = core(attribute=True, max_buffer=3)
    c.up.attributes = True
    fetched_for(c, ANN, 0.0, "u1", "u2")
    fetched_for(c, BOB, 0.0, "v1")  # bob's own target 2, with 1: he lacks one
    assert len(c.held) == 3
    assert not [m for m in c.upstream_requests(0.1) if isinstance(m, p.Bored)]


def test_attributed_a_jobber_is_asked_for_no_more_than_the_relay_s_buffer_has_room_for():
    c = core(attribute=True, max_buffer=4)
    c.up.attributes = True
    bored(c, BOB, 0.0, want=0)  # his own target 2
    ask = request(c, 0.0, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("v1"), spec("v2")), {SHA: WASM}), 0.0)
    bored(c, BOB, 0.1, want=2)  # both out with him
    bored(c, ANN, 0.2, want=0, host=p.HostFacts(cpus=4, memory_mb=1024, slots=4))  # 4
    ask = request(c, 0.3, p.Bored)
    assert ask.behalf.key == ANN and ask.want == 2  # 2 places left of 4


def test_a_payload_sent_again_is_journaled_once():
    c = core()
    fill(c, 0.0, "u1")
    c.take_ops()
    ask = request(c, 0.5, p.Bored)
    c.upstream_reply(p.Jobs(ask.id, (spec("u2"),), {SHA: WASM}), 0.5)  # again, unsigned
    assert [type(o) for o in c.take_ops()] == [Hold]


@pytest.mark.parametrize("over", [0, 1])
def test_a_module_two_jobs_need_is_counted_once_in_a_jobs_message(over):
    c = core()
    host = p.HostFacts(cpus=1, memory_mb=1024, slots=4)
    bored(c, ANN, 0.0, want=0, host=host)
    second = MAX_JOBS_BYTES - (len(WASM) + 1000 + 256) - 256 + over
    specs = (
        p.JobSpec("u0", SHA, ("x",), b"\0" * 1000, LIMITS, 100.0),
        p.JobSpec("u1", SHA, ("x",), b"\0" * second, LIMITS, 100.0),
    )
    c.upstream_reply(p.Jobs(request(c, 0.0, p.Bored).id, specs, {SHA: WASM}), 0.0)
    assert len(bored(c, ANN, 0.1, want=2, host=host).jobs) == 2 - over
