"""Standing: how far the dealer trusts each identity and each machine (its quota), whether
it is still there (its lease) and still welcome (denial). A part of dealer._core.Core
(the `Standings` mixin), over the tables Core.__init__ makes.

Quotas (as BOINC's per-host quotas): an identity, and separately its machine,
may hold at most `allowance` replicas out. Both start at `Policy.quota`, grow
by one for every valid result (in an accepted quorum) and halve for every
error, overdue replica, implausible result or lost vote, so a hoarder or a
stream of fresh names from one machine holds a few replicas at most, and a
good jobber earns its slots.

An identity denied (by `deny`, or automatically once it has lost `Policy.deny_after`
votes and more than it won) gets no work and has its results refused.

Liveness: every word from a jobber (any request) renews its lease. A jobber
holding replicas that is silent for `Policy.lease_s` is taken as gone (a Gone
record): its OUT replicas become GONE, which is neither live nor an error, so
they are sent to others at once; a late result from a GONE replica still
counts until the job is settled, like an overdue one. Deadlines remain, for
jobbers that are alive but too slow.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection
from dataclasses import dataclass

from dealer._policy import MAX_ALLOWANCE, Policy
from dealer._records import Denied, Gone, Overdue, Returned
from dealer._replicas import _TIMED, ReplicaState, _Job, _Replica
from protocol import Status

log = logging.getLogger(__name__)

# An identity or machine not heard from for this long that holds nothing and earned
# nothing is forgotten (evict; 5 minutes: several request rounds of a backing-off jobber).
ACTIVE_HORIZON_S = 300.0
NEVER = float("-inf")  # a machine that never asked for work it could take
PLATFORMS_LISTED = 8  # platform names status lists (names come from jobbers: bounded)
LOST = "lost: the jobber no longer holds it"


@dataclass(slots=True)
class Standing:
    """How far the dealer trusts one identity or one machine: what it may hold open."""

    allowance: int
    held: int = 0  # replicas OUT (sent, not yet returned nor overdue)
    last_seen: float = 0.0
    # OK replicas of jobs not yet settled: returned, not yet compared with anyone, so they
    # count against the allowance as held ones do (unchecked work earns no room)
    unchecked: int = 0
    # when this machine last asked for work it could take (want > 0, within its quota) or
    # returned a result: a job waits for a machine only while it is present (see _present)
    present: float = NEVER

    def good(self) -> None:
        if self.allowance < MAX_ALLOWANCE:
            self.allowance += 1

    def bad(self) -> None:
        self.allowance = max(1, self.allowance // 2)


@dataclass(slots=True)
class JobberRecord(Standing):
    """An identity: its standing, and what it did."""

    allowance: int = 0
    valid: int = 0  # outputs in an accepted quorum
    invalid: int = 0  # OK outputs that lost the vote
    errors: int = 0  # replicas that errored, went overdue or were implausible
    credit: int = 0  # fuel of valid outputs
    machine: str = ""  # the machine it last asked from
    gone: bool = False  # taken as gone (silent past its lease) and not heard from since


class Standings:
    """Core's identities and machines: their quotas, leases and presence, and denial (the
    live events `alive`, `deny` and `tick`, and their records). It uses Core's
    `_record`, `_replica` and `_jobs`, Votes' `_evaluate` and `cancellable`, Saves'
    `_spare` and Blame's `_charge`."""

    policy: Policy
    jobbers: dict[str, JobberRecord]
    machines: dict[str, Standing]
    denied: dict[str, str]  # identity -> why
    _open: dict[str, set[str]]  # jobber -> tags of its OUT/OVERDUE replicas
    _platforms: dict[str | None, dict[str, None]]
    _wanting: dict[int, None]
    _jobs: dict[int, _Job]
    _replicas: dict[str, _Replica]
    _deadlines: list[tuple[float, str]]

    def is_denied(self, jobber: str) -> bool:
        """Denied by hand, or by losing `deny_after` votes and more than it won."""
        if jobber in self.denied:
            return True
        rec = self.jobbers.get(jobber)
        limit = self.policy.deny_after
        return bool(limit and rec and rec.invalid >= limit and rec.invalid > rec.valid)

    def room(self, jobber: str, machine: str, unchecked: bool = True) -> int:
        """How many more replicas the identity `jobber` on `machine` may hold right now:
        with `unchecked`, counting its OK results not yet compared as held (room for new
        jobs); without, only what it holds (room for replicas other machines wait on)."""
        me = self.jobbers.get(jobber)
        host = self.machines.get(machine)
        mine = self.policy.quota if me is None else me.allowance - me.held
        theirs = self.policy.quota if host is None else host.allowance - host.held
        if unchecked:
            mine -= 0 if me is None else me.unchecked
            theirs -= 0 if host is None else host.unchecked
        return max(0, min(mine, theirs))

    def waiting(self, now: float) -> list[str]:
        """Why unsettled jobs wait, in words for people (status and the progress line)."""
        p = self.policy
        out: list[str] = []
        if self._wanting:
            active = [m for m, st in self.machines.items() if self._present(st, now)]
            n = len(self._wanting)
            # at redundancy 1 a job's one replica may go to any machine, none is "another"
            where = "a machine to run it" if p.redundancy == 1 else "a replica on another machine"
            out.append(
                f"{n} job{'s' if n != 1 else ''} need{'s' if n == 1 else ''} {where}; "
                f"{len(active)} machine{'s' if len(active) != 1 else ''} active"
            )
            if len(self._platforms) > 1:
                listed = sorted(str(k) for k in self._platforms)
                names = ", ".join(listed[:PLATFORMS_LISTED])
                if len(listed) > PLATFORMS_LISTED:
                    names += ", ..."
                out.append(
                    f"replicas of a job go to machines of one platform; "
                    f"{len(self._platforms)} platforms among them: {names}"
                )
        quiet = now - p.lease_s / 2
        for name, rec in self.jobbers.items():
            if rec.held and rec.last_seen < quiet:
                out.append(
                    f"{rec.held} job{'s' if rec.held != 1 else ''} out to {name[:12]}, "
                    f"silent for {now - rec.last_seen:.0f} s"
                )
            if len(out) >= 10:
                break
        return out

    def resume(self, now: float) -> None:
        """After a replay: every jobber holding work gets a fresh lease from `now`, and its
        machine counts as present from `now` (presence is not journaled: without this a
        restarted dealer would wait for no machine, and move jobs off their platform)."""
        for rec in self.jobbers.values():
            if rec.held:
                rec.last_seen = max(rec.last_seen, now)
        for m in self.machines.values():
            if m.held or m.unchecked:
                m.present = max(m.present, now)

    def evict(self, now: float, idle_s: float = ACTIVE_HORIZON_S) -> int:
        """Forget identities and machines idle for `idle_s` that hold nothing and earned nothing.

        Memory then grows with the jobbers that did work, not with every name
        that ever asked. Returns how many identities were forgotten.
        """
        horizon = now - idle_s
        gone = [
            name
            for name, rec in self.jobbers.items()
            if rec.last_seen < horizon
            and rec.held == 0
            and rec.unchecked == 0
            and not (rec.valid or rec.invalid or rec.credit)
            and name not in self.denied
        ]
        for name in gone:
            del self.jobbers[name]
            self._open.pop(name, None)
        idle = [
            m
            for m, s in self.machines.items()
            if s.last_seen < horizon and s.held == 0 and s.unchecked == 0
        ]
        for m in idle:
            del self.machines[m]
            for on in self._platforms.values():
                on.pop(m, None)
        for platform in [k for k, on in self._platforms.items() if not on]:
            del self._platforms[platform]  # no machine left on it: forgotten, not piled up
        return len(gone)

    def _jobber(self, jobber: str) -> JobberRecord:
        rec = self.jobbers.get(jobber)
        if rec is None:
            rec = self.jobbers[jobber] = JobberRecord(allowance=self.policy.quota)
        return rec

    def _machine(self, machine: str) -> Standing:
        m = self.machines.get(machine)
        if m is None:
            m = self.machines[machine] = Standing(self.policy.quota)
        return m

    def _seen(self, jobber: str, machine: str, now: float) -> JobberRecord:
        rec = self._jobber(jobber)
        if now > rec.last_seen:
            rec.last_seen = now
        rec.machine = machine
        rec.gone = False
        m = self._machine(machine)
        if now > m.last_seen:
            m.last_seen = now
        return rec

    def _present(self, m: Standing, now: float) -> bool:
        """Whether a job may wait for machine `m`: it asked for work it could take, or
        returned a result, within the lease. Asking for nothing (`want` 0), asking past
        its quota, or only saying it is alive does not count: so a machine, or two, can
        hold a job back only by holding its replicas, and no longer than a lease."""
        return m.present >= now - self.policy.lease_s

    def _unhold(self, r: _Replica) -> None:
        """Call before `r` leaves OUT: quotas count replicas still running, not overdue ones."""
        if r.state is ReplicaState.OUT:
            self._jobber(r.jobber).held -= 1
            self._machine(r.machine).held -= 1

    def _close(self, r: _Replica) -> None:
        """`r` is no longer open (returned, released or settled)."""
        self._unhold(r)
        tags = self._open.get(r.jobber)
        if tags is not None:
            tags.discard(r.tag)

    # --- its live events, and their records ---------------------------------

    def alive(
        self,
        jobber: str,
        now: float,
        holding: Collection[str] | None = None,
        machine: str | None = None,
    ) -> list[str]:
        """The jobber says it is alive (renewing its lease) and, maybe, what it holds.

        Returns the held tags it should drop: replicas of jobs already settled,
        which can no longer change anything. `machine`: where it speaks from (default:
        where it last asked, else its own). Being alive is not being present: no job
        waits for a machine that only says it is alive (see _present).
        """
        if machine is None:
            known = self.jobbers.get(jobber)
            machine = known.machine if known else jobber
        self._seen(jobber, machine, now)
        if holding is None:
            return []
        for tag in sorted(self._open.get(jobber, set()) - set(holding)):
            self._record(Returned(tag, Status.ABANDONED.value, b"", 0, LOST, now))
        return self.cancellable(holding)

    def deny(self, jobber: str, reason: str, now: float | None = None) -> None:
        """Ban an identity: no more work, results refused, its open replicas sent elsewhere."""
        if jobber in self.denied:
            return
        self._record(Denied(jobber, reason))
        for tag in sorted(self._open.get(jobber, set())):
            self._record(Returned(tag, Status.ABANDONED.value, b"", 0, f"denied: {reason}", now))

    def tick(self, now: float) -> None:
        """Take jobbers silent past their lease as gone; mark late replicas overdue."""
        horizon = now - self.policy.lease_s
        for name in [n for n, r in self.jobbers.items() if r.held and r.last_seen < horizon]:
            log.info(
                "jobber %s: silent for %.0f s, taken as gone",
                name,
                now - self.jobbers[name].last_seen,
            )
            self._record(Gone(name))
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, tag = heapq.heappop(self._deadlines)
            r = self._replicas.get(tag)
            if r is not None and r.state in _TIMED and r.deadline == deadline:
                self._record(Overdue(tag))

    def _apply_denied(self, rec: Denied) -> None:
        self.denied[rec.jobber] = rec.reason

    def _apply_overdue(self, rec: Overdue) -> None:
        r = self._replica(rec.tag)
        self._unhold(r)
        r.fire("deadline")
        r.detail = "overdue: no result by the deadline"
        self._spare(r)
        self._charge(r)  # the machine's fault (dealer._blame)
        self._evaluate(self._jobs[r.job_id])

    def _apply_gone(self, rec: Gone) -> None:
        me = self._jobber(rec.jobber)
        me.gone = True
        touched: dict[int, _Job] = {}
        for tag in sorted(self._open.get(rec.jobber, set())):
            r = self._replicas[tag]
            if r.state is ReplicaState.OUT:
                self._unhold(r)
                r.fire("silent")
                r.detail = "gone: the jobber fell silent"
                self._spare(r)
                touched[r.job_id] = self._jobs[r.job_id]
        for j in touched.values():
            self._evaluate(j)
