"""What the task is told: settled jobs handed to it, and failed jobs put back. A part of
dealer._service.Service (the `Outcomes` mixin).

The task sees each job's outcome once: its output (`on_output`), or why it could not be
done (`on_failure`). A failure that a retry followed (dealer._retry: `--retry-failed`)
was not the job's outcome, so it is not told: on a replay, the journal's Retried
records say how many of a job's failures were superseded; on a finished batch
restored from its settled jobs, only the latest outcome is kept anyway. The jobs a run
retries are known before the replay (the journal's failed jobs), so their failures are
held back from the start.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection

from dealer._core import Accepted, Core
from dealer._figures import FailureGroups
from dealer._journal import Journal, task_pins
from tasks import Job, Task

log = logging.getLogger(__name__)


class Outcomes:
    """Service's hand-over of outcomes to the task, and its retries (a mixin)."""

    task: Task
    core: Core
    journal: Journal
    failures: int
    recent_failures: Collection[dict]
    failure_groups: FailureGroups
    settled_count: int
    done: bool
    _finished_marked: bool
    # failures the task is not told of: each job's, as many as retries followed them
    _superseded: Counter[int]

    def commit(self) -> None: ...  # Service's

    def _decide(self) -> None: ...  # Service's

    def _retried_now(self, asked: Collection[int]) -> list[int]:
        """The failed jobs a retry puts back: those `asked` (all if empty) among the
        jobs whose latest outcome in the journal is a failure."""
        failed = self.journal.failed_ids()
        if not asked:
            return failed
        known = set(failed)
        for i in sorted(set(asked) - known):
            log.warning("job %d is not retried: it has not failed", i)
        return sorted(known & set(asked))

    def _retry(self, ids: list[int], changed: dict[str, str], now: float) -> None:
        """Put the failed jobs `ids` back, with the payload and limits of now (`changed`:
        those that changed, what changed), durably before anyone is answered."""
        note = "; ".join(changed.values()) or None
        left = self.core.retry(ids, now, restart=bool(changed), changed=note)
        records = self.core.take_records()
        if records or changed:
            pins = {k: v for k, (v, _) in task_pins(self.task).items() if k in changed}
            self.journal.reopen(records, [i for i in ids if i not in left], pins)
        for i, (job, why) in left.items():  # still failed: its failure was not told
            self._superseded[i] -= 1
            self._failed(i, job, (f"not retried: {why}",))
        retried = len(ids) - len(left)
        if changed:
            log.warning(
                "%s: %d failed jobs retried, %d not settled start over",
                note,
                retried,
                self.core.in_flight - retried,
            )
        else:
            log.warning("%d failed jobs retried", retried)
        self.done = self._finished_marked = False
        self.commit()
        self._decide()

    def _deliver(self) -> None:
        """Hand settled jobs to the task. The task's own bugs do not stop the batch: an
        output its on_output cannot take fails that job (on_failure, with the exception),
        and the same happens on every replay, so a restarted dealer reaches the same state."""
        for s in self.core.take_settled():
            if isinstance(s, Accepted):
                try:
                    self.task.on_output(s.job, s.output)
                except Exception as e:
                    log.error(
                        "job %d (args %s): the task's on_output raised; the job fails",
                        s.job_id,
                        " ".join(s.job.args),
                        exc_info=True,
                    )
                    self._failed(s.job_id, s.job, (f"on_output raised {type(e).__name__}: {e}",))
            elif self._superseded[s.job_id] > 0:  # retried since: not the job's outcome
                self._superseded[s.job_id] -= 1
                continue
            else:
                log.warning("job %d failed: %s", s.job_id, "; ".join(s.reasons))
                self._failed(s.job_id, s.job, s.reasons, s.own)
            self.settled_count += 1

    def _failed(self, job_id: int, job: Job, reasons: tuple[str, ...], own: bool = False) -> None:
        """`own`: the job's own bug (the same failure on a quorum of machines)."""
        self.failures += 1
        row = {"job": job_id, "args": list(job.args), "reasons": reasons, "own": own}
        self.recent_failures.append(row)
        self.failure_groups.add(job_id, row["args"], reasons, own)
        try:
            self.task.on_failure(job, list(reasons))
        except Exception:
            log.error(
                "job %d (args %s): the task's on_failure raised",
                job_id,
                " ".join(job.args),
                exc_info=True,
            )
