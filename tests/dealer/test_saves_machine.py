"""Saved states in the dealer core, under arbitrary interleavings (hypothesis
RuleBasedStateMachine): jobs that save (Policy.checkpoint_bytes), honest jobbers on
machines of their own and a liar whose saved states are poisoned. A replica resumed
from a state inherits what made it: an honest jobber that resumes from a poisoned
state prints the liar's output. Replicas are sent, save states, return, give their
jobs back, go silent past their lease; the dealer restarts from its journal. After
every step:

- every drawn job is unsettled or settled once, and replay gives the same outcomes
  and the same segments (each replica's state resumed from, its lineage);
- a replica resumes only from a state of its own job, saved by another replica, and
  (but for a backup) one whose replica ended without a result;
- with quorum >= 2 no poisoned output is accepted: a resumed replica's vote counts
  once with those of the machines whose runs made its state.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dealer._core import Accepted, Core, Policy
from dealer._replicas import ReplicaState
from protocol import ErrorCode, Status
from tasks import Job

HONEST = ("h1", "h2", "h3", "h4")
LIAR = "liar"
JOBBERS = (*HONEST, LIAR)
MACHINE = {"h1": "m1", "h2": "m2", "h3": "m3", "h4": "m4", LIAR: "evil"}
POISON = b"13"
LIMIT = 1 << 20


class SavesMachine(RuleBasedStateMachine):
    @initialize(
        n_jobs=st.integers(1, 4),
        redundancy=st.integers(1, 3),
        quorum_minus=st.integers(0, 1),
        backups=st.integers(0, 1),
    )
    def setup(self, n_jobs, redundancy, quorum_minus, backups):
        self.n_jobs = n_jobs
        self.policy = Policy(
            redundancy=redundancy,
            quorum=max(1, redundancy - quorum_minus),
            max_errors=3,
            deadline_s=50.0,
            lease_s=20.0,
            backups=backups,
            checkpoint_bytes=LIMIT,
        )
        self.journal: list = []
        self.core = self._fresh()
        self.now = 0.0
        self.out: dict[str, tuple[str, int]] = {}  # tag -> (jobber, job id)
        self.poisoned: set[str] = set()  # state hashes a liar's run made
        self.settled: list = []
        self.seq = 0
        self.resumed: dict = {}  # tag -> the state it was sent to start from

    def _fresh(self) -> Core:
        core = Core((Job((str(i),)) for i in range(self.n_jobs)), self.policy, "d")
        for rec in self.journal:
            core.apply(rec)
        return core

    def _commit(self) -> None:
        self.journal.extend(self.core.take_records())
        self.settled.extend(self.core.take_settled())

    def _segments(self, core: Core) -> dict:
        return {
            tag: (r.resume and r.resume.hash, r.lineage, r.checkpoint and r.checkpoint.hash)
            for tag, r in core._replicas.items()
        }

    # --- rules -------------------------------------------------------------------

    @rule(who=st.sampled_from(JOBBERS), want=st.integers(1, 2))
    def bored(self, who, want):
        got = self.core.bored(who, want, 1000, self.now, machine=MACHINE[who], input_mb=4)
        for a in got:
            self.out[a.tag] = (who, a.job_id)
            self.resumed[a.tag] = a.resume
            if a.resume is not None:  # a state of its own job, saved by another replica
                r = self.core._replicas[a.resume.tag]
                assert r.job_id == a.job_id and a.resume.tag != a.tag
                assert a.resume.size <= 4 << 20
        self._commit()

    @precondition(lambda self: self.out)
    @rule(data=st.data(), fuel=st.integers(1, 10**6))
    def save(self, data, fuel):
        tag = data.draw(st.sampled_from(sorted(self.out)))
        who, _ = self.out[tag]
        resume = self.resumed[tag]
        poisoned = who == LIAR or (resume is not None and resume.hash in self.poisoned)
        self.seq += 1
        sha = hashlib.sha256(f"{tag}-{self.seq}".encode()).hexdigest()
        behind = resume.fuel if resume else 0
        why = self.core.checkpointed(who, tag, sha, 100, behind + fuel, 1.0, self.now)
        if why is None:
            if poisoned:
                self.poisoned.add(sha)
            assert self.core._replicas[tag].checkpoint.hash == sha
        else:
            assert why.code is ErrorCode.SETTLED, why
        self._commit()

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def save_refused(self, data):
        tag = data.draw(st.sampled_from(sorted(self.out)))
        who, _ = self.out[tag]
        other = next(j for j in JOBBERS if j != who)
        sha = "0" * 64
        assert self.core.checkpointed(other, tag, sha, 100, 1, 1.0, self.now) is not None
        too_big = self.core.checkpointed(who, tag, sha, LIMIT + 1, 1, 1.0, self.now)
        assert too_big is not None and too_big.code is ErrorCode.UNEXPECTED
        assert self.core.take_records() == []

    @precondition(lambda self: self.out)
    @rule(data=st.data(), kind=st.sampled_from(["ok", "ok", "abandon"]))
    def result(self, data, kind):
        tag = data.draw(st.sampled_from(sorted(self.out)))
        who, job_id = self.out.pop(tag)
        resume = self.resumed[tag]
        if kind == "abandon":
            status, output, fuel = Status.ABANDONED, b"", 0
        else:
            made = resume is not None and resume.hash in self.poisoned
            output = POISON if who == LIAR or made else f"out-{job_id}".encode()
            status, fuel = Status.OK, 5 + (resume.fuel if resume else 0)
        why = self.core.result(who, tag, status, output, fuel, "", self.now)
        assert why is None or why.code is ErrorCode.SETTLED, why
        self._commit()

    @rule(dt=st.sampled_from([1.0, 21.0, 51.0]))
    def clock(self, dt):
        self.now += dt
        self.core.tick(self.now)
        self._commit()
        for tag in [t for t, _ in self.out.items() if t not in self.core._replicas]:
            del self.out[tag]

    @rule()
    def restart(self):
        before = self._segments(self.core)
        self.core = self._fresh()
        assert self.core.take_settled() == self.settled
        assert self._segments(self.core) == before, "replay gives other segments"

    # --- invariants --------------------------------------------------------------

    @invariant()
    def nothing_lost_nothing_twice(self):
        ids = [s.job_id for s in self.settled]
        assert len(ids) == len(set(ids))
        assert len(ids) + self.core.in_flight == self.core.drawn <= self.n_jobs

    @invariant()
    def resumed_only_from_states_given_up_or_for_a_backup(self):
        for j in self.core._jobs.values():
            tags = {r.tag for r in j.replicas}
            for r in j.replicas:
                if r.resume is not None:
                    assert r.resume.tag in tags and r.resume.tag != r.tag
                    assert r.machine in r.lineage
            for ck in j.spare:  # spares come of replicas that ended, or fell silent
                assert self.core._replicas[ck.tag].state is not ReplicaState.OUT

    @invariant()
    def no_poison_accepted_with_a_quorum_of_two(self):
        if self.policy.quorum < 2:
            return
        for s in self.settled:
            if isinstance(s, Accepted):
                assert s.output != POISON, "a poisoned state won a vote"


SavesMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSaves = SavesMachine.TestCase
