"""The dealer core under arbitrary interleavings (hypothesis RuleBasedStateMachine).

Honest jobbers return the right output of each job, one dishonest jobber
returns a wrong one; results arrive good, bad, late, duplicated or forged; the
clock jumps; the dealer crashes (losing the step it had not journaled) and
restarts from its journal. After every step:

- every drawn job is either unsettled or settled exactly once (none lost,
  none accepted twice), and replay order equals delivery order;
- every accepted output was returned OK by at least `quorum` distinct machines
  of one platform (jobbers run on two, A and B, as the service names them; a
  cross-platform task names none, and then any machines count together);
  replicas of a job never vote across platforms, whether the platforms' outputs
  are the same (as for float code without NaNs) or differ (NaN bits);
- with quorum >= 2, the dishonest jobber never gets a wrong output accepted;
- a job with input files goes only to a jobber that takes them (the liar takes none);
- the core counts each unsettled job's replicas (agreeing machines, errors, live,
  sent, reach) as docs/dealer.md defines them, whatever it reads of the counts now;
- a jobber's errors are exactly its replicas whose failure was its machine's: overdue,
  time or crash at once; a deterministic failure (trap, fuel, exit with its code, with
  the output and fuel it returned) once its job settled and only if it disagreed with
  the quorum's platform (never one that a quorum of machines shared: the job's own bug).

At the end, honest jobbers alone (of both platforms) drive the batch to completion.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dealer._core import DETERMINISTIC, Accepted, Core, Failed, Overdue, Policy, Returned, Sent
from dealer._votes import _Tally
from protocol import ErrorCode, Status
from tasks import InputFile, Job

HONEST = ("h1", "h2", "h3", "h4", "h5")
LIAR = "liar"
SYBIL = "liar2"  # the liar's second identity, on the same machine
LIARS = (LIAR, SYBIL)
JOBBERS = (*HONEST, *LIARS)
MACHINE = {"h1": "m1", "h2": "m2", "h3": "m3", "h4": "m4", "h5": "m5", LIAR: "evil", SYBIL: "evil"}
ERRORS = (Status.TRAP, Status.FUEL, Status.EXIT, Status.CRASH, Status.TIME)
FILES = (InputFile.from_bytes(b"x" * 100), InputFile.from_bytes(b"y" * 200))
HOLDS = {"h1": (FILES[0].sha256,), "h2": (FILES[1].sha256,)}  # input files held


def tally(replicas, platform_of) -> tuple[int, int, int, int, int]:
    """(best, errors, live, sent, reach) of a job's replicas, counted as docs/dealer.md
    says: best is the most distinct machines of one platform agreeing on one (output,
    fuel); reach, the most one platform's agreeing machines and live replicas come to."""
    agree: dict[tuple, set[str]] = {}
    live_on: dict = {}
    states = [r.state.value for r in replicas]
    for r in replicas:
        on = platform_of(r.jobber)
        if r.state.value == "ok":
            agree.setdefault((on, r.output, r.fuel), set()).add(r.machine)
        elif r.state.value == "out":
            live_on[on] = live_on.get(on, 0) + 1
    best = max((len(m) for m in agree.values()), default=0)
    reach_on = dict(live_on)
    for (on, _, _), machines in agree.items():
        reach_on[on] = max(reach_on.get(on, 0), len(machines) + live_on.get(on, 0))
    errors = states.count("error") + states.count("overdue")
    sent = len(states) - states.count("released") - states.count("gone")
    return best, errors, states.count("out"), sent, max(reach_on.values(), default=0)


def before_room(before, me, host, policy) -> tuple[int, int]:
    """What the identity and its machine could still hold before the request."""
    mine = policy.quota if me is None else me.allowance - before[0]
    theirs = policy.quota if host is None else host.allowance - before[1]
    return mine, theirs


class CoreMachine(RuleBasedStateMachine):
    @initialize(
        n_jobs=st.integers(0, 8),
        redundancy=st.integers(1, 3),
        quorum_minus=st.integers(0, 2),
        max_errors=st.integers(0, 3),
        window=st.integers(1, 4),
        # the machines on platform B, the others on A: a platform of one machine (its jobs
        # move to the other), of two, or of the liar alone; always one with 3 honest ones,
        # so that any quorum can be reached on one platform
        on_b=st.sampled_from([("h5",), ("h4", "h5"), ("h2", "h3", "h4", "h5", LIAR), (LIAR,)]),
        outputs=st.sampled_from(["same", "same", "differ", "cross"]),
        with_files=st.booleans(),
    )
    def setup(
        self, n_jobs, redundancy, quorum_minus, max_errors, window, on_b, outputs, with_files
    ):
        self.n_jobs = n_jobs
        self.with_files = with_files
        self.platforms = {who: "B" if who in on_b else "A" for who in (*HONEST, LIAR)}
        self.platforms[SYBIL] = self.platforms[LIAR]  # one machine, one platform
        # a cross-platform task: the service names no platform, and jobbers canonicalize
        # NaNs, so every platform gives the same output. Otherwise the platforms' outputs
        # are the same (float code without NaNs) or differ (NaN bits)
        self.cross = outputs == "cross"
        self.differ = outputs == "differ"
        self.policy = Policy(
            redundancy=redundancy,
            quorum=max(1, redundancy - quorum_minus),
            max_errors=max_errors,
            deadline_s=50.0,
            window=window,
        )
        self.journal: list = []
        self.core = self._fresh()
        self.now = 0.0
        self.out: dict[str, tuple[str, int, float]] = {}  # tag -> (jobber, job_id, deadline)
        self.returned: dict[str, tuple[str, int, bytes, int, Status]] = {}
        self.settled: list[Accepted | Failed] = []  # in delivery order
        self.ok_by: dict[tuple[int, bytes, int], set[str]] = {}

    def platform(self, who: str) -> str | None:
        """The platform the service passes for `who`."""
        return None if self.cross else self.platforms[who]

    def right(self, job_id: int, who: str) -> tuple[bytes, int]:
        """What an honest jobber returns for `job_id` on its platform."""
        suffix = "-B" if self.differ and self.platforms[who] == "B" else ""
        return f"out-{job_id}{suffix}".encode(), 100 + job_id

    def job(self, i: int) -> Job:
        """Job i: with files, two jobs in three read one of two input files."""
        if not self.with_files or i % 3 == 2:
            return Job((str(i),))
        return Job((str(i),), files={"f": FILES[i % 3]})

    def ask(self, who: str, want: int, **kw):
        """`bored` as the service passes it: honest jobbers take input files and hold
        one each (h1 and h2) or none; the liar takes none."""
        return self.core.bored(
            who,
            want,
            1000,
            self.now,
            machine=MACHINE[who],
            platform=self.platform(who),
            input_mb=None if who in LIARS else 1,
            files=HOLDS.get(who, ()),
            **kw,
        )

    def _fresh(self) -> Core:
        core = Core((self.job(i) for i in range(self.n_jobs)), self.policy, "d")
        for rec in self.journal:
            core.apply(rec)
        return core

    def _commit(self) -> None:
        """What the server does at the end of a turn: journal, then deliver."""
        self.journal.extend(self.core.take_records())
        self.settled.extend(self.core.take_settled())

    # --- rules -------------------------------------------------------------

    @rule(who=st.sampled_from(JOBBERS), want=st.integers(0, 3))
    def bored(self, who, want):
        me, host = self.core.jobbers.get(who), self.core.machines.get(MACHINE[who])
        before = (me.held if me else 0, host.held if host else 0)
        tallies = {j: tally(job.replicas, self.platform) for j, job in self.core._jobs.items()}
        got = self.ask(who, want)
        assert len(got) <= want, "more replicas than asked for"
        for a in got:  # a job with files only to a jobber that takes them
            assert not a.job.files or who not in LIARS, f"job {a.job_id}'s files to {who}"
            assert a.files == {f"/input/{n}": f for n, f in a.job.files}
        assert len(got) <= max(0, min(want, *before_room(before, me, host, self.policy)))
        per_job = [a.job_id for a in got]
        assert len(per_job) == len(set(per_job)), "two replicas of one job in one reply"
        p = self.policy
        for a in got:  # each went to a job the rules say needs one, or is a tail backup
            if a.job_id not in tallies:
                continue  # drawn for this request
            best, errors, live, sent, reach = tallies[a.job_id]
            needs = (sent - errors < p.redundancy or reach < p.quorum) and (sent < p.max_replicas)
            backup = live > 0 and reach < p.quorum + p.backups and sent < p.max_replicas
            assert needs or backup, f"job {a.job_id} did not need a replica {tallies[a.job_id]}"
        me, host = self.core.jobbers[who], self.core.machines[MACHINE[who]]
        if got:  # handing out never takes an identity or a machine past its quota
            assert me.held <= max(before[0], me.allowance), "identity over its quota"
            assert host.held <= max(before[1], host.allowance), "machine over its quota"
        for a in got:
            assert a.tag not in self.out and a.tag not in self.returned, "tag reused"
            # an overdue replica may go back to its jobber (when no other is fresh to it),
            # never one it may still be running (out, or gone silent and back)
            held = {
                j
                for t, (w, j, d) in self.out.items()
                if w == who
                and (
                    d > self.now
                    or self.core._replicas.get(t)
                    and self.core._replicas[t].state.value == "gone"
                )
            }
            assert a.job_id not in held, "two live replicas of one job on one jobber"
            self.out[a.tag] = (who, a.job_id, a.deadline)
        self._commit()

    @rule(who=st.sampled_from(JOBBERS), data=st.data())
    def bored_after_losing_some(self, who, data):
        """The jobber restarted: it says which of its replicas it still holds."""
        mine = sorted(t for t, (w, _, _) in self.out.items() if w == who)
        kept = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        for tag in set(mine) - set(kept):
            del self.out[tag]  # the dealer releases them
        self.ask(who, 0, holding=kept)
        self._commit()
        for tag in set(mine) - set(kept):
            why = self.core.result(who, tag, Status.OK, b"late", 1, "", self.now)
            assert why is not None, "a released replica took a result"

    @precondition(lambda self: self.out)
    @rule(data=st.data(), kind=st.sampled_from(["ok", "error", "abandon"]))
    def result(self, data, kind):
        tag = data.draw(st.sampled_from(sorted(self.out)))
        who, job_id, _ = self.out[tag]
        if kind == "ok":
            output, fuel = self.right(job_id, who) if who not in LIARS else (b"13", 1)
            status = Status.OK
        elif kind == "error":  # failures agree, or not (fuel, exit code): a machine may be broken
            output, fuel = b"", data.draw(st.sampled_from([0, 0, 1]))
            status = data.draw(st.sampled_from(ERRORS))
        else:
            output, fuel, status = b"", 0, Status.ABANDONED
        detail = data.draw(st.sampled_from(["exit code 3", "exit code 4"]))
        self._return(tag, status, output, fuel, detail if status is Status.EXIT else "x")

    def _return(self, tag: str, status: Status, output: bytes, fuel: int, detail="x") -> None:
        who, job_id, _ = self.out.pop(tag)
        why = self.core.result(who, tag, status, output, fuel, detail, self.now)
        if why is None:
            self.returned[tag] = (who, job_id, output, fuel, status)
            if status is Status.OK:
                self.ok_by.setdefault((job_id, output, fuel), set()).add(who)
        else:
            assert why.code is ErrorCode.SETTLED, why
        self._commit()

    @rule(who=st.sampled_from(HONEST), want=st.integers(1, 3))
    def prompt(self, who, want):
        """An honest jobber that runs what it gets at once (so that replicas of one job
        from two platforms are often back together, where a vote across them would show)."""
        before = set(self.out)
        self.bored(who, want)
        for tag in [t for t in self.out if t not in before]:
            self._return(tag, Status.OK, *self.right(self.out[tag][1], who))

    @precondition(lambda self: self.out or self.returned)
    @rule(data=st.data(), forger=st.sampled_from(JOBBERS))
    def forged_result(self, data, forger):
        tag = data.draw(st.sampled_from(sorted({**self.out, **self.returned})))
        owner = (self.out.get(tag) or self.returned[tag])[0]
        if forger == owner:
            return
        before = self._snapshot()
        why = self.core.result(forger, tag, Status.OK, b"forged", 1, "", self.now)
        assert why is not None and why.code in (ErrorCode.UNKNOWN_TAG, ErrorCode.SETTLED)
        assert self.core.take_records() == [] and self._snapshot() == before

    @precondition(lambda self: self.returned)
    @rule(data=st.data())
    def duplicate_result(self, data):
        tag = data.draw(st.sampled_from(sorted(self.returned)))
        who, _, output, fuel, status = self.returned[tag]
        before = self._snapshot()
        why = self.core.result(who, tag, status, output, fuel, "", self.now)
        assert why is not None and why.code in (ErrorCode.DUPLICATE, ErrorCode.SETTLED)
        assert self.core.take_records() == [] and self._snapshot() == before

    @rule(tag=st.sampled_from(["", "d", "d.", "d.zz", "d.ffffff", "x.0", "d.-1"]))
    def garbage_tag(self, tag):
        why = self.core.result("h1", tag, Status.OK, b"", 0, "", self.now)
        assert why is not None and why.code is ErrorCode.UNKNOWN_TAG
        assert self.core.take_records() == []

    @rule(who=st.sampled_from(JOBBERS), tell=st.booleans())
    def alive(self, who, tell):
        """A heartbeat, with or without what the jobber holds (nothing lost here)."""
        mine = sorted(t for t, (w, _, _) in self.out.items() if w == who)
        cancel = self.core.alive(who, self.now, holding=mine if tell else None)
        for tag in cancel:  # only replicas of settled jobs are cancelled
            assert self.out[tag][1] not in self.core._jobs
        assert self.core.take_records() == []  # it held everything it was given

    @rule(dt=st.sampled_from([0.0, 1.0, 19.0, 21.0, 49.0, 50.0, 51.0, 500.0]))
    def clock(self, dt):
        self.now += dt
        self.core.tick(self.now)
        self._commit()

    @rule()
    def restart(self):
        self.core = self._fresh()
        replayed = self.core.take_settled()
        assert replayed == self.settled, "replay must deliver the same outcomes in order"

    @rule(who=st.sampled_from(JOBBERS), want=st.integers(1, 3))
    def crash_before_journal(self, who, want):
        """The dealer dies after deciding but before its records were durable: the
        jobber never got the reply, so the step never happened."""
        self.ask(who, want)
        self.core = self._fresh()
        self.core.take_settled()

    # --- invariants --------------------------------------------------------

    @invariant()
    def replicas_per_job_within_the_rules(self):
        p = self.policy
        for j, job in self.core._jobs.items():
            best, errors, live, sent, _ = tally(job.replicas, self.platform)
            for on in {self.platform(r.jobber) for r in job.replicas}:
                mine = [r for r in job.replicas if self.platform(r.jobber) == on]
                n = sum(r.state.value == "out" for r in mine)
                assert n <= p.redundancy + p.backups, f"job {j}: {n} live replicas on {on}"
            assert all(r.platform == self.platform(r.jobber) for r in job.replicas)
            assert sent <= p.max_replicas, f"job {j}: {sent} replicas sent"
            assert errors <= p.max_errors, f"job {j}: {errors} errors and not failed"
            assert best < p.quorum, f"job {j}: a quorum and not accepted"

    @invariant()
    def the_core_counts_replicas_as_the_docs_say(self):
        """Its decisions read some counts only as truth values (`live` as `live == 0`),
        or where another term outweighs them (`reach` with nothing agreeing or live): the
        counts themselves are stated here, so a change that keeps today's decisions but
        miscounts is seen."""
        for j, job in self.core._jobs.items():
            t = _Tally.of(job)
            counted = (t.best, t.errors, t.live, t.sent, t.reach)
            assert counted == tally(job.replicas, self.platform), f"job {j}'s tally"

    @invariant()
    def errors_counted_once_and_only_on_the_machines_at_fault(self):
        """A jobber's `errors` is its replicas that went overdue or came back with time or
        crash (each once: an overdue one that then errors too, once), and those that came
        back with a deterministic failure, once their job settled, if the failure was
        compared and disagreed: on the platform of the quorum that settled the job and
        not the failure a quorum agreed on, or the job failed with no quorum at all. A
        failure a quorum of machines shared is the job's own (`Failed.own`); a late
        failure (its replica went overdue) votes in that quorum, as a late output does."""
        p = self.policy
        owner, counted, overdue = {}, set(), set()
        failing: dict[str, tuple] = {}  # tag -> (job, platform, machine, failure)
        ok: dict[int, list] = {}  # job -> (platform, machine, (output, fuel))
        for rec in self.journal + self.core._records:
            if isinstance(rec, Sent):
                owner[rec.tag] = (rec.jobber, rec.job_id)
            elif isinstance(rec, Overdue):
                counted.add(rec.tag)
                overdue.add(rec.tag)
            elif isinstance(rec, Returned):
                who, job = owner[rec.tag]
                where = (self.platform(who), MACHINE[who])
                if rec.status == "ok":
                    ok.setdefault(job, []).append((*where, (rec.output, rec.fuel)))
                elif rec.status in DETERMINISTIC:  # late or not, it votes on the failure
                    code = rec.detail if rec.status == "exit" else ""
                    failing[rec.tag] = (job, *where, (rec.status, code, rec.output, rec.fuel))
                elif rec.status != "abandoned":
                    counted.add(rec.tag)
        outcome = {s.job_id: s for s in self.settled}

        def quorum(votes) -> tuple | None:
            """(platform, key) that `quorum` distinct machines of one platform agree on."""
            groups: dict[tuple, set[str]] = {}
            for on, machine, key in votes:
                groups.setdefault((on, key), set()).add(machine)
            won = [k for k, ms in groups.items() if len(ms) >= p.quorum]
            assert len(won) <= 1, f"two quorums {won}"
            return won[0] if won else None

        for tag, (job, on, _, failure) in failing.items():
            s = outcome.get(job)
            if s is None:
                continue  # not judged yet
            if isinstance(s, Accepted):
                settled_by = quorum(ok.get(job, []))
                assert settled_by is not None and settled_by[1][0] == s.output
            else:
                settled_by = quorum(f[1:] for f in failing.values() if f[0] == job)
                assert s.own == (settled_by is not None), f"job {job}: own is {s.own}"
            if tag in overdue:
                continue  # counted once already, when it went overdue
            if settled_by is None:
                counted.add(tag)  # failed with no quorum: every failure is the machine's
            elif on == settled_by[0] and failure != settled_by[1]:
                counted.add(tag)  # compared, and it disagreed
        expected: dict[str, int] = {}
        for tag in counted:
            expected[owner[tag][0]] = expected.get(owner[tag][0], 0) + 1
        for who in JOBBERS:
            rec = self.core.jobbers.get(who)
            assert (rec.errors if rec else 0) == expected.get(who, 0), f"{who}'s errors"

    def _snapshot(self):
        c = self.core
        return (c.accepted, c.failed, c.in_flight, c.drawn, c.replicas_out, len(self.settled))

    @invariant()
    def nothing_lost_nothing_twice(self):
        ids = [s.job_id for s in self.settled]
        assert len(ids) == len(set(ids)), "a job settled twice"
        assert len(ids) + self.core.in_flight == self.core.drawn
        assert self.core.accepted + self.core.failed == len(ids)
        assert self.core.drawn <= self.n_jobs

    @invariant()
    def quotas_count_what_is_out(self):
        held: dict[str, int] = {}
        for tag, (who, _, _) in self.out.items():
            r = self.core._replicas.get(tag)
            if r is not None and r.state.value == "out":
                held[who] = held.get(who, 0) + 1
        for who in JOBBERS:
            rec = self.core.jobbers.get(who)
            assert (rec.held if rec else 0) == held.get(who, 0), f"{who}'s held count is off"
            assert rec is None or rec.allowance >= 1
        for m in set(MACHINE.values()):
            want = sum(n for who, n in held.items() if MACHINE[who] == m)
            rec = self.core.machines.get(m)
            assert (rec.held if rec else 0) == want, f"machine {m}'s held count is off"

    @invariant()
    def accepted_outputs_had_a_quorum(self):
        for s in self.settled:
            if isinstance(s, Accepted):
                agreeing: dict = {}  # platform -> machines that returned the output
                for (j, out, _), ws in self.ok_by.items():
                    if j == s.job_id and out == s.output:
                        for w in ws:
                            agreeing.setdefault(self.platform(w), set()).add(MACHINE[w])
                most = max(map(len, agreeing.values()), default=0)
                assert most >= self.policy.quorum, "a quorum of machines of one platform"
                if self.policy.quorum >= 2:
                    rights = {self.right(s.job_id, w)[0] for w in HONEST}
                    assert s.output in rights, "the liar won a vote"

    def teardown(self):
        if not hasattr(self, "core"):
            return
        # honest jobbers finish the batch; time moves on so overdue replicas free up
        for _ in range(200):
            if self.core.finished():
                break
            self.now += 60.0
            self.core.tick(self.now)
            for who in HONEST:
                for a in self.ask(who, 3):
                    out, fuel = self.right(a.job_id, who)
                    assert self.core.result(who, a.tag, Status.OK, out, fuel, "", self.now) is None
            self._commit()
        assert self.core.finished(), "the batch never finished with honest jobbers"
        self._commit()
        assert sorted(s.job_id for s in self.settled) == list(range(self.n_jobs))


CoreMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreMachine = CoreMachine.TestCase
