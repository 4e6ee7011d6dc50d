"""Saved states in the jobber: the core's rules (jobber._saving) driven directly, and
the shell's spool of states (jobber._states) on a real folder."""

from __future__ import annotations

import hashlib
import random
import time

import msgpack
import pytest

import protocol as p
from jobber import _core as c
from jobber._states import Saves, States, _name, resumed

KEY = "aa" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
SAVING = p.Limits(
    fuel=10**9, memory_mb=64, time_s=1000.0, output_kb=1, checkpoint_kb=8192, checkpoint_every_s=60
)


def core(slots: int = 1) -> c.JobberCore:
    s = c.Settings(
        name="j", slots=slots, cpus=slots, memory_mb=256, min_backoff_s=1.0, max_backoff_s=60.0
    )
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


def test_a_state_is_its_own_jobs_and_a_half_sent_state_goes_on_before_another_starts():
    j = core(2)
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
    j = core(2)
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
    j = core(2)
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
    k = core(2)
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


# --- the shell's part: a Jobber's saves over a real folder and a real core -------------


class Shell(Saves):
    """The shell's saves (jobber._states.Saves) over a real core, spool of states and
    file store; what it would send on a socket is kept in `sent`."""

    def __init__(self, tmp_path) -> None:
        from jobber._files import FileStore

        self.name = "lender"
        self.core = core()
        self.states = States(tmp_path / "states")
        self.files = FileStore(tmp_path / "files")
        self._offsets: dict = {}
        self.sent: list = []

    def _send(self, dealer, msg) -> None:
        self.sent.append((dealer, msg))


class Saved:  # what Slots.take_saves gives (sandbox.Saved)
    def __init__(self, key, state, fuel, wall_s):
        self.key, self.state, self.fuel, self.wall_s = key, state, fuel, wall_s


def test_the_shell_keeps_a_state_with_the_jobs_totals_and_sends_the_one_taken_at_chunk_0(
    tmp_path,
):
    sh = Shell(tmp_path)
    key, spec = running(sh.core)
    sh._offsets[key] = (1000, 20.0)  # it resumed from a state of 1000 fuel, 20 s
    sh._state_saved(Saved(key, b"one", 5, 2.5))
    h = sh.core.running[key]
    assert h.saved == p.Resume(digest(b"one"), 3, 1005, 22.5)
    (body,) = [msgpack.unpackb(f.read_bytes()) for f in (tmp_path / "states").glob("*.state")]
    assert (body["fuel"], body["time_s"], body["state"]) == (1005, 22.5, b"one")
    # its deadline, from the core's (monotonic) clock to the wall clock's
    expected = time.time() + h.deadline - time.monotonic()
    assert abs(body["deadline"] - expected) < 5
    sh._state_saved(Saved("no such job", b"x", 1, 1.0))  # ended meanwhile: nothing
    assert sh.states.latest(LIVE, spec.tag).data == b"one"
    sh._send_save(c.SendSave(LIVE, spec.tag, 5, 0))
    sh._state_saved(Saved(key, b"two", 9, 3.0))  # a newer state while one goes
    sh._send_save(c.SendSave(LIVE, spec.tag, 6, 1))
    (d0, m0), (d1, m1) = sh.sent
    assert d0 == d1 == LIVE
    assert m0 == p.Save(5, "lender", spec.tag, digest(b"one"), 3, 0, b"one", 1005, 22.5)
    assert (m1.hash, m1.chunk, m1.data) == (digest(b"one"), 1, b"")  # the one begun
    sh._send_save(c.SendSave(LIVE, spec.tag, 7, 0))
    assert sh.sent[-1][1].hash == digest(b"two")  # chunk 0 again: the latest
    sh.states.forget(LIVE, spec.tag)
    sh._send_save(c.SendSave(LIVE, spec.tag, 8, 0))
    assert len(sh.sent) == 3 and not list((tmp_path / "states").glob("*.state"))


def test_a_state_the_disk_will_not_keep_is_still_held_and_sent(tmp_path):
    sh = Shell(tmp_path)
    (tmp_path / "states").write_bytes(b"")  # where the folder should be: a file
    key, spec = running(sh.core)
    sh._state_saved(Saved(key, b"kept", 5, 2.5))
    assert sh.core.running[key].saved == p.Resume(digest(b"kept"), 4, 5, 2.5)
    assert sh.states.latest(LIVE, spec.tag).data == b"kept"


def test_the_shell_resumes_from_its_own_state_or_the_fetched_one_or_from_the_top(tmp_path):
    sh = Shell(tmp_path)
    spec = p.JobSpec("t.1", SHA, (), b"", SAVING, 100.0)
    sh.states.saved(LIVE, spec, 50.0, b"mine", 40, 4.0)
    mine = p.Resume(digest(b"mine"), 4, 40, 4.0)
    data, limits, fuel, used = sh._resume(c.Start("k", LIVE, spec, 1, mine, True))
    assert (data, limits.fuel, fuel, used) == (b"mine", SAVING.fuel - 40, 40, 4.0)
    fetched = p.Resume(digest(b"theirs"), 6, 70, 7.0)
    start = c.Start("k", LIVE, spec, 1, fetched, False)
    assert sh._resume(start)[0] is None  # not in the file store: from the top
    sh.files.path(fetched.hash).parent.mkdir(parents=True, exist_ok=True)
    sh.files.path(fetched.hash).write_bytes(b"theirs")
    assert sh._resume(start)[0] == b"theirs"
    none = sh._resume(c.Start("k", LIVE, spec, 1))
    assert none == (None, SAVING, 0, 0.0)
    other = p.JobSpec("t.2", SHA, (), b"", SAVING, 100.0)
    gone = c.Start("k", LIVE, other, 1, mine, True)  # its own state is not here
    assert sh._resume(gone) == (None, SAVING, 0, 0.0)


def test_the_edges_of_a_state_that_may_be_resumed():
    lim = p.Limits(fuel=1000, time_s=10.0, checkpoint_kb=1)
    spec = p.JobSpec("t", SHA, (), b"", lim, 1.0)
    full = b"s" * 1024
    assert resumed(spec, p.Resume(digest(full), 1024, 1, 1.0), full)[0] == full  # the allowance
    assert resumed(spec, p.Resume(digest(b"s"), 1, 1, 10.0), b"s")[0] is None  # all the time
    late = resumed(spec, p.Resume(digest(b"s"), 1, 1, 9.9999), b"s")[1]
    assert late.time_s == 0.001  # what is left, at least the least a limit may be
    none = p.JobSpec("t", SHA, (), b"", p.Limits(fuel=1000, time_s=10.0), 1.0)
    assert resumed(none, p.Resume(digest(b"s"), 1, 1, 1.0), b"s")[0] is None  # no allowance


def test_the_spool_of_states_refuses_what_is_not_a_state_of_its_own(tmp_path):
    s = States(tmp_path)
    lim = p.Limits(fuel=1000, checkpoint_kb=1)
    good = p.JobSpec("good", SHA, (), b"", lim, 100.0)
    s.saved(LIVE, good, 50.0, b"x" * 1024, 1000, 0.0)  # the limits' edges: kept
    bad = {
        "schema": {"schema": 2},
        "list": [1, 2],
        "fuel": {"fuel": 1001},
        "negative": {"fuel": -1},
        "time": {"time_s": -0.5},
    }
    for tag, change in bad.items():
        spec = p.JobSpec(tag, SHA, (), b"", lim, 100.0)
        s.saved(LIVE, spec, 50.0, b"y", 1, 1.0)
        path = tmp_path / _name(LIVE, tag)
        body = msgpack.unpackb(path.read_bytes(), raw=False)
        out = change if tag == "list" else {**body, **change}
        path.write_bytes(msgpack.packb(out, use_bin_type=True))
    (tmp_path / ".x.state.part").write_bytes(b"cut short")
    loaded = States(tmp_path).load()
    assert [sp.tag for _, sp, _, _ in loaded] == ["good"]
    assert sorted(q.name for q in tmp_path.iterdir()) == [q.name for q in tmp_path.glob("*.state")]
    assert len(list(tmp_path.glob("*.state"))) == 1
    assert States(tmp_path / "none").load() == []
