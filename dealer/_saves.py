"""Saved states: a long job's checkpoints, so that a replica whose jobber went away is
sent again from where it was, not from the start. A part of dealer._core.Core (the
`Saves` mixin), over the tables Core.__init__ makes.

A replica's jobber sends its job's latest saved state now and then (`save`,
docs/protocol.md); once every chunk is in, checked and on disk (dealer._checkpoints),
the service calls `checkpointed`, which records a Checkpointed: the replica's
latest state. When a replica ends without a result (given back, gone silent past
its lease, overdue), its latest state (or, if it sent none, the one it started
from) becomes a *spare* of its job; the next replica sent of that job, to a jobber
that fetches files and has room for the state beside the job's input files, starts
from the spare with the most fuel behind it (`Sent.resume`), and the state is no
longer spare. A replica that ends with a result leaves no spare: its job's other
replicas started from their own states or from the beginning.

A state is a hint, never trusted: the resumed replica's output is cross-checked as
any is. What makes a resumed replica's output differ from one run straight through
is the job's own doing (docs/writing-tasks.md, "Checkpoints"), and so is its fuel:
resuming costs what reading the state costs, so for jobs that save (`Policy.
checkpoint_bytes`), votes compare outputs alone (a replica's `fuel` is kept 0, what
it said it used is its credit, `used`).
"""

from __future__ import annotations

from dealer._records import Checkpointed, Sent
from dealer._replicas import _LATE, Checkpoint, CoreError, Rejected, ReplicaState, _Job, _Replica
from protocol import ErrorCode


class Saves:
    """The saved states' part of Core (a mixin: the state is the core's)."""

    def may_save(self, jobber: str, tag: str, size: int) -> Rejected | None:
        """Why `jobber` may not send a saved state of `size` bytes for replica `tag`
        (None: it may): only the jobber the replica went to, while it may still return,
        for a batch whose jobs save, within their limit."""
        limit = self.policy.checkpoint_bytes
        if not limit:
            return Rejected(ErrorCode.UNEXPECTED, "the jobs of this batch save no state")
        if size > limit:
            return Rejected(
                ErrorCode.UNEXPECTED,
                f"a saved state of {size} bytes is over the jobs' {limit} (limits.checkpoint_kb)",
            )
        r = self._replicas.get(tag)
        if r is None and self._issued_here(tag):
            return Rejected(ErrorCode.SETTLED, f"the job of {tag} is settled")
        if r is None or r.jobber != jobber:
            return Rejected(ErrorCode.UNKNOWN_TAG, f"no replica {tag} of yours is out")
        if r.state not in _LATE:
            return Rejected(ErrorCode.SETTLED, f"replica {tag} has returned")
        return None

    def checkpointed(
        self,
        jobber: str,
        tag: str,
        sha: str,
        size: int,
        fuel: int,
        time_s: float,
        now: float,
    ) -> Rejected | None:
        """Replica `tag`'s jobber sent its job's saved state `sha` (on disk now): it is the
        replica's latest. None if recorded, else why not."""
        why = self.may_save(jobber, tag, size)
        if why is not None:
            return why
        r = self._replicas[tag]
        limit = self.policy.fuel_limit
        if limit and fuel > limit:
            return Rejected(ErrorCode.IMPLAUSIBLE, f"fuel {fuel} is over the job's {limit}")
        behind = r.resume.fuel if r.resume is not None else 0
        if fuel < behind:
            return Rejected(
                ErrorCode.IMPLAUSIBLE, f"fuel {fuel} is less than the state it started from had"
            )
        self._record(Checkpointed(tag, sha, size, fuel, time_s, now))
        self._seen(jobber, r.machine, now)
        return None

    def _apply_checkpointed(self, rec: Checkpointed) -> None:
        r = self._replica(rec.tag)
        lineage = r.lineage or frozenset((r.machine,))
        r.checkpoint = Checkpoint(
            rec.tag, rec.hash, rec.size, rec.fuel, rec.time_s, rec.at, lineage
        )
        r.saves += 1

    def _spare(self, r: _Replica) -> None:
        """`r` ended without a result: its job keeps its latest state for the next replica."""
        ck = r.checkpoint or r.resume
        if ck is None:
            return
        src = self._replicas.get(ck.tag)
        if src is not None and src is not r and src.state is ReplicaState.OUT:
            return  # a backup's: the replica still running it spares it when it ends
        spare = self._jobs[r.job_id].spare
        if all(s.hash != ck.hash for s in spare):
            spare.append(ck)

    def _resume_of(self, j: _Job, allowance: int | None, backup: bool) -> Checkpoint | None:
        """The saved state a replica of `j` sent now starts from, for a jobber taking
        `allowance` bytes of input files (None: it fetches none): the one with the most
        fuel behind it that fits beside the job's files, among the spares and, for a
        backup (sent for speed, not for another vote), the latest states of replicas
        still out."""
        if allowance is None:
            return None
        states = list(j.spare)
        if backup:
            states += [r.checkpoint for r in j.replicas if r.state in _LATE and r.checkpoint]
        room = allowance - j.group[1]
        fits = [ck for ck in states if ck.size <= room]
        return max(fits, key=lambda ck: ck.fuel) if fits else None

    def _started(self, j: _Job, r: _Replica, rec: Sent) -> None:
        """Replica `r` of `j` was sent (`rec`): when, and the spare it starts from, which is
        no longer spare."""
        r.sent_at = rec.at
        if rec.resume is None:
            return
        ck = next((ck for ck in j.spare if ck.hash == rec.resume), None)
        if ck is not None:
            j.spare.remove(ck)
        else:  # a backup from the latest state of a replica still out
            ck = next(
                (
                    x.checkpoint
                    for x in j.replicas
                    if x.checkpoint and x.checkpoint.hash == rec.resume
                ),
                None,
            )
        if ck is None:
            raise CoreError(f"job {j.id}: a replica resumes from {rec.resume[:12]}, unknown to it")
        r.resume = ck
        r.lineage = ck.lineage | {r.machine}

    def long_jobs(self, now: float, limit: int = 100) -> list[dict]:
        """Replicas out of jobs that save, longest running first: how long each has run
        here, where it started from, and how old its latest saved state is (status)."""
        rows = []
        for j in self._jobs.values():
            for r in j.replicas:
                if r.state is not ReplicaState.OUT:
                    continue
                ck = r.checkpoint
                rows.append(
                    {
                        "job": j.id,
                        "tag": r.tag,
                        "jobber": r.jobber,
                        "run_s": None if r.sent_at is None else max(0.0, now - r.sent_at),
                        "resumed_fuel": r.resume.fuel if r.resume else None,
                        "saves": r.saves,
                        "saved_fuel": ck.fuel if ck else None,
                        "saved_s_ago": (
                            None if ck is None or ck.at is None else max(0.0, now - ck.at)
                        ),
                    }
                )
        rows.sort(key=lambda row: -(row["run_s"] or 0.0))
        return rows[:limit]

    def checkpoint_hashes(self) -> set[str]:
        """Every saved state an unsettled job may still start a replica from, or one is
        running from: what the checkpoint folder must keep (a spare is a replica's latest
        or the one it started from: its replica is among its job's)."""
        out: set[str] = set()
        for j in self._jobs.values():
            for r in j.replicas:
                for ck in (r.checkpoint, r.resume):
                    if ck is not None:
                        out.add(ck.hash)
        return out
