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


def two_running(j: c.JobberCore) -> tuple[p.JobSpec, p.JobSpec]:
    """`j` (two slots) takes two jobs that save and starts both."""
    j.tick(0.0)
    ask = next(a.msg for a in j.take_actions() if isinstance(a, c.Send))
    a, b = (p.JobSpec(t, SHA, (), b"", SAVING, 10_000.0) for t in ("t.a", "t.b"))
    j.received(LIVE, p.Jobs(ask.id, (a, b)), 0.1)
    j.tick(0.2)
    assert len([x for x in j.take_actions() if isinstance(x, c.Start)]) == 2
    return a, b


def core2() -> c.JobberCore:
    s = c.Settings(name="j", slots=2, cpus=2, memory_mb=256, min_backoff_s=1.0, max_backoff_s=60.0)
    j = c.JobberCore(s, (f"{LIVE}#{KEY}",), 0.0, rng=random.Random(1))
    j.cache_updated({SHA: (1000, 0)})
    j.take_actions()
    return j


def test_a_state_is_its_own_jobs_and_a_half_sent_state_goes_on_before_another_starts():
    j = core2()
    a, b = two_running(j)
    big = p.CHUNK_BYTES + 1
    j.handle(c.StateSaved(LIVE, a.tag, digest(b"a"), big, 10, 70.0), 1.0)
    by_tag = {h.spec.tag: h for h in j.running.values()}
    assert by_tag[a.tag].saved.hash == digest(b"a") and by_tag[b.tag].saved is None
    j.tick(1.0)
    (first,) = saves(j.take_actions())
    assert first.tag == a.tag
    j.handle(c.StateSaved(LIVE, b.tag, digest(b"b"), 10, 10, 70.0), 1.5)
    j.received(LIVE, p.Saved(first.rid, digest(b"a"), 1), 2.0)
    assert j.links[LIVE].saving is None
    j.tick(2.0)
    (second,) = saves(j.take_actions())
    assert (second.tag, second.chunk) == (a.tag, 1)  # a's second chunk before b's state
    j.received(LIVE, p.Saved(second.rid, digest(b"other"), 2), 2.5)  # not the state sent
    assert by_tag[a.tag].sending is not None and by_tag[a.tag].sent_state == ""


def test_a_state_is_due_at_exactly_one_interval_and_not_to_a_dealer_backed_off():
    j = core()
    key, spec = running(j)
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 60.0), 1.0)
    j.links[LIVE].req.backoff.failed(1.0)  # backed off: nothing goes before it may
    j.tick(1.0)
    assert saves(j.take_actions()) == []
    j.links[LIVE].req.backoff.succeeded()
    j.tick(1.1)
    assert len(saves(j.take_actions())) == 1  # 60 s of running time: exactly due


def test_busy_without_a_wait_waits_a_second_and_is_due_again_at_that_moment():
    j = core()
    key, spec = running(j)
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 70.0), 1.0)
    j.tick(1.0)
    (first,) = saves(j.take_actions())
    j.received(LIVE, p.Error(first.rid, p.ErrorCode.BUSY, "busy"), 2.0)
    assert j.running[key].save_after == 3.0
    j.tick(3.0)
    assert len(saves(j.take_actions())) == 1


@pytest.mark.parametrize("code", [p.ErrorCode.INTERNAL, p.ErrorCode.UNKNOWN_TAG])
def test_a_refusal_frees_the_dealer_for_other_states_and_other_errors_are_failures(code):
    j = core2()
    a, b = two_running(j)
    for spec in (a, b):
        j.handle(c.StateSaved(LIVE, spec.tag, digest(spec.tag.encode()), 10, 10, 70.0), 1.0)
    j.tick(1.0)
    (first,) = saves(j.take_actions())
    j.received(LIVE, p.Error(first.rid, code, "no"), 1.1)
    h = next(h for h in j.running.values() if h.spec.tag == first.tag)
    assert h.sending is None and j.links[LIVE].saving is None
    if code is p.ErrorCode.INTERNAL:  # a failed contact: backed off, the state again later
        assert j.links[LIVE].backoff.failures == 1 and not h.save_refused
        return
    assert h.save_refused and j.links[LIVE].backoff.failures == 0
    j.tick(1.2)
    (other,) = saves(j.take_actions())
    assert other.tag != first.tag


def test_restored_jobs_count_as_held_and_wait_an_interval_before_their_state_goes(caplog):
    j = core()
    other = "tcp://127.0.0.1:7300"
    spec = p.JobSpec("t.9", SHA, (), b"", SAVING, 10_000.0)
    with caplog.at_level("INFO", logger="jobber._core"):
        j.restore([(other, spec, 50.0, p.Resume(digest(b"s"), 4, 500, 20.0))], 5.0)
    assert "resuming 1 jobs" in caplog.text
    assert other in j.links and j.links[other].depth == 1  # a dealer it was not given
    (h,) = j.buffer
    assert h.deadline == 55.0 and h.sent_time_s == 20.0
    assert j._owed[other] == h.may_write  # its output is owed as any job's in hand
    j.stop(6.0)
    assert j._owed[other] == 0
    j2 = core()
    key, spec2 = running(j2)
    j2.handle(c.StateSaved(LIVE, spec2.tag, digest(b"1"), 10, 100, 5.0), 1.0)
    j2.stop(1.5)
    assert j2._owed[LIVE] == 0  # parked: nothing owed while it waits to resume
    j2.links[LIVE].refused = "its key changed"
    assert not j2.uploads_pending()  # a dealer it cannot reach holds no one up


def test_a_half_sent_state_goes_on_whichever_job_comes_first_and_else_the_first_due():
    j = core2()
    a, b = two_running(j)
    j.handle(c.StateSaved(LIVE, b.tag, digest(b"b"), p.CHUNK_BYTES + 1, 10, 70.0), 1.0)
    j.tick(1.0)
    (first,) = saves(j.take_actions())
    assert first.tag == b.tag
    j.handle(c.StateSaved(LIVE, a.tag, digest(b"a"), 10, 10, 70.0), 1.5)
    j.received(LIVE, p.Saved(first.rid, digest(b"b"), 1), 2.0)
    j.tick(2.0)
    (second,) = saves(j.take_actions())
    assert (second.tag, second.chunk) == (b.tag, 1)  # b's last chunk before a's state
    j.received(LIVE, p.Saved(second.rid, digest(b"b"), 2), 2.5)
    j.tick(2.5)
    (third,) = saves(j.take_actions())
    assert third.tag == a.tag
    # two jobs due, neither half sent: the first started goes first
    k = core2()
    a, b = two_running(k)
    for spec in (a, b):
        k.handle(c.StateSaved(LIVE, spec.tag, digest(spec.tag.encode()), 10, 10, 70.0), 1.0)
    k.tick(1.0)
    assert [s.tag for s in saves(k.take_actions())] == [a.tag]


def test_a_job_that_names_no_interval_sends_its_state_every_300_s_and_a_late_job_resumes():
    j = core()
    j.tick(0.0)
    ask = next(a.msg for a in j.take_actions() if isinstance(a, c.Send))
    lim = p.Limits(fuel=10**9, memory_mb=64, time_s=1000.0, output_kb=1, checkpoint_kb=8)
    spec = p.JobSpec("t.0", SHA, (), b"", lim, 10_000.0)
    j.received(LIVE, p.Jobs(ask.id, (spec,)), 0.1)
    j.tick(0.2)
    j.take_actions()
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"1"), 10, 100, 299.9), 1.0)
    j.tick(1.0)
    assert saves(j.take_actions()) == []
    j.handle(c.StateSaved(LIVE, spec.tag, digest(b"2"), 10, 100, 300.0), 2.0)
    j.tick(2.0)
    assert len(saves(j.take_actions())) == 1
    late = core()
    late.restore([(LIVE, spec, -5.0, p.Resume(digest(b"s"), 4, 500, 20.0))], 7.0)
    assert late.buffer[0].deadline == 7.0  # its deadline passed: due now, not before
