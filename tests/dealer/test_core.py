"""Unit tests of the dealer's pure scheduling core."""

from __future__ import annotations

import pytest

from dealer._core import (
    ACTIVE_HORIZON_S,
    Accepted,
    Core,
    CoreError,
    Failed,
    JournalMismatch,
    Policy,
    ReplicaState,
    Sent,
    implausible,
)
from dealer._policy import policy_for
from protocol import ErrorCode, Status
from tasks import Job, Limits, Task

OK = Status.OK


def jobs(n: int) -> list[Job]:
    return [Job((str(i),)) for i in range(n)]


def make(n: int = 3, **policy) -> Core:
    policy.setdefault("deadline_s", 100.0)
    policy.setdefault("lease_s", 1e6)  # deadlines alone, unless a test is about leases
    policy.setdefault("backups", 0)  # no tail backups, unless a test is about them
    return Core(jobs(n), Policy(**policy), "t")


def test_one_job_one_replica_accepted():
    core = make(1)
    [a] = core.bored("a", 5, 1000, now=0.0)
    assert a.job == Job(("0",)) and a.deadline == 100.0
    assert core.result("a", a.tag, OK, b"out", 7, "", now=1.0) is None
    [s] = core.take_settled()
    assert s == Accepted(0, Job(("0",)), b"out")
    assert core.finished()
    assert core.jobbers["a"].valid == 1 and core.jobbers["a"].credit == 7


def test_tags_unique_and_one_replica_per_job_per_jobber():
    core = make(3, redundancy=2)
    first = core.bored("a", 10, 1000, 0.0)
    assert [x.job_id for x in first] == [0, 1, 2]  # one replica of each job, never two
    second = core.bored("a", 10, 1000, 0.0)
    assert second == []  # a holds a live replica of every job
    other = core.bored("b", 10, 1000, 0.0)
    assert [x.job_id for x in other] == [0, 1, 2]
    tags = [x.tag for x in first + other]
    assert len(set(tags)) == 6


def test_results_from_the_wrong_jobber_or_unknown_tags_change_nothing():
    core = make(1)
    [a] = core.bored("a", 1, 1000, 0.0)
    core.take_records()
    forged = core.result("mallory", a.tag, OK, b"evil", 1, "", 1.0)
    assert forged is not None and forged.code is ErrorCode.UNKNOWN_TAG
    unknown = core.result("a", "t.ff", OK, b"x", 1, "", 1.0)
    assert unknown is not None and unknown.code is ErrorCode.UNKNOWN_TAG
    other_dealer = core.result("a", "zz.0", OK, b"x", 1, "", 1.0)
    assert other_dealer is not None and other_dealer.code is ErrorCode.UNKNOWN_TAG
    assert core.take_records() == [] and core.take_settled() == []
    assert core.result("a", a.tag, OK, b"good", 1, "", 1.0) is None
    dup = core.result("a", a.tag, OK, b"good", 1, "", 1.0)
    # the job is settled, so the tag is known but closed
    assert dup is not None and dup.code is ErrorCode.SETTLED
    assert [s.output for s in core.take_settled()] == [b"good"]


def test_duplicate_result_while_job_unsettled():
    core = make(1, redundancy=2, quorum=2)
    a = core.bored("a", 1, 1000, 0.0)[0]
    core.bored("b", 1, 1000, 0.0)
    assert core.result("a", a.tag, OK, b"x", 1, "", 1.0) is None
    dup = core.result("a", a.tag, OK, b"x", 1, "", 1.0)
    assert dup is not None and dup.code is ErrorCode.DUPLICATE


def test_overdue_replica_is_reissued_to_another_jobber_and_late_result_counts():
    core = make(1)
    [a] = core.bored("a", 1, 1000, 0.0)
    assert core.bored("b", 1, 1000, 50.0) == []  # not overdue yet
    core.tick(100.0)
    assert core.take_settled() == []
    assert core.bored("a", 1, 1000, 100.0) == []  # b is active and fresh to the job
    [b] = core.bored("b", 1, 1000, 100.0)
    assert b.job_id == 0 and b.tag != a.tag
    # a's late result arrives first: it still counts
    assert core.result("a", a.tag, OK, b"late", 3, "", 120.0) is None
    assert [s.output for s in core.take_settled()] == [b"late"]
    late_b = core.result("b", b.tag, OK, b"late", 3, "", 121.0)
    assert late_b is not None and late_b.code is ErrorCode.SETTLED
    assert core.jobbers["a"].errors == 1  # the overdue is on its record


def test_errors_reissue_then_fail_after_max_errors():
    core = make(1, max_errors=2)
    names = ["a", "b", "c"]
    for i, name in enumerate(names):  # time and crash depend on the machine: retried
        [x] = core.bored(name, 1, 1000, float(i))
        status = (Status.TIME, Status.CRASH)[i % 2]
        assert core.result(name, x.tag, status, b"", 5, "limit", float(i)) is None
        assert core.jobbers[name].errors == 1
    [s] = core.take_settled()
    assert isinstance(s, Failed)
    assert "more than 2 errors" in s.reasons[0]
    assert any("time: limit" in r for r in s.reasons)
    core.take_records()
    # nobody has found the generator empty yet: finished() is a query and draws nothing
    assert core.failed == 1 and not core.finished() and core.take_records() == []
    core.refill()  # what the service does every turn: draw, or learn there is no more
    assert core.finished() and core.take_records() == []


@pytest.mark.parametrize(
    "status",
    [Status.EXIT, Status.FUEL, Status.MEMORY, Status.OUTPUT, Status.STACK, Status.TRAP],
)
def test_a_deterministic_failure_agreed_by_a_quorum_fails_the_job_at_once(status):
    core = make(2, redundancy=2, quorum=2, max_errors=5)
    a = core.bored("a", 2, 1000, 0.0)
    b = core.bored("b", 2, 1000, 0.0)
    for who, rs in (("a", a), ("b", b)):
        core.result(who, rs[0].tag, status, b"", 7, "boom", 1.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and s.job_id == 0
    assert s.reasons == (f"the same failure on 2 machines: {status.value}: boom (fuel 7)",)
    # a different fuel is a different outcome: no agreement, the job is retried
    core.result("a", a[1].tag, status, b"", 7, "boom", 2.0)
    core.result("b", b[1].tag, status, b"", 8, "boom", 2.0)
    assert core.take_settled() == [] and core.failed == 1
    [c] = core.bored("c", 1, 1000, 3.0)
    assert c.job_id == 1


def test_one_machine_cannot_fail_a_job_others_would_complete():
    core = make(1, redundancy=2, quorum=2, max_errors=5)
    [a] = core.bored("liar", 1, 1000, 0.0, machine="evil")
    [b] = core.bored("sybil", 1, 1000, 0.0, machine="evil") or [None]
    assert b is None
    core.result("liar", a.tag, Status.TRAP, b"", 1, "lie", 1.0)
    [h] = core.bored("h", 1, 1000, 2.0, machine="good")
    core.result("h", h.tag, OK, b"ok", 3, "", 3.0)
    assert core.take_settled() == []  # one trap is not a quorum of failures
    [h2] = core.bored("h2", 1, 1000, 4.0, machine="fine")
    core.result("h2", h2.tag, OK, b"ok", 3, "", 5.0)
    [s] = core.take_settled()
    assert isinstance(s, Accepted) and s.output == b"ok"


def test_a_silent_jobber_is_gone_after_its_lease_and_its_late_result_still_counts():
    core = make(2, lease_s=20.0)
    a = core.bored("a", 2, 1000, 0.0)
    core.alive("a", 15.0)
    core.tick(30.0)  # heard at 15: not yet
    assert core.jobbers["a"].held == 2 and not core.jobbers["a"].gone
    core.tick(36.0)
    assert core.jobbers["a"].gone and core.jobbers["a"].held == 0
    assert core.jobbers["a"].errors == 0  # gone is no fault
    assert [r.state for r in core._replicas.values()] == [ReplicaState.GONE] * 2
    b = core.bored("b", 2, 1000, 36.0)  # sent to others at once
    assert sorted(x.job_id for x in b) == [0, 1]
    assert core.result("a", a[0].tag, OK, b"late", 1, "", 40.0) is None  # it came back
    assert not core.jobbers["a"].gone
    [s] = core.take_settled()
    assert s.output == b"late"
    assert core.alive("b", 41.0, holding=[x.tag for x in b]) == [b[0].tag]  # settled: cancel


def test_a_restarted_dealer_gives_every_jobber_a_fresh_lease():
    core = make(1, lease_s=20.0, deadline_s=1e6)
    core.bored("a", 1, 1000, 0.0)
    records = core.take_records()
    again = make(1, lease_s=20.0, deadline_s=1e6)
    for rec in records:
        again.apply(rec)
    again.resume(1000.0)
    again.tick(1010.0)
    assert not again.jobbers["a"].gone and again.jobbers["a"].held == 1
    again.tick(1021.0)
    assert again.jobbers["a"].gone


def test_failed_job_goes_back_to_the_same_jobber_when_no_other_is_present():
    core = make(2, lease_s=20.0)
    [x] = core.bored("solo", 1, 1000, 0.0)
    core.result("solo", x.tag, Status.CRASH, b"", 0, "worker died", 1.0)
    core.bored("idle", 0, 1000, 1.5)  # asks for nothing: not present, the job need not wait
    [y] = core.bored("solo", 1, 1000, 2.0)
    assert y.job_id == 0 and y.tag != x.tag
    # but not while another present machine is fresh to it
    [o] = core.bored("other", 1, 1000, 3.0)  # present: it asked for work it could take
    assert o.job_id == 1
    core.result("solo", y.tag, Status.CRASH, b"", 0, "worker died", 3.5)
    assert core.bored("solo", 1, 1000, 4.0) == []
    assert core.bored("solo", 1, 1000, 23.0) == []  # asked at 3, the lease is 20
    # once the other has not asked for a lease, solo may retry
    assert [z.job_id for z in core.bored("solo", 1, 1000, 23.5)] == [0]


def test_a_failed_job_goes_back_to_its_jobber_on_a_new_machine_when_no_other_is_present():
    core = make(1)
    [x] = core.bored("solo", 1, 1000, 0.0, machine="home")
    core.result("solo", x.tag, Status.CRASH, b"", 0, "worker died", 1.0)
    # its address changed: the machine it asks from is present because it asks, and is
    # not another machine fresh to the job for it to wait for
    [y] = core.bored("solo", 1, 1000, 2.0, machine="office")
    assert y.job_id == 0 and y.tag != x.tag


def test_abandoned_replica_is_released_without_an_error():
    core = make(1, max_errors=0)
    [x] = core.bored("a", 1, 1000, 0.0)
    core.result("a", x.tag, Status.ABANDONED, b"", 0, "shutting down", 1.0)
    assert core.take_settled() == []
    assert core.jobbers["a"].errors == 0
    [y] = core.bored("b", 1, 1000, 2.0)
    core.result("b", y.tag, OK, b"done", 1, "", 3.0)
    assert [s.output for s in core.take_settled()] == [b"done"]


def test_quorum_agreement_credits_only_the_winners():
    core = make(1, redundancy=3, quorum=2)
    a, b, c = (core.bored(n, 1, 1000, 0.0)[0] for n in "abc")
    core.result("a", a.tag, OK, b"right", 10, "", 1.0)
    core.result("c", c.tag, OK, b"wrong", 10, "", 1.0)
    assert core.take_settled() == []
    core.result("b", b.tag, OK, b"right", 10, "", 2.0)
    [s] = core.take_settled()
    assert s.output == b"right"
    assert (core.jobbers["a"].valid, core.jobbers["b"].valid) == (1, 1)
    assert core.jobbers["c"].invalid == 1 and core.jobbers["c"].credit == 0
    assert core.jobbers["a"].credit == 10


def test_same_output_different_fuel_does_not_agree():
    core = make(1, redundancy=2, quorum=2)
    a, b = (core.bored(n, 1, 1000, 0.0)[0] for n in "ab")
    core.result("a", a.tag, OK, b"x", 10, "", 1.0)
    core.result("b", b.tag, OK, b"x", 11, "", 1.0)
    assert core.take_settled() == []
    [c] = core.bored("c", 1, 1000, 2.0)  # a third opinion is sent
    core.result("c", c.tag, OK, b"x", 10, "", 3.0)
    assert [s.output for s in core.take_settled()] == [b"x"]


def test_disagreement_up_to_the_cap_fails_the_job():
    core = make(1, redundancy=2, quorum=2, max_replicas=3)
    for i, name in enumerate("abc"):
        [x] = core.bored(name, 1, 1000, 0.0)
        core.result(name, x.tag, OK, f"out{i}".encode(), 1, "", 1.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and "no 2 of 3 replicas agreed" in s.reasons[0]
    assert core.bored("d", 1, 1000, 2.0) == []


def test_memory_requirement_gates_jobbers():
    core = make(1, memory_mb=512)
    assert core.bored("small", 4, 256, 0.0) == []
    assert len(core.bored("big", 4, 1024, 0.0)) == 1


def test_jobs_are_drawn_lazily_within_the_window():
    drawn = []

    def gen():
        for i in range(10_000_000):
            drawn.append(i)
            yield Job((str(i),))

    core = Core(gen(), Policy(window=5, deadline_s=10.0, quota=100), "t")
    got = core.bored("a", 100, 1000, 0.0)
    assert len(got) == 5 and len(drawn) == 5
    core.result("a", got[0].tag, OK, b"", 1, "", 1.0)
    assert len(core.bored("b", 100, 1000, 1.0)) == 1  # one slot freed in the window
    assert core.drawn == 6


def test_replay_rebuilds_the_same_state():
    core = make(4, redundancy=2, quorum=2)
    log = []
    a = core.bored("a", 4, 1000, 0.0)
    b = core.bored("b", 4, 1000, 0.0)
    core.result("a", a[0].tag, OK, b"r0", 1, "", 1.0)
    core.result("b", b[0].tag, OK, b"r0", 1, "", 1.0)
    core.result("a", a[1].tag, Status.TRAP, b"", 1, "boom", 1.0)
    core.tick(150.0)
    log.extend(core.take_records())
    settled = core.take_settled()
    fresh = make(4, redundancy=2, quorum=2)
    for rec in log:
        fresh.apply(rec)
    assert fresh.take_settled() == settled
    assert (fresh.accepted, fresh.failed, fresh.in_flight, fresh.drawn) == (
        core.accepted,
        core.failed,
        core.in_flight,
        core.drawn,
    )
    assert fresh.jobbers.keys() == core.jobbers.keys()
    for name in core.jobbers:
        x, y = fresh.jobbers[name], core.jobbers[name]
        assert (x.valid, x.invalid, x.errors, x.credit) == (y.valid, y.invalid, y.errors, y.credit)
    # the next tag continues the sequence instead of reusing one
    nxt = fresh.bored("c", 1, 1000, 200.0)
    assert nxt and nxt[0].tag not in {x.tag for x in a + b}


def test_replay_refuses_a_changed_task():
    core = make(2)
    core.bored("a", 2, 1000, 0.0)
    records = core.take_records()
    changed = Core([Job(("0",)), Job(("other",))], Policy(deadline_s=100.0), "t")
    with pytest.raises(JournalMismatch, match="job 1 of the task differs"):
        for rec in records:
            changed.apply(rec)
    shorter = Core(jobs(1), Policy(deadline_s=100.0), "t")
    with pytest.raises(JournalMismatch, match="yields only 1 jobs"):
        for rec in records:
            shorter.apply(rec)


def test_lifecycle_table_refuses_illegal_events():
    core = make(1)
    [a] = core.bored("a", 1, 1000, 0.0)
    core.result("a", a.tag, Status.CRASH, b"", 0, "", 1.0)
    with pytest.raises(CoreError, match="not allowed in state error"):
        core._replicas[a.tag].fire("deadline")
    assert core._replicas[a.tag].state is ReplicaState.ERROR
    with pytest.raises(CoreError, match="out of sequence"):
        core.apply(Sent("t.99", 0, "a", 5.0, "m"))


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        Policy(redundancy=1, quorum=2)
    with pytest.raises(ValueError):
        Policy(deadline_s=0)
    assert Policy(redundancy=2, max_errors=3).max_replicas == 7


def test_policy_for_holds_results_to_the_tasks_limits():
    class Limited(Task):
        limits = Limits(fuel=500, memory_mb=32, output_kb=3)

    policy = policy_for(Limited())
    assert (policy.fuel_limit, policy.memory_mb, policy.output_bytes) == (500, 32, 3 * 1024)
    assert implausible(OK, b"x" * 3 * 1024, 1, policy) is None
    assert "exceed the job's limit of 3072" in implausible(OK, b"x" * 3073, 1, policy)


def test_replicas_a_jobber_no_longer_holds_are_released_at_once():
    core = make(3)
    a = core.bored("a", 3, 1000, 0.0)
    # a crashed and came back holding only the first: the other two are lost
    again = core.bored("a", 0, 1000, 1.0, holding=[a[0].tag])
    assert again == []
    b = core.bored("b", 3, 1000, 1.0)
    assert sorted(x.job_id for x in b) == [1, 2]  # reissued long before the deadline
    assert core.jobbers["a"].errors == 0
    late = core.result("a", a[1].tag, OK, b"x", 1, "", 2.0)
    assert late is not None  # a released replica takes no result
    assert core.result("a", a[0].tag, OK, b"x", 1, "", 2.0) is None


def test_two_identities_on_one_machine_never_make_a_quorum():
    core = make(1, redundancy=2, quorum=2, max_errors=5)
    [a] = core.bored("liar", 1, 1000, 0.0, machine="evil")
    assert core.bored("sybil", 1, 1000, 0.0, machine="evil") == []  # one replica per machine
    core.tick(150.0)  # the liar's replica goes overdue: only the evil machine is active
    [b] = core.bored("sybil", 1, 1000, 150.0, machine="evil")
    assert b.job_id == a.job_id
    for who, r in (("liar", a), ("sybil", b)):  # the late one too: both agree on a lie
        assert core.result(who, r.tag, OK, b"13", 1, "", 151.0) is None
    assert core.take_settled() == [] and core.accepted == 0  # one machine, one vote
    [h] = core.bored("honest", 1, 1000, 152.0, machine="good")
    core.result("honest", h.tag, OK, b"13", 1, "", 153.0)
    [s] = core.take_settled()  # two machines agree now (the liar was right after all)
    assert s.output == b"13"


def test_quotas_start_small_grow_with_good_results_and_halve_on_errors():
    core = make(50, quota=2)
    first = core.bored("a", 10, 1000, 0.0, machine="m")
    assert len(first) == 2 and core.room("a", "m") == 0
    assert core.bored("b", 10, 1000, 0.0, machine="m") == []  # the machine's quota is shared
    for r in first:
        core.result("a", r.tag, OK, b"x", 1, "", 1.0)
    assert core.jobbers["a"].allowance == 4 and core.machines["m"].allowance == 4
    more = core.bored("a", 10, 1000, 2.0, machine="m")
    assert len(more) == 4
    core.result("a", more[0].tag, Status.CRASH, b"", 0, "", 3.0)  # the machine's fault
    assert core.jobbers["a"].allowance == 2 and core.machines["m"].allowance == 2
    assert core.room("a", "m") == 0  # 3 still out, 2 allowed
    assert core.jobbers["a"].held == 3 and core.machines["m"].held == 3


def test_at_the_tail_an_idle_jobber_gets_a_backup_of_the_job_out_longest():
    core = make(3, backups=1)
    slow = core.bored("slow", 2, 1000, 0.0)  # jobs 0 and 1, out since 0
    [fast] = core.bored("fast", 1, 1000, 5.0)  # job 2, out since 5
    core.result("fast", fast.tag, OK, b"x", 1, "", 6.0)
    [backup] = core.bored("fast", 1, 1000, 7.0)  # nothing to draw: a backup, oldest first
    assert backup.job_id == 0 and backup.tag not in {a.tag for a in slow}
    [second] = core.bored("fast", 1, 1000, 7.0)  # then job 1, the next oldest
    assert second.job_id == 1
    core.result("fast", backup.tag, OK, b"x", 1, "", 8.0)
    assert [s.job_id for s in core.take_settled()] == [2, 0]
    # the slow jobber is told to drop what can no longer change anything
    assert core.alive("slow", 9.0, holding=[a.tag for a in slow]) == [slow[0].tag]
    # only one backup per job, and never on the machine that holds the original
    assert core.bored("slow", 5, 1000, 9.0) == []


def test_backups_never_exceed_their_cap():
    core = make(1, backups=1)
    [a] = core.bored("a", 1, 1000, 0.0)
    [b] = core.bored("b", 1, 1000, 1.0)
    assert b.job_id == a.job_id
    assert core.bored("c", 1, 1000, 2.0) == []  # one backup is the cap
    assert core.replicas_out == 2


# --- homogeneous redundancy: replicas vote only with replicas of their platform -------

X86, ARM = "x86_64-linux-wasmtime", "aarch64-linux-wasmtime"


def ask(core: Core, who: str, platform: str | None, now: float, want: int = 1):
    return core.bored(who, want, 1000, now, machine=f"m-{who}", platform=platform)


def test_replicas_of_a_job_go_to_its_platform_and_vote_only_there():
    core = make(3, redundancy=2, quorum=2)
    [a0] = ask(core, "a", X86, 0.0)
    [c0] = ask(core, "c", X86, 0.0)
    [c1] = ask(core, "c", X86, 0.0)
    assert (a0.job_id, c0.job_id, c1.job_id) == (0, 0, 1)
    # job 1 runs on x86 and x86 machine a is active and fresh to it: the arm jobber
    # gets a job of its own instead
    [b2] = ask(core, "b", ARM, 1.0)
    assert b2.job_id == 2
    [a1] = ask(core, "a", X86, 1.0)
    assert a1.job_id == 1
    # job 2 runs on arm, and no other arm machine exists: it moves to x86, not stall
    [a2] = ask(core, "a", X86, 1.0)
    assert a2.job_id == 2
    for who, a in (("a", a0), ("c", c0), ("c", c1), ("a", a1), ("b", b2), ("a", a2)):
        assert core.result(who, a.tag, OK, f"out{a.job_id}".encode(), 5, "", 2.0) is None
    assert [s.job_id for s in core.take_settled()] == [0, 1]  # b and a agree, on two platforms
    replicas = core.replicas(2)  # the core's own list: still read once the job settles
    assert [r.platform for r in replicas] == [ARM, X86]
    [c2] = ask(core, "c", X86, 3.0)  # x86 goes on with job 2: it needs one more there
    assert c2.job_id == 2 and core.result("c", c2.tag, OK, b"out2", 5, "", 4.0) is None
    [s] = core.take_settled()
    assert s == Accepted(2, Job(("2",)), b"out2")
    assert [(r.jobber, r.won) for r in replicas] == [("b", False), ("a", True), ("c", True)]
    assert "not compared" in replicas[0].detail
    b = core.jobbers["b"]
    assert (b.valid, b.invalid, b.credit) == (0, 0, 0)  # not compared: neither won nor lost
    assert core.disputed == 0


def test_a_job_waits_for_its_platform_until_those_machines_leave():
    core = make(2, redundancy=2, quorum=2, lease_s=20.0, deadline_s=1e6)
    [a] = ask(core, "a", X86, 0.0)
    c = ask(core, "c", X86, 0.0, want=2)
    assert [x.job_id for x in (a, *c)] == [0, 0, 1]
    # job 1 runs on x86 and a, an x86 machine fresh to it, is present: arm waits
    assert ask(core, "b", ARM, 1.0) == []
    core.alive("a", 15.0)  # alive, holding work: not asking for more is not being present
    ask(core, "a", X86, 19.0, want=0)  # nor is asking for nothing
    assert ask(core, "b", ARM, 20.0) == []
    # a has not asked for work it could take for a lease: the job moves rather than stall
    [b] = ask(core, "b", ARM, 20.5)
    assert b.job_id == 1


def test_a_job_on_two_platforms_goes_on_on_either():
    core = make(2, redundancy=2, quorum=2)
    assert [x.job_id for x in ask(core, "a", ARM, 0.0, want=2)] == [0, 1]
    # no other arm machine: both jobs move to x86
    assert [x.job_id for x in ask(core, "x", X86, 0.0, want=2)] == [0, 1]
    [b] = ask(core, "b", ARM, 1.0)  # a second arm machine: it takes the first job wanting
    assert b.job_id == 0
    # b is present and fresh to job 1, but job 1 has a replica on x86 too: x86 goes on
    [y] = ask(core, "y", X86, 2.0)
    assert y.job_id == 1


def test_a_job_on_two_platforms_waits_for_the_machines_of_each():
    core = make(2, redundancy=2, quorum=2, lease_s=20.0, deadline_s=1e6)
    assert [x.job_id for x in ask(core, "a", ARM, 0.0, want=2)] == [0, 1]
    [w] = ask(core, "w", X86, 0.0)  # no other arm machine: job 0 moves to x86
    assert w.job_id == 0
    assert [x.job_id for x in ask(core, "x", X86, 0.0, want=2)] == [0, 1]  # and job 1
    # job 1 runs on arm and x86: no arm machine is fresh to it, but w, on x86, is
    assert ask(core, "r", "riscv64-linux-wasmtime", 1.0) == []
    # w has not asked for a lease: job 1 moves on
    assert [x.job_id for x in ask(core, "r", "riscv64-linux-wasmtime", 20.5)] == [1]


def test_a_machine_asking_on_another_platform_does_not_hold_a_job_back_from_itself():
    """Two identities on one machine (its subnet, say), of two platforms: the machine is
    present because one asks, and it is no machine of the other platform to wait for."""
    core = make(2, redundancy=2, quorum=2)
    [h] = core.bored("arm-host", 1, 1000, 0.0, machine="lab", platform=ARM)
    assert [x.job_id for x in ask(core, "b", ARM, 0.0, want=2)] == [0, 1]
    # job 1 runs on arm; lab ran arm work, but only its x86 identity asks for more
    [x] = core.bored("x86-host", 1, 1000, 1.0, machine="lab", platform=X86)
    assert (h.job_id, x.job_id) == (0, 1)


def test_a_deterministic_failure_keeps_its_job_on_its_platform_and_a_crash_does_not():
    core = make(3, redundancy=2, quorum=2, max_errors=5)
    a = ask(core, "a", ARM, 0.0, want=3)
    assert [x.job_id for x in a] == [0, 1, 2]
    [b] = ask(core, "b", ARM, 0.0)  # a second arm machine, present and fresh to jobs 1, 2
    assert b.job_id == 0
    assert core.result("a", a[1].tag, Status.TRAP, b"", 9, "unreachable", 1.0) is None
    assert core.result("a", a[2].tag, Status.CRASH, b"", 0, "worker died", 1.0) is None
    # job 1's trap votes (b may confirm it on arm); job 2 has no replica that may vote
    assert [x.job_id for x in ask(core, "x", X86, 2.0, want=2)] == [2]


def test_deterministic_failures_vote_per_platform_too():
    core = make(1, redundancy=2, quorum=2, max_errors=5)
    [a] = ask(core, "a", X86, 0.0)
    [b] = ask(core, "b", ARM, 0.0)  # no other x86 machine: the job moves to arm
    core.result("a", a.tag, Status.STACK, b"", 9, "call stack exhausted", 1.0)
    core.result("b", b.tag, Status.STACK, b"", 9, "call stack exhausted", 1.0)
    assert core.take_settled() == []  # where the stack runs out depends on the platform
    replicas = core.replicas(0)
    [c] = ask(core, "c", ARM, 2.0)
    core.result("c", c.tag, Status.STACK, b"", 9, "call stack exhausted", 3.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and "the same failure on 2 machines" in s.reasons[0]
    assert [(r.jobber, r.won) for r in replicas] == [("a", False), ("b", True), ("c", True)]


def test_a_platform_short_of_a_quorum_gets_another_replica_at_once():
    core = make(1, redundancy=2, quorum=2)
    [b] = ask(core, "b", ARM, 0.0)
    [a] = ask(core, "a", X86, 0.0)  # no other arm machine: x86 takes it over
    assert core.result("a", a.tag, OK, b"o", 1, "", 1.0) is None
    # arm's replica is still out, but x86 cannot reach a quorum with it: another x86
    # machine gets the job now, not once arm's result is in
    [c] = ask(core, "c", X86, 1.0)
    assert c.job_id == 0 and core.result("c", c.tag, OK, b"o", 1, "", 2.0) is None
    assert [s.output for s in core.take_settled()] == [b"o"]
    assert b.tag in core.cancellable([b.tag])  # arm's replica is no longer needed


def test_platforms_survive_a_replay_and_old_journals_vote_as_one_platform():
    core = make(1, redundancy=2, quorum=2)
    [a] = ask(core, "a", X86, 0.0)
    [b] = ask(core, "b", ARM, 0.0)
    records = core.take_records()
    assert [r.platform for r in records if isinstance(r, Sent)] == [X86, ARM]
    fresh = make(1, redundancy=2, quorum=2)
    for rec in records:
        fresh.apply(rec)
    assert fresh.result("a", a.tag, OK, b"o", 1, "", 1.0) is None
    assert fresh.result("b", b.tag, OK, b"o", 1, "", 1.0) is None
    assert fresh.take_settled() == []  # x86 and arm do not make a quorum, after a replay too
    # a journal written before Sent.platform: every replica on the platform None
    old = [
        Sent(r.tag, r.job_id, r.jobber, r.deadline, r.machine, r.at) if isinstance(r, Sent) else r
        for r in records
    ]
    again = make(1, redundancy=2, quorum=2)
    for rec in old:
        again.apply(rec)
    again.result("a", a.tag, OK, b"o", 1, "", 1.0)
    again.result("b", b.tag, OK, b"o", 1, "", 1.0)
    assert [s.output for s in again.take_settled()] == [b"o"]


def test_a_late_result_of_another_platform_is_not_a_dispute():
    core = make(1, redundancy=2, quorum=2, backups=1)
    [a] = ask(core, "a", ARM, 0.0)
    [x] = ask(core, "x", X86, 0.0)  # no other arm machine: x86 takes it over
    [y] = ask(core, "y", X86, 0.0)
    core.result("x", x.tag, OK, b"fff8", 1, "", 1.0)
    core.result("y", y.tag, OK, b"fff8", 1, "", 1.0)
    assert [s.output for s in core.take_settled()] == [b"fff8"]
    why = core.result("a", a.tag, OK, b"7ff8", 1, "", 2.0)  # arm's own NaN bits, late
    assert why is not None and why.code is ErrorCode.SETTLED and "flagged" not in why.text
    assert core.disputed == 0


@pytest.mark.parametrize("n", [1, 2, 8])
def test_platforms_are_named_in_status_from_two_and_all_up_to_eight(n):
    core = make(n, redundancy=2, quorum=2, max_errors=99)
    for i in range(n):
        [a] = ask(core, f"j{i}", f"p{i}", 0.0)
        assert core.result(f"j{i}", a.tag, Status.CRASH, b"", 0, "", 1.0) is None
    lines = [w for w in core.waiting(2.0) if "platforms among them" in w]
    names = ", ".join(f"p{i}" for i in range(n))
    assert lines == (
        []
        if n == 1
        else [
            f"replicas of a job go to machines of one platform; {n} platforms among them: {names}"
        ]
    )


def test_platform_names_are_bounded_in_status_and_forgotten_with_their_machines():
    core = make(12, redundancy=2, quorum=2, max_errors=99)
    names = [f"platform-{i:02}" for i in range(12)]
    firsts = [ask(core, f"j{i}", name, 0.0)[0] for i, name in enumerate(names)]
    for i, a in enumerate(firsts):
        assert core.result(f"j{i}", a.tag, Status.CRASH, b"", 0, "", 1.0) is None
    (line,) = [w for w in core.waiting(2.0) if "platforms among them" in w]
    assert "12 platforms" in line and names[7] in line and names[8] not in line
    assert line.endswith(", ...")
    assert core.evict(2.0 + ACTIVE_HORIZON_S + 1.0) == 12
    assert not any("platforms among them" in w for w in core.waiting(2.0 + ACTIVE_HORIZON_S + 2))
    assert core._platforms == {}  # nothing piles up from names jobbers made up


def test_a_replica_sent_that_completes_what_its_job_needs_is_not_tallied(monkeypatch):
    """The hot path of sending: while a job's replicas are all out, none back, on one
    platform, it wants more without a count of its votes while fewer than the
    redundancy are out, and leaves the wanting list once as many are (measured: the
    count on every send cost the core a tenth of its speed); and a job just drawn, with
    no replica, wants what an empty count wants, uncounted."""
    from dealer._votes import Votes

    counted: list[int] = []
    needed = Votes._needed

    def counting(self, t):
        counted.append(t.sent)
        return needed(self, t)

    monkeypatch.setattr(Votes, "_needed", counting)
    core = make(2, redundancy=2)
    first = core.bored("a", 5, 1000, now=0.0, machine="ma")
    assert len(first) == 2
    assert counted == []  # neither job counted, as drawn nor with one of two out
    counted.clear()
    second = core.bored("b", 5, 1000, now=0.0, machine="mb")
    assert len(second) == 2 and counted == []  # both jobs now have all they need out
    assert core.bored("c", 5, 1000, now=0.0, machine="mc") == []
    # on two platforms the short cut does not apply: the votes are counted
    core = make(1, redundancy=2)
    core.bored("a", 5, 1000, now=0.0, machine="ma", platform="p1")
    counted.clear()
    core.bored("b", 5, 1000, now=0.0, machine="mb", platform="p2")
    assert counted == [2]
