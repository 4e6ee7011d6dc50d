"""The jobber's core takes only what it asked for, and only what fits the owner's limits
(issue 20, item 1): driven directly, events and the time in, actions out."""

from __future__ import annotations

import logging
import random

from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from jobber import _core as c

KEY_A = "aa" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
LIMITS = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=1)


def core(spooled=(), **kw) -> c.JobberCore:
    base = dict(name="j", slots=1, cpus=1, memory_mb=256, min_backoff_s=1.0, max_backoff_s=60.0)
    base.update(kw)
    j = c.JobberCore(
        c.Settings(**base), [f"{LIVE}#{KEY_A}"], 0.0, spooled=spooled, rng=random.Random(1)
    )
    j.cache_updated({SHA: (1000, 0)})  # the payload the jobs name is held
    j.take_actions()
    return j


def spec(tag: str, sha: str = SHA, stdin: bytes = b"", limits: p.Limits = LIMITS) -> p.JobSpec:
    return p.JobSpec(tag, sha, (), stdin, limits, 100.0)


def ask(j: c.JobberCore, now: float) -> p.Bored:
    j.tick(now)
    (bored,) = [
        a.msg for a in j.take_actions() if isinstance(a, c.Send) and isinstance(a.msg, p.Bored)
    ]
    return bored


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def nothing_taken(j: c.JobberCore, actions) -> bool:
    return not j.buffer and not j.running and not j.unacked and not of(actions, c.Store)


# --- a jobs message answers the ask out, with what it asked for ---------------------


def test_jobs_nobody_asked_for_are_refused_whole_and_back_the_dealer_off():
    j = core()
    j.received(LIVE, p.Jobs(0, (spec("t.0"),)), 0.0)
    actions = j.take_actions()
    assert nothing_taken(j, actions)
    link = j.links[LIVE]
    assert link.unasked == 1 and link.backoff.failures == 1
    assert c.Reset(LIVE) in actions  # its sockets, and what it queued on them, closed
    assert not link.answered and not j.reached  # an unasked reply is no answer


def test_jobs_answering_an_ask_already_answered_are_refused():
    j = core(buffer=3)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.1"),)), 0.1)  # a replay of the same `re`
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    assert j.links[LIVE].unasked == 1 and j.links[LIVE].backoff.failures == 1


def test_jobs_answering_another_id_than_the_ask_out_are_refused():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id + 1, (spec("t.0"),)), 0.0)
    assert nothing_taken(j, j.take_actions())
    assert j.links[LIVE].bored_id is None  # the ask out is given up with the sockets


def test_more_jobs_than_the_ask_wanted_are_refused_whole():
    j = core(buffer=1)
    bored = ask(j, 0.0)
    assert bored.want == 2
    j.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}") for i in range(3))), 0.0)
    assert nothing_taken(j, j.take_actions())
    assert j.links[LIVE].unasked == 1
    again = core(buffer=1)
    bored = ask(again, 0.0)
    again.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"))), 0.0)  # exactly want
    assert len(again.buffer) == 2 and again.links[LIVE].unasked == 0


def test_payloads_no_job_names_and_jobs_of_payloads_neither_sent_nor_held_are_refused():
    other, unknown = "cd" * 32, "ef" * 32
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),), {other: b"x" * 100}), 0.0)
    assert nothing_taken(j, j.take_actions())
    k = core()
    bored = ask(k, 0.0)
    k.received(LIVE, p.Jobs(bored.id, (spec("t.0", unknown),)), 0.0)
    assert nothing_taken(k, k.take_actions())
    assert k.links[LIVE].unasked == 1


def test_a_payload_the_ask_said_was_held_is_taken_though_evicted_since():
    j = core()
    bored = ask(j, 0.0)
    assert bored.host.cached == (SHA,)
    j.cache_updated({})  # evicted after the ask went: the dealer could not know
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0"] and j.links[LIVE].unasked == 0
    # neither held nor sent, it takes nothing of the cache (the slot finds it gone)
    j = core(cache_bytes=0)
    bored = ask(j, 0.0)
    j.cache_updated({})
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0"]


def test_only_the_payloads_of_jobs_taken_are_stored():
    big, small = "cd" * 32, "ef" * 32
    j = core(cache_bytes=5000)
    bored = ask(j, 0.0)
    jobs = (spec("t.0", big), spec("t.1", small))
    payloads = {big: b"b" * 6000, small: b"s" * 100}
    j.received(LIVE, p.Jobs(bored.id, jobs, payloads), 0.0)
    actions = j.take_actions()
    assert of(actions, c.Store) == [c.Store(LIVE, ((small, b"s" * 100),))]
    (given_back,) = [a.result for a in of(actions, c.Spool)]
    assert given_back.tag == "t.0" and given_back.status is p.Status.ABANDONED
    assert "does not fit the cache" in given_back.detail


def test_unasked_replies_are_logged_once_with_a_count(caplog):
    j = core()
    with caplog.at_level(logging.WARNING, logger="jobber._core"):
        for i in range(5):
            j.links[LIVE].backoff.succeeded()
            j.received(LIVE, p.Jobs(0, (spec(f"t.{i}"),)), 0.1 * i)
    lines = [r.getMessage() for r in caplog.records if "did not ask for" in r.getMessage()]
    assert len(lines) == 1 and "1 such so far" in lines[0]
    assert j.links[LIVE].unasked == 5
    with caplog.at_level(logging.WARNING, logger="jobber._core"):
        j.received(LIVE, p.Jobs(0, (spec("t.9"),)), 61.0)  # a minute on: the count
    assert "6 such so far" in caplog.records[-1].getMessage()


def test_unasked_acks_alive_acks_retry_laters_and_errors_change_nothing():
    j = core(spooled=[(LIVE, p.Result("t.0", p.Status.OK, b"out", 5, ""))])
    j.take_actions()
    link = j.links[LIVE]
    for msg in (
        p.Ack(7, ("t.0",)),
        p.AliveAck(8, 20.0, ("t.0",)),
        p.RetryLater(9, 1000.0),
        p.Finished(10),
        p.Referral(11, ("tcp://10.0.0.1:1",)),
        p.Error(12, p.ErrorCode.INTERNAL, "boom"),
        p.HelloReply(13, "bb" * 32),  # no hello out: the key stays
    ):
        j.received(LIVE, msg, 0.5)
    assert list(j.unacked[LIVE]) == ["t.0"]  # not released by an ack we never asked for
    assert (link.ask_after, link.finished, link.backoff.failures) == (0.0, False, 0)
    assert list(j.links) == [LIVE] and link.unasked == 7 and link.key == KEY_A
    assert not j.take_actions()


# --- what it takes counts against the owner's limits, before it is taken ----------------


def test_jobs_inputs_in_hand_stay_within_the_input_budget_and_the_next_ask_is_smaller():
    j = core(buffer=3, input_bytes=2300)
    bored = ask(j, 0.0)
    assert bored.want == 4
    stdin = b"x" * 600
    j.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}", stdin=stdin) for i in range(4))), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0", "t.1", "t.2"]
    assert sum(h.input for h in j.buffer) <= 2300  # 740 bytes each (stdin, tag, framing)
    (back,) = [a.result for a in of(j.take_actions(), c.Spool)]
    assert back.tag == "t.3" and back.status is p.Status.ABANDONED
    assert "does not fit what this jobber holds" in back.detail
    j.tick(0.1)  # t.0 starts: it still holds its input
    j.links[LIVE].ask_after = 0.0
    (start,) = of(j.take_actions(), c.Start)
    j.tick(0.15)  # room for less than one more input (80 bytes): nothing asked
    assert not [a for a in j.take_actions() if isinstance(a, c.Send)]
    j.job_done(start.key, p.Result("t.0", p.Status.OK, b"", 1, ""), 0.1, 0.2)
    assert ask(j, 0.3).want == 1  # room for one input of the size its jobs bring


def test_room_for_exactly_one_more_input_is_asked_for_one():
    j = core(buffer=3, input_bytes=3 * 740)
    bored = ask(j, 0.0)
    stdin = b"x" * 600
    j.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}", stdin=stdin) for i in range(2))), 0.0)
    assert sum(h.input for h in j.buffer) == 2 * 740  # 740 bytes left: one more input
    assert ask(j, 0.1).want == 1


def test_a_job_that_alone_exceeds_a_limit_is_given_back_and_its_dealer_asked_much_later():
    j = core(input_bytes=1000)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", stdin=b"x" * 2000),)), 0.0)
    assert not j.buffer and j.unacked[LIVE]["t.0"].status is p.Status.ABANDONED
    assert j.links[LIVE].ask_after == c.REFUSED_PAYLOAD_WAIT_S


def test_payloads_in_hand_stay_within_the_cache_and_two_per_slot():
    shas = [f"{i:064x}" for i in range(4)]
    j = core(buffer=3, cache_bytes=2500)
    bored = ask(j, 0.0)
    jobs = tuple(spec(f"t.{i}", sha) for i, sha in enumerate(shas))
    payloads = {sha: b"w" * 1000 for sha in shas}
    j.received(LIVE, p.Jobs(bored.id, jobs, payloads), 0.0)
    assert [h.spec.payload for h in j.buffer] == shas[:2]  # 2000 bytes of 2500
    backs = {a.result.tag: a.result.detail for a in of(j.take_actions(), c.Spool)}
    assert "does not fit the cache" in backs["t.2"]
    # what did not fit may once held jobs are done: asked again after a backoff, not
    # every turn (each ask would bring the payload again, and give it back again)
    assert j.links[LIVE].ask_after == 1.0
    j.tick(0.5)
    assert not [a for a in j.take_actions() if isinstance(a, c.Send) and isinstance(a.msg, p.Bored)]
    k = core(buffer=3, cache_bytes=10**9)
    bored = ask(k, 0.0)
    k.received(LIVE, p.Jobs(bored.id, jobs, payloads), 0.0)
    assert len(k.held_payloads()) == c.MAX_PAYLOADS_PER_SLOT  # one slot: two payloads
    backs = {a.result.tag: a.result.detail for a in of(k.take_actions(), c.Spool)}
    assert "payloads in hand already" in backs["t.2"]


def test_a_payload_in_the_cache_counts_with_its_compiled_forms():
    new = "cd" * 32
    for cache, tags in ((2500, ["t.0", "t.1"]), (2499, ["t.0"])):
        j = core(buffer=3, cache_bytes=cache)
        j.cache_updated({SHA: (1000, 500)})  # its bytes, its compiled forms' bytes
        bored = ask(j, 0.0)
        jobs = (spec("t.0"), spec("t.1", new))
        j.received(LIVE, p.Jobs(bored.id, jobs, {new: b"w" * 1000}), 0.0)
        assert [h.spec.tag for h in j._in_hand()] == tags


def test_a_job_of_a_payload_in_hand_adds_nothing_to_the_cache_nor_to_the_payloads():
    shas = [f"{i:064x}" for i in range(2)]
    j = core(buffer=3, cache_bytes=2000)  # two payloads of 1000 bytes: full, and two a slot
    bored = ask(j, 0.0)
    jobs = (spec("t.0", shas[0]), spec("t.1", shas[1]), spec("t.2", shas[0]))
    j.received(LIVE, p.Jobs(bored.id, jobs, {sha: b"w" * 1000 for sha in shas}), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0", "t.1", "t.2"]


def test_a_job_that_alone_fits_a_limit_exactly_is_asked_again_soon():
    """Refused beside what is held, a job that alone fits may fit later: its dealer is
    asked again after a backoff, not REFUSED_PAYLOAD_WAIT_S later."""
    silent = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=0)
    other = "tcp://127.0.0.1:7300"

    def back_off(held_from: str, **kw) -> float:
        base = dict(name="j", slots=1, cpus=1, memory_mb=256, min_backoff_s=1.0, buffer=3)
        j = c.JobberCore(
            c.Settings(**(base | kw)), [f"{LIVE}#{KEY_A}", f"{other}#{'bb' * 32}"], 0.0
        )
        j.cache_updated({SHA: (1000, 0)})
        shas = [f"{i:064x}" for i in range(2)]
        for addr, tag, sha, stdin in (
            (held_from, "a", shas[0], b""),
            (LIVE, "t.1", shas[1], b"x" * 1000),
        ):
            j.links[addr].bored_id, j.links[addr].bored_want = 9, 1
            job = spec(tag, sha, stdin, silent)
            j.received(addr, p.Jobs(9, (job,), {sha: b"w" * 1000}), 0.0)
        assert len(j._in_hand()) == 1  # t.1 given back
        return j.links[LIVE].ask_after

    alone = 1000 + 4 * 3 + 2 * c.INPUT_OVERHEAD_BYTES  # t.1's input
    assert back_off(LIVE, input_bytes=alone) == 1.0
    assert back_off(LIVE, input_bytes=alone - 1) == c.REFUSED_PAYLOAD_WAIT_S
    assert back_off(LIVE, cache_bytes=1000) == 1.0
    one = 4 * 3 + c.RESULT_OVERHEAD_BYTES  # t.1's result, at most ("a" is the other's)
    assert back_off(other, input_bytes=alone, spool_share_bytes=one) == 1.0
    assert back_off(other, input_bytes=alone, spool_share_bytes=one - 1) == c.REFUSED_PAYLOAD_WAIT_S


def test_a_job_whose_input_fills_the_budget_exactly_is_taken():
    one = 4 * len("t.0") + 2 * c.INPUT_OVERHEAD_BYTES  # no stdin, no args
    for budget, taken in ((one, 1), (one - 1, 0)):
        j = core(input_bytes=budget)
        bored = ask(j, 0.0)
        j.links[LIVE].bored_want = 1  # as if asked for one (the ask fits the budget)
        j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
        assert len(j.buffer) == taken


def test_a_payload_the_shell_is_still_storing_counts_in_the_cache():
    shas = [f"{i:064x}" for i in range(2)]
    j = core(buffer=3, cache_bytes=1500)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", shas[0]),), {shas[0]: b"w" * 1000}), 0.0)
    j.cache_updated({SHA: (1000, 0)})  # the shell is still storing shas[0]
    bored = ask(j, 0.1)  # shas[0] not yet in the cache's sizes: it comes with 1000 bytes
    j.received(LIVE, p.Jobs(bored.id, (spec("t.1", shas[1]),), {shas[1]: b"w" * 1000}), 0.1)
    assert [h.spec.tag for h in j._in_hand()] == ["t.0"]  # t.0 running, t.1 given back


def test_a_payload_no_job_in_hand_needs_is_counted_by_the_cache_alone():
    x = "cd" * 32
    j = core(buffer=3, cache_bytes=1500)
    j.links[LIVE].bored_id, j.links[LIVE].bored_want = 9, 1
    j.received(LIVE, p.Jobs(9, (spec("t.0", x),), {x: b"w" * 1000}), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, p.Result("t.0", p.Status.OK, b"", 5, ""), 0.1, 0.1)
    j.cache_updated({SHA: (1000, 0), x: (1000, 0)})  # stored, and no job needs it
    link = j.links[LIVE]  # an ask saying both are held
    link.bored_id, link.bored_want, link.bored_cached = 10, 2, frozenset({SHA, x})
    j.cache_updated({SHA: (1000, 0)})  # x evicted since the ask
    j.received(LIVE, p.Jobs(10, (spec("t.1"), spec("t.2", x))), 0.3)
    assert [h.spec.tag for h in j.buffer] == ["t.1", "t.2"]


def test_a_job_whose_result_fills_the_spool_exactly_is_taken():
    kept = p.Result("s.0", p.Status.OK, b"x" * 20000, 5, "")  # unacknowledged, from before
    one = 1024 + 4 * len("t.0") + c.RESULT_OVERHEAD_BYTES  # a result of LIMITS, at most
    full = c._weight(kept) + one
    for share, in_all, taken in ((full, full, 1), (full - 1, full, 0), (full, full - 1, 0)):
        j = core(spooled=[(LIVE, kept)], spool_share_bytes=share, spool_bytes=in_all)
        bored = ask(j, 0.0)
        j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
        assert len(j.buffer) == taken
    # in all: the results unacknowledged and what the jobs in hand may add
    for in_all, taken in ((full + one, 2), (full + one - 1, 1)):
        j = core(spooled=[(LIVE, kept)], buffer=3, spool_bytes=in_all)
        for rid, tag in ((9, "t.0"), (10, "t.1")):
            j.links[LIVE].bored_id, j.links[LIVE].bored_want = rid, 1
            j.received(LIVE, p.Jobs(rid, (spec(tag),)), 0.0)
        assert len(j.buffer) == taken


def test_the_spool_holds_a_dealers_share_and_in_all_no_more_than_its_bound():
    four = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=4)
    # asked for 3 (50,000 // a result's overhead); a result of `four` may take 20,556
    j = core(buffer=3, spool_share_bytes=50_000)
    bored = ask(j, 0.0)
    assert bored.want == 3
    jobs = tuple(spec(f"t.{i}", limits=four) for i in range(3))
    j.received(LIVE, p.Jobs(bored.id, jobs), 0.0)
    assert len(j.buffer) == 2 and "the spool holds" in j.unacked[LIVE]["t.2"].detail
    assert j._spool_of(LIVE) <= 50_000
    one = 1024 + c.RESULT_OVERHEAD_BYTES + 4 * len("t.0")  # a result of LIMITS, at most
    k = core(buffer=3, spool_share_bytes=10 * one, spool_bytes=one)
    bored = ask(k, 0.0)
    k.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}") for i in range(2))), 0.0)
    assert len(k.buffer) == 1  # the bound in all is the smaller here


def test_output_a_share_cannot_hold_is_refused_and_said_in_host_facts():
    assert core().host_facts().max_output_kb is None  # 256 MiB holds the wire's 32 MiB
    small = core(spool_share_bytes=10 * 1024 * 1024, max_output_kb=4096)
    assert small.host_facts().max_output_kb == 4096  # the owner's, the smaller
    j = core(spool_share_bytes=10 * 1024 * 1024)
    fits = j.host_facts().max_output_kb
    assert fits is not None and fits < 10 * 1024
    bored = ask(j, 0.0)
    big = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=32768)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", limits=big),)), 0.0)
    assert not j.buffer and j.unacked[LIVE]["t.0"].status is p.Status.ABANDONED


def test_a_refusal_that_does_not_fit_the_share_is_dropped_unsaid():
    silent = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=0)
    j = core(buffer=3, spool_share_bytes=17_000)  # t.0's result may take 16,460 of it
    bored = ask(j, 0.0)
    j.links[LIVE].bored_want = 2  # as if asked for two
    long = p.JobSpec("t." + "x" * 4000, SHA, (), b"", silent, 100.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", limits=silent), long)), 0.0)
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    assert not j.unacked  # its refusal alone would pass the share: the next holding says it
    assert j.holding(LIVE) == ("t.0",)
    assert j.links[LIVE].ask_after == 1.0  # it may fit later: asked after a backoff


def test_refusals_that_fill_the_share_or_the_spool_exactly_are_kept():
    silent = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=0)
    big = b"x" * 2000  # no job of it fits an input budget of 1000

    def kept(share: int, in_all: int) -> list[str]:
        j = core(input_bytes=1000, spool_share_bytes=share, spool_bytes=in_all)
        j.links[LIVE].bored_id, j.links[LIVE].bored_want = 9, 2  # (a share this small: no ask)
        jobs = (spec("t.0", stdin=big, limits=silent), spec("t.1", stdin=big, limits=silent))
        j.received(LIVE, p.Jobs(9, jobs), 0.0)
        return list(j.unacked.get(LIVE, ()))  # the others dropped: the next holding says it

    j = core(input_bytes=1000)
    j.links[LIVE].bored_id, j.links[LIVE].bored_want = 9, 1
    j.received(LIVE, p.Jobs(9, (spec("t.0", stdin=big, limits=silent),)), 0.0)
    (back,) = [a.result for a in of(j.take_actions(), c.Spool)]
    assert "does not fit what this jobber holds" in back.detail
    w = c._weight(back)  # t.1's refusal weighs the same
    assert kept(2 * w, 10**6) == kept(10**6, 2 * w) == ["t.0", "t.1"]
    assert kept(2 * w - 1, 10**6) == kept(10**6, 2 * w - 1) == ["t.0"]
    assert kept(w - 1, 10**6) == kept(10**6, w - 1) == []


# --- whatever a dealer sends, what is held stays within the bounds -------------------------


message = st.tuples(
    st.sampled_from(["ask", "old", "zero"]),  # the `re`: the ask out, an earlier one, 0
    st.lists(
        st.tuples(
            st.integers(0, 3),  # payload index
            st.integers(0, 3000),  # stdin bytes
            st.integers(0, 8),  # output_kb
            st.booleans(),  # payload sent
        ),
        max_size=6,
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(message, st.just("done"), st.just("ack")), max_size=25))
def test_whatever_a_dealer_sends_what_is_held_stays_within_the_owners_limits(steps):
    budget, cache, share, in_all = 5000, 2500, 40_000, 60_000
    j = core(
        slots=2,
        buffer=4,
        input_bytes=budget,
        cache_bytes=cache,
        spool_share_bytes=share,
        spool_bytes=in_all,
    )
    j.cache_updated({})
    shas = [f"{i:064x}" for i in range(4)]
    now, old = 0.0, 0

    def carry_out(j: c.JobberCore) -> None:
        """What the shell would do: store payloads (their sizes go back), spool results."""
        for a in j.take_actions():
            if isinstance(a, c.Store):
                sizes = dict(j.sizes)
                sizes.update({sha: (len(wasm), 0) for sha, wasm in a.payloads})
                j.cache_updated(sizes)
            if isinstance(a, c.Spool):
                j.spooled([(a.dealer, a.result.tag)])

    for step in steps:
        now += 1.0
        link = j.links[LIVE]
        link.backoff.succeeded()
        j.tick(now)
        carry_out(j)
        if step == "done":
            for key, h in list(j.running.items()):
                out = b"o" * (h.spec.limits.output_kb * 1024)
                j.job_done(key, p.Result(h.spec.tag, p.Status.OK, out, 1, ""), 0.5, now)
        elif step == "ack" and j.unacked.get(LIVE):
            link.results_id = 77
            j.received(LIVE, p.Ack(77, tuple(j.unacked[LIVE])), now)
        elif isinstance(step, tuple):
            which, jobs = step
            re = {"ask": link.bored_id or 0, "old": old, "zero": 0}[which]
            specs = tuple(
                p.JobSpec(
                    f"t.{now}.{n}",
                    shas[i],
                    (),
                    b"i" * size,
                    p.Limits(memory_mb=16, time_s=1.0, output_kb=kb),
                    100.0,
                )
                for n, (i, size, kb, _) in enumerate(jobs)
            )
            payloads = {shas[i]: b"w" * 1000 for i, _, _, sent in jobs if sent}
            if link.bored_id is not None:
                old = link.bored_id
            j.received(LIVE, p.Jobs(re, specs, payloads), now)
        carry_out(j)
        held = j._in_hand()
        assert sum(h.input for h in held) <= budget
        assert sum(j._payload_bytes(sha) for sha in j.held_payloads()) <= cache
        assert len(j.held_payloads()) <= c.MAX_PAYLOADS_PER_SLOT * 2
        assert j._spool_of(LIVE) <= share
        assert j._spool_in_all() <= in_all


def test_a_reply_to_another_request_than_the_one_out_is_unasked_and_says_why(caplog):
    j = core(spooled=[(LIVE, p.Result("t.0", p.Status.OK, b"out", 5, ""))])
    link = j.links[LIVE]
    link.results_id, link.alive_id = 5, 6  # a results and an alive out
    j.received(LIVE, p.Ack(7, ("t.0",)), 0.1)
    j.received(LIVE, p.AliveAck(8, 4.0, ()), 0.2)
    j.received(LIVE, p.Hello(9), 0.3)  # no reply at all
    assert list(j.unacked[LIVE]) == ["t.0"] and link.alive_every_s == p.ALIVE_INTERVAL_S
    assert link.unasked == 3 and not link.answered and (link.results_id, link.alive_id) == (5, 6)
    for bored_id, why in ((None, "it answers no ask of ours"), (3, "ask 9, not the ask out (3)")):
        caplog.clear()
        k = core()
        k.links[LIVE].bored_id = bored_id
        with caplog.at_level(logging.WARNING, logger="jobber._core"):
            k.received(LIVE, p.Jobs(9, (spec("t.1"),)), 0.0)
        (line,) = [r.getMessage() for r in caplog.records if "did not ask for" in r.getMessage()]
        assert why in line and not k.buffer
