"""A finished batch, restored without replaying its records: a part of dealer._core.Core
(the `Finished` mixin). A finished journal keeps a snapshot (counts, tags used, every
identity's and machine's record) and the settled jobs in the order they settled; a
dealer reopening it draws the jobs again from the task, checks each against its digest,
and hands them to the task as they settled, without a replay of every record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import fields

import msgpack

from dealer._blame import SAME_FAILURE
from dealer._policy import job_digest
from dealer._quota import JobberRecord, Standing
from dealer._replicas import Accepted, CoreError, Failed, JournalMismatch, _Job
from tasks import Job


class Finished:
    """Core's snapshot of a finished batch, and its restoration."""

    jobbers: dict[str, JobberRecord]
    machines: dict[str, Standing]
    denied: dict[str, str]
    disputes: deque[dict]
    disputed: int
    accepted: int
    failed: int
    failed_own: int
    _source: Iterator[Job]
    _exhausted: bool
    _next_job: int
    _next_tag: int
    _jobs: dict[int, _Job]
    _settled: list[Accepted | Failed]
    _settled_digests: list[str]
    _shared_digest: str  # of the input files every job reads (dealer._policy.files_digest)
    _failures: dict[int, tuple[str, bool]]

    def peek_settled_rows(self) -> list[tuple[int, str, str, bytes]]:
        """The settled jobs not taken yet, as the journal keeps them with the turn's
        records: (job id, digest, "accepted" or "failed", output or msgpack of the
        reasons), the form restore() takes back."""
        return [
            (s.job_id, digest, "accepted", s.output)
            if type(s) is Accepted
            else (s.job_id, digest, "failed", msgpack.packb(list(s.reasons)))
            for s, digest in zip(self._settled, self._settled_digests, strict=True)
        ]

    def snapshot(self) -> dict:
        """What a finished batch leaves besides its outputs: counts, tags used, and every
        identity's and machine's record (for status). Maps keyed by field name."""
        return {
            "drawn": self._next_job,
            "next_tag": self._next_tag,
            "accepted": self.accepted,
            "failed": self.failed,
            "failed_own": self.failed_own,
            "disputed": self.disputed,
            "disputes": list(self.disputes),
            "denied": dict(self.denied),
            "jobbers": {k: _fields_of(r) for k, r in self.jobbers.items()},
            "machines": {k: _fields_of(m) for k, m in self.machines.items()},
        }

    def restore(self, snap: dict, settled: Iterable[tuple[int, str, str, bytes]]) -> None:
        """Become the core of the finished batch `snap` describes: its jobs are drawn again
        from the task (each checked against the digest the journal keeps) and settled as
        `settled` says, (job id, digest, "accepted" or "failed", output or reasons) in the
        order they settled, ready for take_settled(). JournalMismatch if the task's jobs
        are not the journal's."""
        if self._next_job or self._jobs:
            raise CoreError("restore() is for a fresh core")
        drawn: dict[int, Job] = {}
        for job_id, digest, state, body in settled:
            while self._next_job <= job_id:
                try:
                    job = next(self._source)
                except StopIteration:
                    raise JournalMismatch(
                        f"the journal holds job {job_id} but the task yields only "
                        f"{self._next_job} jobs"
                    ) from None
                drawn[self._next_job] = job
                self._next_job += 1
            job = drawn.pop(job_id, None)
            if (
                job is None
                or not isinstance(job, Job)
                or job_digest(job, self._shared_digest) != digest
            ):
                raise JournalMismatch(
                    f"job {job_id} of the task differs from the journal's: the task, "
                    "its arguments or its input files changed since the journal was written"
                )
            if state == "accepted":
                self._settled.append(Accepted(job_id, job, body))
                self._settled_digests.append(digest)
            else:
                reasons = tuple(msgpack.unpackb(body))
                own = len(reasons) == 1 and reasons[0].startswith(SAME_FAILURE)
                self._settled.append(Failed(job_id, job, reasons, own))
                self._settled_digests.append(digest)
                self._failures[job_id] = (digest, own)
        if drawn or self._next_job != snap["drawn"]:
            raise JournalMismatch("the journal's finished batch does not match the task's jobs")
        if next(self._source, None) is not None:
            raise JournalMismatch(
                f"the task yields more than the {self._next_job} jobs of the journal's "
                "finished batch: the task or its arguments changed"
            )
        self._exhausted = True
        self._next_tag = snap["next_tag"]
        self.accepted, self.failed = snap["accepted"], snap["failed"]
        self.failed_own = snap.get("failed_own", 0)  # a snapshot older than it: none known
        self.disputed = snap["disputed"]
        self.disputes.extend(snap["disputes"])
        self.denied.update(snap["denied"])
        self.jobbers = {k: JobberRecord(**v) for k, v in snap["jobbers"].items()}
        self.machines = {k: Standing(**v) for k, v in snap["machines"].items()}


def _fields_of(record) -> dict:
    """A slotted dataclass's fields by name."""
    return {f.name: getattr(record, f.name) for f in fields(record)}
