"""Whose fault a failure is (dealer/_blame.py): a failure the same on a quorum of
machines is the job's own bug, counted against none of the jobbers that ran it; every
other failure is the machine's. The pure core, one case at a time, and its replay."""

from __future__ import annotations

from dealer._core import Accepted, Core, Failed, Policy
from dealer._history import History, jobs_text
from protocol import Status
from tasks import Job

OK = Status.OK
EXIT, TRAP = Status.EXIT, Status.TRAP


def make(n: int = 3, **policy) -> Core:
    policy.setdefault("deadline_s", 100.0)
    policy.setdefault("lease_s", 1e6)
    policy.setdefault("backups", 0)
    policy.setdefault("quota", 8)
    return Core([Job((str(i),)) for i in range(n)], Policy(**policy), "t")


def one(core: Core, who: str, now: float = 0.0, **kw):
    [a] = core.bored(who, 1, 1000, now, machine=f"m-{who}", **kw)
    return a


def standing(core: Core, who: str) -> tuple[int, int, int]:
    """(errors, allowance, machine allowance) of `who`."""
    me = core.jobbers[who]
    return me.errors, me.allowance, core.machines[f"m-{who}"].allowance


def test_a_job_that_exits_3_everywhere_costs_its_jobbers_nothing():
    core = make(4)
    for i in range(4):
        who = "ab"[i % 2]
        a = one(core, who, float(i))
        assert core.result(who, a.tag, EXIT, b"half", 7, "exit code 3", float(i)) is None
    settled = core.take_settled()
    assert [type(s) for s in settled] == [Failed] * 4 and all(s.own for s in settled)
    assert settled[0].reasons == ("the same failure on 1 machine: exit: exit code 3 (fuel 7)",)
    assert standing(core, "a") == standing(core, "b") == (0, 8, 8)
    assert (core.failed, core.failed_own) == (4, 4)
    assert core.jobbers["a"].unchecked == 0 and core.machines["m-a"].unchecked == 0


def test_a_failure_waits_for_the_quorum_holding_room_then_is_the_jobs():
    core = make(1, redundancy=2, quorum=2, quota=2)
    a, b = one(core, "a"), one(core, "b")
    core.result("a", a.tag, TRAP, b"", 5, "wasm trap: unreachable (in f)", 1.0)
    # not judged yet: nobody's error, but it holds room as an unchecked result does
    assert core.jobbers["a"].errors == 0 and core.jobbers["a"].unchecked == 1
    assert core.machines["m-a"].unchecked == 1 and core.room("a", "m-a") == 1
    assert core.replicas(0)[0].fault == "pending" and core.take_settled() == []
    core.result("b", b.tag, TRAP, b"", 5, "wasm trap: unreachable (in f)", 2.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and s.own and "on 2 machines" in s.reasons[0]
    assert standing(core, "a") == standing(core, "b") == (0, 2, 2)
    assert core.room("a", "m-a") == 2 and core.jobbers["b"].unchecked == 0


def test_a_failure_other_than_the_quorums_is_the_machines():
    core = make(1, redundancy=3, quorum=2, max_errors=5)
    a, b, c = one(core, "a"), one(core, "b"), one(core, "c")
    replicas = core.replicas(0)  # the core's own list, kept as it is when the job settles
    core.result("a", a.tag, TRAP, b"", 5, "boom", 1.0)
    core.result("b", b.tag, TRAP, b"", 6, "boom", 1.0)  # another fuel: not the same failure
    assert core.take_settled() == []
    core.result("c", c.tag, TRAP, b"", 5, "boom", 2.0)
    [s] = core.take_settled()
    assert s.own
    assert [standing(core, w)[0] for w in "abc"] == [0, 1, 0]
    assert standing(core, "b") == (1, 4, 4)  # halved, the identity and its machine
    assert [r.fault for r in replicas] == ["job", "machine", "job"]
    assert [r.won for r in replicas] == [True, False, True]


def test_exit_codes_are_compared():
    core = make(1, redundancy=3, quorum=2, max_errors=5)
    a, b, c = one(core, "a"), one(core, "b"), one(core, "c")
    core.result("a", a.tag, EXIT, b"", 5, "exit code 3", 1.0)
    core.result("b", b.tag, EXIT, b"", 5, "exit code 4; stderr: no", 1.0)
    assert core.take_settled() == []  # the same output and fuel, another code: no quorum
    core.result("c", c.tag, EXIT, b"", 5, "exit code 3; stderr: bad input", 2.0)
    [s] = core.take_settled()
    assert s.own and "exit code 3" in s.reasons[0]
    assert [standing(core, w)[0] for w in "abc"] == [0, 1, 0]


def test_a_failure_outvoted_by_an_accepted_output_is_the_machines_once_judged():
    core = make(1, redundancy=3, quorum=2)
    a, b, c = one(core, "a"), one(core, "b"), one(core, "c")
    core.result("a", a.tag, TRAP, b"", 5, "boom", 1.0)
    core.result("b", b.tag, OK, b"x", 9, "", 1.0)
    assert core.jobbers["a"].errors == 0  # not judged while the job is open
    core.result("c", c.tag, OK, b"x", 9, "", 2.0)
    [s] = core.take_settled()
    assert isinstance(s, Accepted) and core.failed_own == 0
    assert standing(core, "a") == (1, 4, 4) and core.jobbers["a"].unchecked == 0


def test_a_failure_with_no_quorum_at_the_retry_limit_is_the_machines():
    core = make(1, redundancy=2, quorum=2, max_errors=1)
    a, b = one(core, "a"), one(core, "b")
    core.result("a", a.tag, TRAP, b"", 1, "boom", 1.0)
    core.result("b", b.tag, TRAP, b"", 2, "boom", 1.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and not s.own and s.reasons[0] == "more than 1 errors"
    assert [standing(core, w)[0] for w in "ab"] == [1, 1] and core.failed_own == 0


def test_time_crash_and_overdue_stay_the_machines_whatever_the_others_got():
    core = make(1, redundancy=4, quorum=2, max_errors=9)
    a, b, c, d = (one(core, w) for w in "abcd")
    replicas = core.replicas(0)
    core.result("a", a.tag, Status.TIME, b"", 0, "slow", 1.0)
    core.result("b", b.tag, Status.CRASH, b"", 0, "died", 1.0)
    assert [standing(core, w)[0] for w in "ab"] == [1, 1]  # at once
    core.tick(100.0)  # c and d overdue: counted at once
    assert [standing(core, w)[0] for w in "cd"] == [1, 1]
    core.result("c", c.tag, TRAP, b"", 5, "boom", 101.0)  # late, the job's failure
    core.result("d", d.tag, TRAP, b"", 5, "boom", 101.0)
    [s] = core.take_settled()
    assert s.own  # the job's own bug: and c, d were late, which is theirs
    assert [standing(core, w)[0] for w in "abcd"] == [1, 1, 1, 1]
    assert [r.fault for r in replicas] == ["machine"] * 4 and core.failed_own == 1


def test_a_failure_of_another_platform_than_the_quorums_is_not_compared():
    core = make(1, redundancy=2, quorum=2)
    x = one(core, "x", platform="P")  # the only machine of P: the job moves on
    replicas = core.replicas(0)
    core.result("x", x.tag, TRAP, b"", 5, "boom", 1.0)
    b, c = one(core, "b", 2.0, platform="Q"), one(core, "c", 2.0, platform="Q")
    core.result("b", b.tag, OK, b"y", 9, "", 3.0)
    core.result("c", c.tag, OK, b"y", 9, "", 3.0)
    [s] = core.take_settled()
    assert isinstance(s, Accepted)
    assert standing(core, "x") == (0, 8, 8) and core.jobbers["x"].unchecked == 0
    [r] = [r for r in replicas if r.jobber == "x"]
    assert r.fault == "" and "not compared: platform P, the quorum's Q" in r.detail


def test_the_replay_gives_the_same_blame():
    """Journal a mixed batch; a fresh core and the journal's History reach the same
    counts and the same fault for every replica."""
    core = make(3, redundancy=3, quorum=2, max_errors=5)
    reps = {w: core.bored(w, 3, 1000, 0.0, machine=f"m-{w}") for w in "abc"}
    records = core.take_records()
    answers = {  # job 0: the job's trap, b's wrong; job 1: accepted over c's trap
        0: {"a": (TRAP, b"", 5), "b": (TRAP, b"", 6), "c": (TRAP, b"", 5)},
        1: {"a": (OK, b"x", 9), "b": (OK, b"x", 9), "c": (TRAP, b"", 2)},
        2: {"a": (Status.CRASH, b"", 0), "b": (EXIT, b"", 3), "c": (EXIT, b"", 3)},
    }
    tags = {(a.job_id, w): a.tag for w, got in reps.items() for a in got}
    for job in (1, 0, 2):
        for w in "cab" if job == 1 else "abc":
            status, out, fuel = answers[job][w]
            detail = "exit code 1" if status is EXIT else "boom"
            assert core.result(w, tags[job, w], status, out, fuel, detail, 1.0) is None
            records += core.take_records()
    settled = core.take_settled()
    assert [(s.job_id, type(s).__name__, getattr(s, "own", None)) for s in settled] == [
        (1, "Accepted", None),
        (0, "Failed", True),
        (2, "Failed", True),
    ]
    assert [core.jobbers[w].errors for w in "abc"] == [1, 1, 1]  # crash; fuel 6; outvoted
    replay = make(3, redundancy=3, quorum=2, max_errors=5)
    for rec in records:
        replay.apply(rec)
    assert replay.take_settled() == settled
    for w in "abc":
        x, y = core.jobbers[w], replay.jobbers[w]
        assert (x.errors, x.allowance, x.unchecked) == (y.errors, y.allowance, y.unchecked)
        m, n = core.machines[f"m-{w}"], replay.machines[f"m-{w}"]
        assert (m.allowance, m.held, m.unchecked) == (n.allowance, n.held, n.unchecked)
    assert (replay.accepted, replay.failed, replay.failed_own) == (1, 2, 2)
    h = History.of(replay.policy, "t", records)
    faults = {(j, r["jobber"]): r["fault"] for j in (0, 1, 2) for r in h.replica_rows(h.jobs[j])}
    assert faults == {
        (0, "a"): "job",
        (0, "b"): "machine",
        (0, "c"): "job",
        (1, "a"): None,
        (1, "b"): None,
        (1, "c"): "machine",
        (2, "a"): "machine",
        (2, "b"): "job",
        (2, "c"): "job",
    }
    assert [h.jobs[j].own for j in (0, 1, 2)] == [True, False, True]
    assert "the job's own bug" in jobs_text(h) and "the machine's fault" in jobs_text(h)


def test_a_late_failure_votes_in_the_quorum_and_its_lateness_stays_counted():
    """The case the core's state machine found: a replica went overdue, then came back
    with the failure the other machine got. Late, its failure still votes (as a late
    output does): the two agree, so the job failed by its own bug; the lateness was its
    machine's, counted once, and the other jobber is charged nothing."""
    core = make(1, redundancy=2, quorum=2, max_errors=1, deadline_s=10.0)
    a = one(core, "a")
    core.tick(50.0)  # past a's deadline: overdue, its machine's fault at once
    assert core.jobbers["a"].errors == 1
    b = one(core, "b", 50.0)
    core.result("a", a.tag, EXIT, b"", 1, "exit code 3", 51.0)
    assert core.take_settled() == []  # 2 errors with max_errors 1, yet a quorum may agree
    core.result("b", b.tag, EXIT, b"", 1, "exit code 3", 52.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and s.own and "on 2 machines" in s.reasons[0]
    assert (core.jobbers["a"].errors, core.jobbers["b"].errors) == (1, 0)
