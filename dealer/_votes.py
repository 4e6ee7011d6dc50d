"""Votes: whether a job is accepted, failed or wants another replica, which machine may
run it, and the disputes when outputs disagree. A part of dealer._core.Core (the `Votes`
mixin), over the tables Core.__init__ makes; a job's replicas are counted by `_Tally`.

Every jobber is an *identity* (its CurveZMQ public key, as the server proved
it) on a *machine* (a group key the server derives from the connection's
source address under the --distinct policy: the host, its subnet, or the
identity itself). Votes count machines, not identities: one machine running
two identities has one vote.

A job needs more replicas while

    sent - errored < redundancy   or   best + live < quorum

where `best` is the number of distinct machines whose OK replicas agree on
one (output, fuel used), and `live` counts replicas still out. It is *accepted* when
`best >= quorum`: the outputs in the winning group are valid and earn their
fuel as credit, other OK outputs are invalid. It *fails* when more than
`max_errors` replicas errored or went overdue, or when `max_replicas` were
sent, none is live and no quorum was reached. An overdue replica counts as an
error but stays open: its late result still counts until the job is settled.
A replica the jobber gives back unstarted or unfinished (Status.ABANDONED, on
shutdown) is *released*: no fault of anyone's, it counts for nothing.

Replicas of one job go to distinct machines: a machine holding a live or OK
replica of a job never gets another. A machine whose replica of a job errored
gets it again only when no other active machine is fresh to it, so a batch on
one machine cannot stall on one transient failure.

Homogeneous redundancy (as BOINC's): every replica carries the *platform* of
the jobber it went to (its CPU architecture, OS, wasmtime version and engine
flags, as the service passes them; None for a jobber that did not say, and for
every jobber of a cross-platform task). Only replicas of one platform vote
together: agreeing machines, deterministic failures and live replicas are
counted per platform, and an OK output of another platform than the winners'
neither wins nor loses. So a job whose replicas run on one platform goes on
there: it is eligible for a machine of another platform only once none of its
replicas that may still vote (live, gone, OK, or a deterministic failure) is on
that machine's platform and no active machine of their platforms is fresh to
it (those machines left the pool: the job moves rather than stall).

Deterministic failures vote: the sandbox makes every status but time, crash
and abandoned the same on every machine, so when `quorum` machines agree on
such a status with the same exit code (for `exit`), output and fuel, the job fails
at once with that reason instead of being sent out `max_errors + 1` times. Such a
failure is the job's own bug, counted against none of the jobbers that ran it;
whose fault every other failure is, and when it is decided: dealer._blame.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Collection

from dealer._blame import PENDING, SAME_FAILURE, Failure, failure_of
from dealer._policy import Policy
from dealer._quota import Standing
from dealer._records import Returned
from dealer._replicas import (
    _ERRORED,
    _LATE,
    _STAYING,
    DETERMINISTIC,
    Accepted,
    Assignment,
    Failed,
    ReplicaState,
    _Job,
    _Replica,
)
from protocol import Status
from protocol._frozen import frozen

log = logging.getLogger(__name__)

MAX_DISPUTES = 100  # disagreements kept for status (the journal has them all)
MAX_LATE = 16384  # tags of settled jobs whose late results are still checked


@frozen
class _Tally:
    """A job's replicas, counted: what acceptance, failure and reissue are decided on.

    Votes are counted per platform (replicas of two platforms never agree), so a
    group's key starts with its platform."""

    best_key: tuple[bytes, int]  # the (output, fuel) most machines of one platform agree on
    best: int  # how many distinct machines agree on it
    best_platform: str | None  # the platform of those machines
    outputs: int  # distinct (platform, output, fuel) among OK replicas
    errors: int  # ERROR or OVERDUE
    live: int  # still OUT
    sent: int  # all but RELEASED and GONE
    fail_key: Failure  # the deterministic failure most machines agree on (dealer._blame)
    fail_best: int  # how many distinct machines (of one platform) agree on it
    fail_platform: str | None  # the platform of those machines
    # the most a platform can reach without another replica: its largest agreeing group
    # plus its live replicas (with one platform: best + live)
    reach: int

    @classmethod
    def of(cls, j: _Job) -> _Tally:
        # one pass, no Counter: this runs several times for every job (the hot path)
        voters: dict[tuple[str | None, bytes, int], set[str]] = {}
        failing: dict[tuple[str | None, str, str, bytes, int], set[str]] = {}
        live_on: dict[str | None, int] = {}
        errors = live = uncounted = 0
        resumed = False  # a replica that voted started from saved states (its lineage)
        for r in j.replicas:
            state = r.state
            if state is ReplicaState.OUT:
                live += 1
                live_on[r.platform] = live_on.get(r.platform, 0) + 1
            elif state is ReplicaState.OK:
                who = r.lineage or r.machine
                resumed = resumed or who is not r.machine
                key = (r.platform, r.output, r.fuel)
                group = voters.get(key)
                if group is None:
                    voters[key] = {who}
                else:
                    group.add(who)
            elif state is ReplicaState.ERROR:
                errors += 1
                if r.status in DETERMINISTIC:
                    key = (r.platform, *failure_of(r))
                    who = r.lineage or r.machine
                    resumed = resumed or who is not r.machine
                    failing.setdefault(key, set()).add(who)
            elif state is ReplicaState.OVERDUE:
                errors += 1
            else:  # RELEASED, GONE
                uncounted += 1
        count = _independent if resumed else len  # (machines alone: each one vote)
        if voters:
            top, best = _most(voters, (None, b"", 0), count)
            platform, key = top[0], top[1:]
            best_on: dict[str | None, int] = {}
            for (on, _, _), machines in voters.items():
                n = count(machines)
                if n > best_on.get(on, 0):
                    best_on[on] = n
            for on, n in live_on.items():
                best_on[on] = best_on.get(on, 0) + n
            reach = max(best_on.values())
        else:
            platform, key, best = None, (b"", 0), 0
            reach = max(live_on.values()) if live_on else 0
        if failing:
            top, fail_best = _most(failing, (None, "", "", b"", 0), count)
            fail_platform, fail_key = top[0], top[1:]
        else:
            fail_platform, fail_key, fail_best = None, ("", "", b"", 0), 0
        return cls(
            key,
            best,
            platform,
            len(voters),
            errors,
            live,
            len(j.replicas) - uncounted,
            fail_key,
            fail_best,
            fail_platform,
            reach,
        )


def _most(groups: dict, empty, count=None):
    """The key of the largest group, and its size (`count`: of a group's machines, by
    default `_independent`); the first reached wins a tie."""
    best_key, best = empty, 0
    for key, machines in groups.items():
        n = (count or _independent)(machines)
        if n > best:
            best_key, best = key, n
    return best_key, best


def _independent(machines: set) -> int:
    """How many independent votes a group of replicas has: each is its machine, or, for
    a replica resumed from saved states (dealer._saves), the machines whose runs made
    it; replicas that share a machine count once (a greedy count: never more)."""
    if all(type(m) is str for m in machines):
        return len(machines)
    used: set[str] = set()
    n = 0
    for m in sorted(machines, key=lambda m: 1 if type(m) is str else len(m)):
        group = {m} if type(m) is str else m
        if used.isdisjoint(group):
            used |= group
            n += 1
    return n


def _all_out(replicas: list[_Replica]) -> bool:
    """Whether every one of `replicas` is out, all on one platform."""
    platform = replicas[0].platform
    for r in replicas:  # noqa: SIM110 - a loop: no generator made on the hot path
        if r.state is not ReplicaState.OUT or r.platform != platform:
            return False
    return True


def _digest(key: tuple[bytes, int]) -> str:
    """A short name for an output in status and logs (its SHA-256, 16 hex digits)."""
    return hashlib.sha256(key[0]).hexdigest()[:16]


class Votes:
    """Core's vote counting and placement: what each job needs, and who may run it. It
    uses Standings' `_jobber`, `_machine`, `_present` and `_close`, Locality's `_fits`,
    `_want`, `_unwant` and `_drop_files`, Blame's `_judge`, and Core's `_send` and
    `_issued_here`."""

    policy: Policy
    machines: dict[str, Standing]
    disputes: deque[dict]
    disputed: int
    accepted: int
    failed: int
    failed_own: int
    _jobs: dict[int, _Job]
    _replicas: dict[str, _Replica]
    _wanting: dict[int, None]
    _platforms: dict[str | None, dict[str, None]]
    _late: OrderedDict[str, tuple[int, tuple[bytes, int] | None]]
    _settled: list[Accepted | Failed]
    _settled_digests: list[str]
    _failures: dict[int, tuple[str, bool]]  # failed job -> (digest, its own?)

    def _backups(
        self,
        jobber: str,
        machine: str,
        platform: str | None,
        want: int,
        now: float,
        allowance: int | None = None,
    ) -> list[Assignment]:
        """The tail of a batch: nothing left to draw and nothing wanting, so idle jobbers
        get an extra replica of the jobs out longest (MapReduce's backup tasks). The
        first quorum settles the job; the others' replicas are then cancelled. Only jobs
        whose input files fit `allowance` bytes (None: none) are considered."""
        p = self.policy
        oldest = sorted(
            (min(r.deadline for r in j.replicas if r.state is ReplicaState.OUT), j.id)
            for j in self._jobs.values()
            if any(r.state is ReplicaState.OUT for r in j.replicas)
        )
        out: list[Assignment] = []
        for _, job_id in oldest:
            if len(out) >= want:
                break
            j = self._jobs[job_id]
            if not self._fits(j.group, allowance):
                continue
            t = _Tally.of(j)
            if t.reach >= p.quorum + p.backups or t.sent >= p.max_replicas:
                continue
            if self._eligible(j, jobber, machine, platform, now):
                out.append(self._send(j, jobber, machine, platform, now, allowance, True))
        return out

    def cancellable(self, holding: Collection[str]) -> list[str]:
        """Tags among `holding` whose jobs are settled: running them is wasted work."""
        out = [t for t in holding if t not in self._replicas and self._issued_here(t)]
        for tag in out:
            self._late.pop(tag, None)  # its holder is told: nothing more to wait for
        return out

    def sent(self, tag: str) -> tuple[str, float | None] | None:
        """The jobber of the open replica `tag` and when it was sent (None: unknown); None
        if no such replica is open. A query, for the dashboard's figures."""
        r = self._replicas.get(tag)
        return None if r is None else (r.jobber, r.sent_at)

    @property
    def late(self) -> int:
        """Replicas that were out when their jobs settled and have not been heard of since."""
        return len(self._late)

    def _late_from(self, jobber: str, tag: str, status: Status, output: bytes, fuel: int) -> bool:
        """A result for a replica that was open when its job settled: True if it disagrees."""
        job_id, accepted = self._late.pop(tag)
        if self.policy.checkpoint_bytes:  # outputs alone vote (dealer._saves)
            fuel = 0
        if status is not Status.OK or accepted is None or (output, fuel) == accepted:
            return False
        self.disputed += 1
        self.disputes.append(
            {
                "job": job_id,
                "late": True,
                "groups": [
                    {"output": _digest(accepted), "fuel": accepted[1], "won": True},
                    {
                        "output": _digest((output, fuel)),
                        "fuel": fuel,
                        "won": False,
                        "jobbers": [jobber],
                    },
                ],
            }
        )
        log.warning(
            "job %d: a late result from %s disagrees with the accepted output", job_id, jobber
        )
        return True

    def _eligible(
        self, j: _Job, jobber: str, machine: str, platform: str | None, now: float
    ) -> bool:
        tried_and_failed = False
        here = False  # a replica that may still vote is on this platform
        elsewhere: set[str | None] | None = None  # ... on these others
        for r in j.replicas:
            if r.machine == machine or r.jobber == jobber:
                if r.state in (ReplicaState.OUT, ReplicaState.OK):
                    return False
                if r.state is ReplicaState.GONE and r.jobber == jobber:
                    return False  # back from silence: it may still be running that one
                tried_and_failed = True
            if r.state in _STAYING or (r.state is ReplicaState.ERROR and r.status in DETERMINISTIC):
                if r.platform == platform:
                    here = True
                elif elsewhere is None:
                    elsewhere = {r.platform}
                else:
                    elsewhere.add(r.platform)
        touched = None
        if elsewhere is not None and not here:
            # homogeneous redundancy: the job goes on on its replicas' platforms, unless
            # none of their active machines is fresh to it (then it moves, not stalls)
            touched = {r.machine for r in j.replicas}
            touched.add(machine)
            if self._fresh_on(elsewhere, touched, now):
                return False
        if not tried_and_failed:
            return True
        # Give it back to a machine that failed it only if no other active machine is fresh to it.
        if touched is None:
            touched = {r.machine for r in j.replicas}
            touched.add(machine)
        return not any(
            name not in touched and self._present(m, now) for name, m in self.machines.items()
        )

    def _fresh_on(self, platforms: set[str | None], touched: set[str], now: float) -> bool:
        """Whether a machine that ran replicas on one of `platforms` is present and has no
        replica of the job (`touched` names those that have)."""
        for platform in platforms:
            for name in self._platforms.get(platform, ()):
                if name not in touched:
                    m = self.machines.get(name)
                    if m is not None and self._present(m, now):
                        return True
        return False

    def _evaluate(self, j: _Job) -> None:
        p = self.policy
        reps = j.replicas
        if p.quorum == 1 and len(reps) == 1 and reps[0].state is ReplicaState.OK:
            self._accept_alone(j, reps[0])  # the common case at redundancy 1, cut short
            return
        t = _Tally.of(j)
        if t.best >= p.quorum:
            losers: dict[tuple[bytes, int], list[_Replica]] = {}
            for r in j.replicas:
                if r.state is ReplicaState.OK:
                    rec = self._jobber(r.jobber)
                    if r.platform != t.best_platform:  # not compared: it neither wins nor loses
                        r.detail = r.detail or (
                            f"not compared: platform {r.platform}, the quorum's {t.best_platform}"
                        )
                    elif (r.output, r.fuel) == t.best_key:
                        r.won = True
                        rec.valid += 1
                        rec.credit += r.used
                        rec.good()
                        self._machine(r.machine).good()
                    else:
                        rec.invalid += 1
                        rec.bad()
                        self._machine(r.machine).bad()
                        losers.setdefault((r.output, r.fuel), []).append(r)
            if losers:
                self._dispute(j, t, losers)
            self.accepted += 1
            self._settle(j, Accepted(j.id, j.job, t.best_key[0]), t.best_key, t.best_platform)
            return
        if t.fail_best >= p.quorum:  # the job's own bug: nobody's fault (dealer._blame)
            fuel = t.fail_key[-1]
            agreed = [
                r
                for r in j.replicas
                if r.state is ReplicaState.ERROR
                and r.platform == t.fail_platform
                and failure_of(r) == t.fail_key
            ]
            for r in agreed:
                r.won = True
            detail = agreed[0].detail
            self.failed += 1
            self.failed_own += 1
            where = f"{t.fail_best} machine{'s' if t.fail_best > 1 else ''}"
            text = f"{SAME_FAILURE} {where}: {detail} (fuel {fuel})"
            own = Failed(j.id, j.job, (text,), own=True)
            self._settle(j, own, None, t.fail_platform, t.fail_key)
            return
        if t.errors > p.max_errors:
            reasons = tuple(
                f"{r.tag} on {r.jobber}: {r.detail}" for r in j.replicas if r.state in _ERRORED
            )
            self.failed += 1
            self._settle(j, Failed(j.id, j.job, (f"more than {p.max_errors} errors", *reasons)))
            return
        if t.sent >= p.max_replicas and t.live == 0:
            self.failed += 1
            text = f"no {p.quorum} of {t.sent} replicas agreed ({t.outputs} distinct outputs)"
            self._settle(j, Failed(j.id, j.job, (text,)))
            return
        self._update_wanting(j, t)

    def _returned_alone(self, j: _Job, r: _Replica, rec: Returned) -> None:
        """`r`, the one replica of `j`, was out and came back OK (`rec`), at a quorum of
        one: what Core._apply_returned, _evaluate (_accept_alone) and _settle do with it,
        in one step. It leaves the replicas open and held; it holds no room as an
        unchecked result (counted on its return and off as its job settles: no change);
        it wins, and the job is accepted and settled."""
        me, host = self._jobber(r.jobber), self._machine(r.machine)
        me.held -= 1  # (_close)
        host.held -= 1
        tags = self._open.get(r.jobber)
        if tags is not None:
            tags.discard(r.tag)
        r.state = ReplicaState.OK  # (r.fire("returned_ok"), from OUT)
        r.status = rec.status
        r.output, r.used = rec.output, rec.fuel
        r.fuel = 0 if self.policy.checkpoint_bytes else rec.fuel
        r.won = True
        me.valid += 1
        me.credit += r.used
        me.good()
        host.good()
        self.accepted += 1
        del self._jobs[j.id]  # (_settle)
        self._unwant(j)
        if j.files:
            self._drop_files(j)
        del self._replicas[r.tag]
        self._settled.append(Accepted(j.id, j.job, r.output))
        self._settled_digests.append(j.digest)

    def _accept_alone(self, j: _Job, r: _Replica) -> None:
        """`_evaluate` of a job whose one replica is OK, at a quorum of one: accepted, as
        the tally would have it (that replica is the quorum, on its own platform)."""
        r.won = True
        rec = self._jobber(r.jobber)
        rec.valid += 1
        rec.credit += r.used
        rec.good()
        self._machine(r.machine).good()
        self.accepted += 1
        self._settle(j, Accepted(j.id, j.job, r.output), (r.output, r.fuel), r.platform)

    def _dispute(self, j: _Job, t: _Tally, losers: dict[tuple[bytes, int], list[_Replica]]) -> None:
        """Outputs disagreed and a quorum won: keep the groups for status and log it."""
        winners = [
            r
            for r in j.replicas
            if r.state is ReplicaState.OK
            and r.platform == t.best_platform
            and (r.output, r.fuel) == t.best_key
        ]
        groups = [(t.best_key, winners, True)] + [(k, rs, False) for k, rs in losers.items()]
        self.disputed += 1
        self.disputes.append(
            {
                "job": j.id,
                "late": False,
                "groups": [
                    {
                        "output": _digest(key),
                        "fuel": key[1],
                        "won": won,
                        "jobbers": sorted({r.jobber for r in rs}),
                        "machines": sorted({r.machine for r in rs}),
                    }
                    for key, rs, won in groups
                ],
            }
        )
        log.warning(
            "job %d: outputs disagreed; %d machines agreed, %s lost the vote",
            j.id,
            t.best,
            ", ".join(sorted({r.jobber for rs in losers.values() for r in rs})),
        )

    def _needed(self, t: _Tally) -> int:
        """How many more replicas a job with tally `t` wants now."""
        p = self.policy
        need = max(p.redundancy - (t.sent - t.errors), p.quorum - t.reach, 0)
        return min(need, p.max_replicas - t.sent)

    def _update_wanting(self, j: _Job, t: _Tally | None = None) -> None:
        """`j` is unsettled; `t` is its tally, or None when it was just drawn or a
        replica of it just sent."""
        p = self.policy
        reps = j.replicas
        if t is None and not reps:  # just drawn: what an empty tally needs
            wanted = min(max(p.redundancy, p.quorum), p.max_replicas) > 0
        elif t is None and _all_out(reps):
            # the common case, cut short: a replica just sent, none back, all on one
            # platform (so sent - errors = len and reach = live = len, and quorum <=
            # redundancy <= max_replicas): more needed while fewer than the redundancy
            wanted = len(reps) < p.redundancy
        else:
            wanted = self._needed(t or _Tally.of(j)) > 0
        if wanted:
            self._want(j)
        else:
            self._unwant(j)

    def _settle(
        self,
        j: _Job,
        outcome: Accepted | Failed,
        accepted: tuple[bytes, int] | None = None,
        platform: str | None = None,
        own: Failure | None = None,
    ) -> None:
        """`accepted`: the winning (output, fuel), which late results of `platform` (the
        winners') are checked against; others' are not comparable. `own`: the failure
        machines of `platform` agreed on, the job's own. Deterministic failures are
        judged now (dealer._blame): `platform` is the quorum's when there is one."""
        del self._jobs[j.id]
        self._unwant(j)
        self._drop_files(j)
        quorum = accepted is not None or own is not None
        for r in j.replicas:
            self._replicas.pop(r.tag, None)
            if r.state is ReplicaState.OK:
                self._jobber(r.jobber).unchecked -= 1
                self._machine(r.machine).unchecked -= 1
            elif r.fault == PENDING:
                self._judge(r, quorum, platform, own)
            if r.state in _LATE:
                self._late[r.tag] = (j.id, accepted if r.platform == platform else None)
                if len(self._late) > MAX_LATE:
                    self._late.popitem(last=False)
                self._close(r)
        self._settled.append(outcome)
        self._settled_digests.append(j.digest)
        if isinstance(outcome, Failed):  # for a retry (dealer._retry)
            self._failures[j.id] = (j.digest, outcome.own)
