"""The jobber's pure core, driven directly: events and the time in, actions out."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from jobber import _core as c

KEY_A = "aa" * 32
KEY_B = "bb" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
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


def spec(tag: str, limits: p.Limits = LIMITS, deadline_s: float = 100.0) -> p.JobSpec:
    return p.JobSpec(tag, SHA, ("x",), b"", limits, deadline_s)


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


# --- dealers and their spellings ------------------------------------------------


def test_one_dealer_under_two_spellings_is_one_dealer():
    j = core([f"{LIVE}#{KEY_A}", f"tcp://localhost:7200#{KEY_A}", "tcp://127.0.0.1:7300"])
    assert list(j.links) == [LIVE, "tcp://127.0.0.1:7300"]


def test_a_referral_to_a_known_dealer_under_another_name_is_dropped_once_its_key_is_seen():
    j = core()
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Referral(bored.id, ("tcp://localhost:7200",)), 0.1)
    assert "tcp://localhost:7200" in j.links
    j.tick(0.5)  # the live dealer waits out min_backoff_s; the referred one's key is asked
    hello = of(j.take_actions(), c.Hello)
    assert [h.dealer for h in hello] == ["tcp://localhost:7200"]
    j.received("tcp://localhost:7200", p.HelloReply(hello[0].msg.id, KEY_A), 0.6)
    assert list(j.links) == [LIVE]
    assert of(j.take_actions(), c.Reset) == [c.Reset("tcp://localhost:7200")]


def test_a_key_learnt_on_first_use_is_pinned_and_a_changed_key_is_refused():
    j = core(["tcp://127.0.0.1:7200"])
    j.tick(0.0)
    hello = of(j.take_actions(), c.Hello)[0]
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 0.1)
    assert c.Pin(LIVE, KEY_A) in j.take_actions()
    assert j.links[LIVE].key == KEY_A
    # next run: pinned; the dealer times out, so its key is checked again, and has changed
    j = core(["tcp://127.0.0.1:7200"], pins={LIVE: KEY_A}, request_timeout_s=1.0)
    j.tick(0.0)
    assert sent(j.take_actions(), p.Bored)
    j.tick(1.5)
    assert j.links[LIVE].check_key
    hello = of(j.take_actions(), c.Hello)[0]  # asked at once, inside the backoff
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_B), 1.6)
    assert "not the pinned" in j.links[LIVE].refused
    j.tick(100.0)
    assert not sent(j.take_actions())


# --- fairness -------------------------------------------------------------------


def _serve(j: c.JobberCore, referred: tuple[str, ...], seconds: float) -> int:
    """A live dealer answering at once with one job, each job taking 1 s: jobs done."""
    asks = done = 0
    running: tuple[str, str, float] | None = None
    for step in range(int(seconds * 10)):
        now = step * 0.1
        j.tick(now)
        for a in j.take_actions():
            if isinstance(a, c.Send) and a.dealer == LIVE:
                if isinstance(a.msg, p.Bored):
                    asks += 1
                    if asks == 1 and referred:  # the first answer refers elsewhere
                        j.received(LIVE, p.Referral(a.msg.id, referred), now)
                    else:
                        j.received(LIVE, p.Jobs(a.msg.id, (spec(f"t.{asks}"),)), now)
                elif isinstance(a.msg, p.Results):
                    tags = tuple(r.tag for r in a.msg.results)
                    j.received(LIVE, p.Ack(a.msg.id, tags), now)
            elif isinstance(a, c.Start):
                running = (a.key, a.spec.tag, now + 1.0)
        if running and now >= running[2] - 1e-9:
            j.job_done(running[0], ok(running[1]), 1.0, now)
            running = None
            done += 1
    return done


def test_dead_referred_dealers_never_starve_a_live_one_and_are_dropped_quickly():
    """Beside 31 dead referred dealers, a live one is asked as soon as it is ready every
    time: as many jobs are done as with the live dealer alone, less the referral's wait;
    the dead are forgotten after two failed contacts each."""
    alone = _serve(core(slots=1, buffer=0), (), 200.0)
    j = core(request_timeout_s=10.0, slots=1, buffer=0)
    dead = tuple(f"tcp://10.0.0.{i}:7117#{KEY_B[:-2]}{i:02x}" for i in range(31))
    crowded = _serve(j, dead, 200.0)
    assert alone >= 150
    assert crowded >= alone - 2, (crowded, alone)  # min_backoff_s after the referral: 1 s
    assert list(j.links) == [LIVE]  # every dead referred dealer dropped


def test_a_dealer_that_does_not_ack_gets_no_more_work_past_its_spool_share():
    share = 100_000
    j = core(spool_share_bytes=share, slots=1, buffer=0)
    small = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=1)
    tag = 0
    for t in range(600):  # about 220 results of 380 bytes fill it, one every 2 s
        now = float(t)
        j.tick(now)
        for a in j.take_actions():
            if isinstance(a, c.Send) and isinstance(a.msg, p.Bored):
                tag += 1
                j.received(LIVE, p.Jobs(a.msg.id, (spec(f"t.{tag}", small),)), now)
            elif isinstance(a, c.Start):
                j.job_done(a.key, ok(a.spec.tag, b"x" * 300), 0.1, now)
            # results requests are never answered: the dealer floods the spool
        if j.links[LIVE].backoff.failures:  # its unanswered results requests timed out
            j.links[LIVE].backoff.succeeded()
    held = sum(c._weight(r) for r in j.unacked[LIVE].values())
    assert j.links[LIVE].flooded
    # the share at most, and no room left in it for one more result
    assert share - 1024 - c.RESULT_OVERHEAD_BYTES < held <= share
    results = j.unacked[LIVE]
    j.links[LIVE].results_id = 0  # the results it answers
    j.received(LIVE, p.Ack(0, tuple(results)), 600.0)
    assert not j.links[LIVE].flooded
    asked = []
    for t in range(601, 610):  # asked again, once past any backoff the timeouts left
        j.tick(float(t))
        asked += sent(j.take_actions(), p.Bored)
    assert asked


# --- the owner's limits ----------------------------------------------------------


def test_a_job_asking_more_than_the_owner_allows_is_given_back_unrun():
    j = core(memory_mb=64, max_job_time_s=50.0)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    assert bored.host.max_time_s == 50.0 and bored.host.memory_mb == 64
    greedy = p.Limits(fuel=10**9, memory_mb=65536, time_s=10**7, output_kb=64)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", greedy), spec("t.1"))), 0.1)
    assert j.links[LIVE].ask_after == 0.1 + 1.0  # asked again after a backoff, not at once
    j.tick(0.2)
    actions = j.take_actions()
    starts = of(actions, c.Start)
    assert [s.spec.tag for s in starts] == ["t.1"]
    refused = [a.result for a in of(actions, c.Spool)]
    assert refused[0].tag == "t.0" and refused[0].status is p.Status.ABANDONED
    assert "65536 MiB of memory (this machine allows 64)" in refused[0].detail
    assert not sent(actions, p.Results)  # not before it is on disk
    j.spooled([(LIVE, "t.0")])
    j.tick(0.3)
    assert [r.tag for m in sent(j.take_actions(), p.Results) for r in m.results] == ["t.0"]


limits = st.builds(
    p.Limits,
    fuel=st.integers(1, 2**62),
    memory_mb=st.integers(1, 65536),
    time_s=st.floats(0.001, 1e7),
    output_kb=st.integers(0, 32 * 1024),
)


@given(
    limits,
    st.integers(0, 1 << 20),
    st.one_of(st.none(), st.floats(0.001, 1e7)),
    st.one_of(st.none(), st.integers(1, 2**62)),
    st.one_of(st.none(), st.integers(0, 32 * 1024)),
)
def test_a_job_runs_only_within_every_limit_of_the_owner(lim, mem, time_s, fuel, out_kb):
    j = core(memory_mb=mem, max_job_time_s=time_s or 1e7, max_fuel=fuel, max_output_kb=out_kb)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", lim),)), 0.0)
    j.tick(0.1)
    actions = j.take_actions()
    fits = (
        lim.memory_mb <= mem
        and lim.time_s <= (time_s or 1e7)
        and (fuel is None or lim.fuel <= fuel)
        and (out_kb is None or lim.output_kb <= out_kb)
    )
    started = of(actions, c.Start)
    assert bool(started) == fits
    if not fits:
        (given_back,) = [a.result for a in of(actions, c.Spool)]
        assert given_back.status is p.Status.ABANDONED
        assert "this machine allows" in given_back.detail


# --- liveness, cancels ------------------------------------------------------------


def test_alive_goes_while_work_is_held_and_names_it_only_with_no_ask_out():
    j = core(slots=1, buffer=1)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.1)
    j.tick(0.2)  # starts t.0 and asks for one more
    actions = j.take_actions()
    assert of(actions, c.Start) and sent(actions, p.Bored)
    j.tick(p.ALIVE_INTERVAL_S + 0.3)
    (alive,) = sent(j.take_actions(), p.Alive)
    assert alive.holding is None  # a `jobs` reply may be in flight
    j.received(LIVE, p.AliveAck(alive.id, 20.0), 5.4)
    second = sent(j.take_actions(), p.Bored)
    assert not second
    j.received(LIVE, p.RetryLater(sent(actions, p.Bored)[0].id, 30.0), 5.5)
    j.tick(2 * p.ALIVE_INTERVAL_S + 0.4)
    (alive,) = sent(j.take_actions(), p.Alive)
    assert alive.holding == ("t.0",)


def test_no_alive_while_nothing_is_held():
    j = core()
    for t in range(30):
        j.tick(float(t))
        for a in j.take_actions():
            assert not (isinstance(a, c.Send) and isinstance(a.msg, p.Alive))
            if isinstance(a, c.Send) and isinstance(a.msg, p.Bored):
                j.received(LIVE, p.RetryLater(a.msg.id, 1.0), float(t))


def test_a_cancel_stops_running_work_drops_buffered_and_spooled_results():
    j = core(slots=1, buffer=2)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"), spec("t.2"))), 0.0)
    j.tick(0.1)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, ok("t.0"), 0.1, 0.2)
    j.spooled([(LIVE, "t.0")])
    j.tick(0.3)  # t.1 starts, t.0's result goes
    actions = j.take_actions()
    (start,) = of(actions, c.Start)
    assert sent(actions, p.Results)
    j.links[LIVE].alive_id = 99  # the alive it answers
    j.received(LIVE, p.AliveAck(99, 20.0, ("t.0", "t.1", "t.2")), 0.4)
    actions = j.take_actions()
    assert c.Stop(start.key) in actions
    assert c.Unspool(LIVE, "t.0") in actions
    assert not j.buffer and not j.unacked
    j.job_done(start.key, p.Result("t.1", p.Status.ABANDONED, b"", 0, "stopped"), 0.1, 0.5)
    assert not j.unacked  # a cancelled job's outcome is not sent
    assert j.holding(LIVE) == ()


# --- timeouts, backoff ------------------------------------------------------------


def test_an_unanswered_request_resets_the_link_and_backs_off():
    j = core(request_timeout_s=2.0, min_backoff_s=4.0)
    j.tick(0.0)
    assert sent(j.take_actions(), p.Bored)
    j.tick(1.9)
    assert not j.take_actions()
    j.tick(2.1)
    assert c.Reset(LIVE) in j.take_actions()
    link = j.links[LIVE]
    assert link.backoff.failures == 1 and 2.0 <= link.backoff.until - 2.1 <= 4.0
    j.tick(link.backoff.until - 0.01)
    assert not sent(j.take_actions())
    j.tick(link.backoff.until)
    assert sent(j.take_actions(), p.Bored)


def test_a_refused_connection_fails_a_request_at_once_but_not_an_idle_link():
    j = core(min_backoff_s=4.0)
    j.contact_failed(LIVE, 0.0, "no contact", "refused")
    assert j.links[LIVE].backoff.failures == 0  # nothing was out
    j.tick(0.0)
    assert sent(j.take_actions(), p.Bored)
    j.contact_failed(LIVE, 0.1, "no contact", "refused")
    assert j.links[LIVE].backoff.failures == 1
    assert j.links[LIVE].problem == "refused"


# --- the disk ---------------------------------------------------------------------


def test_a_full_disk_keeps_results_asks_for_nothing_and_recovers():
    j = core(slots=1, buffer=0)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 0.0)
    j.tick(0.1)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, ok("t.0"), 0.1, 0.2)
    (spool,) = of(j.take_actions(), c.Spool)
    j.disk_failed("cannot write the spool: No space left on device", LIVE, "t.0")
    j.tick(2.0)
    actions = j.take_actions()
    assert not sent(actions, p.Bored)  # no new work while results cannot be kept
    assert [r.tag for m in sent(actions, p.Results) for r in m.results] == ["t.0"]
    assert c.Spool(LIVE, spool.result) in actions and c.ProbeDisk() in actions
    j.disk_failed("still full")  # the probe failed too
    j.tick(3.5)
    actions = j.take_actions()
    assert c.ProbeDisk() in actions
    j.disk_ok()
    assert not j.disk_trouble
    j.tick(4.0)
    assert sent(j.take_actions(), p.Bored)


# --- idling ---------------------------------------------------------------------------


def test_max_idle_does_not_count_time_a_dealer_still_holds_work_for_us():
    j = core(max_idle_s=3.0)
    for t in range(10):
        now = float(t)
        j.tick(now)
        for m in sent(j.take_actions(), p.Bored):
            j.received(LIVE, p.RetryLater(m.id, 0.5, "all out", more=True), now)
        assert not j.idle_too_long(now)
    for t in range(10, 20):
        now = float(t)
        j.tick(now)
        for m in sent(j.take_actions(), p.Bored):
            j.received(LIVE, p.RetryLater(m.id, 0.5, "nothing"), now)
    assert j.idle_too_long(20.0)


def test_results_from_an_earlier_run_are_delivered_first():
    j = core(spooled=[(LIVE, ok("old.1")), ("tcp://10.1.1.1:7117", ok("old.2"))])
    assert "tcp://10.1.1.1:7117" in j.links and not j.links["tcp://10.1.1.1:7117"].pinned
    j.tick(0.0)
    (results,) = sent(j.take_actions(), p.Results, LIVE)
    assert [r.tag for r in results.results] == ["old.1"]
    j.received(LIVE, p.Ack(results.id, ("old.1",)), 0.1)
    assert c.Unspool(LIVE, "old.1") in j.take_actions()


def test_a_result_is_sent_only_once_it_is_on_disk_or_the_disk_refused_it():
    j = core(slots=1, buffer=1)
    j.tick(0.0)
    bored = sent(j.take_actions(), p.Bored)[0]
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"), spec("t.1"))), 0.0)
    for t, tag in ((0.1, "t.0"), (0.2, "t.1")):
        j.tick(t)
        (start,) = of(j.take_actions(), c.Start)
        j.job_done(start.key, ok(tag), 0.01, t)
    j.tick(0.3)
    assert not sent(j.take_actions(), p.Results)  # neither is on disk yet
    j.spooled([(LIVE, "t.1")])
    j.tick(0.4)
    assert [r.tag for m in sent(j.take_actions(), p.Results) for r in m.results] == ["t.1"]
    j.disk_failed("No space left on device", LIVE, "t.0")  # kept in memory, delivered
    j.links[LIVE].results_id = 0  # the results it answers
    j.received(LIVE, p.Ack(0, ("t.1",)), 0.5)
    j.links[LIVE].results_id = None
    j.tick(0.6)
    assert [r.tag for m in sent(j.take_actions(), p.Results) for r in m.results] == ["t.0"]


def test_the_buffer_covers_a_quarter_second_of_work_whatever_the_job_length():
    j = core(slots=2)
    assert j.hi_water() == 4  # nothing known yet: one running and one buffered per slot
    j._job_s = 0.001  # the mean job length the core has seen
    assert j.hi_water() == 2 * (1 + 250)
    j._job_s = 1e-6
    assert j.hi_water() == 2 * (1 + c.MAX_BUFFER_PER_SLOT)
    j._job_s = 30.0
    assert j.hi_water() == 4
    assert core(slots=2, buffer=0).hi_water() == 2  # the owner's setting wins
    j._job_s = 0.001
    j.tick(0.0)
    (bored,) = sent(j.take_actions(), p.Bored)
    assert bored.want == 502


def test_jobs_of_many_payloads_get_no_deep_buffer():
    j = core(slots=1)
    j._job_s = 0.001  # short jobs: a deep buffer
    j.tick(0.0)
    (bored,) = sent(j.take_actions(), p.Bored)
    assert bored.want == 251
    specs = tuple(
        p.JobSpec(f"t.{i}", f"{i:064x}", (), b"", LIMITS, 100.0) for i in range(2)
    )  # a new payload with every job
    j.cache_updated({s.payload: (1000, 0) for s in specs})
    j.received(LIVE, p.Jobs(bored.id, specs), 0.1)
    for t in (0.2, 0.3, 5.0):
        j.tick(t)
        assert not sent(j.take_actions(), p.Bored)  # two payloads in hand: enough


def test_a_dealer_is_asked_for_no_more_than_its_share_of_the_spool_could_take():
    big = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=1024)
    one = 1024 * 1024 + c.RESULT_OVERHEAD_BYTES + 4 * len("t.0")  # a result of `big`, at most
    j = core(slots=1, spool_share_bytes=3 * one)
    j._job_s = 0.001
    j.tick(0.0)
    (bored,) = sent(j.take_actions(), p.Bored)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0", big),)), 0.0)
    j.tick(0.1)  # t.0 starts; 1 MiB of 3 may be written: two more, not 250
    (bored,) = sent(j.take_actions(), p.Bored)
    assert bored.want == 2
    j.received(LIVE, p.Jobs(bored.id, (spec("t.1", big), spec("t.2", big))), 0.1)
    j.tick(0.2)
    assert not sent(j.take_actions(), p.Bored)  # its share is spoken for


def test_asks_wait_for_the_low_water_mark_and_name_holding_every_few_seconds():
    j = core(slots=1)
    j._job_s = 0.01  # hi_water 1 + 25 = 26; low-water 26 - 12 = 14
    j.tick(0.0)
    (bored,) = sent(j.take_actions(), p.Bored)
    assert bored.want == 26 and bored.holding == ()  # the first ask names what it holds
    j.received(LIVE, p.Jobs(bored.id, tuple(spec(f"t.{i}") for i in range(26))), 0.0)
    now = 0.0
    asked = []
    while not asked:
        now += 0.01
        j.tick(now)
        for a in j.take_actions():
            if isinstance(a, c.Start):
                j.job_done(a.key, ok(a.spec.tag), 0.01, now)
            elif isinstance(a, c.Send) and isinstance(a.msg, p.Bored):
                asked.append(a.msg)
    # the slot takes PIPELINE_DEPTH (16) jobs a turn here (short jobs are pipelined):
    # 26, then 10 in hand, the first count at or under the low-water mark (14), when the
    # rest is asked for
    assert c.PIPELINE_DEPTH == 16 and asked[0].want == 26 - 10
    assert asked[0].holding is None  # named 0.1 s ago: alive says it in a moment
