"""Failed jobs put back into their batch (dealer._retry): the core, its replay, and the
journal's reader. The batch command's --retry-failed end to end: tests/e2e/test_retry.py.

A small state machine drives one batch through results, failures, retries (with and
without a changed payload) and restarts from the journal. After every step: every drawn
job is unsettled or has exactly one outcome; an accepted output never changes and is
never retried; only failed jobs go back; the replay reaches the same state; and no vote
mixes replicas from before a payload change with those after it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dealer._core import Accepted, Core, CoreError, Failed, JournalMismatch, Policy, Retried
from dealer._history import History, jobs_text
from dealer._retry import redraw_from
from protocol import ErrorCode, Status
from tasks import Job

JOBS = [Job((str(i),)) for i in range(6)]


def make(jobs=JOBS, records=(), **policy) -> Core:
    jobs = list(jobs)
    core = Core(
        iter(jobs), Policy(**{"redundancy": 1, **policy}), "t", redraw=redraw_from(lambda: jobs)
    )
    for rec in records:
        core.apply(rec)
    return core


def run(core: Core, who: str, ok: bool, now: float = 0.0, want: int = 1) -> list[int]:
    """`who` asks for `want` jobs and returns each: its right output, or an exit 3."""
    done = []
    for a in core.bored(who, want, 1000, now, machine=who):
        if ok:
            core.result(who, a.tag, Status.OK, f"out-{a.job_id}".encode(), 5, "", now)
        else:
            core.result(who, a.tag, Status.EXIT, b"", 5, "exit code 3", now)
        done.append(a.job_id)
    return done


def settle_all(core: Core, ok_for=lambda i: True) -> dict[int, Accepted | Failed]:
    out: dict[int, Accepted | Failed] = {}
    for k in range(100):
        if core.finished():
            break
        for a in core.bored(f"w{k}", 3, 1000, float(k), machine=f"w{k}"):
            good = ok_for(a.job_id)
            status, output = (Status.OK, f"out-{a.job_id}".encode()) if good else (Status.EXIT, b"")
            core.result(f"w{k}", a.tag, status, output, 5, "exit code 3", float(k))
        core.refill()
        out.update({s.job_id: s for s in core.take_settled()})
    assert core.finished()
    return out


def test_a_failed_job_goes_back_and_its_new_output_is_accepted():
    core = make()
    first = settle_all(core, ok_for=lambda i: i % 2 == 0)
    assert sorted(i for i, s in first.items() if isinstance(s, Failed)) == [1, 3, 5]
    assert (core.accepted, core.failed, core.failed_ids()) == (3, 3, [1, 3, 5])

    core.take_records()
    assert core.retry([1, 5], now=10.0) == {}
    assert core.take_records() == [Retried((1, 5), False, None, 10.0)]
    assert (core.accepted, core.failed, core.in_flight, core.finished()) == (3, 1, 2, False)
    again = settle_all(core)
    assert sorted(again) == [1, 5], "only the retried jobs ran again"
    assert all(isinstance(s, Accepted) for s in again.values())
    assert (core.accepted, core.failed, core.failed_ids()) == (5, 1, [3])


def test_only_failed_jobs_can_be_retried():
    core = make(JOBS[:2])
    settle_all(core, ok_for=lambda i: i == 0)
    core.take_records()
    with pytest.raises(CoreError, match="job 0 cannot be retried: it is accepted"):
        core.retry([0, 1], now=1.0)
    assert core.take_records() == [] and core.failed_ids() == [1]


def test_a_retried_job_that_changed_in_the_task_is_refused():
    jobs = list(JOBS)
    core = Core(iter(jobs), Policy(redundancy=1), "t", redraw=redraw_from(lambda: jobs))
    settle_all(core, ok_for=lambda i: i != 2)
    jobs[2] = Job(("two",))
    with pytest.raises(JournalMismatch, match="job 2 of the task differs"):
        core.retry([2], now=1.0)


def test_the_replay_reaches_the_same_state_and_the_journal_reader_shows_the_tries():
    core = make()
    settle_all(core, ok_for=lambda i: i != 4)
    core.retry([4], now=10.0)
    settle_all(core)
    journal = core.take_records()
    again = make(records=journal)
    again.refill()
    outcomes = {s.job_id: s for s in again.take_settled()}
    assert (again.accepted, again.failed, again.finished()) == (6, 0, True)
    assert isinstance(outcomes[4], Accepted) and outcomes[4].output == b"out-4"

    h = History.of(Policy(redundancy=1), "t", journal)
    j = h.jobs[4]
    assert (j.state, j.output, j.retries, len(j.earlier)) == ("accepted", b"out-4", 1, 1)
    rows = h.replica_rows(j)
    assert [r["superseded"] for r in rows] == [True, False]
    assert [r["status"] for r in rows] == ["exit", "ok"]
    assert "job 4  accepted (retried 1x)" in jobs_text(h)
    assert "before the retry" in jobs_text(h)


def test_with_a_new_payload_the_unsettled_jobs_start_over_and_old_results_vote_no_more():
    core = make(JOBS[:3], redundancy=2, quorum=2, max_errors=3)
    # job 0 fails on two machines (its own bug); job 1 has one OK result of the old payload
    both = [(who, *core.bored(who, 1, 1000, 0.0, machine=who)) for who in ("a", "b")]
    for who, a in both:
        assert a.job_id == 0
        core.result(who, a.tag, Status.EXIT, b"", 5, "exit code 3", 0.0)
    (old,) = core.bored("a", 1, 1000, 0.0, machine="a")
    assert old.job_id == 1
    core.result("a", old.tag, Status.OK, b"old", 5, "", 0.0)
    got = core.bored("c", 2, 1000, 0.0, machine="c")  # job 1's second replica, still out
    (out,) = [a for a in got if a.job_id == 1]
    assert core.failed_ids() == [0]
    assert core.jobbers["c"].held == 2 and core.jobbers["a"].unchecked == 1

    core.retry([0], now=1.0, restart=True, changed="the payload changed")
    assert core.jobbers["c"].held == 0 and core.jobbers["a"].unchecked == 0, "room freed"
    assert core.replicas(1) == [] and core.replicas(0) == []
    # the old replica's result is a result for a settled replica now: refused, not voted
    late = core.result("c", out.tag, Status.OK, b"old", 5, "", 2.0)
    assert late is not None and late.code is ErrorCode.SETTLED
    assert core.cancellable([out.tag]) == [out.tag]
    # job 1 needs two results of the new payload: "a"'s old one is not among them
    outcomes = settle_all(core)
    assert outcomes[1].output == b"out-1" and outcomes[0].output == b"out-0"
    replay = make(JOBS[:3], records=core.take_records(), redundancy=2, quorum=2, max_errors=3)
    replay.refill()
    assert (replay.accepted, replay.failed, replay.finished()) == (3, 0, True)


# --- the state machine ---------------------------------------------------------------


class RetryMachine(RuleBasedStateMachine):
    """One batch of 4 jobs, redundancy 1 or 2; jobbers return the right output of the
    payload of the moment, or fail; the researcher retries; the dealer restarts."""

    @initialize(redundancy=st.integers(1, 2))
    def setup(self, redundancy):
        self.policy = Policy(redundancy=redundancy, quorum=redundancy, max_errors=1)
        self.jobs = [Job((str(i),)) for i in range(4)]
        self.version = 0  # the payload's
        self.journal: list = []
        self.core = self._fresh()
        self.now = 0.0
        self.outcome: dict[int, Accepted | Failed] = {}
        self.accepted_as: dict[int, bytes] = {}
        self.version_of: dict[str, int] = {}  # tag -> the payload it was sent under

    def _fresh(self) -> Core:
        core = Core(iter(self.jobs), self.policy, "t", redraw=redraw_from(lambda: iter(self.jobs)))
        for rec in self.journal:
            core.apply(rec)
        return core

    def _commit(self):
        self.journal += self.core.take_records()
        for s in self.core.take_settled():
            self.outcome[s.job_id] = s

    @rule(who=st.sampled_from(["a", "b", "c"]), ok=st.booleans(), want=st.integers(1, 3))
    def work(self, who, ok, want):
        self.now += 1.0
        for a in self.core.bored(who, want, 1000, self.now, machine=who):
            self.version_of[a.tag] = self.version
            if ok:
                out = f"v{self.version}-{a.job_id}".encode()
                self.core.result(who, a.tag, Status.OK, out, 5, "", self.now)
            else:
                self.core.result(who, a.tag, Status.TRAP, b"", 5, "", self.now)
        self.core.refill()
        self._commit()

    @rule(data=st.data(), new_payload=st.booleans())
    def retry(self, data, new_payload):
        failed = self.core.failed_ids()
        assert failed == sorted(i for i, s in self.outcome.items() if isinstance(s, Failed))
        ids = data.draw(st.lists(st.sampled_from(failed), unique=True)) if failed else []
        if new_payload:
            self.version += 1
        self.core.retry(ids, self.now, restart=new_payload)
        for i in ids:
            del self.outcome[i]
        self._commit()

    @rule()
    def restart(self):
        self.core = self._fresh()
        replayed = {s.job_id: s for s in self.core.take_settled()}
        # the latest outcome of each job, as the task would have been told
        assert {i: s for i, s in replayed.items() if i in self.outcome} == self.outcome
        assert set(replayed) >= set(self.outcome)

    @invariant()
    def every_job_unsettled_or_one_outcome(self):
        c = self.core
        assert c.accepted + c.failed + c.in_flight == c.drawn
        assert c.accepted == sum(isinstance(s, Accepted) for s in self.outcome.values())
        assert c.failed == len(c.failed_ids())
        assert not set(self.outcome) & set(c._jobs), "a job both settled and unsettled"

    @invariant()
    def accepted_outputs_never_change_and_are_of_one_payload(self):
        for i, s in self.outcome.items():
            if isinstance(s, Accepted):
                assert self.accepted_as.setdefault(i, s.output) == s.output
        for i in self.accepted_as:
            assert isinstance(self.outcome.get(i), Accepted), f"accepted job {i} went back"

    @invariant()
    def no_vote_mixes_payloads(self):
        for j in self.core._jobs.values():
            versions = {self.version_of[r.tag] for r in j.replicas}
            assert versions <= {self.version}, f"job {j.id}: replicas of payloads {versions}"


TestRetryMachine = RetryMachine.TestCase
TestRetryMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
