"""The jobber's pure core at its boundaries: the caps and waits of its rules, one past
each, with the clock (a number passed in) run past every one of them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import protocol as p
from jobber import _core as c
from jobber import _settings as js

KEY_A = "aa" * 32
KEY_B = "bb" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
OTHER = "tcp://127.0.0.1:7300"
LIMITS = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=64)


def settings(**kw) -> c.Settings:
    base = dict(name="j", slots=1, cpus=1, memory_mb=256, min_backoff_s=1.0, max_backoff_s=60.0)
    base.update(kw)
    return c.Settings(**base)


def core(dealers=(f"{LIVE}#{KEY_A}",), now=0.0, **kw) -> c.JobberCore:
    spooled = kw.pop("spooled", ())
    pins = kw.pop("pins", None)
    out = c.JobberCore(
        settings(**kw), dealers, now, pins=pins, spooled=spooled, rng=random.Random(1)
    )
    out.cache_updated({SHA: (1000, 0)})  # the payload its jobs name is held
    out.take_actions()
    return out


def spec(tag: str, limits: p.Limits = LIMITS, deadline_s: float = 100.0, sha: str = SHA):
    return p.JobSpec(tag, sha, ("x",), b"", limits, deadline_s)


def sent(actions, kind=None, dealer=None):
    return [
        a.msg
        for a in actions
        if isinstance(a, c.Send)
        and (kind is None or isinstance(a.msg, kind))
        and (dealer is None or a.dealer == dealer)
    ]


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def ok(tag: str, output: bytes = b"out") -> p.Result:
    return p.Result(tag, p.Status.OK, output, 5, "")


def ask(j: c.JobberCore, now: float, dealer: str = LIVE) -> p.Bored:
    j.tick(now)
    (bored,) = sent(j.take_actions(), p.Bored, dealer)
    return bored


def run_one(j: c.JobberCore, now: float, tag: str = "t.0", wall_s: float = 1.0) -> c.Start:
    """Ask, get one job, start it, finish it, and say it is spooled."""
    bored = ask(j, now)
    j.received(LIVE, p.Jobs(bored.id, (spec(tag),)), now)
    j.tick(now)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, ok(tag), wall_s, now)
    j.spooled([(LIVE, tag)])
    j.take_actions()
    return start


def test_the_constants_are_as_documented():
    assert (c.MAX_RESULTS_PER_MESSAGE, c.MAX_RESULTS_BYTES) == (256, 768 * 1024)
    assert (c.MAX_DEALERS, c.MAX_REFERRAL_DEPTH) == (32, 3)
    assert (c.DROP_REFERRED_AFTER, c.DROP_UNREACHED_AFTER) == (5, 2)
    assert (c.SHUN_DROPPED_S, c.MAX_SHUNNED, c.FETCH_PATIENCE_S) == (600.0, 1024, 1.0)
    assert (c.PROGRESS_EVERY_S, c.AHEAD_S, c.MAX_BUFFER_PER_SLOT) == (60.0, 0.25, 256)
    assert (c.DISK_PROBE_S, c.REFUSED_PAYLOAD_WAIT_S) == (1.0, 600.0)
    s = c.Settings("j", 1, 1, 1)
    assert (s.buffer, s.max_idle_s, s.min_backoff_s, s.max_backoff_s) == (None, None, 60.0, 14400.0)
    assert (s.request_timeout_s, s.max_job_time_s, s.max_fuel, s.max_output_kb) == (
        10.0,
        3600.0,
        None,
        None,
    )
    assert s.spool_share_bytes == 256 * 1024 * 1024


def test_slots_must_be_at_least_one():
    with pytest.raises(ValueError, match="slots"):
        c.JobberCore(settings(slots=0), [], 0.0)
    c.JobberCore(settings(slots=1), [], 0.0)


# --- sizes: weight, batches, the water mark, holding ----------------------------------


def test_a_results_weight_is_its_output_four_bytes_a_character_and_64():
    assert c._weight(p.Result("ab", p.Status.OK, b"x" * 10, 5, "det")) == 10 + 4 * 5 + 64
    assert c._weight(p.Result("", p.Status.OK)) == 64


def test_a_batch_is_at_most_256_results_and_768_kib_but_always_one():
    small = [ok(f"t.{i}", b"") for i in range(300)]
    assert len(c._batch(small)) == 256
    assert len(c._batch(small[:256])) == 256
    w = c._weight(ok("t.0", b""))
    assert len(c._batch(small[:255])) == 255
    per = c.MAX_RESULTS_BYTES // 4 - w  # outputs so that four fit exactly
    four = [ok(f"t.{i}", b"x" * per) for i in range(5)]
    assert c._weight(four[0]) * 4 == c.MAX_RESULTS_BYTES
    assert len(c._batch(four)) == 4
    big = [ok("t.big", b"x" * (c.MAX_RESULTS_BYTES + 1)), ok("t.1")]
    assert [r.tag for r in c._batch(big)] == ["t.big"]
    assert c._batch([]) == ()


def test_hi_water_from_the_buffer_setting_or_the_job_length():
    assert core(slots=2, buffer=3).hi_water() == 5
    assert core(slots=2, buffer=0).hi_water() == 2
    j = core(slots=2)
    assert j.hi_water() == 4  # no job seen yet: one buffered per slot
    j._job_s = 0.1
    assert j.hi_water() == 2 * (1 + 3)  # ceil(0.25 / 0.1) = 3 per slot
    j._job_s = 0.25
    assert j.hi_water() == 4
    j._job_s = 10.0
    assert j.hi_water() == 4  # at least one
    j._job_s = 1e-6
    assert j.hi_water() == 2 * (1 + 256)  # at most 256 per slot
    many = core(slots=100)
    many._job_s = 1e-6
    assert many.hi_water() == p.MAX_BATCH


def test_the_mean_job_time_weighs_the_newest_a_fifth():
    j = core(slots=1, buffer=0)
    run_one(j, 0.0, "t.0", wall_s=1.0)
    assert j._job_s == 1.0
    j.links[LIVE].results_id = 0  # the results it answers
    j.received(LIVE, p.Ack(0, ("t.0",)), 0.0)
    j.links[LIVE].ask_after = 0.0
    run_one(j, 2.0, "t.1", wall_s=2.0)
    assert j._job_s == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)


def test_holding_lists_every_tag_or_none_past_the_cap():
    j = core(slots=1, buffer=0)
    for i in range(p.MAX_HOLDING):
        j._hold_result(LIVE, ok(f"t.{i}", b""))
    assert len(j.holding(LIVE)) == p.MAX_HOLDING
    j._hold_result(LIVE, ok("t.last", b""))
    assert j.holding(LIVE) is None
    assert j.count_unacked() == p.MAX_HOLDING + 1
    assert j.holding(OTHER) == ()


def test_want_is_the_water_mark_less_what_is_held():
    j = core(slots=2, buffer=1)
    bored = ask(j, 0.0)
    assert bored.want == 3
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.links[LIVE].ask_after = 0.0
    j.tick(0.0)
    actions = j.take_actions()
    assert len(of(actions, c.Start)) == 1
    (again,) = sent(actions, p.Bored)
    assert again.want == 2


# --- waits: request timeouts, retry later, referrals, finished ----------------------------


def test_a_request_times_out_only_past_the_timeout():
    j = core(request_timeout_s=5.0)
    ask(j, 0.0)
    j.tick(5.0)
    assert not of(j.take_actions(), c.Reset)
    j.tick(5.01)
    assert of(j.take_actions(), c.Reset) == [c.Reset(LIVE)]
    assert j.links[LIVE].backoff.failures == 1


@pytest.mark.parametrize("kind", ["results", "alive", "hello"])
def test_every_kind_of_request_times_out(kind):
    dealers = ("tcp://127.0.0.1:7200",) if kind == "hello" else (f"{LIVE}#{KEY_A}",)
    j = core(dealers, request_timeout_s=5.0, slots=1, buffer=0)
    if kind == "results":
        j._hold_result(LIVE, ok("t.0"))
        j.links[LIVE].ask_after = 1e9  # no asking for work: only the results go
    elif kind == "alive":
        j.buffer.append(c.Held(LIVE, spec("t.0"), 100.0))
        j.paused = "owner"
        j.links[LIVE].ask_after = 1e9
    j.tick(5.0)
    actions = j.take_actions()
    wanted = {"results": p.Results, "alive": p.Alive}.get(kind)
    assert (sent(actions, wanted) if wanted else of(actions, c.Hello)) and not of(actions, c.Reset)
    j.tick(10.0)
    assert not of(j.take_actions(), c.Reset)
    j.tick(10.5)
    assert of(j.take_actions(), c.Reset) == [c.Reset(LIVE)]


def test_retry_later_waits_that_long_and_a_referral_min_backoff():
    j = core(min_backoff_s=3.0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.RetryLater(bored.id, 7.0), 1.0)
    assert j.wake_at(1.0) == 8.0
    j.tick(7.9)
    assert not sent(j.take_actions(), p.Bored)
    bored = ask(j, 8.0)
    j.received(LIVE, p.Referral(bored.id, ()), 9.0)
    assert j.wake_at(9.0) == 12.0
    j.tick(11.9)
    assert not sent(j.take_actions(), p.Bored)
    bored = ask(j, 12.0)
    j.received(LIVE, p.Finished(bored.id), 13.0)
    assert j.links[LIVE].finished and j.wake_at(13.0) == 73.0  # max_backoff_s
    j.tick(72.9)
    assert not sent(j.take_actions(), p.Bored)
    assert ask(j, 73.0)


def test_wake_at_is_the_earliest_wait_of_a_link_with_no_ask_out():
    j = core([f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}"])
    assert j.wake_at(0.0) == float("inf")
    j.links[LIVE].ask_after = 5.0
    j.links[OTHER].backoff.until = 3.0
    assert j.wake_at(0.0) == 3.0
    assert j.wake_at(3.0) == 5.0  # a wait that ended is no wake
    j.links[LIVE].bored_id = 9  # an ask out: its wait does not count
    assert j.wake_at(3.0) == float("inf")


def test_an_error_reply_to_an_ask_or_results_is_a_failed_contact():
    j = core(min_backoff_s=2.0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Error(bored.id + 100, p.ErrorCode.INTERNAL, "other"), 0.5)
    assert j.links[LIVE].backoff.failures == 0  # not about our request
    j.received(LIVE, p.Error(bored.id, p.ErrorCode.INTERNAL, "boom"), 0.5)
    assert j.links[LIVE].backoff.failures == 1
    assert c.Reset(LIVE) in j.take_actions()


def test_alive_every_quarter_lease_at_most_every_5_s():
    j = core(slots=1, buffer=0)
    j.buffer.append(c.Held(LIVE, spec("t.0"), 100.0))
    j.paused = "owner"
    j.links[LIVE].ask_after = 1e9
    j.tick(5.0)
    (alive,) = sent(j.take_actions(), p.Alive)
    j.received(LIVE, p.AliveAck(alive.id, 8.0), 5.0)
    assert j.links[LIVE].alive_every_s == 2.0
    j.tick(6.9)
    assert not sent(j.take_actions(), p.Alive)
    j.tick(7.0)
    (alive,) = sent(j.take_actions(), p.Alive)
    j.received(LIVE, p.AliveAck(alive.id, 100.0), 7.0)
    assert j.links[LIVE].alive_every_s == 5.0
    j.tick(11.9)
    assert not sent(j.take_actions(), p.Alive)
    j.tick(12.0)
    assert sent(j.take_actions(), p.Alive)


# --- dealers: the cap, referrals, dropping and shunning -----------------------------------


def test_at_most_32_dealers_are_known():
    many = [f"tcp://10.0.0.{i}:7117" for i in range(40)]
    j = core(many)
    assert len(j.links) == 32 and list(j.links) == many[:32]


def test_referrals_are_followed_three_deep_and_only_to_tcp():
    j = core()
    bored = ask(j, 0.0)
    j.received(
        LIVE,
        p.Referral(bored.id, ("tcp://10.0.0.1:1", "ipc:///x", "bad address:", "10.0.0.2")),
        0.0,
    )
    assert set(j.links) == {LIVE, "tcp://10.0.0.1:1", "tcp://10.0.0.2:7117"}
    assert j.links["tcp://10.0.0.1:1"].depth == 1 and not j.links["tcp://10.0.0.1:1"].pinned
    link = j.links["tcp://10.0.0.1:1"]
    for depth in (1, 2):
        link.depth = depth
        link.bored_id = 50 + depth
        j.received(link.address, p.Referral(link.bored_id, (f"tcp://10.0.1.{depth}:1",)), 0.0)
        assert f"tcp://10.0.1.{depth}:1" in j.links
        assert j.links[f"tcp://10.0.1.{depth}:1"].depth == depth + 1
    link.depth = 3
    link.bored_id = 60
    j.received(link.address, p.Referral(60, ("tcp://10.0.1.9:1",)), 0.0)
    assert "tcp://10.0.1.9:1" not in j.links


def _fail(j: c.JobberCore, addr: str, now: float) -> None:
    j.links[addr].bored_id = 99
    j.contact_failed(addr, now, "down")


def test_a_referred_dealer_is_dropped_after_2_failures_or_5_once_it_answered():
    j = core([f"{LIVE}#{KEY_A}", "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"])
    for addr in ("tcp://10.0.0.1:1", "tcp://10.0.0.2:1"):
        j.links[addr].pinned = False
    j.links["tcp://10.0.0.2:1"].answered = True
    _fail(j, "tcp://10.0.0.1:1", 0.0)
    assert "tcp://10.0.0.1:1" in j.links
    _fail(j, "tcp://10.0.0.1:1", 0.0)
    assert "tcp://10.0.0.1:1" not in j.links
    for n in range(1, 6):
        _fail(j, "tcp://10.0.0.2:1", 0.0)
        assert ("tcp://10.0.0.2:1" in j.links) == (n < 5), n
    for _ in range(10):  # one from the command line is never dropped
        _fail(j, LIVE, 0.0)
    assert LIVE in j.links


def test_a_referred_dealer_holding_our_results_is_not_dropped():
    j = core([f"{LIVE}#{KEY_A}", "tcp://10.0.0.1:1"])
    j.links["tcp://10.0.0.1:1"].pinned = False
    j._hold_result("tcp://10.0.0.1:1", ok("t.0"))
    for _ in range(5):
        _fail(j, "tcp://10.0.0.1:1", 0.0)
    assert "tcp://10.0.0.1:1" in j.links


def test_a_dropped_dealer_is_shunned_by_referrals_for_600_s():
    j = core([f"{LIVE}#{KEY_A}", "tcp://10.0.0.1:1"])
    j.links["tcp://10.0.0.1:1"].pinned = False
    _fail(j, "tcp://10.0.0.1:1", 0.0)
    _fail(j, "tcp://10.0.0.1:1", 0.0)
    assert "tcp://10.0.0.1:1" not in j.links
    assert c.Reset("tcp://10.0.0.1:1") in j.take_actions()
    for now, back in ((599.9, False), (600.0, True)):
        j.links[LIVE].bored_id = 7
        j.received(LIVE, p.Referral(7, ("tcp://10.0.0.1:1",)), now)
        assert ("tcp://10.0.0.1:1" in j.links) == back, now


def test_the_shunned_list_is_capped_dropping_the_soonest_to_expire():
    j = core()
    for i in range(c.MAX_SHUNNED + 1):
        addr = f"tcp://10.{i // 256}.{i % 256}.1:1"
        j.add_dealer(addr, depth=1)
        j._drop(j.links[addr], float(i))
    assert len(j._shunned) == c.MAX_SHUNNED
    assert "tcp://10.0.0.1:1" not in j._shunned and "tcp://10.0.1.1:1" in j._shunned


# --- idling, buffering, the disk, progress ----------------------------------------------


def test_idle_too_long_at_max_idle_and_not_before():
    j = core(max_idle_s=10.0)
    assert not j.idle_too_long(9.9)
    assert j.idle_too_long(10.0)
    assert j.idle_s(10.0) == 10.0
    j.busy(10.0)
    assert not j.idle_too_long(19.9) and j.idle_too_long(20.0)
    j.buffer.append(c.Held(LIVE, spec("t.0"), 100.0))
    assert not j.idle_too_long(100.0)
    j.buffer.clear()
    assert not j.idle_too_long(109.9)  # busy until 100
    never = core()
    assert not never.idle_too_long(1e9)


def test_results_for_an_answering_dealer_keep_the_jobber_busy():
    j = core(max_idle_s=10.0)
    j._hold_result(LIVE, ok("t.0"))
    assert not j.idle_too_long(50.0)
    j.links[LIVE].backoff.failures = 1  # not answering: delivering can wait
    assert j.idle_too_long(60.0)


def test_buffering_stops_when_the_buffered_deadlines_would_be_missed():
    j = core(slots=1, buffer=3)
    j._job_s = 10.0
    j.buffer.append(c.Held(LIVE, spec("t.0"), 25.0))  # starts in (1/1 + 1) * 10 s = 20 s
    j.paused = "owner"
    j.tick(5.0)
    assert sent(j.take_actions(), p.Bored)  # 5 + 20 <= 25: room for more
    j.links[LIVE].bored_id = None
    j.tick(5.5)  # 5.5 + 20 > 25: asking would only make it later
    assert not sent(j.take_actions(), p.Bored)


def test_an_ask_to_a_live_dealer_holds_back_others_for_a_second():
    j = core([f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}"], slots=1, buffer=0)
    j.links[LIVE].answered = True
    j.tick(0.0)
    assert [m for m in sent(j.take_actions(), p.Bored)] and j.links[LIVE].bored_id
    j.tick(0.99)
    assert not sent(j.take_actions(), p.Bored, OTHER)
    j.tick(1.0)
    (b,) = sent(j.take_actions(), p.Bored, OTHER)
    assert b.want == 1


def test_a_dealer_whose_payloads_we_refuse_is_asked_again_only_after_600_s():
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    unusable = {SHA: (p.Status.ABANDONED, "not signed")}
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0, unusable)
    assert j.links[LIVE].ask_after == 601.0
    (spool,) = of(j.take_actions(), c.Spool)
    assert spool.result.status is p.Status.ABANDONED and spool.result.detail == "not signed"
    other = core(slots=1, buffer=0)
    bored = ask(other, 0.0)
    bad = {SHA: (p.Status.INVALID, "x" * 5000)}
    other.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0, bad)
    assert other.links[LIVE].ask_after == 0.0  # a module that is broken: not our refusal
    (spool,) = of(other.take_actions(), c.Spool)
    assert len(spool.result.detail) == p.MAX_STR


@pytest.mark.parametrize(
    ("status", "detail", "wait"),
    [
        (p.Status.ABANDONED, "refused: compiling it needs more than the 64 MiB ...", True),
        (p.Status.ABANDONED, "cancelled by the jobber", False),
        (p.Status.MEMORY, "refused, in words of the payload's own", False),
    ],
)
def test_a_job_the_slots_refused_to_run_holds_back_asking_that_dealer(status, detail, wait):
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, p.Result("t.0", status, b"", 0, detail), 0.1, 2.0)
    assert j.links[LIVE].ask_after == (2.0 + c.REFUSED_PAYLOAD_WAIT_S if wait else 0.0)


def test_a_result_goes_only_once_it_is_on_disk():
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, ok("t.0"), 0.1, 0.1)
    j.tick(0.2)
    assert not sent(j.take_actions(), p.Results)
    j.spooled([(LIVE, "t.0")])
    j.tick(0.3)
    (results,) = sent(j.take_actions(), p.Results)
    assert [r.tag for r in results.results] == ["t.0"]
    j.received(LIVE, p.Ack(results.id, ("t.0",)), 0.4)
    assert c.Unspool(LIVE, "t.0") in j.take_actions() and not j.unacked


def test_one_results_request_at_a_time_and_a_rejected_result_is_dropped():
    j = core(spooled=[(LIVE, ok("a.1")), (LIVE, ok("a.2"))], slots=1, buffer=0)
    j.links[LIVE].ask_after = 1e9
    j.tick(0.0)
    (results,) = sent(j.take_actions(), p.Results)
    j.tick(1.0)
    assert not sent(j.take_actions(), p.Results)  # one out
    rej = p.Rejection("a.2", p.ErrorCode.SETTLED, "late")
    j.received(LIVE, p.Ack(results.id, ("a.1",), (rej,)), 1.5)
    assert j.unacked == {} and j.links[LIVE].results_id is None


def test_the_disk_is_probed_once_a_second_while_it_refuses():
    j = core(slots=1, buffer=0)
    j._hold_result(LIVE, ok("t.0"))
    j.disk_failed("full", LIVE, "t.0")
    j.tick(0.5)
    assert not of(j.take_actions(), c.ProbeDisk)  # probed at 0 at the latest
    j.tick(1.0)
    actions = j.take_actions()
    assert of(actions, c.ProbeDisk) and of(actions, c.Spool) == [c.Spool(LIVE, ok("t.0"))]
    j.disk_failed("full", LIVE, "t.0")  # the spool write failed again
    j.tick(1.9)
    assert not of(j.take_actions(), c.ProbeDisk)
    j.disk_ok()
    assert j.disk_trouble == "full"  # a result not yet on disk: still in trouble
    j.tick(2.0)
    assert of(j.take_actions(), c.ProbeDisk)
    j.disk_ok()
    assert j.disk_trouble == ""


def test_stop_gives_buffered_jobs_back_and_asks_for_nothing():
    j = core(slots=1, buffer=2)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"))), 0.0)
    j.tick(0.0)
    j.take_actions()
    j.stop(1.0)
    j.stop(1.0)  # once
    assert not j.buffer and j.stopping
    given_back = j.unacked[LIVE]["t.1"]
    assert given_back.status is p.Status.ABANDONED
    j.tick(2.0)
    actions = j.take_actions()
    assert not sent(actions, p.Bored) and not of(actions, c.Start)


def test_a_slot_reporting_an_unknown_job_changes_nothing():
    j = core()
    j.job_done("nope", ok("t.0"), 1.0, 0.0)
    assert j.done == 0 and not j.unacked and j.take_actions() == []


def test_contact_failed_counts_only_with_a_request_out():
    j = core()
    j.contact_failed("tcp://unknown:1", 0.0, "x")
    j.contact_failed(LIVE, 0.0, "refused", "connection refused")
    assert j.links[LIVE].backoff.failures == 0 and j.links[LIVE].problem == "connection refused"
    j.problem(LIVE, "")
    assert j.links[LIVE].problem == ""
    for field in ("results_id", "hello_id", "alive_id"):
        j.links[LIVE].backoff.succeeded()
        setattr(j.links[LIVE], field, 3)
        j.contact_failed(LIVE, 0.0, "refused")
        assert j.links[LIVE].backoff.failures == 1, field


def test_a_key_learnt_on_first_use_is_checked_after_a_failure():
    j = core(["tcp://127.0.0.1:7200"], pins={LIVE: KEY_A})
    link = j.links[LIVE]
    assert link.key == KEY_A and link.key_from_hello
    _fail(j, LIVE, 0.0)
    assert link.check_key and not link.usable()
    given = core([f"{LIVE}#{KEY_A}"])
    _fail(given, LIVE, 0.0)
    assert not given.links[LIVE].check_key and given.links[LIVE].usable()
    assert c.Pin(LIVE, KEY_A) in c.JobberCore(settings(), [f"{LIVE}#{KEY_A}"], 0.0).take_actions()


def _one_running_then_cancelled():
    """A one-slot jobber running t.0, which its dealer cancels at 0.5 s."""
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.links[LIVE].alive_id = 0  # the alive it answers
    j.received(LIVE, p.AliveAck(0, 20.0, ("t.0",)), 0.5)
    return j, start


def test_a_cancel_of_a_running_job_frees_its_place_for_more_work():
    j, start = _one_running_then_cancelled()
    assert c.Stop(start.key) in j.take_actions()
    j.links[LIVE].ask_after = 0.0
    j.tick(0.6)
    (again,) = sent(j.take_actions(), p.Bored)
    assert again.want == 1  # the stopped one is not counted as held


def test_the_host_facts_report_at_most_4096_cached_payloads():
    j = core(max_fuel=10, max_output_kb=5, max_job_time_s=9.0)
    j.cached = tuple(f"{i:064x}" for i in range(p.MAX_CACHED + 3))
    facts = j.host_facts()
    assert len(facts.cached) == p.MAX_CACHED and facts.cached[0] == f"{0:064x}"
    assert (facts.max_fuel, facts.max_output_kb, facts.max_time_s) == (10, 5, 9.0)
    assert (facts.cpus, facts.memory_mb, facts.slots) == (1, 256, 1)


# --- the flow of short jobs: pipelining, the low-water mark, payloads, the spool share ---


def test_actions_and_settings_are_frozen_values():
    import dataclasses

    actions = [
        c.Send(LIVE, p.Hello(1)),
        c.Hello(LIVE, p.Hello(1)),
        c.Reset(LIVE),
        c.Start("0", LIVE, spec("t.0")),
        c.Stop("0"),
        c.Spool(LIVE, ok("t.0")),
        c.Unspool(LIVE, "t.0"),
        c.Pin(LIVE, KEY_A),
    ]
    for a in actions:
        name = dataclasses.fields(a)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(a, name, getattr(a, name))
        assert not hasattr(a, "__dict__"), type(a).__name__
    assert not hasattr(c.ProbeDisk(), "__dict__") and c.ProbeDisk() == c.ProbeDisk()
    assert len({*actions, c.ProbeDisk(), c.ProbeDisk()}) == len(actions) + 1  # values: hashable
    assert c.Start("0", LIVE, spec("t.0")).depth == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().slots = 2  # type: ignore[misc]
    assert (c.PIPELINE_BELOW_S, c.PIPELINE_DEPTH, c.MAX_PAYLOADS_PER_SLOT) == (0.02, 16, 2)


def _buffered(j: c.JobberCore, n: int, sha: str = SHA) -> None:
    for i in range(n):
        j.buffer.append(c.Held(LIVE, spec(f"t.{i}", sha=sha), 1e9))


def test_short_jobs_are_queued_in_each_slots_pipeline():
    deep = c.PIPELINE_DEPTH
    j = core(slots=2, buffer=4 * deep)
    j._job_s = 0.019
    assert j.pipelined
    _buffered(j, 3 * deep)
    j.tick(0.0)
    starts = of(j.take_actions(), c.Start)
    assert len(starts) == 2 * deep and {s.depth for s in starts} == {deep}
    slow = core(slots=2, buffer=4 * deep)
    slow._job_s = 0.02  # not short
    assert not slow.pipelined and not core().pipelined  # nor before any job is seen
    _buffered(slow, 3 * deep)
    slow.tick(0.0)
    starts = of(slow.take_actions(), c.Start)
    assert len(starts) == 2 and {s.depth for s in starts} == {1}


def test_a_job_takes_the_longer_of_its_clocks_shared_by_the_pipeline():
    deep = c.PIPELINE_DEPTH
    j = core(slots=1, buffer=2 * deep)
    j._job_s = 0.01
    _buffered(j, deep)
    j.tick(0.0)
    starts = of(j.take_actions(), c.Start)
    j._job_s = 0.0
    j.job_done(starts[0].key, ok("t.0"), 0.001, 0.8)  # 0.8 s on ours, shared by the queue
    assert j._job_s == pytest.approx(0.8 / deep)
    j.job_done(starts[1].key, ok("t.1"), 0.5, 0.8)  # the slot's own clock says longer
    assert j._job_s == pytest.approx(0.8 * 0.8 / deep + 0.2 * 0.5)
    j._job_s = 0.0
    j.job_done(starts[2].key, ok("t.2"), 0.0, 0.0)
    assert j._job_s == 1e-6  # never zero: zero means "no job seen yet"


def test_asks_wait_for_the_low_water_mark_then_ask_for_the_difference():
    j = core(slots=2, buffer=6)  # hi water 8; low water 8 - (8 - 2) // 2 = 5
    _buffered(j, 6)
    j.paused = "owner"
    j.tick(0.0)
    assert not sent(j.take_actions(), p.Bored)  # 6 in hand: above the low water
    j.buffer.pop()
    j.tick(0.1)
    (bored,) = sent(j.take_actions(), p.Bored)
    assert bored.want == 3
    one = core(slots=1, buffer=1)  # hi 2, low 2 - max(1, 0) = 1
    _buffered(one, 2)
    one.paused = "owner"
    one.tick(0.0)
    assert not sent(one.take_actions(), p.Bored)
    one.buffer.pop()
    one.tick(0.1)
    assert sent(one.take_actions(), p.Bored)[0].want == 1


def test_asks_out_make_no_room_while_more_than_the_high_water_is_held():
    """What an ask out may bring is never less than nothing: holding past the high water
    (it falls as jobs get longer), two live dealers' asks out do not make room for a
    third's."""
    third = "tcp://127.0.0.1:7400"
    j = core([f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}", f"{third}#{'cc' * 32}"], buffer=1)
    _buffered(j, 3)  # hi water 2, low 1: one past the high water
    j.paused = "owner"
    for rid, addr in enumerate((LIVE, OTHER), 1):  # asked, and in their patience
        j.links[addr].answered = True
        j.links[addr].sent(c.BORED, rid, 0.0)
    j.tick(0.5)
    assert not sent(j.take_actions(), p.Bored)


def test_jobs_of_many_payloads_get_no_deep_buffer():
    j = core(slots=1, buffer=10)
    j.paused = "owner"
    j.buffer.append(c.Held(LIVE, spec("t.0", sha="01" * 32), 1e9))
    j.tick(0.0)
    assert sent(j.take_actions(), p.Bored)  # one payload in hand: more may come
    j.links[LIVE].bored_id = None
    j.buffer.append(c.Held(LIVE, spec("t.1", sha="02" * 32), 1e9))
    j.tick(0.1)
    assert not sent(j.take_actions(), p.Bored)  # two payloads for one slot: enough


def test_jobs_in_hand_count_against_a_dealers_spool_share(caplog):
    kb = 1024
    big = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=100)
    j = core(slots=1, buffer=5, spool_share_bytes=250 * kb)
    bored = ask(j, 0.0)
    assert bored.want == 6
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", big),)), 0.0)
    assert j.links[LIVE].output_hint == 100 * kb and j._owed[LIVE] == 100 * kb
    j.paused = "owner"
    j.links[LIVE].ask_after = 0.0
    j.tick(0.1)
    (again,) = sent(j.take_actions(), p.Bored)
    assert again.want == 1  # (250 - 116) KiB left // 116 KiB a result (output, tag, detail)
    j.received(LIVE, p.Jobs(again.id, (spec("t.1", big),)), 0.2)
    assert j._owed[LIVE] == 200 * kb
    j.links[LIVE].ask_after = 0.0
    j.tick(0.3)
    assert not sent(j.take_actions(), p.Bored)  # what it holds may fill its share
    assert "has not acknowledged" not in caplog.text  # its jobs, not its results: not flooded
    j.links[LIVE].bored_id = 99  # an ask out: answered with one job more than fits
    j.links[LIVE].bored_want = 1
    j.received(LIVE, p.Jobs(99, (spec("t.2", big),)), 0.3)
    assert [r.tag for r in j.unacked[LIVE].values()] == ["t.2"]  # given back unrun
    assert j.unacked[LIVE]["t.2"].status is p.Status.ABANDONED
    assert "the spool holds" in j.unacked[LIVE]["t.2"].detail
    j._release_result(LIVE, "t.2")
    j.take_actions()
    j.links[LIVE].alive_id = 0  # the alive it answers
    j.received(LIVE, p.AliveAck(0, 20.0, ("t.1", "t.2")), 0.4)  # cancelled: owed no more
    assert j._owed[LIVE] == 100 * kb
    j.stop(0.5)  # given back unrun: nothing more to write
    assert j._owed[LIVE] == 0


def test_a_bored_names_holding_at_most_every_5_s():
    j = core(slots=1, buffer=0)
    first = ask(j, 0.0)
    assert first.holding == ()
    j.received(LIVE, p.RetryLater(first.id, 0.0), 0.1)
    assert ask(j, 4.9).holding is None
    j.links[LIVE].bored_id = None
    assert ask(j, 5.0).holding == ()


def test_a_fresh_core_and_a_fresh_link_start_from_nothing():
    j = c.JobberCore(settings(), [f"{LIVE}#{KEY_A}"], 0.0)  # its own random source
    assert (j.reached, j.done, j.stopping, j.fetch_paused, j.paused, j.disk_trouble) == (
        False,
        0,
        False,
        False,
        "",
        "",
    )
    link = j.links[LIVE]
    assert (link.pinned, link.depth, link.key, link.key_from_hello, link.check_key) == (
        True,
        0,
        KEY_A,
        False,
        False,
    )
    assert (link.refused, link.answered, link.finished, link.problem, link.flooded) == (
        "",
        False,
        False,
        "",
        False,
    )
    assert (link.hello_at, link.bored_at, link.results_at, link.alive_at) == (0.0,) * 4
    assert (link.ask_after, link.alive_every_s, link.holding_at, link.output_hint) == (
        0.0,
        5.0,
        float("-inf"),
        0,
    )
    assert link.results_tags == () and link.last_reason == ""
    assert (link.bored_want, link.bored_cached, link.unasked, link.input_hint) == (
        0,
        frozenset(),
        0,
        0,
    )
    j.cache_updated({SHA: (1000, 0)})
    j.take_actions()
    first = ask(j, 0.0)
    assert first.id == 1 and first.jobber == "j"
    j.received(LIVE, p.Jobs(first.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    assert start.key == "0" and j.running["0"].started == 0.0
    held = c.Held(LIVE, spec("t.9"), 5.0)
    assert (held.key, held.started, held.depth, held.may_write) == ("", 0.0, 1, 64 * 1024)
    j.links[LIVE].results_id, j.links[LIVE].results_tags = 7, ("t.0",)
    j.contact_failed(LIVE, 1.0, "gone")  # its own random source backs it off
    assert j.links[LIVE].results_tags == () and j.links[LIVE].backoff.failures == 1


def test_a_spooled_result_for_an_unknown_dealer_adds_it_as_referred():
    j = core(spooled=[("tcp://10.1.1.1:7117", ok("old.1"))])
    link = j.links["tcp://10.1.1.1:7117"]
    assert (link.depth, link.pinned) == (1, False)


def test_holding_names_only_that_dealers_tags_and_not_cancelled_ones():
    j = core([f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}"], slots=2, buffer=4)
    for dealer, tag in ((LIVE, "a.0"), (OTHER, "b.0"), (LIVE, "a.1"), (OTHER, "b.1")):
        j.buffer.append(c.Held(dealer, spec(tag), 1e9))
    j.tick(0.0)
    j.take_actions()
    j._hold_result(OTHER, ok("b.9"))
    # buffered, running (a.0 and b.0 started), then finished
    assert j.holding(LIVE) == ("a.1", "a.0")
    assert j.holding(OTHER) == ("b.1", "b.0", "b.9")
    j.links[LIVE].alive_id = 0  # the alive it answers
    j.received(LIVE, p.AliveAck(0, 20.0, ("a.0",)), 0.1)
    assert j.holding(LIVE) == ("a.1",)
    assert j.holds_from(OTHER) and not core().holds_from(OTHER)


# --- what each event changes ------------------------------------------------------------


def test_held_payloads_and_idle_time():
    j = core(slots=1, buffer=1)
    j.buffer.append(c.Held(LIVE, spec("t.0", sha="01" * 32), 1e9))
    j.buffer.append(c.Held(LIVE, spec("t.1", sha="02" * 32), 1e9))
    j.tick(0.0)
    assert j.held_payloads() == {"01" * 32, "02" * 32}  # one running, one buffered
    idle = core(max_idle_s=100.0)
    idle.busy(5.0)
    assert idle.idle_s(12.0) == 7.0
    assert idle.idle_too_long(12.0) is False and idle.idle_too_long(105.0) is True


def test_a_key_given_wins_over_a_pinned_one_and_only_the_command_line_pins():
    j = c.JobberCore(settings(), [f"{LIVE}#{KEY_B}"], 0.0, pins={LIVE: KEY_A})
    link = j.links[LIVE]
    assert (link.key, link.key_from_hello) == (KEY_B, False)
    assert c.Pin(LIVE, KEY_B) in j.take_actions()
    j.add_dealer(f"{OTHER}#{KEY_A}", depth=1)  # a referral naming a key
    assert j.links[OTHER].key == KEY_A and not of(j.take_actions(), c.Pin)


def test_a_key_learnt_in_this_run_is_held_against_a_changed_one():
    j = core(["tcp://127.0.0.1:7200"], request_timeout_s=1.0)
    j.tick(0.0)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 0.1)
    assert c.Pin(LIVE, KEY_A) in j.take_actions()
    ask(j, 0.2)
    j.tick(1.5)  # the ask timed out: is it still the same dealer? Asked at once (a probe)
    link = j.links[LIVE]
    assert link.check_key and link.backoff.until > 1.5
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_B), 1.6)
    assert "not the pinned" in link.refused
    assert link.mismatch == (KEY_A, KEY_B)  # shown to the owner, with both keys


def _probed(timeout_s: float = 1.0):
    """A dealer whose key was learnt, then an ask of it timed out: the probe is out."""
    j = core(["tcp://127.0.0.1:7200"], request_timeout_s=timeout_s)
    j.tick(0.0)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 0.1)
    ask(j, 0.2)
    j.take_actions()
    j.tick(1.5)
    (probe,) = of(j.take_actions(), c.Hello)
    return j, probe


def test_a_probe_answered_with_the_same_key_resets_no_backoff():
    j, probe = _probed()
    link = j.links[LIVE]
    until = link.backoff.until
    j.received(LIVE, p.HelloReply(probe.msg.id, KEY_A), 1.6)
    assert not link.check_key and not link.refused and link.mismatch is None
    assert link.backoff.failures == 1 and link.backoff.until == until  # the failure stands
    j.tick(1.7)
    assert not of(j.take_actions(), c.Send)  # nothing asked inside the backoff


def test_a_silent_probe_counts_no_failure_and_the_key_is_asked_after_the_backoff():
    j, probe = _probed(timeout_s=1.0)
    link = j.links[LIVE]
    until = link.backoff.until
    assert 1.5 < until < 2.6  # (these settings' backoff ends before the probe times out)
    j.tick(2.6)  # the probe's own timeout: no second failure, the backoff unchanged
    assert link.backoff.failures == 1 and link.backoff.until == until
    assert link.check_key
    actions = j.take_actions()
    assert actions[0] == c.Reset(LIVE)  # its socket, in a state nobody knows, closed
    (hello,) = of(actions, c.Hello)  # the backoff is over: the key first, as before
    assert hello.msg.id != probe.msg.id and link.req.out["hello"].id == hello.msg.id


def test_a_key_in_doubt_is_probed_again_while_the_backoff_lasts():
    """The dealer vanished (its batch ended); a minute later another batch, with another
    key, answers on its address: the mismatch shows within PROBE_EVERY_S, not after the
    backoff of minutes, and the probes counted no failure."""
    j = core(
        ["tcp://127.0.0.1:7200"], request_timeout_s=1.0, min_backoff_s=600.0, max_backoff_s=3600.0
    )
    j.tick(0.0)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 0.1)
    ask(j, 0.2)
    j.take_actions()
    j.contact_failed(LIVE, 0.5, "no contact", "cannot connect")
    link = j.links[LIVE]
    until = link.backoff.until
    assert until >= 300.5 and link.backoff.failures == 1
    j.tick(0.5)
    assert len(of(j.take_actions(), c.Hello)) == 1  # at once
    j.tick(2.0)  # silent: no failure, and no second probe before PROBE_EVERY_S
    assert not of(j.take_actions(), c.Hello) and link.backoff.failures == 1
    assert j.wake_at(2.0) == 0.5 + c.PROBE_EVERY_S
    j.tick(0.5 + c.PROBE_EVERY_S)
    (probe,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(probe.msg.id, KEY_B), 11.0)
    assert link.mismatch == (KEY_A, KEY_B) and link.refused
    assert (link.backoff.failures, link.backoff.until) == (1, until)
    j.tick(30.0)
    assert not of(j.take_actions(), c.Hello)  # refused: nothing more is asked


def test_the_owner_accepts_a_changed_key_and_pauses_a_dealer():
    j, probe = _probed()
    j.received(LIVE, p.HelloReply(probe.msg.id, KEY_B), 1.6)
    assert j.links[LIVE].refused
    j.take_actions()
    assert j.accept_key(LIVE, KEY_B) and not j.accept_key("tcp://nowhere:1", KEY_B)
    link = j.links[LIVE]
    assert (link.key, link.refused, link.mismatch) == (KEY_B, "", None)
    assert c.Pin(LIVE, KEY_B) in j.take_actions()
    assert link.backoff.ready(1.7)
    assert j.pause(LIVE, True) and not link.may_ask(1.7)
    j.tick(1.7)
    assert not of(j.take_actions(), c.Send)
    assert j.pause(LIVE, False) and link.may_ask(1.7)
    assert ask(j, 1.8).want >= 1
    # a dealer not known yet is paused once it is
    assert not j.pause("tcp://127.0.0.1:7300", True)
    j.add_dealer("tcp://127.0.0.1:7300", depth=0)
    assert j.links["tcp://127.0.0.1:7300"].paused


def test_a_cancelled_jobs_outcome_frees_its_place():
    j, start = _one_running_then_cancelled()
    j.job_done(start.key, p.Result("t.0", p.Status.ABANDONED), 0.1, 0.6)
    j.links[LIVE].ask_after = 0.0
    assert ask(j, 0.7).want == 1  # not 2: the stopped job no longer counts either way


def test_what_is_given_back_carries_no_output_and_no_fuel():
    j = core(slots=1, buffer=2, memory_mb=32)
    bored = ask(j, 0.0)
    # LIMITS asks 64 MiB, the owner allows 32: all three given back as they come
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"), spec("t.2"))), 1.0)
    assert not j.buffer and sorted(j.unacked[LIVE]) == ["t.0", "t.1", "t.2"]
    assert j.idle_s(1.0) == 0.0  # jobs came: busy
    j.tick(1.0)
    j.stop(2.0)
    for r in j.unacked[LIVE].values():
        assert (r.status, r.output, r.fuel) == (p.Status.ABANDONED, b"", 0)
    k = core(slots=1, buffer=2)
    bored = ask(k, 0.0)
    k.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0, {SHA: (p.Status.INVALID, "bad")})
    assert not k.buffer and (k.unacked[LIVE]["t.0"].fuel, k.unacked[LIVE]["t.0"].output) == (
        0,
        b"",
    )
    k.stop(1.0)
    k2 = core(slots=1, buffer=2)
    bored = ask(k2, 0.0)
    k2.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"))), 0.0)
    k2.stop(1.0)
    assert [(r.fuel, r.output) for r in k2.unacked[LIVE].values()] == [(0, b"")] * 2


def test_slot_keys_count_up_in_hex():
    j = core(slots=20, buffer=0)
    _buffered(j, 17)
    j.tick(0.0)
    assert [s.key for s in of(j.take_actions(), c.Start)][-3:] == ["e", "f", "10"]


def test_a_disk_failure_without_a_result_named_only_marks_the_trouble():
    j = core()
    j._hold_result(LIVE, ok("t.0"))
    j.disk_failed("probe failed", LIVE)
    j.disk_failed("probe failed", None, "t.0")
    assert j.disk_trouble == "probe failed" and not j._unspooled


@pytest.mark.parametrize("kind", ["jobs", "retry", "referral", "finished", "ack", "alive"])
def test_any_answer_marks_the_dealer_reached_and_resets_its_backoff(kind):
    j = core()
    bored = ask(j, 0.0)
    link = j.links[LIVE]
    link.backoff.failures, link.problem = 3, "refused"
    link.results_id, link.results_tags = 5, ("t.0",)
    link.alive_id = 6
    msg = {
        "jobs": p.Jobs(bored.id, ()),
        "retry": p.RetryLater(bored.id, 1.0),
        "referral": p.Referral(bored.id, ()),
        "finished": p.Finished(bored.id),
        "ack": p.Ack(5, ()),
        "alive": p.AliveAck(6, 20.0),
    }[kind]
    j.received(LIVE, msg, 0.5)
    assert (j.reached, link.answered, link.problem, link.backoff.failures) == (True, True, "", 0)
    if kind == "ack":
        assert link.results_id is None and link.results_tags == ()


def test_each_new_retry_reason_is_kept_once():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.RetryLater(bored.id, 0.0, "all out"), 0.1)
    assert j.links[LIVE].last_reason == "all out"
    bored = ask(j, 0.2)
    j.received(LIVE, p.RetryLater(bored.id, 0.0), 0.3)  # no reason: the last one stays
    assert j.links[LIVE].last_reason == "all out"
    bored = ask(j, 0.4)
    j.received(LIVE, p.RetryLater(bored.id, 0.0, "quota"), 0.5)
    assert j.links[LIVE].last_reason == "quota"


def test_no_asking_while_the_owner_wants_the_machine():
    j = core()
    j.fetch_paused = True
    j.tick(0.0)
    assert not sent(j.take_actions(), p.Bored)
    j.fetch_paused = False
    assert ask(j, 0.1)


def test_a_progress_line_a_minute_while_jobs_finish(caplog):
    import logging

    j = core(slots=1, buffer=0)
    with caplog.at_level(logging.INFO, logger="jobber._core"):
        run_one(j, 1.0)
        j.tick(59.9)
        assert not [r for r in caplog.records if "jobs finished" in r.getMessage()]
        j.tick(60.0)
        for m in sent(j.take_actions()):  # the dealer answers what was asked meanwhile
            if isinstance(m, p.Results):
                j.received(LIVE, p.Ack(m.id, ("t.0",)), 60.0)
            elif isinstance(m, p.Bored):
                j.received(LIVE, p.Jobs(m.id, ()), 60.0)
            elif isinstance(m, p.Alive):
                j.received(LIVE, p.AliveAck(m.id, 20.0), 60.0)
        j.links[LIVE].ask_after = 0.0
        run_one(j, 70.0, "t.1")
        j.tick(119.9)  # a minute from the last line, not from the start
        assert len([r for r in caplog.records if "jobs finished" in r.getMessage()]) == 1
        j.tick(120.0)
        j.tick(185.0)  # nothing finished since: no line
    lines = [r.getMessage() for r in caplog.records if "jobs finished" in r.getMessage()]
    assert lines == ["1 jobs finished in the last 60 s (ok 1)"] * 2


def test_a_cancel_counts_what_it_dropped_and_stops_only_what_it_names(caplog):
    import logging

    j = core(slots=2, buffer=2)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}") for i in range(4))), 0.0)
    j.tick(0.0)
    starts = of(j.take_actions(), c.Start)  # t.0 and t.1 run, t.2 and t.3 wait
    j.job_done(starts[0].key, ok("t.0"), 0.1, 0.1)
    j.take_actions()
    with caplog.at_level(logging.INFO, logger="jobber._core"):
        j.links[LIVE].alive_id = 0  # the alive it answers
        j.received(LIVE, p.AliveAck(0, 20.0, ("t.0", "t.1", "t.2", "t.9")), 0.2)
    assert of(j.take_actions(), c.Stop) == [c.Stop(starts[1].key)]
    assert [h.spec.tag for h in j.buffer] == ["t.3"]
    assert (LIVE, "t.0") not in j._undurable and not j.unacked
    lines = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert lines == [f"dealer {LIVE}: 3 jobs cancelled (settled without them)"]


def test_a_refused_result_is_warned_about_and_a_settled_one_only_noted(caplog):
    import logging

    j = core(spooled=[(LIVE, ok("a.1")), (LIVE, ok("a.2")), (LIVE, ok("a.3"))])
    j.links[LIVE].ask_after = 1e9
    j.tick(0.0)
    (results,) = sent(j.take_actions(), p.Results)
    with caplog.at_level(logging.INFO, logger="jobber._core"):
        rejected = (
            p.Rejection("a.1", p.ErrorCode.IMPLAUSIBLE, "too much fuel"),
            p.Rejection("a.2", p.ErrorCode.SETTLED, "late"),
            p.Rejection("a.3", p.ErrorCode.SETTLED, "late"),
        )
        j.received(LIVE, p.Ack(results.id, (), rejected), 0.5)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"dealer {LIVE} refused result a.1: implausible: too much fuel"),
        (logging.INFO, f"dealer {LIVE}: 2 results not needed (their jobs were settled)"),
    ]
    assert not j.unacked


def test_unacknowledged_bytes_follow_what_is_held():
    j = core()
    small, big = ok("t.0", b"x" * 10), ok("t.1", b"x" * 1000)
    j._hold_result(LIVE, small)
    j._hold_result(LIVE, big)
    assert j._unacked_bytes[LIVE] == c._weight(small) + c._weight(big)
    j._hold_result(LIVE, ok("t.1", b"x" * 100))  # the same tag again: replaced
    assert j._unacked_bytes[LIVE] == c._weight(small) + c._weight(ok("t.1", b"x" * 100))
    j._release_result(LIVE, "t.1")
    assert j._unacked_bytes[LIVE] == c._weight(small)
    j._release_result(LIVE, "t.0")
    assert LIVE not in j._unacked_bytes and LIVE not in j.unacked
    assert j.done == 0
    run_one(j, 0.0)
    assert j.done == 1


def test_a_result_acknowledged_while_the_disk_refused_it_is_no_longer_owed_to_the_disk():
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, ok("t.0"), 0.1, 0.1)
    j.disk_failed("full", LIVE, "t.0")  # not on disk: sent from memory
    j.tick(0.2)
    (results,) = sent(j.take_actions(), p.Results)
    j.received(LIVE, p.Ack(results.id, ("t.0",)), 0.3)
    j.disk_ok()
    assert j.disk_trouble == ""  # nothing left to write


def test_request_ids_count_up_from_1():
    j = core(spooled=[(LIVE, ok("a.1"))])
    j.tick(0.0)
    ids = sorted(a.msg.id for a in j.take_actions() if isinstance(a, c.Send))
    assert ids == [1, 2]  # results and bored


def test_a_dealer_exactly_at_its_spool_share_is_asked_for_nothing():
    j = core(spool_share_bytes=c._weight(ok("a.1")))
    j._hold_result(LIVE, ok("a.1"))
    j.links[LIVE].results_id = 9  # its results request out, unanswered
    j.tick(0.0)
    assert not sent(j.take_actions(), p.Bored) and j.links[LIVE].flooded
    # nothing unacknowledged: asked if one result (tag and detail at most) fits its share
    tiny = core(spool_share_bytes=c.RESULT_OVERHEAD_BYTES)
    assert ask(tiny, 0.0)
    tinier = core(spool_share_bytes=c.RESULT_OVERHEAD_BYTES - 1)
    tinier.tick(0.0)
    assert not sent(tinier.take_actions(), p.Bored)


def test_a_hello_reply_clears_the_check_and_a_changed_key_drops_what_was_asked():
    j = core(["tcp://127.0.0.1:7200"], pins={LIVE: KEY_A})
    link = j.links[LIVE]
    link.check_key, link.backoff.failures = True, 2
    link.backoff.until = 0.0
    j.tick(0.0)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 0.1)
    assert (j.reached, link.hello_id, link.check_key, link.backoff.failures) == (
        True,
        None,
        False,
        0,
    )
    assert link.usable()
    link.check_key = True
    link.results_id = 4
    j.tick(0.2)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_B), 0.3)
    assert link.refused and link.results_id is None and link.hello_id is None
    assert j.take_actions() == [c.Reset(LIVE)]


def test_patience_with_a_live_dealer_is_counted_from_its_ask():
    j = core([f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}"], slots=1, buffer=0)
    j.links[LIVE].answered = True
    j.links[OTHER].ask_after = 10.0
    j.tick(10.0)
    assert sent(j.take_actions(), p.Bored, LIVE)
    j.tick(10.9)
    assert not sent(j.take_actions(), p.Bored)
    j.tick(11.0)
    assert sent(j.take_actions(), p.Bored, OTHER)


def test_a_referred_dealer_with_a_new_key_is_trusted_on_first_use_and_checked_later():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Referral(bored.id, ("tcp://10.0.0.5:1",)), 0.0)
    j.links[LIVE].ask_after = 1e9
    j.tick(0.1)
    (hello,) = of(j.take_actions(), c.Hello)
    j.received("tcp://10.0.0.5:1", p.HelloReply(hello.msg.id, KEY_B), 0.2)
    link = j.links["tcp://10.0.0.5:1"]
    assert (link.key, link.key_from_hello) == (KEY_B, True)  # another dealer: kept
    assert c.Pin("tcp://10.0.0.5:1", KEY_B) in j.take_actions()
    _fail(j, "tcp://10.0.0.5:1", 1.0)
    assert link.check_key


def test_a_dealer_whose_key_is_unknown_is_asked_for_its_key_first_and_nothing_else():
    j = core(["tcp://127.0.0.1:7200"])
    j.tick(0.0)
    actions = j.take_actions()
    assert [type(a) for a in actions] == [c.Hello] and not sent(actions)


def test_the_buffer_deadline_counts_the_slots():
    j = core(slots=2, buffer=6)
    j._job_s = 10.0
    j.paused = "owner"
    for i in range(2):
        j.buffer.append(c.Held(LIVE, spec(f"t.{i}"), 25.0))  # starts in (2/2 + 1) * 10 s
    j.tick(5.0)
    assert sent(j.take_actions(), p.Bored)
    j.links[LIVE].bored_id = None
    j.tick(5.5)
    assert not sent(j.take_actions(), p.Bored)


def test_the_share_left_is_divided_by_the_output_a_job_may_write():
    kb = 1024
    big = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=100)
    one = 100 * kb + c.RESULT_OVERHEAD_BYTES  # the most a result of `big` may take
    j = core(slots=1, buffer=5, spool_share_bytes=3 * one + 3 * 4 * len("t.0"))
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", big),)), 0.0)
    j.paused = "owner"
    j.links[LIVE].ask_after = 0.0
    j.tick(0.1)
    (again,) = sent(j.take_actions(), p.Bored)
    assert again.want == 2  # a third of the share spoken for: two jobs' worth left


def test_results_wait_out_a_backoff_and_a_key_check():
    j = core(spooled=[(LIVE, ok("a.1")), (LIVE, ok("a.2"))])
    link = j.links[LIVE]
    link.ask_after = 1e9
    link.backoff.until = 5.0
    j.tick(4.9)
    assert not sent(j.take_actions())
    link.check_key = True
    link.backoff.until = 0.0
    j.tick(5.0)
    actions = j.take_actions()
    assert of(actions, c.Hello) and not sent(actions, p.Results)
    link.check_key, link.hello_id = False, None
    j.tick(6.0)
    (results,) = sent(j.take_actions(), p.Results)
    assert link.results_tags == ("a.1", "a.2") == tuple(r.tag for r in results.results)
    nokey = core(["tcp://127.0.0.1:7200"], spooled=[(LIVE, ok("b.1"))])
    nokey.tick(0.0)
    assert [type(a) for a in nokey.take_actions()] == [c.Hello]


def test_an_alive_naming_holding_spares_the_next_ask_from_naming_it():
    j = core(slots=1, buffer=0)
    run_one(j, 0.0)  # holds t.0's result, unacknowledged
    j.links[LIVE].ask_after = 1e9
    j.links[LIVE].results_id = 3  # its results request out
    j.tick(5.0)
    (alive,) = sent(j.take_actions(), p.Alive)
    assert alive.holding == ("t.0",) and j.links[LIVE].holding_at == 5.0
    j.links[LIVE].ask_after = 0.0
    j.links[LIVE].results_id = 3  # the results it answers
    j.received(LIVE, p.Ack(3, ("t.0",)), 5.1)
    assert ask(j, 6.0).holding is None  # said 1 s ago


def test_a_request_times_out_counted_from_when_it_went():
    j = core(request_timeout_s=5.0)
    j.links[LIVE].ask_after = 10.0
    ask(j, 10.0)
    j.tick(15.0)
    assert not of(j.take_actions(), c.Reset)
    j.tick(15.01)
    assert of(j.take_actions(), c.Reset)


def test_a_bad_address_first_in_a_referral_spoils_nothing_after_it():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Referral(bored.id, ("bad address:", "tcp://10.0.0.3:1")), 0.0)
    assert "tcp://10.0.0.3:1" in j.links


def test_the_first_job_sets_the_mean_and_nothing_is_pinned_without_a_key():
    j = core(slots=1, buffer=0)
    run_one(j, 0.0, wall_s=0.5)
    assert j._job_s == 0.5
    assert c.JobberCore(settings(), ["tcp://127.0.0.1:7200"], 0.0).take_actions() == []
    busy = core(max_idle_s=1.0)
    busy.buffer.append(c.Held(LIVE, spec("t.0"), 1e9))
    assert busy.idle_too_long(100.0) is False


def test_a_cancel_stops_only_the_named_running_job_and_frees_what_it_owed():
    j = core(slots=2, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"))), 0.0)
    j.tick(0.0)
    starts = of(j.take_actions(), c.Start)
    assert j._owed[LIVE] == 2 * 64 * 1024
    j.links[LIVE].alive_id = 0  # the alive it answers
    j.received(LIVE, p.AliveAck(0, 20.0, ("t.1",)), 0.1)
    assert of(j.take_actions(), c.Stop) == [c.Stop(starts[1].key)]
    assert j._owed[LIVE] == 64 * 1024


def test_a_flooded_dealer_stays_flooded_until_it_is_under_its_share_again():
    w = c._weight(ok("a.1"))
    j = core(spooled=[(LIVE, ok("a.1")), (LIVE, ok("a.2")), (LIVE, ok("a.3"))])
    j2 = core(
        spooled=[(LIVE, ok(f"a.{i}")) for i in range(1, 4)],
        spool_share_bytes=w + c.RESULT_OVERHEAD_BYTES,  # room for one more result beside one
    )
    for k in (j, j2):
        k.links[LIVE].flooded = True
        k.links[LIVE].results_id = 0  # the results it answers
        k.received(LIVE, p.Ack(0, ("a.1",)), 0.0)
    assert not j.links[LIVE].flooded  # under the default share
    assert j2.links[LIVE].flooded  # two left: no room for another beside them
    j2.links[LIVE].results_id = 0  # the results it answers
    j2.received(LIVE, p.Ack(0, ("a.2",)), 0.1)
    assert not j2.links[LIVE].flooded


# --- the settings record: its defaults, its options, what the core is told -----------


def test_the_settings_records_defaults_are_as_documented(monkeypatch):
    assert js.SPOOL_SHARES_IN_ALL == 4
    assert c.Settings("j", 1, 1, 1, spool_share_bytes=10).spool_budget() == 40
    cfg = js.Config(dealers=[], data_dir=Path("d"))
    assert (cfg.grace_s, cfg.idle_only, cfg.idle_after_s) == (30.0, False, 60.0)
    assert (cfg.load_threshold, cfg.cpu_limit, cfg.control) == (0.5, 100.0, True)
    assert (cfg.cache_mb, cfg.spool_mb, cfg.name, cfg.trust) == (1024, 256, None, [])
    assert cfg.input_mb == js.INPUT_MB == 4096
    monkeypatch.setattr(js.os, "cpu_count", lambda: 6)
    assert js.Config(dealers=[], data_dir=Path("d")).slots == 6
    monkeypatch.setattr(js.os, "cpu_count", lambda: None)  # the count unknown: one slot
    assert js.Config(dealers=[], data_dir=Path("d")).slots == 1


def test_each_option_names_its_field_and_the_core_is_told_the_record():
    assert js.OPTIONS["data_dir"] == "data_dir"
    assert js.OPTIONS["max_idle"] == "max_idle_s" and js.OPTIONS["slots"] == "slots"
    assert js.OPTIONS["cache_mb"] == "cache_mb" and "buffer" not in js.OPTIONS
    timing = dict(max_idle_s=9.0, min_backoff_s=0.5, max_backoff_s=2.0, request_timeout_s=3.0)
    ceilings = dict(max_job_time_s=11.0, max_fuel=7, max_output_kb=4, input_mb=6)
    assert js.OPTIONS["max_input_mb"] == "input_mb"
    cfg = js.Config(
        dealers=[], data_dir=Path("d"), slots=3, spool_mb=2, buffer=2, **timing, **ceilings
    )
    told = cfg.core_settings("n", cpus=4, memory_mb=5, cache_mb=3, platform="x")
    assert told == c.Settings(
        "n",
        3,
        4,
        5,
        buffer=2,
        spool_share_bytes=2 * js.MIB,
        cache_bytes=3 * js.MIB,
        platform="x",
        **timing,
        **ceilings,
    )


def test_physical_memory_is_pages_times_their_size_in_mib_or_1024_unknown(monkeypatch):
    sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 3 * 256 + 100}
    monkeypatch.setattr(js.os, "sysconf", sizes.__getitem__)
    assert js.physical_memory_mb() == 3

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(js.os, "sysconf", unknown)
    assert js.physical_memory_mb() == 1024


def test_a_held_jobs_most_in_the_spool_and_in_memory_to_the_byte():
    worst = p.Result("", p.Status.OK, b"", 5, "\U0001f600" * p.MAX_STR)  # 4 bytes each
    assert c.RESULT_OVERHEAD_BYTES == c._weight(worst) == 4 * 4096 + 64
    held = c.Held(LIVE, spec("t.0"), 1.0)
    assert held.may_hold == 64 * 1024 + 4 * 3 + c.RESULT_OVERHEAD_BYTES
    job = p.JobSpec("t", SHA, ("x", "yz"), b"abc", LIMITS, 1.0)
    assert c._input_of(job) == 3 + 4 * (1 + 3) + 64 * (2 + 2)
    assert c.MAX_OUTPUT_KB == 32 * 1024  # the wire's 32 MiB


def test_a_request_id_set_by_hand_keeps_when_the_request_out_went():
    link = core().links[LIVE]
    link.bored_id = 7  # none was out: as if it went at 0.0
    assert (link.bored_id, link.bored_at) == (7, 0.0)
    link.bored_id = None
    link.sent(c.BORED, 8, 5.0)
    link.bored_id = 9
    assert (link.bored_id, link.bored_at) == (9, 5.0)
    link.bored_id = None
    assert (link.bored_id, link.bored_at) == (None, 0.0)


def test_a_fresh_core_is_not_suspended_and_asks_holding_no_payload():
    j = c.JobberCore(settings(), [f"{LIVE}#{KEY_A}"], 0.0, rng=random.Random(1))
    assert (j.suspended, j.why_suspended, j.cached, dict(j.sizes)) == (False, "", (), {})
    assert ask(j, 0.0).host.cached == ()


def test_dealers_are_told_the_largest_output_one_spool_share_can_hold():
    need = 4 * p.MAX_STR + c.RESULT_OVERHEAD_BYTES  # the largest tag, its detail, framing
    assert core(spool_share_bytes=need + 5 * 1024 + 1023).max_output_kb() == 5
    assert core(spool_share_bytes=need + 5 * 1024 - 1).max_output_kb() == 4
    assert core(spool_share_bytes=need + 5 * 1024, max_output_kb=3).max_output_kb() == 3
    assert core(spool_share_bytes=100).max_output_kb() == 0  # none fits
    big = need + c.MAX_OUTPUT_KB * 1024
    assert core(spool_share_bytes=big).max_output_kb() is None  # the wire's largest fits
    assert core(spool_share_bytes=big - 1).max_output_kb() == c.MAX_OUTPUT_KB - 1


def test_eligible_projects_are_usable_unfinished_and_have_work_or_hold_ours():
    """Those the debts' accounting counts: not backed off, not finished, not waiting for
    their key, and either not asked to wait or holding something of ours."""
    a, b, f, d, e, h = (f"tcp://127.0.0.1:{7500 + i}" for i in range(6))
    keys = {a: KEY_A, f: KEY_B, d: "cc" * 32, e: "dd" * 32, h: "ee" * 32}
    j = core([], spooled=[(h, ok("t.0"))])  # h holds a result of ours
    j.set_projects({(f"{x}#{keys[x]}" if x in keys else x): 1.0 for x in (a, b, f, d, e, h)})
    j.tick(0.0)
    acts = j.take_actions()
    asks = {x: m.id for x in (a, f, d, e, h) for m in sent(acts, p.Bored, x)}
    assert set(asks) == {a, f, d, e, h}
    j.received(a, p.RetryLater(asks[a], 0.5), 0.0)  # work again at 0.5
    j.received(f, p.Finished(asks[f]), 0.0)
    j.contact_failed(d, 0.0, "no contact")
    j.received(e, p.RetryLater(asks[e], 600.0), 0.0)
    j.received(h, p.RetryLater(asks[h], 600.0), 0.0)
    assert j.eligible(1.0) == [a, h]  # b: its key not known yet
    assert j.eligible(0.4) == [h]
    assert j.eligible(0.5) == [a, h]  # from the instant its wait ends


def test_under_an_allocator_the_most_owed_is_asked_counting_the_work_in_hand_as_done():
    """A job in hand counts as the mean job length of work (AHEAD_S before any job is
    timed) done for its project: with equal debts the other project is owed more; owed
    0.5 s more, the project with the job in hand is still owed the most."""
    for debts, first in (({}, OTHER), ({LIVE: 0.5}, LIVE), ({LIVE: 0.2}, OTHER)):
        j = core([])
        j.set_projects({f"{LIVE}#{KEY_A}": 1.0, f"{OTHER}#{KEY_B}": 1.0}, debts)
        for addr in (LIVE, OTHER):
            j.links[addr].answered = True  # one live dealer asked at a time
        j.buffer.append(c.Held(LIVE, spec("t.0"), 1e9))
        j.paused = "owner"
        j.tick(0.0)
        asked = [a.dealer for a in of(j.take_actions(), c.Send) if isinstance(a.msg, p.Bored)]
        assert asked == [first], debts
