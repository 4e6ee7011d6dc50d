"""Retries: failed jobs put back into their batch. A part of dealer._core.Core (the
`Retries` mixin), over the tables Core.__init__ makes.

A researcher whose payload had a bug fixes it and reruns the batch with
`--retry-failed`: the jobs that failed are unsettled again and go out, every accepted
result is kept. The core remembers each failed job's digest and whether the failure
was the job's own (`_failures`: a few dozen bytes a failure, not the job), and draws
the jobs themselves again from the task when they are retried (`redraw`), checking
each against its digest: a task whose jobs changed is refused as on a replay.

A Retried record says which jobs went back, and whether the payload or the limits
changed with it (`restart`). Then every job unsettled at that moment starts over
too: its replicas under the old payload are forgotten (a late result of one is a
result for a settled job, refused as such, and its holder told to drop it), their
saved states with them, and their failures judged against nobody. So no vote ever
mixes outputs of two payloads: an accepted result was made by one payload alone
(the one of its time), and a retried job is settled by the new one.

A job that still cannot be sent (dealer._policy.unsendable: a payload grown past
the message cap) is not put back: `retry` leaves it failed and says why. Like every
state change, a retry is decided by applying its record, so a replay reaches the
same state; the jobs' earlier failures stay in the journal for `python -m dealer
jobs` to show.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from dealer._blame import PENDING
from dealer._policy import job_digest, unsendable
from dealer._records import Retried
from dealer._replicas import _LATE, CoreError, JournalMismatch, ReplicaState, _Job
from dealer._votes import MAX_LATE
from tasks import Job

# job ids -> those jobs, drawn again from the task (or rebuilt from a journal)
Redraw = Callable[[Collection[int]], Mapping[int, Job]]


def redraw_from(jobs: Callable[[], Iterable[Job]]) -> Redraw:
    """A `Redraw` over a task's `jobs()`: one pass of a fresh generator, stopped once
    it has yielded the last job wanted."""

    def redraw(ids: Collection[int]) -> dict[int, Job]:
        wanted, out = set(ids), {}
        if not wanted:
            return out
        last = max(wanted)
        for i, job in enumerate(jobs()):
            if i in wanted:
                out[i] = job
            if i >= last:
                break
        return out

    return redraw


class Retries:
    """Core's retries of failed jobs (a mixin: the state is the core's; it uses the
    core's drawing, Locality's file sets, Standings' quotas and Votes' wanting)."""

    _failures: dict[int, tuple[str, bool]]  # failed job -> (digest, its own failure?)
    _redraw: Redraw | None
    _pending_retry: dict[int, Job] | None  # retried live, about to be applied
    _jobs: dict[int, _Job]
    _next_job: int
    _verify_jobs: bool
    _shared_digest: str
    failed: int
    failed_own: int

    def failed_ids(self) -> list[int]:
        """The jobs that failed and were not retried since, in job order."""
        return sorted(self._failures)

    def retry(
        self,
        job_ids: Collection[int],
        now: float,
        restart: bool = False,
        changed: str | None = None,
    ) -> dict[int, tuple[Job, str]]:
        """Put the failed jobs `job_ids` back into the batch (recorded). `restart`: the
        payload or the limits changed (`changed`: how, for people): every unsettled job
        starts over too. Returns the jobs left failed, as they still cannot be sent, and
        why. CoreError if one of `job_ids` has not failed."""
        ids = sorted(set(job_ids))
        for i in ids:
            if i not in self._failures:
                state = "unsettled" if i in self._jobs else "accepted"
                raise CoreError(f"job {i} cannot be retried: it is {state}, not failed")
        jobs = self._redraw_checked(ids)
        left: dict[int, tuple[Job, str]] = {}
        for i in ids:
            files, why = self._files_of(jobs[i])
            why = why or unsendable(jobs[i], self._payload_bytes, files, self._argv)
            if why is not None:
                left[i] = (jobs.pop(i), f"it still cannot be sent: {why}")
        if not jobs and not restart:
            return left
        self._pending_retry = jobs
        self._record(Retried(tuple(jobs), restart, changed, now))
        return left

    def _redraw_checked(self, ids: Collection[int]) -> dict[int, Job]:
        if not ids:
            return {}
        if self._redraw is None:
            raise CoreError("this core cannot retry jobs: it was made without `redraw`")
        jobs = dict(self._redraw(ids))
        for i in ids:
            job = jobs.get(i)
            if not isinstance(job, Job):
                raise JournalMismatch(
                    f"the journal retries job {i} but the task yields no such job"
                )
            if self._verify_jobs and job_digest(job, self._shared_digest) != self._failures[i][0]:
                raise JournalMismatch(
                    f"job {i} of the task differs from the journal's: the task, its "
                    "arguments or its input files changed since the journal was written"
                )
        return jobs

    def _apply_retried(self, rec: Retried) -> None:
        jobs, self._pending_retry = self._pending_retry, None
        missing = [i for i in rec.job_ids if i not in self._failures]
        if missing:
            raise CoreError(f"the journal retries job {missing[0]}, which has not failed")
        if jobs is None:  # replaying
            jobs = self._redraw_checked(rec.job_ids)
        if rec.restart:
            for j in list(self._jobs.values()):
                self._start_over(j)
        for i in rec.job_ids:
            digest, own = self._failures.pop(i)
            self.failed -= 1
            self.failed_own -= own
            job = jobs[i]
            files, _ = self._files_of(job)
            group = self._files_key(files, [f for _, f in job.files])
            j = self._jobs[i] = _Job(i, job, digest=digest, files=files, group=group)
            self._hold_files(j)
            self._update_wanting(j)

    def _start_over(self, j: _Job) -> None:
        """Forget every replica of the unsettled job `j` (made under the old payload)."""
        for r in j.replicas:
            self._replicas.pop(r.tag, None)
            if r.state is ReplicaState.OK or r.fault == PENDING:  # held room: free it
                self._jobber(r.jobber).unchecked -= 1
                self._machine(r.machine).unchecked -= 1
                r.fault = ""
            if r.state in _LATE:
                self._late[r.tag] = (j.id, None)  # its output compares with nothing
                if len(self._late) > MAX_LATE:
                    self._late.popitem(last=False)
                self._close(r)
        j.replicas = []
        j.spare = []
        self._update_wanting(j)
