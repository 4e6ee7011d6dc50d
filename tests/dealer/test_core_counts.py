"""The dealer core's counts, not only its outcomes: how many replicas it hands out,
how many it keeps live, how errors are counted and on whom, who counts as active,
and the queries and refusals no other test calls. The clock is a number passed in:
tests step it past every horizon (deadline, lease, the 300 s activity horizon)."""

from __future__ import annotations

import pytest

from dealer._core import (
    ACTIVE_HORIZON_S,
    DETERMINISTIC,
    MAX_ALLOWANCE,
    MAX_DISPUTES,
    MAX_LATE,
    Accepted,
    Core,
    CoreError,
    Drawn,
    Failed,
    Gone,
    Overdue,
    Policy,
    ReplicaState,
    Returned,
    Sent,
    Standing,
    implausible,
    job_digest,
)
from dealer._policy import JOB_MESSAGE_OVERHEAD, RETRY_BUSY_S, RETRY_IDLE_S, RETRY_QUOTA_S, SOON_S
from protocol import Status
from tasks import Job

OK = Status.OK


def jobs(n: int) -> list[Job]:
    return [Job((str(i),)) for i in range(n)]


def make(n: int = 3, **policy) -> Core:
    policy.setdefault("deadline_s", 100.0)
    policy.setdefault("lease_s", 1e6)
    policy.setdefault("backups", 0)
    policy.setdefault("quota", 100)
    return Core(jobs(n), Policy(**policy), "t")


def give(core: Core, who: str, want: int, now: float, **kw):
    return core.bored(who, want, 1000, now, **kw)


def test_the_constants_are_what_the_docs_say():
    assert ACTIVE_HORIZON_S == 300.0  # docs/dealer.md: "seen in the last 5 minutes"
    assert (MAX_ALLOWANCE, MAX_DISPUTES, MAX_LATE) == (4096, 100, 16384)
    p = Policy()
    assert (p.redundancy, p.quorum, p.max_errors, p.max_replicas) == (1, 1, 3, 5)
    assert (p.deadline_s, p.quota, p.deny_after, p.lease_s, p.backups) == (180.0, 4, 3, 20.0, 1)
    assert (p.memory_mb, p.window, p.fuel_limit, p.output_bytes) == (0, 10_000, 0, -1)
    assert Policy(redundancy=3, quorum=2, max_errors=1).max_replicas == 7
    assert Policy(redundancy=2, quorum=2, max_replicas=2).max_replicas == 2
    deterministic = {"exit", "fuel", "memory", "output", "stack", "trap", "invalid", "import"}
    assert deterministic == DETERMINISTIC
    # docs/protocol.md: "2 s while all its work is out", "30 s to a jobber" it cannot use,
    # the pace "times 1 s"; a jobber at its quota comes back within a round trip
    assert (RETRY_BUSY_S, RETRY_IDLE_S, SOON_S, RETRY_QUOTA_S) == (2.0, 30.0, 1.0, 0.2)
    assert JOB_MESSAGE_OVERHEAD == 64 * 1024  # docs/writing-tasks.md: "64 KiB"


# --- how many replicas one `bored` hands out -------------------------------------


@pytest.mark.parametrize("want", [1, 2, 3])
def test_bored_hands_out_exactly_want_when_there_is_more(want):
    fresh = make(10)
    assert len(give(fresh, "a", want, 0.0)) == want  # drawn
    again = make(10, redundancy=2)
    give(again, "a", 10, 0.0)  # every job drawn, each wanting one more replica
    got = give(again, "b", want, 1.0)  # from the wanting list
    assert [x.job_id for x in got] == list(range(want))
    tail = make(5, backups=2)
    give(tail, "a", 5, 0.0)
    backups = give(tail, "b", want, 1.0)  # nothing to draw, nothing wanting: backups
    assert [x.job_id for x in backups] == list(range(want))


def test_bored_mixes_wanting_and_new_jobs_up_to_want():
    core = make(6, redundancy=2)
    give(core, "a", 2, 0.0)  # jobs 0 and 1, each wanting one more
    got = give(core, "b", 4, 1.0)
    assert [x.job_id for x in got] == [0, 1, 2, 3]
    assert core.drawn == 4


def test_want_zero_or_no_room_hands_out_nothing_and_draws_nothing():
    core = make(3, quota=2)
    assert give(core, "a", 0, 0.0) == [] and core.drawn == 0
    assert len(give(core, "a", 5, 0.0)) == 2  # the quota
    assert give(core, "a", 5, 0.0) == [] and core.drawn == 2
    assert core.room("a", "a") == 0 and core.room("new", "other") == 2


def test_room_is_the_smaller_of_the_identitys_and_the_machines():
    core = make(20, quota=3)
    give(core, "a", 2, 0.0, machine="m")
    assert core.room("a", "m") == 1
    assert core.room("b", "m") == 1  # a new identity on the same machine
    assert core.room("a", "n") == 1  # the same identity asking from elsewhere
    assert core.room("b", "n") == 3


def test_a_redundant_job_gets_no_more_replicas_while_enough_are_live():
    core = make(1, redundancy=3, quorum=2, max_errors=5)
    a, b, c = (give(core, n, 1, 0.0)[0] for n in "abc")
    assert give(core, "d", 1, 0.0) == []  # three live: enough
    core.result("a", a.tag, OK, b"x", 1, "", 1.0)
    core.result("b", b.tag, OK, b"y", 1, "", 1.0)  # disagree: one agreeing with either wins
    assert give(core, "d", 1, 2.0) == []  # c is live and can make a quorum of two
    core.result("c", c.tag, OK, b"z", 1, "", 3.0)  # three opinions: one more is needed
    [d] = give(core, "d", 1, 4.0)
    assert give(core, "e", 1, 4.0) == []  # one live is enough for a quorum of two now
    core.result("d", d.tag, OK, b"y", 1, "", 5.0)
    [s] = core.take_settled()
    assert s == Accepted(0, Job(("0",)), b"y")
    assert (core.jobbers["b"].valid, core.jobbers["d"].valid) == (1, 1)
    assert [core.jobbers[n].invalid for n in "ac"] == [1, 1]


def test_redundancy_over_quorum_an_error_while_others_are_live_is_reissued():
    core = make(1, redundancy=3, quorum=2, max_errors=5)
    a, b, c = (give(core, n, 1, 0.0)[0] for n in "abc")
    core.result("a", a.tag, Status.CRASH, b"", 0, "died", 1.0)
    [d] = give(core, "d", 1, 2.0)  # redundancy 3: three not errored are wanted
    assert d.job_id == 0
    assert give(core, "e", 1, 2.0) == []


def test_a_replica_sent_after_an_error_leaves_the_job_wanting_one_more():
    """Sending a replica leaves a job wanting what its replicas not out cost it: two sent
    and one errored, with redundancy 2, is one short at once, not when the second is back."""
    core = make(1, redundancy=2, quorum=2, max_errors=5)
    [a] = give(core, "a", 1, 0.0)
    core.result("a", a.tag, Status.CRASH, b"", 0, "died", 1.0)
    [b] = give(core, "b", 1, 2.0)
    [c] = give(core, "c", 1, 2.0)
    assert b.job_id == c.job_id == 0
    assert give(core, "d", 1, 2.0) == []  # two live now: enough


def test_an_error_with_redundancy_one_is_reissued_once():
    core = make(1, max_errors=5)
    [a] = give(core, "a", 1, 0.0)
    core.result("a", a.tag, Status.TIME, b"", 0, "", 1.0)
    assert len(give(core, "b", 1, 2.0)) == 1
    assert give(core, "c", 1, 2.0) == []


def test_max_replicas_caps_a_job_while_replicas_are_live():
    core = make(1, redundancy=2, quorum=2, max_errors=5, max_replicas=3)
    a, b = (give(core, n, 1, 0.0)[0] for n in "ab")
    core.result("a", a.tag, Status.TIME, b"", 0, "", 1.0)
    [c] = give(core, "c", 1, 2.0)  # the third and last
    core.result("b", b.tag, OK, b"x", 1, "", 3.0)
    assert give(core, "d", 1, 4.0) == []  # at the cap, c still live: no fourth
    assert core.take_settled() == [] and core.failed == 0  # not failed while c is out
    core.result("c", c.tag, OK, b"x", 1, "", 5.0)
    [s] = core.take_settled()
    assert isinstance(s, Accepted) and core.failed == 0


def test_max_replicas_reached_with_none_live_fails_the_job():
    core = make(1, redundancy=2, quorum=2, max_errors=5, max_replicas=3)
    a, b = (give(core, n, 1, 0.0)[0] for n in "ab")
    core.result("a", a.tag, Status.TIME, b"", 0, "", 1.0)
    core.result("b", b.tag, OK, b"x", 1, "", 1.0)
    [c] = give(core, "c", 1, 2.0)
    core.result("c", c.tag, Status.CRASH, b"", 0, "", 3.0)
    [s] = core.take_settled()
    assert isinstance(s, Failed) and core.failed == 1 and core.accepted == 0
    assert s.reasons == ("no 2 of 3 replicas agreed (1 distinct outputs)",)
    assert give(core, "d", 1, 4.0) == []


def test_released_and_gone_replicas_do_not_count_towards_max_replicas():
    core = make(1, max_errors=5, max_replicas=1, lease_s=20.0)
    [a] = give(core, "a", 1, 0.0)
    core.result("a", a.tag, Status.ABANDONED, b"", 0, "", 1.0)
    [b] = give(core, "b", 1, 2.0)  # a released one is not one of the max_replicas
    core.tick(30.0)  # b is silent past its lease: gone, not one either
    assert core.jobbers["b"].gone
    [c] = give(core, "c", 1, 30.0)
    core.result("c", c.tag, OK, b"x", 1, "", 31.0)
    assert [type(s) for s in core.take_settled()] == [Accepted]


# --- counting errors ------------------------------------------------------------------


def test_errors_and_overdue_replicas_both_count_towards_max_errors():
    core = make(1, max_errors=1)
    [a] = give(core, "a", 1, 0.0)
    core.tick(100.0)  # a's deadline: overdue, one error
    assert core.take_settled() == []
    [b] = give(core, "b", 1, 100.0)
    core.result("b", b.tag, Status.CRASH, b"", 0, "died", 101.0)  # two errors: over one
    [s] = core.take_settled()
    assert isinstance(s, Failed) and core.failed == 1
    assert s.reasons == (
        "more than 1 errors",
        f"{a.tag} on a: overdue: no result by the deadline",
        f"{b.tag} on b: crash: died",
    )


def test_max_errors_is_more_than_not_as_many_as():
    core = make(1, max_errors=2)
    for i, name in enumerate("ab"):
        [x] = give(core, name, 1, float(i))
        core.result(name, x.tag, Status.CRASH, b"", 0, "", float(i))
    assert core.take_settled() == [] and core.failed == 0  # two errors: not more than two
    [c] = give(core, "c", 1, 3.0)
    core.result("c", c.tag, OK, b"x", 1, "", 4.0)
    assert [type(s) for s in core.take_settled()] == [Accepted]


def test_a_jobbers_errors_count_each_replica_once():
    core = make(3, max_errors=9)
    [a0, a1, a2] = give(core, "a", 3, 0.0)
    core.result("a", a0.tag, Status.CRASH, b"", 0, "", 1.0)
    assert core.jobbers["a"].errors == 1  # an error result (the machine's)
    core.tick(100.0)  # a1 and a2 overdue
    assert core.jobbers["a"].errors == 3
    core.result("a", a1.tag, Status.CRASH, b"", 0, "", 101.0)  # overdue then error: once
    core.result("a", a2.tag, OK, b"x", 1, "", 101.0)  # overdue then ok: still counted
    assert core.jobbers["a"].errors == 3
    assert core.jobbers["a"].valid == 1


def test_errors_halve_the_allowance_of_the_identity_and_its_machine():
    core = make(10, quota=8, max_errors=9)
    got = give(core, "a", 4, 0.0, machine="m")
    core.result("a", got[0].tag, Status.TIME, b"", 0, "", 1.0)
    assert (core.jobbers["a"].allowance, core.machines["m"].allowance) == (4, 4)
    core.tick(100.0)  # three overdue: each halves both
    assert (core.jobbers["a"].allowance, core.machines["m"].allowance) == (1, 1)
    core.result("a", got[1].tag, Status.TRAP, b"", 0, "", 101.0)  # counted already
    assert (core.jobbers["a"].allowance, core.machines["m"].allowance) == (1, 1)
    assert core.jobbers["a"].held == 0 and core.machines["m"].held == 0


def test_valid_results_raise_both_allowances_by_one_and_invalid_ones_halve_them():
    core = make(1, redundancy=3, quorum=2, quota=8)
    a, b, c = (give(core, n, 1, 0.0, machine=f"m{n}")[0] for n in "abc")
    core.result("a", a.tag, OK, b"x", 7, "", 1.0)
    core.result("c", c.tag, OK, b"y", 7, "", 1.0)
    core.result("b", b.tag, OK, b"x", 7, "", 1.0)
    assert [core.jobbers[n].allowance for n in "abc"] == [9, 9, 4]
    assert [core.machines[f"m{n}"].allowance for n in "abc"] == [9, 9, 4]
    assert [core.jobbers[n].credit for n in "abc"] == [7, 7, 0]
    assert core.disputed == 1


def test_standing_grows_to_a_cap_and_halves_to_one():
    s = Standing(MAX_ALLOWANCE - 1)
    s.good()
    assert s.allowance == 4096
    s.good()
    assert s.allowance == 4096
    s = Standing(5)
    s.bad()
    assert s.allowance == 2
    s.bad()
    s.bad()
    assert s.allowance == 1


def test_a_deterministic_failure_needs_a_quorum_of_machines():
    core = make(1, redundancy=3, quorum=2, max_errors=5)
    a, b, c = (give(core, n, 1, 0.0)[0] for n in "abc")
    core.result("a", a.tag, Status.TIME, b"o", 3, "slow", 1.0)  # time: not deterministic
    assert core.take_settled() == []
    core.result("b", b.tag, Status.TRAP, b"o", 3, "boom", 1.0)
    assert core.take_settled() == []
    core.result("c", c.tag, Status.TRAP, b"o", 3, "boom", 1.0)
    [s] = core.take_settled()
    assert s.reasons == ("the same failure on 2 machines: trap: boom (fuel 3)",)
    one = make(1, max_errors=5)
    [x] = give(one, "x", 1, 0.0)
    one.result("x", x.tag, Status.EXIT, b"", 1, "", 1.0)
    [s] = one.take_settled()
    assert s.reasons == ("the same failure on 1 machine: exit (fuel 1)",)


# --- who counts as present ------------------------------------------------------------------


def _failed_by_solo(core: Core, now: float) -> None:
    [x] = give(core, "solo", 1, now)
    core.result("solo", x.tag, Status.CRASH, b"", 0, "", now)


def test_a_machine_present_exactly_a_lease_ago_still_counts():
    core = make(2, max_errors=9, lease_s=300.0, deadline_s=1e6)
    give(core, "other", 1, 100.0)  # job 0: present at 100 (asked for work it could take)
    _failed_by_solo(core, 101.0)  # job 1
    assert give(core, "solo", 1, 400.0) == []  # 400 - 300 = 100: other still counts
    assert [x.job_id for x in give(core, "solo", 1, 400.5)] == [1]


def test_a_result_renews_the_machines_presence():
    core = make(2, max_errors=9, lease_s=300.0, deadline_s=1e6)
    [o] = give(core, "other", 1, 0.0)  # job 0
    _failed_by_solo(core, 1.0)  # job 1, failed by solo
    core.result("other", o.tag, OK, b"x", 1, "", 250.0)  # other last heard at 250
    assert give(core, "solo", 1, 549.0) == []
    assert [x.job_id for x in give(core, "solo", 1, 551.0)] == [1]


def test_seen_and_present_never_go_back_in_time():
    core = make(3, max_errors=9, lease_s=300.0, deadline_s=1e6)
    give(core, "other", 1, 200.0)  # job 0
    give(core, "other", 1, 50.0)  # job 1, a late-processed message with an older clock
    assert core.jobbers["other"].last_seen == 200.0 and core.machines["other"].last_seen == 200.0
    assert core.machines["other"].present == 200.0
    _failed_by_solo(core, 201.0)  # job 2
    assert give(core, "solo", 1, 499.0) == []


@pytest.mark.parametrize(
    "how",
    ["want 0", "alive", "alive holding nothing", "over its quota", "too small", "denied"],
)
def test_a_machine_that_could_take_nothing_is_not_waited_for(how):
    """Only asking for work it could take (or returning a result) makes a machine present:
    a job failed by `solo` goes back to it at once whatever `other` does here."""
    core = make(3, max_errors=9, lease_s=20.0, deadline_s=1e6, quota=1, memory_mb=64)
    if how == "over its quota":
        give(core, "other", 1, 0.0)  # job 0 held: its quota of 1 is used
    _failed_by_solo(core, 1.0)
    if how == "want 0":
        give(core, "other", 0, 2.0)
    elif how == "alive":
        core.alive("other", 2.0)
    elif how == "alive holding nothing":
        core.alive("other", 2.0, holding=[])
    elif how == "over its quota":
        assert give(core, "other", 1, 2.0) == []
    elif how == "too small":
        assert core.bored("other", 1, 1, 2.0) == []
    else:
        core.deny("other", "test")
        assert give(core, "other", 1, 2.0) == []
    assert len(give(core, "solo", 1, 3.0)) == 1
    assert not core.machines.get("other") or core.machines["other"].present < 2.0


def test_after_a_replay_machines_holding_work_are_present_from_the_restart():
    core = make(2, redundancy=2, quorum=2, lease_s=20.0, deadline_s=1e6)
    give(core, "a", 1, 0.0)
    records = core.take_records()
    again = make(2, redundancy=2, quorum=2, lease_s=20.0, deadline_s=1e6)
    for rec in records:
        again.apply(rec)
    assert again.machines["a"].present == float("-inf")  # not journaled
    again.resume(100.0)
    assert again.machines["a"].present == 100.0


def test_alive_places_an_identity_on_the_machine_it_speaks_from():
    core = make(1)
    core.alive("new", 1.0, machine="192.0.2.7")
    assert core.jobbers["new"].machine == "192.0.2.7" and "new" not in core.machines
    core.alive("new", 2.0)  # later words without a machine keep where it was placed
    assert core.jobbers["new"].machine == "192.0.2.7"


# --- unchecked work earns no room -----------------------------------------------------------


def test_ok_results_not_yet_compared_count_against_the_quota():
    core = make(6, redundancy=2, quorum=2, quota=2)
    a = give(core, "a", 9, 0.0)
    assert len(a) == 2 and core.room("a", "a") == 0
    for x in a:
        assert core.result("a", x.tag, OK, b"x", 1, "", 1.0) is None
    # returned at once, but compared with nobody: still no room
    assert core.jobbers["a"].unchecked == 2 and core.machines["a"].unchecked == 2
    assert core.room("a", "a") == 0 and give(core, "a", 9, 2.0) == []
    # another machine agrees: both settle, a's quota grows and its room comes back
    for x in give(core, "b", 2, 3.0):
        assert core.result("b", x.tag, OK, b"x", 1, "", 4.0) is None
    assert len(core.take_settled()) == 2
    assert core.jobbers["a"].unchecked == core.machines["a"].unchecked == 0
    assert core.jobbers["a"].allowance == 4 and core.room("a", "a") == 4  # 2, +1 per valid


def test_unchecked_results_count_against_the_identity_and_the_machine_each():
    """An identity whose results wait to be compared gets no new job on another machine,
    and another identity none on the machine they came from."""
    core = make(6, redundancy=2, quorum=2, quota=2)
    a = give(core, "a", 2, 0.0, machine="m1")
    for x in a:
        assert core.result("a", x.tag, OK, b"x", 1, "", 1.0) is None
    assert core.room("a", "m2") == 0 and give(core, "a", 2, 2.0, machine="m2") == []
    assert core.room("b", "m1") == 0 and give(core, "b", 2, 2.0, machine="m1") == []
    assert core.room("a", "m2", unchecked=False) == core.room("b", "m1", unchecked=False) == 2
    assert core.drawn == 2  # nothing new was drawn for either
    # a third machine takes the replicas they wait on: both settle, the room comes back
    for x in give(core, "c", 2, 3.0, machine="m3"):
        assert core.result("c", x.tag, OK, b"x", 1, "", 4.0) is None
    assert [x.job_id for x in give(core, "b", 2, 5.0, machine="m1")] == [2, 3]
    assert [x.job_id for x in give(core, "a", 2, 5.0, machine="m2")] == [2, 3]


def test_machines_whose_unchecked_results_wait_on_each_other_do_not_stall():
    """A's results wait on replicas only C can give, and C's on replicas only A can: each
    takes the replicas the other waits on, though its unchecked results fill its quota."""
    core = make(8, redundancy=2, quorum=2, quota=4, lease_s=20.0, deadline_s=1e6)
    a = give(core, "a", 4, 0.0)
    b = give(core, "b", 4, 0.0)
    assert [x.job_id for x in a] == [x.job_id for x in b] == [0, 1, 2, 3]
    c = give(core, "c", 4, 0.0)
    assert [x.job_id for x in c] == [4, 5, 6, 7]
    for who, xs in (("a", a), ("c", c)):
        for x in xs:
            assert core.result(who, x.tag, OK, b"x", 1, "", 1.0) is None
    core.alive("a", 15.0)
    core.alive("c", 15.0)
    core.tick(21.0)  # b fell silent: jobs 0-3 want a replica again
    assert core.jobbers["b"].gone and core.room("c", "c") == 0
    assert [x.job_id for x in give(core, "c", 4, 21.0)] == [0, 1, 2, 3]
    assert [x.job_id for x in give(core, "a", 4, 21.0)] == [4, 5, 6, 7]
    assert give(core, "a", 4, 21.0) == []  # it holds its quota now


def test_a_liar_on_a_platform_of_its_own_holds_back_only_its_quota():
    """The attack of a made-up platform: a machine returning garbage at once on a platform
    nobody else has takes at most its quota of first replicas, and with no other machine
    of that platform present, those jobs move to the honest platform at once."""
    core = make(20, redundancy=2, quorum=2, quota=4, lease_s=20.0, deadline_s=1e6)
    taken = give(core, "liar", 128, 0.0, machine="m-liar", platform="made-up")
    assert len(taken) == 4
    for x in taken:
        assert core.result("liar", x.tag, OK, b"garbage", 1, "", 0.1) is None
    assert give(core, "liar", 128, 0.2, machine="m-liar", platform="made-up") == []
    now = 1.0
    while not core.finished() and now < 500:
        for who in ("h1", "h2"):
            for x in give(core, who, 2, now, machine=f"m-{who}", platform="x86"):
                assert core.result(who, x.tag, OK, f"ok{x.job_id}".encode(), 1, "", now) is None
        core.refill()
        now += 1.0
    settled = core.take_settled()
    assert len(settled) == 20 and all(s.output.startswith(b"ok") for s in settled)
    assert now < 40  # no wait for a lease: nobody else of "made-up" was ever present
    liar = core.jobbers["liar"]
    assert (liar.valid, liar.credit, liar.unchecked) == (0, 0, 0)


def test_a_lease_is_renewed_by_alive_by_a_result_and_by_bored():
    core = make(3, lease_s=20.0, deadline_s=1e6)
    [a0, a1, a2] = give(core, "a", 3, 0.0)
    core.alive("a", 15.0)
    core.tick(35.0)
    assert not core.jobbers["a"].gone
    core.result("a", a0.tag, OK, b"x", 1, "", 30.0)
    core.tick(50.0)
    assert not core.jobbers["a"].gone
    give(core, "a", 0, 45.0)
    core.tick(65.0)
    assert not core.jobbers["a"].gone
    core.tick(65.5)
    assert core.jobbers["a"].gone and core.jobbers["a"].held == 0
    assert core.machines["a"].held == 0
    assert core.take_records()[-1] == Gone("a")


def test_a_jobber_holding_nothing_is_never_gone():
    core = make(1, lease_s=20.0)
    give(core, "a", 0, 0.0)
    core.tick(1000.0)
    assert not core.jobbers["a"].gone
    assert not any(isinstance(r, Gone) for r in core.take_records())


def test_a_gone_jobber_back_from_silence_is_not_sent_the_job_it_may_still_run():
    core = make(1, lease_s=20.0, max_errors=9)
    [a] = give(core, "a", 1, 0.0)
    core.tick(21.0)
    assert core.jobbers["a"].gone
    assert give(core, "a", 1, 22.0) == []  # it may still be running that one
    assert not core.jobbers["a"].gone
    [b] = give(core, "b", 1, 22.0)
    assert b.job_id == 0


def test_evict_forgets_idle_names_that_hold_and_earned_nothing():
    core = make(2)
    give(core, "idle", 0, 0.0)
    [w] = give(core, "worker", 1, 0.0)
    core.result("worker", w.tag, OK, b"x", 1, "", 1.0)
    give(core, "holder", 1, 0.0)
    give(core, "recent", 0, 100.0)
    core.deny("bad", "test")
    give(core, "bad", 0, 0.0)
    assert core.evict(300.0) == 0  # idle since 0: exactly at the horizon, kept
    assert "idle" in core.jobbers and "idle" in core.machines
    assert core.evict(300.5) == 1
    assert set(core.jobbers) == {"worker", "holder", "recent", "bad"}
    assert set(core.machines) == {"worker", "holder", "recent"}  # machines are not denied
    assert core.evict(1000.0, idle_s=10.0) == 1  # recent, with a shorter idle time
    assert "recent" not in core.jobbers and "recent" not in core.machines
    assert "holder" in core.machines  # it holds a replica


# --- queries and refusals ------------------------------------------------------------------


def test_has_work_while_jobs_want_replicas_or_the_window_has_room():
    core = make(2, window=1)
    assert core.has_work()  # nothing drawn yet, room in the window
    [a] = give(core, "a", 1, 0.0)
    assert not core.has_work()  # the window is full and job 0 needs nothing
    core.result("a", a.tag, Status.CRASH, b"", 0, "", 1.0)
    assert core.has_work()  # job 0 wants another replica
    [b] = give(core, "b", 1, 2.0)
    core.result("b", b.tag, OK, b"x", 1, "", 3.0)
    assert core.has_work()  # room again, and the source may have more
    give(core, "b", 5, 4.0)
    assert core.drawn == 2
    assert not core.has_work()
    done = make(0)
    give(done, "a", 1, 0.0)
    assert not done.has_work()


def test_offerable_is_the_wanting_and_what_the_window_could_still_draw():
    core = make(4, window=3, redundancy=2)
    assert core.offerable() == 3  # nothing drawn yet: the window's room
    assert [core.offerable(t) for t in (4, 2, 0)] == [3, 2, 0]  # at most the total undrawn
    give(core, "a", 2, 0.0)  # jobs 0 and 1 drawn, each wanting a second replica
    assert core.offerable() == 2 + 1
    assert [core.offerable(t) for t in (4, 3, 2, 1)] == [2 + 1, 2 + 1, 2 + 0, 2 + 0]
    give(core, "b", 3, 1.0)  # jobs 0 and 1 again, and job 2 drawn: the window is full
    assert core.offerable() == core.offerable(4) == 1  # job 2 wants its second
    done = make(2, window=5)
    a, _ = give(done, "a", 5, 0.0)  # both drawn, and the task found empty
    assert done.offerable() == done.offerable(5) == 0
    done.result("a", a.tag, Status.CRASH, b"", 0, "", 1.0)
    assert done.offerable() == 1  # job 0 wants another replica; nothing more to draw


def test_next_deadline_is_the_earliest_of_replicas_still_timed():
    core = make(3, deadline_s=100.0)
    assert core.next_deadline() is None
    [a] = give(core, "a", 1, 0.0)
    [b] = give(core, "b", 1, 10.0)
    assert core.next_deadline() == 100.0
    core.result("a", a.tag, OK, b"x", 1, "", 20.0)  # settled: its entry is stale
    assert core.next_deadline() == 110.0
    core.tick(110.0)  # b overdue: no longer timed
    assert core.next_deadline() is None
    assert core.take_records()[-1] == Overdue(b.tag)


def test_tick_makes_a_replica_overdue_at_its_deadline_not_before():
    core = make(1)
    [a] = give(core, "a", 1, 0.0)
    core.tick(99.5)
    assert core.jobbers["a"].errors == 0
    core.tick(100.0)
    assert core.jobbers["a"].errors == 1 and core.jobbers["a"].held == 0
    core.tick(200.0)
    assert core.jobbers["a"].errors == 1  # once


def test_policy_refusals():
    for bad in (
        dict(redundancy=1, quorum=0),
        dict(redundancy=2, quorum=3),
        dict(max_errors=-1),
        dict(deadline_s=0.0),
        dict(window=0),
        dict(lease_s=0.0),
        dict(backups=-1),
        dict(quota=0),
        dict(quota=MAX_ALLOWANCE + 1),
        dict(deny_after=-1),
        dict(redundancy=3, quorum=2, max_replicas=2),
    ):
        with pytest.raises(ValueError):
            Policy(**bad)
    for fine in (
        dict(redundancy=2, quorum=2),
        dict(max_errors=0),
        dict(window=1),
        dict(backups=0),
        dict(quota=1),
        dict(quota=MAX_ALLOWANCE),
        dict(deny_after=0),
        dict(redundancy=3, quorum=2, max_replicas=3),
    ):
        Policy(**fine)
    with pytest.raises(ValueError, match="max_replicas must be at least redundancy"):
        Policy(redundancy=3, max_replicas=2)


@pytest.mark.parametrize("prefix", ["", "a.b", "."])
def test_a_bad_tag_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match="tag_prefix"):
        Core(jobs(1), Policy(), prefix)


def test_a_task_yielding_something_not_a_job_stops_drawing_with_the_reason():
    core = Core(iter([Job(("0",)), "nonsense", Job(("2",))]), Policy(backups=0), "t")
    got = give(core, "a", 3, 0.0)
    assert [x.job_id for x in got] == [0]
    assert core.source_error == "TypeError: jobs() yielded 'nonsense', not a tasks.Job"
    assert core.drawn == 1 and not core.has_work()


def test_a_journal_out_of_order_is_refused():
    core = make(2)
    with pytest.raises(CoreError, match="journal draws job 1, expected 0"):
        core.apply(Drawn(1, job_digest(Job(("1",)))))
    core.apply(Drawn(0, job_digest(Job(("0",)))))
    with pytest.raises(CoreError, match="out of sequence"):
        core.apply(Sent("t.1", 0, "a", 5.0, "a"))
    with pytest.raises(CoreError, match="out of sequence"):
        core.apply(Sent("u.0", 0, "a", 5.0, "a"))
    with pytest.raises(CoreError, match="not unsettled"):
        core.apply(Sent("t.0", 7, "a", 5.0, "a"))
    core.apply(Sent("t.0", 0, "a", 5.0, "a"))
    with pytest.raises(CoreError, match="no open replica t.9"):
        core.apply(Returned("t.9", "ok", b"", 0, ""))
    with pytest.raises(CoreError, match="no open replica"):
        core.apply(Overdue("t.9"))
    with pytest.raises(CoreError, match="unknown record"):
        core.apply("Drawn")  # type: ignore[arg-type]
    core.apply(Overdue("t.0"))
    with pytest.raises(CoreError, match="deadline not allowed in state overdue"):
        core.apply(Overdue("t.0"))


def test_replay_matches_live_counts_after_errors_overdue_and_gone():
    core = make(3, redundancy=2, quorum=2, lease_s=20.0, max_errors=9)
    a = give(core, "a", 3, 0.0)
    b = give(core, "b", 3, 0.0)
    core.result("a", a[0].tag, Status.TRAP, b"", 0, "", 1.0)
    core.alive("b", 10.0)
    core.tick(25.0)  # a gone
    core.result("b", b[1].tag, OK, b"r", 1, "", 26.0)
    core.tick(100.0)  # b's others overdue
    records = core.take_records()
    fresh = make(3, redundancy=2, quorum=2, lease_s=20.0, max_errors=9)
    for rec in records:
        fresh.apply(rec)
    for name in core.jobbers:
        x, y = core.jobbers[name], fresh.jobbers[name]
        assert (x.errors, x.held, x.allowance, x.gone) == (y.errors, y.held, y.allowance, y.gone)
    assert {m: s.held for m, s in core.machines.items()} == {
        m: s.held for m, s in fresh.machines.items()
    }
    assert fresh.replicas_out == core.replicas_out == 0


# --- plausibility ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "output", "fuel", "why"),
    [
        (OK, b"", 100, None),  # at the fuel limit
        (OK, b"", 101, "fuel 101 exceeds the job's fuel limit of 100"),
        (OK, b"x" * 10, 1, None),  # at the output limit
        (OK, b"x" * 11, 1, "11 bytes of output exceed the job's limit of 10"),
        (Status.OUTPUT, b"x" * 10, 1, None),
        (Status.OUTPUT, b"x" * 9, 1, "status output with 9 bytes; the limit is 10"),
        (Status.FUEL, b"", 100, None),
        (Status.FUEL, b"", 99, "status fuel with 99 fuel used; the limit is 100"),
        (Status.INVALID, b"", 0, None),
        (Status.IMPORT, b"", 1, "status import with output or fuel: the payload never ran"),
        (Status.ABANDONED, b"x", 0, "status abandoned with output or fuel: the payload never ran"),
        (Status.TRAP, b"x", 5, None),
    ],
)
def test_implausible_at_and_past_each_limit(status, output, fuel, why):
    assert implausible(status, output, fuel, Policy(fuel_limit=100, output_bytes=10)) == why


def test_unchecked_limits_take_anything():
    p = Policy()  # fuel_limit 0 and output_bytes -1: unchecked
    assert implausible(OK, b"x" * 10**6, 2**62, p) is None
    assert implausible(Status.OUTPUT, b"x", 1, p) is None
    assert implausible(Status.FUEL, b"", 5, p) is None
    assert implausible(OK, b"", 0, Policy(output_bytes=0)) is None
    assert implausible(OK, b"x", 0, Policy(output_bytes=0)) is not None


def test_an_implausible_result_is_an_error_of_the_jobber_and_votes_for_nothing():
    core = make(1, fuel_limit=100, max_errors=9)
    [a] = give(core, "a", 1, 0.0)
    why = core.result("a", a.tag, OK, b"x", 101, "", 1.0)
    assert why is not None and "exceeds" in why.text
    assert core.jobbers["a"].errors == 1 and core.take_settled() == []
    [rec] = [r for r in core.take_records() if isinstance(r, Returned)]
    assert (rec.status, rec.output, rec.fuel) == ("implausible", b"", 0)
    [b] = give(core, "b", 1, 2.0)
    assert b.job_id == 0


# --- denial, late results, caps on what is kept ---------------------------------------------


def test_deny_after_counts_lost_votes_and_more_than_won():
    core = make(3, redundancy=2, quorum=1, deny_after=2)
    assert not core.is_denied("x")
    core.jobbers["x"] = core._jobber("x")
    rec = core.jobbers["x"]
    rec.invalid, rec.valid = 1, 0
    assert not core.is_denied("x")
    rec.invalid = 2
    assert core.is_denied("x")
    rec.valid = 2
    assert not core.is_denied("x")  # not more than won
    rec.valid = 1
    assert core.is_denied("x")
    never = make(1, deny_after=0)
    never._jobber("y").invalid = 100
    assert not never.is_denied("y")


def test_a_denied_jobber_gets_nothing_and_its_replicas_go_elsewhere():
    core = make(1)
    [a] = give(core, "a", 1, 0.0)
    core.deny("a", "cheat")
    core.deny("a", "again")  # once
    [gone] = [r for r in core.take_records() if isinstance(r, Returned)]
    assert (gone.tag, gone.status, gone.output, gone.fuel) == (a.tag, "abandoned", b"", 0)
    assert core.denied == {"a": "cheat"}
    assert give(core, "a", 1, 1.0) == []
    [b] = give(core, "b", 1, 1.0)
    assert b.job_id == 0


def test_disputes_are_capped_and_late_disagreements_flagged():
    core = make(MAX_DISPUTES + 1, redundancy=3, quorum=2, deny_after=0)
    for i in range(MAX_DISPUTES + 1):
        a, b, c = (give(core, n, 1, float(i))[0] for n in "abc")
        core.result("a", a.tag, OK, b"x", 1, "", float(i))
        core.result("c", c.tag, OK, b"y", 1, "", float(i))
        core.result("b", b.tag, OK, b"x", 1, "", float(i))
    assert core.disputed == MAX_DISPUTES + 1 and len(core.disputes) == MAX_DISPUTES
    assert core.disputes[0]["job"] == 1  # the oldest went
    late = make(1, redundancy=2, quorum=1, backups=0)
    a = give(late, "a", 1, 0.0)[0]
    b = give(late, "b", 1, 0.0)[0]
    late.result("a", a.tag, OK, b"x", 1, "", 1.0)
    assert late.late == 1
    why = late.result("b", b.tag, OK, b"y", 1, "", 2.0)
    assert why is not None and "flagged" in why.text
    assert late.disputed == 1 and late.disputes[-1]["late"] and late.late == 0
    won, lost = late.disputes[-1]["groups"]
    assert (won["won"], won["fuel"], lost["won"], lost["jobbers"]) == (True, 1, False, ["b"])
    agree = make(1, redundancy=3, quorum=1)
    x, y, z = (give(agree, n, 1, 0.0)[0] for n in "xyz")
    agree.result("x", x.tag, OK, b"o", 1, "", 1.0)
    why = agree.result("y", y.tag, OK, b"o", 1, "", 2.0)  # late, and agrees: nothing to flag
    assert why is not None and why.text == f"job of {y.tag} is already settled"
    why = agree.result("z", z.tag, Status.CRASH, b"", 0, "", 2.0)  # late errors are no vote
    assert why is not None and "flagged" not in why.text
    assert agree.disputed == 0 and agree.disputes.maxlen == MAX_DISPUTES


def test_late_results_of_settled_jobs_are_remembered_up_to_a_cap():
    n = MAX_LATE + 1
    core = make(n, redundancy=2, quorum=1, quota=MAX_ALLOWANCE, window=n)
    seconds = []
    for k in range(5):  # no identity may hold more than MAX_ALLOWANCE
        firsts = give(core, f"a{k}", MAX_ALLOWANCE, 0.0)
        seconds += give(core, f"b{k}", MAX_ALLOWANCE, 0.0)
        for x in firsts:
            core.result(f"a{k}", x.tag, OK, b"x", 1, "", 1.0)
    assert len(seconds) == n
    assert core.late == MAX_LATE  # the oldest forgotten
    why = core.result("b0", seconds[0].tag, OK, b"y", 1, "", 2.0)
    assert why is not None and "flagged" not in why.text  # forgotten: merely settled
    why = core.result("b0", seconds[1].tag, OK, b"y", 1, "", 2.0)
    assert why is not None and "flagged" in why.text


def test_waiting_says_what_waits():
    core = make(2, redundancy=2, lease_s=20.0, deadline_s=1e6)
    give(core, "a", 2, 0.0)
    assert core.waiting(5.0) == ["2 jobs need a replica on another machine; 1 machine active"]
    give(core, "b", 1, 5.0)
    assert core.waiting(15.0) == [
        "1 job needs a replica on another machine; 2 machines active",
        "2 jobs out to a, silent for 15 s",
    ]
    assert core.waiting(25.0)[0].endswith("; 1 machine active")
    assert core.waiting(25.0)[2] == "1 job out to b, silent for 20 s"
    assert core.waiting(10.0)[1:] == []  # a: silent exactly half a lease is not yet quiet


def test_waiting_at_redundancy_one_asks_for_a_machine_not_another_one():
    core = make(2, redundancy=1, max_errors=1, lease_s=20.0, deadline_s=1e6)
    (x,) = give(core, "a", 1, 0.0)
    assert core.result("a", x.tag, Status.CRASH, b"", 0, "", 1.0) is None  # to run again
    assert core.waiting(5.0) == ["1 job needs a machine to run it; 1 machine active"]


def test_replica_state_is_kept_in_a_late_table_only_when_it_could_still_return():
    core = make(1, redundancy=2, quorum=1)
    a = give(core, "a", 1, 0.0)[0]
    b = give(core, "b", 1, 0.0)[0]
    core.result("b", b.tag, Status.CRASH, b"", 0, "", 0.5)
    core.result("a", a.tag, OK, b"x", 1, "", 1.0)
    assert core.late == 0  # b's errored replica cannot return again
    assert core.cancellable([a.tag, b.tag, "t.99", "u.0"]) == [a.tag, b.tag]
    two = make(1, redundancy=2, quorum=1)
    x, y = give(two, "x", 1, 0.0)[0], give(two, "y", 1, 0.0)[0]
    two.result("x", x.tag, OK, b"o", 1, "", 1.0)
    assert two.late == 1  # y's replica was out: its result is still looked at
    assert two.cancellable([y.tag]) == [y.tag] and two.late == 0  # y is told: forgotten
    assert ReplicaState.OUT.value == "out"


def test_a_dispute_keeps_both_sides_with_their_jobbers_and_machines():
    core = make(1, redundancy=3, quorum=2)
    a, b, c = (give(core, n, 1, 0.0, machine=f"m{n}")[0] for n in "abc")
    core.result("a", a.tag, OK, b"x", 4, "", 1.0)
    core.result("c", c.tag, OK, b"y", 5, "", 1.0)
    core.result("b", b.tag, OK, b"x", 4, "", 1.0)
    [d] = core.disputes
    assert d["job"] == 0 and d["late"] is False
    won, lost = d["groups"]
    assert (won["won"], won["fuel"], won["jobbers"], won["machines"]) == (
        True,
        4,
        ["a", "b"],
        ["ma", "mb"],
    )
    assert (lost["won"], lost["fuel"], lost["jobbers"], lost["machines"]) == (
        False,
        5,
        ["c"],
        ["mc"],
    )
    assert won["output"] != lost["output"] and len(won["output"]) == 16


def test_only_tags_this_core_issued_are_settled_rather_than_unknown():
    core = make(1)
    [a] = give(core, "a", 1, 0.0)
    core.result("a", a.tag, OK, b"x", 1, "", 1.0)
    core.cancellable([a.tag])  # forgets it in the late table
    assert core.result("a", "t.0", OK, b"x", 1, "", 2.0).code.value == "settled"
    for tag in ("t.1", "t.-1", "t.zz", "t", "u.0", "t.0.0"):
        assert core.result("a", tag, OK, b"x", 1, "", 2.0).code.value == "unknown_tag", tag


def test_a_task_whose_jobs_raise_stops_drawing_and_says_why():
    def gen():
        yield Job(("0",))
        raise RuntimeError("broken task")

    core = Core(gen(), Policy(backups=0), "t")
    assert len(give(core, "a", 5, 0.0)) == 1
    assert core.source_error == "RuntimeError: broken task"
    assert give(core, "b", 5, 0.0) == [] and core.drawn == 1


def test_alive_with_holding_releases_the_rest_and_resume_renews_leases():
    core = make(3, lease_s=20.0, deadline_s=1e6)
    a = give(core, "a", 3, 0.0)
    core.take_records()
    assert core.alive("a", 5.0, holding=[a[0].tag]) == []
    released = [r for r in core.take_records() if isinstance(r, Returned)]
    assert [r.tag for r in released] == [a[1].tag, a[2].tag]
    assert all((r.status, r.output, r.fuel) == ("abandoned", b"", 0) for r in released)
    assert core.jobbers["a"].held == 1 and core.jobbers["a"].errors == 0
    assert core.alive("a", 6.0) == [] and core.take_records() == []
    core.resume(100.0)
    core.tick(119.0)
    assert not core.jobbers["a"].gone
    core.tick(120.5)
    assert core.jobbers["a"].gone
    idle = make(1)
    give(idle, "b", 0, 0.0)
    idle.resume(50.0)  # holds nothing: no lease to renew
    assert idle.jobbers["b"].last_seen == 0.0


def test_backups_go_to_the_oldest_jobs_and_stop_at_their_cap_for_a_quorum():
    core = make(3, redundancy=2, quorum=2, backups=1)
    give(core, "a", 3, 0.0)
    give(core, "b", 3, 5.0)  # every job has its two replicas live
    assert [x.job_id for x in give(core, "c", 3, 11.0)] == [0, 1, 2]  # one backup each
    assert give(core, "d", 3, 12.0) == []  # quorum 2 + 1 backup live: the cap
    assert core.replicas_out == 9
    two = make(2, redundancy=1, backups=2)
    give(two, "a", 1, 0.0)  # job 0, deadline 100
    give(two, "b", 1, 5.0)  # job 1, deadline 105
    assert [x.job_id for x in give(two, "c", 1, 6.0)] == [0]  # out longest first
    assert [x.job_id for x in give(two, "d", 2, 6.0)] == [0, 1]
    assert [x.job_id for x in give(two, "e", 2, 6.0)] == [1]  # job 0 has three live
    assert give(two, "f", 2, 6.0) == []


def test_records_and_outcomes_are_frozen_and_every_state_is_slotted():
    import dataclasses

    from dealer import _core

    core = make(1)
    [a] = give(core, "a", 1, 0.0)
    job = core._jobs[0]
    frozen = [
        *core.take_records(),  # Drawn, Sent
        Returned("t.0", "ok", b"", 0, ""),
        Overdue("t.0"),
        Gone("a"),
        _core.Denied("a", "why"),
        a,
        Accepted(0, Job(("0",)), b""),
        Failed(0, Job(("0",)), ()),
        _core.Rejected(_core.ErrorCode.SETTLED, "x"),
        Policy(),
        _core._Tally.of(job),
    ]
    kinds = {type(x).__name__ for x in frozen}
    assert {"Drawn", "Sent", "Returned", "Overdue", "Gone", "Denied"} <= kinds
    for x in frozen:
        name = dataclasses.fields(x)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(x, name, getattr(x, name))
    for x in (*frozen, core.jobbers["a"], core.machines["a"], job, job.replicas[0]):
        assert not hasattr(x, "__dict__"), type(x).__name__


def test_fresh_records_start_at_zero_and_a_healthy_task_has_no_source_error():
    from dealer._core import JobberRecord

    fresh = JobberRecord()
    assert (fresh.allowance, fresh.held, fresh.last_seen) == (0, 0, 0.0)
    assert (fresh.valid, fresh.invalid, fresh.errors, fresh.credit) == (0, 0, 0, 0)
    assert (fresh.machine, fresh.gone) == ("", False)
    core = make(3)
    assert core.source_error == "" and core.late == 0 and core.disputed == 0
    give(core, "a", 1, 0.0)
    assert not core.finished() and core.drawn == 1  # a query: it draws nothing more
    assert (core.accepted, core.failed, core.in_flight, core.replicas_out) == (0, 0, 1, 1)


def test_small_positive_deadlines_and_leases_are_fine():
    Policy(deadline_s=0.5, lease_s=0.5)
    with pytest.raises(ValueError):
        Policy(lease_s=-1.0)


def test_waiting_says_at_most_ten_things():
    core = make(12, lease_s=20.0, deadline_s=1e6)
    for i in range(12):
        give(core, f"j{i:02}", 1, 0.0)
    lines = core.waiting(15.0)
    assert len(lines) == 10
    assert lines[0] == "1 job out to j00, silent for 15 s"
    assert lines[-1].startswith("1 job out to j09")


def test_backups_fill_only_what_is_left_of_want():
    core = make(3, backups=2)
    give(core, "a", 2, 0.0)  # jobs 0 and 1
    got = give(core, "b", 2, 1.0)  # job 2 drawn, then one backup: two in all
    assert [x.job_id for x in got] == [2, 0]


def test_backups_count_the_agreeing_machines_and_stop_at_max_replicas():
    core = make(1, redundancy=2, quorum=2, backups=1)
    a, _ = give(core, "a", 1, 0.0)[0], give(core, "b", 1, 0.0)
    core.result("a", a.tag, OK, b"x", 1, "", 1.0)  # one agrees; b is live
    assert [x.job_id for x in give(core, "c", 1, 2.0)] == [0]  # a backup for the second vote
    assert give(core, "d", 1, 2.0) == []  # b and c live: one more vote needs no third
    capped = make(1, max_replicas=2, backups=2)
    give(capped, "a", 1, 0.0)
    assert len(give(capped, "b", 1, 1.0)) == 1  # the second of max_replicas
    assert give(capped, "c", 1, 2.0) == []


def test_lost_replicas_are_released_with_nothing_and_the_memory_bound_is_inclusive():
    core = make(2, deadline_s=1e6, memory_mb=512)
    a = core.bored("a", 2, 512, 0.0)  # exactly what the jobs need: enough
    assert len(a) == 2
    core.take_records()
    core.bored("a", 0, 512, 1.0, holding=[a[1].tag])
    [lost] = core.take_records()
    assert (lost.tag, lost.status, lost.output, lost.fuel, lost.detail) == (
        a[0].tag,
        "abandoned",
        b"",
        0,
        "lost: the jobber no longer holds it",
    )
    assert core.bored("b", 1, 511, 2.0) == []


def test_a_status_may_come_as_its_wire_string():
    core = make(1, max_errors=9)
    [a] = give(core, "a", 1, 0.0)
    assert core.result("a", a.tag, "crash", b"", 3, "boom", 1.0) is None  # type: ignore[arg-type]
    assert core.jobbers["a"].errors == 1


def test_a_jobber_denied_for_lost_votes_has_its_results_refused_and_counted():
    core = make(2, redundancy=3, quorum=2, deny_after=1, max_errors=9)
    liar = give(core, "liar", 2, 0.0)
    h1 = give(core, "h1", 2, 0.0)
    h2 = give(core, "h2", 2, 0.0)
    core.result("liar", liar[0].tag, OK, b"13", 1, "", 1.0)
    core.result("h1", h1[0].tag, OK, b"right", 1, "", 1.0)
    core.result("h2", h2[0].tag, OK, b"right", 1, "", 1.0)
    assert core.is_denied("liar") and core.jobbers["liar"].invalid == 1
    core.take_records()
    why = core.result("liar", liar[1].tag, OK, b"13", 1, "", 2.0)
    assert why is not None and why.code.value == "denied"
    [rec] = core.take_records()
    assert (rec.tag, rec.status, rec.output, rec.fuel) == (liar[1].tag, "denied", b"", 0)
    assert core.jobbers["liar"].errors == 1
    assert give(core, "liar", 2, 3.0) == []


def test_tags_are_numbered_in_hex():
    core = make(17, deadline_s=1e6)
    got = give(core, "a", 17, 0.0)
    assert [x.tag for x in got][-2:] == ["t.f", "t.10"]
    for x in got:
        core.result("a", x.tag, OK, b"o", 1, "", 1.0)
    assert core.result("a", "t.10", OK, b"o", 1, "", 2.0).code.value == "settled"
    assert core.result("a", "t.11", OK, b"o", 1, "", 2.0).code.value == "unknown_tag"
    assert core.result("a", "t.g", OK, b"o", 1, "", 2.0).code.value == "unknown_tag"


def test_each_replica_keeps_why_it_ended():
    core = make(3, lease_s=20.0, max_errors=9)
    a = give(core, "a", 1, 0.0)[0]
    b = give(core, "b", 1, 0.0)[0]
    c = give(core, "c", 1, 0.0)[0]
    core.result("a", a.tag, Status.ABANDONED, b"", 0, "shutting down", 1.0)
    core.result("b", b.tag, Status.CRASH, b"", 0, "", 1.0)
    core.alive("a", 15.0)
    core.alive("b", 15.0)
    core.tick(21.0)  # c silent past its lease
    details = {r.tag: r.detail for j in core._jobs.values() for r in j.replicas}
    assert details[a.tag] == "released: shutting down"
    assert details[b.tag] == "crash"
    assert details[c.tag] == "gone: the jobber fell silent"


def test_max_replicas_holds_even_when_more_are_needed():
    core = make(1, redundancy=2, quorum=2, max_errors=5, max_replicas=3)
    a, b = (give(core, n, 1, 0.0)[0] for n in "ab")
    core.result("a", a.tag, Status.TIME, b"", 0, "", 1.0)
    core.result("b", b.tag, Status.TIME, b"", 0, "", 1.0)
    [c] = give(core, "c", 1, 2.0)  # two are needed, one may go: the third and last
    assert give(core, "d", 1, 3.0) == []  # c is live: no fourth


def test_drawn_records_what_people_reading_the_journal_want():
    core = Core([Job(("a", "b"), b"input"), Job(("c",))], Policy(backups=0), "t")
    give(core, "x", 2, 0.0)
    drawn = [r for r in core.take_records() if isinstance(r, Drawn)]
    assert [(d.args, d.stdin_size) for d in drawn] == [(("a", "b"), 5), (("c",), 0)]
    assert drawn[0].stdin_sha256 == "c96c6d5be8d08a12" and drawn[1].stdin_sha256 is None
    assert Drawn(0, "d", ["a", "b"]).args == ("a", "b")  # as msgpack gives a journal back
    assert Drawn(0, "d").args is None


def test_replicas_say_which_won_the_vote():
    core = make(2, redundancy=3, quorum=2, max_errors=9)
    a, b, c = (give(core, n, 1, 0.0)[0] for n in "abc")
    reps = core.replicas(0)
    core.result("c", c.tag, Status.TIME, b"", 0, "", 0.5)
    assert [(r.won, r.fuel) for r in reps] == [(False, 0)] * 3
    core.result("a", a.tag, OK, b"x", 4, "", 1.0)
    [d] = give(core, "d", 1, 1.0)
    core.result("d", d.tag, OK, b"y", 4, "", 1.0)
    core.result("b", b.tag, OK, b"x", 4, "", 1.0)
    assert [r.won for r in reps] == [True, True, False, False]
    fails = [give(core, n, 1, 2.0)[0] for n in "abc"]
    failing = core.replicas(1)
    core.result("a", fails[0].tag, Status.CRASH, b"", 0, "", 3.0)
    for n, x in zip("bc", fails[1:], strict=True):
        core.result(n, x.tag, Status.TRAP, b"", 2, "", 3.0)
    assert [r.won for r in failing] == [False, True, True]


def test_evict_forgets_everything_of_a_name_that_only_failed():
    core = make(1, max_errors=9)
    [x] = give(core, "flaky", 1, 0.0)
    core.result("flaky", x.tag, Status.CRASH, b"", 0, "", 1.0)
    assert core.evict(301.5) == 1
    assert "flaky" not in core.jobbers and "flaky" not in core._open


def test_refill_draws_only_when_nothing_is_unsettled():
    core = make(3)
    give(core, "a", 1, 0.0)
    core.refill()
    assert core.drawn == 1  # job 0 is unsettled: nothing drawn
    empty = make(0)
    assert not empty.finished()  # nobody has looked yet
    empty.refill()
    assert empty.finished() and empty.drawn == 0
    fresh = make(2)
    fresh.refill()
    assert fresh.drawn == 1 and fresh.has_work()
    assert [x.job_id for x in give(fresh, "a", 1, 0.0)] == [0]  # the one drawn goes first


def test_settled_rows_wait_until_taken_and_no_longer():
    core = make(2)
    a, b = give(core, "a", 2, 0.0)
    core.result("a", a.tag, OK, b"x", 1, "", 1.0)
    assert core.peek_settled_rows() == [(0, job_digest(Job(("0",))), "accepted", b"x")]
    core.take_settled()
    assert core.peek_settled_rows() == []
    core.result("a", b.tag, OK, b"y", 1, "", 2.0)
    assert core.peek_settled_rows() == [(1, job_digest(Job(("1",))), "accepted", b"y")]


TOO_LONG = Job(("x" * 4097,))  # an argument over the wire's cap: it can never be sent


def test_an_unsendable_job_fails_as_it_is_drawn_live_and_replayed():
    core = Core([Job(("0",)), TOO_LONG, Job(("2",))], Policy(backups=0), "t")
    got = give(core, "a", 5, 0.0)
    assert [x.job_id for x in got] == [0, 2]
    why = (
        f"job 1 (args {'x' * 200}) can never be sent: argument 0 of 4,097 characters, over "
        "the wire's cap of 4,096; see 'Limits of one job' in docs/writing-tasks.md"
    )
    failed = Failed(1, TOO_LONG, (why,))
    assert core.take_settled() == [failed]
    assert (core.failed, core.accepted, core.in_flight, core.drawn) == (1, 0, 2, 3)
    records = core.take_records()
    assert [r.job_id for r in records if isinstance(r, Sent)] == [0, 2]
    for x in got:
        core.result("a", x.tag, OK, b"o", 1, "", 1.0)
    core.refill()
    assert core.finished() and (core.failed, core.accepted) == (1, 2)
    fresh = Core([Job(("0",)), TOO_LONG, Job(("2",))], Policy(backups=0), "t")
    for rec in records:
        fresh.apply(rec)
    assert fresh.take_settled() == [failed]  # failed again as it is drawn, not sent
    assert (fresh.failed, fresh.in_flight) == (1, 2)


def test_one_draw_goes_past_at_most_a_thousand_unsendable_jobs():
    core = Core([TOO_LONG] * 1001 + [Job(("ok",))], Policy(backups=0), "t")
    assert give(core, "a", 1, 0.0) == []  # a thousand failed, then the turn ends
    assert core.failed == core.drawn == 1000 and core.has_work()
    [x] = give(core, "a", 1, 1.0)  # the next draw goes on
    assert x.job_id == 1001 and core.failed == 1001
