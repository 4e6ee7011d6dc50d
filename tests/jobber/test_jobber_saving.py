"""Saved states in the jobber: the core's rules (jobber._saving) driven directly, and
the shell's spool of states (jobber._states) on a real folder."""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest

import protocol as p
from jobber import _core as c
from jobber._states import States, resumed

KEY = "aa" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
SAVING = p.Limits(
    fuel=10**9, memory_mb=64, time_s=1000.0, output_kb=1, checkpoint_kb=8192, checkpoint_every_s=60
)


def core() -> c.JobberCore:
    s = c.Settings(name="j", slots=1, cpus=1, memory_mb=256, min_backoff_s=1.0, max_backoff_s=60.0)
    j = c.JobberCore(s, (f"{LIVE}#{KEY}",), 0.0, rng=random.Random(1))
    j.cache_updated({SHA: (1000, 0)})
    j.take_actions()
    return j


def running(j: c.JobberCore, tag: str = "t.0") -> tuple[str, p.JobSpec]:
    """`j` asks, takes one job that saves and starts it: its slot key and spec."""
    j.tick(0.0)
    ask = next(a.msg for a in j.take_actions() if isinstance(a, c.Send))
    spec = p.JobSpec(tag, SHA, (), b"", SAVING, 10_000.0)
    j.received(LIVE, p.Jobs(ask.id, (spec,)), 0.1)
    j.tick(0.2)
    (start,) = [a for a in j.take_actions() if isinstance(a, c.Start)]
    assert start.resume is None and not start.local
    return start.key, spec


def saves(actions) -> list[c.SendSave]:
    return [a for a in actions if isinstance(a, c.SendSave)]


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_a_jobs_latest_state_goes_to_its_dealer_each_interval_of_its_running_time():
    j = core()
    key, spec = running(j)
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 30.0), 1.0)
    j.tick(1.0)
    assert saves(j.take_actions()) == []  # 30 s of running time: not yet an interval
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"2"), 10, 200, 61.0), 2.0)
    j.tick(2.0)
    (first,) = saves(j.take_actions())
    assert (first.dealer, first.tag, first.chunk) == (LIVE, spec.tag, 0)
    j.tick(2.5)
    assert saves(j.take_actions()) == []  # one `save` out at a time
    j.received(LIVE, p.Saved(first.rid, digest(b"2"), 1), 3.0)
    h = j.running[key]
    assert h.sent_state == digest(b"2") and h.sending is None
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"3"), 10, 300, 100.0), 4.0)
    j.tick(4.0)
    assert saves(j.take_actions()) == []  # 39 s since the state sent
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"4"), 10, 400, 122.0), 5.0)
    j.tick(5.0)
    assert len(saves(j.take_actions())) == 1


def test_a_state_of_several_chunks_goes_a_chunk_at_a_time_and_again_from_0_if_asked():
    j = core()
    key, spec = running(j)
    size = p.CHUNK_BYTES + 5
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"big"), size, 10, 70.0), 1.0)
    j.tick(1.0)
    (c0,) = saves(j.take_actions())
    j.received(LIVE, p.Saved(c0.rid, digest(b"big"), 1), 1.1)
    j.tick(1.2)
    (c1,) = saves(j.take_actions())
    assert c1.chunk == 1
    j.received(LIVE, p.Saved(c1.rid, digest(b"big"), 0), 1.3)  # it restarted: from 0
    j.tick(1.4)
    (again,) = saves(j.take_actions())
    assert again.chunk == 0


@pytest.mark.parametrize(
    "code, refused",
    [(p.ErrorCode.SETTLED, True), (p.ErrorCode.UNEXPECTED, True), (p.ErrorCode.BUSY, False)],
)
def test_a_dealer_that_refuses_a_jobs_state_gets_no_more_of_it(code, refused):
    j = core()
    key, spec = running(j)
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 70.0), 1.0)
    j.tick(1.0)
    (first,) = saves(j.take_actions())
    j.received(LIVE, p.Error(first.rid, code, "no", 5.0), 1.1)
    assert j.running[key].save_refused is refused
    assert j.links[LIVE].backoff.failures == 0  # an answer, no failed contact
    j.tick(2.0)
    assert saves(j.take_actions()) == []  # refused for good, or busy for 5 s
    j.tick(7.0)
    assert len(saves(j.take_actions())) == (0 if refused else 1)


@pytest.mark.parametrize("suspended", [False, True])
def test_a_stopping_jobber_parks_a_job_that_saved_and_sends_its_state_first(suspended):
    j = core()
    key, spec = running(j)
    if suspended:  # held still by --idle-only: the machine is in use
        j.handle(c.Owner(in_use=True), 0.5)
        assert [a for a in j.take_actions() if isinstance(a, c.Suspend)]
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 5.0), 1.0)
    j.stop(1.5)
    acts = j.take_actions()
    assert c.Stop(key) in acts
    assert not [a for a in acts if isinstance(a, c.Spool)]  # not given back
    assert j.uploads_pending() and j.holding(LIVE) == (spec.tag,)
    j.job_done(key, p.Result(spec.tag, p.Status.CRASH, b"", 0, "killed"), 0.1, 1.6)
    assert not j.unacked and not [a for a in j.take_actions() if isinstance(a, c.ForgetState)]
    j.tick(2.0)  # sent at once, whatever the interval
    (first,) = saves(j.take_actions())
    j.received(LIVE, p.Saved(first.rid, digest(b"1"), 1), 2.1)
    assert not j.uploads_pending()
    assert j.holding(LIVE) == (spec.tag,)  # the dealer keeps it for us


def test_a_job_that_did_not_save_is_not_parked_and_a_jobs_state_goes_with_its_result():
    j = core()
    key, spec = running(j)
    j.stop(1.0)
    assert not j.parked and key in j.running  # runs on for its grace, as ever
    j.job_done(key, p.Result(spec.tag, p.Status.OK, b"7", 5, ""), 2.0, 2.0)
    assert c.ForgetState(LIVE, spec.tag) in j.take_actions()


def test_a_job_an_earlier_run_left_resumes_first_from_its_own_state():
    j = core()
    spec = p.JobSpec("t.9", SHA, (), b"", SAVING, 10_000.0, resume=p.Resume(SHA, 3, 7, 1.0))
    state = p.Resume(digest(b"mine"), 4, 500, 20.0)
    j.restore([(LIVE, spec, 50.0, state)], 0.0)
    assert j.holding(LIVE) == ("t.9",)
    j.tick(0.0)
    (start,) = [a for a in j.take_actions() if isinstance(a, c.Start)]
    assert start.local and start.resume == state and start.spec.resume is None


# --- the shell's spool of states -----------------------------------------------------


def test_states_survive_a_restart_and_damaged_or_oversized_ones_are_refused(tmp_path):
    spec = p.JobSpec("t.1", SHA, (), b"", p.Limits(checkpoint_kb=1), 100.0)
    s = States(tmp_path)
    ev = s.saved(LIVE, spec, 50.0, b"state", 10, 2.0)
    assert ev == c.StateSaved(LIVE, "t.1", digest(b"state"), 5, 10, 2.0)
    other = p.JobSpec("t.2", SHA, (), b"", p.Limits(checkpoint_kb=1), 100.0)
    s.saved(LIVE, other, 50.0, b"x" * 100, 10, 2.0)
    third = p.JobSpec("t.3", SHA, (), b"", p.Limits(checkpoint_kb=1), 100.0)
    s.saved(LIVE, third, 50.0, b"y", 10, 2.0)
    files = {f.name: f for f in tmp_path.glob("*.state")}
    assert len(files) == 3
    # t.2's state, damaged; t.3's, bigger than its job allows (as a jobber would not write)
    for path in files.values():
        body = msgpack.unpackb(path.read_bytes(), raw=False)
        if body["spec"]["tag"] == "t.2":
            body["state"] = b"z" * 100
        elif body["spec"]["tag"] == "t.3":
            body["state"] = body["state"] * 2000
            body["sha"] = digest(body["state"])
        else:
            continue
        path.write_bytes(msgpack.packb(body, use_bin_type=True))
    again = States(tmp_path)
    loaded = again.load()
    assert [(d, sp.tag, st) for d, sp, _, st in loaded] == [
        (LIVE, "t.1", p.Resume(digest(b"state"), 5, 10, 2.0))
    ]
    assert 40.0 < loaded[0][2] <= 50.0  # its deadline, kept across the restart
    assert len(list(tmp_path.glob("*.state"))) == 1  # the refused ones removed
    assert again.latest(LIVE, "t.1").data == b"state"
    again.forget(LIVE, "t.1")
    assert not list(tmp_path.glob("*.state"))


def test_a_resumed_job_runs_with_what_is_left_of_its_limits_and_a_bad_state_from_the_top():
    spec = p.JobSpec("t", SHA, (), b"", p.Limits(fuel=1000, time_s=10.0, checkpoint_kb=1), 1.0)
    good = p.Resume(digest(b"s"), 1, 400, 4.0)
    data, limits, fuel, time_s = resumed(spec, good, b"s")
    assert (data, limits.fuel, limits.time_s, fuel, time_s) == (b"s", 600, 6.0, 400, 4.0)
    for state, data in [
        (good, None),  # not fetched
        (good, b"t"),  # not the bytes named
        (p.Resume(digest(b"s" * 2000), 2000, 1, 1.0), b"s" * 2000),  # over checkpoint_kb
        (p.Resume(digest(b"s"), 1, 1000, 1.0), b"s"),  # all the fuel used
    ]:
        got, limits, fuel, _ = resumed(spec, state, data)
        assert got is None and limits == spec.limits and fuel == 0
