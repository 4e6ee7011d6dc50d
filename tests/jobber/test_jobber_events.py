"""The events the jobber's shell reports and its core decides on (jobber._actions): the
owner's activity, payloads unsigned or misnamed, a payload the disk would not keep or
the cache no longer holds, an allocator's new limits."""

from __future__ import annotations

import logging

import pytest

import protocol as p
from jobber import _core as c
from jobber._shares import Shares
from tests.jobber.test_jobber_core_counts import LIVE, SHA, ask, core, of, sent, spec


def owner(j: c.JobberCore, now: float = 0.0, **kw) -> list[c.Action]:
    j.handle(c.Owner(**kw), now)
    return j.take_actions()


@pytest.mark.parametrize(
    ("kw", "why", "asks"),
    [
        ({}, "", True),
        ({"suspended": True}, "suspended by the owner", False),
        ({"computes": False}, "outside the pool's hours", False),
        ({"in_use": True}, "machine in use", False),
        ({"cpu_off": True}, "cpu limit", True),
        ({"asks": False}, "", False),  # outside the network hours: jobs run, none asked
        # the first reason that holds wins
        ({"suspended": True, "computes": False, "in_use": True}, "suspended by the owner", False),
        ({"computes": False, "in_use": True, "cpu_off": True}, "outside the pool's hours", False),
        ({"in_use": True, "cpu_off": True}, "machine in use", False),
        # an owner's preference (hours, batteries, memory while in use): after the pool's
        # hours, before the machine in use
        ({"held": "on batteries"}, "on batteries", False),
        ({"held": "on batteries", "computes": False}, "outside the pool's hours", False),
        ({"held": "on batteries", "in_use": True}, "on batteries", False),
        # winding down: running jobs get their grace, whatever held them
        ({"stopping": True, "suspended": True, "in_use": True}, "", False),
    ],
)
def test_the_core_decides_what_the_owner_s_activity_means(kw, why, asks):
    j = core()
    actions = owner(j, **kw)
    assert j.why_suspended == why
    assert j.suspended is bool(why) and j.paused == ("suspended" if why else "")
    assert j.fetch_paused is not asks
    assert of(actions, c.Suspend) == ([c.Suspend()] if why else [])
    assert not of(actions, c.Resume)


def test_suspend_and_resume_go_once_each_and_are_logged_but_for_the_cpu_limit(caplog):
    caplog.set_level(logging.INFO, logger="jobber._core")
    j = core()
    assert of(owner(j, in_use=True), c.Suspend) == [c.Suspend()]
    assert owner(j, in_use=True) == []  # already suspended: nothing more
    assert owner(j, computes=False) == []  # another reason: still suspended
    assert j.why_suspended == "outside the pool's hours"
    assert owner(j) == [c.Resume()]
    assert owner(j) == []
    assert "jobs suspended: machine in use" in caplog.text
    assert caplog.text.count("jobs resumed") == 1
    caplog.clear()
    assert owner(j, cpu_off=True) == [c.Suspend()]
    assert owner(j) == [c.Resume()]
    assert "suspended" not in caplog.text and "resumed" not in caplog.text


def test_a_stop_never_resumes_what_the_owner_or_the_machine_holds():
    for held in ({"suspended": True}, {"in_use": True}, {"held": "on batteries"}):
        j = core()
        owner(j, **held)
        assert j.suspended
        j.stop(1.0)
        assert owner(j, 1.0, **held) == [] and j.suspended, held  # given back, not resumed
    j = core()  # the CPU limit's pause is a duty cycle, not the owner's word: jobs finish
    owner(j, cpu_off=True)
    j.stop(1.0)
    assert owner(j, 1.0, cpu_off=True) == [c.Resume()]
    assert not j.suspended


def test_the_owner_s_suspension_is_not_idling():
    j = core(max_idle_s=5.0)
    assert not j.idle_too_long(4.0)
    owner(j, 10.0, suspended=True)
    assert j.idle_s(12.0) == 2.0
    owner(j, 20.0, in_use=True)  # the machine in use: that is idling
    assert j.idle_s(21.0) == 11.0


def jobs(j: c.JobberCore, screened, payloads=None, now: float = 1.0) -> list[p.Result]:
    bored = ask(j, 0.0)
    msg = p.Jobs(bored.id, (spec("t.0"),), payloads=payloads or {})
    j.received(LIVE, msg, now, screened=screened)
    j.tick(now)
    return [a.result for a in of(j.take_actions(), c.Spool)]


def test_an_unsigned_payload_s_jobs_are_given_back_and_its_dealer_asked_later(caplog):
    j = core(buffer=0)
    (result,) = jobs(j, [c.Untrusted(SHA, "not signed")])
    why = f"refused: payload {SHA[:12]}: not signed"
    assert (result.status, result.detail) == (p.Status.ABANDONED, why)
    assert j.refused_payloads == {LIVE: why}
    assert j.links[LIVE].ask_after == 1.0 + c.REFUSED_PAYLOAD_WAIT_S
    assert f"dealer {LIVE}: {why}" in caplog.text


def test_a_payload_whose_bytes_are_not_its_name_counts_as_not_sent(caplog):
    j = core(buffer=0)
    wasm = b"\0asm"
    (result,) = jobs(j, [c.BadHash(SHA, "cd" * 32)], payloads={SHA: wasm})
    assert (result.status, result.detail) == (p.Status.INVALID, f"payload {SHA[:12]} was not sent")
    assert j.links[LIVE].ask_after == 0.0  # the dealer's fault, not a refusal of ours
    assert not j.refused_payloads
    assert f"whose bytes hash to {'cd' * 6}; ignored" in caplog.text


def test_unsigned_wins_over_a_bad_hash_for_one_payload():
    j = core(buffer=0)
    (result,) = jobs(j, [c.BadHash(SHA, "cd" * 32), c.Untrusted(SHA, "not signed")])
    assert result.status is p.Status.ABANDONED


def test_a_payload_the_disk_will_not_keep_gives_its_jobs_back_and_troubles_the_disk():
    j = core(buffer=1)
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),), payloads={SHA: b"\0asm"}), 1.0)
    j.take_actions()
    j.handle(c.StoreFailed(SHA, "No space left on device"), 1.0)
    assert j.disk_trouble == "cannot store a payload: No space left on device"
    j.tick(1.0)
    (spool,) = of(j.take_actions(), c.Spool)
    assert spool.result.status is p.Status.ABANDONED
    assert spool.result.detail == "the jobber's disk is full or read-only"
    assert not sent(j.take_actions(), p.Bored)  # no work is asked for meanwhile


def test_a_job_whose_payload_left_the_cache_is_given_back_unrun():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0)
    j.tick(1.0)
    (start,) = of(j.take_actions(), c.Start)
    j.handle(c.PayloadGone(start.key, SHA), 2.0)
    (spool,) = of(j.take_actions(), c.Spool)
    assert spool.result == p.Result(
        "t.0", p.Status.ABANDONED, b"", 0, f"payload {SHA[:12]} is no longer held here"
    )
    assert not j.running and j._job_s == 0.0  # given back unrun: no job's length


def test_a_job_whose_payload_left_the_cache_is_charged_its_time_in_the_slot():
    j = core()
    j.shares = Shares({LIVE: 1.0})
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0)
    j.tick(1.0)
    (start,) = of(j.take_actions(), c.Start)
    j.handle(c.PayloadGone(start.key, SHA), 1.5)  # the slot ran nothing: 0.5 s on our clock
    assert j.shares.done_s[LIVE] == 0.5


def test_an_allocator_s_new_limits_change_the_core_s_settings_and_no_more():
    j = core(slots=4, memory_mb=256, cache_bytes=10)
    before = j.s
    j.handle(c.Resized(slots=2, memory_mb=128, cache_bytes=99), 0.0)
    assert (j.s.slots, j.s.memory_mb, j.s.cache_bytes) == (2, 128, 99)
    assert (j.s.name, j.s.cpus, j.s.request_timeout_s) == (
        before.name,
        before.cpus,
        before.request_timeout_s,
    )
    assert j.take_actions() == []


def test_an_unknown_event_is_our_bug():
    with pytest.raises(TypeError):
        core().handle(object(), 0.0)  # type: ignore[arg-type]


def test_the_platform_comes_from_the_settings():
    assert core().host_facts().platform is None
    assert core(platform="x86_64-linux").host_facts().platform == "x86_64-linux"


def test_a_payload_the_disk_will_not_keep_gives_back_its_jobs_alone_and_leaves_the_cache():
    lost = "cd" * 32
    j = core(slots=2, buffer=3, cache_bytes=6000)
    link = j.links[LIVE]
    link.bored_id, link.bored_want = 9, 4
    jobs = (spec("t.0", sha=lost), spec("t.1"), spec("t.2", sha=lost), spec("t.4"))
    j.received(LIVE, p.Jobs(9, jobs, payloads={lost: b"w" * 5000}), 1.0)
    j.tick(1.0)  # t.0 and t.1 start: t.0's slot has its payload in hand
    assert [h.spec.tag for h in j.buffer] == ["t.2", "t.4"]
    j.take_actions()
    j.handle(c.StoreFailed(lost, "No space left on device"), 1.0)
    assert [h.spec.tag for h in j.buffer] == ["t.4"]
    (spool,) = of(j.take_actions(), c.Spool)
    assert spool.result == p.Result(
        "t.2", p.Status.ABANDONED, b"", 0, "the jobber's disk is full or read-only"
    )
    # not kept: it takes nothing of the cache, though t.0 still runs on it
    link.bored_id, link.bored_want = 10, 1
    other = "ef" * 32
    j.received(LIVE, p.Jobs(10, (spec("t.3", sha=other),), {other: b"w" * 5000}), 1.0)
    assert [h.spec.tag for h in j.buffer] == ["t.4", "t.3"]


def test_a_job_is_charged_the_time_its_slot_says_it_ran():
    j = core()
    j.shares = Shares({LIVE: 1.0})
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0)
    j.tick(1.0)
    (start,) = of(j.take_actions(), c.Start)
    j.job_done(start.key, p.Result("t.0", p.Status.OK, b"", 5, ""), 0.25, 3.0)  # compiled 1.75 s
    assert j.shares.done_s[LIVE] == 0.25


def test_a_job_held_before_the_owner_lowered_a_limit_is_given_back_unrun():
    j = core()
    bored = ask(j, 0.0)
    j.received(LIVE, p.Jobs(bored.id, (spec("t.0"),)), 1.0)  # 64 MiB of 256
    j.handle(c.Resized(slots=1, memory_mb=32, cache_bytes=None), 1.0)
    j.tick(1.0)
    actions = j.take_actions()
    assert not of(actions, c.Start)
    (spool,) = of(actions, c.Spool)
    why = spool.result.detail
    assert spool.result == p.Result("t.0", p.Status.ABANDONED, b"", 0, why)
    assert why.startswith("refused: it asks for 64 MiB of memory")
