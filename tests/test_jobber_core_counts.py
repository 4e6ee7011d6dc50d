"""The jobber's pure core at its boundaries: the caps and waits of its rules, one past
each, with the clock (a number passed in) run past every one of them."""

from __future__ import annotations

import random

import pytest

import protocol as p
from jobber import _core as c

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


def test_a_cancel_of_a_running_job_frees_its_place_for_more_work():
    j = core(slots=1, buffer=0)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    j.received(LIVE, p.AliveAck(0, 20.0, ("t.0",)), 0.5)
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
