"""What a dealer shows people: the jobbers it remembers, why jobs wait, and the status
report (`status`, the dashboard, `python -m dealer status`). A part of dealer._service.
Service (the `Report` mixin), over the state the service keeps.
"""

from __future__ import annotations

import dataclasses
import logging

import protocol as p
from tasks import Task

log = logging.getLogger(__name__)

STATUS_PAGE = 100  # jobbers listed per status page
SUMMARY_CHARS = 500  # of a task's summary line, as shown
# the replies to a jobber that tell it of the batch and of its account here
_TOLD = (p.Jobs, p.RetryLater, p.Finished, p.Ack, p.AliveAck)


def about_of(task: Task) -> p.About:
    """What lenders are told of the batch: its name (the task's `name`, else its class's)
    and its researcher's contact, cut to the wire's bounds."""
    name = getattr(task, "name", None) or type(task).__name__
    contact = getattr(task, "contact", None)
    return p.About(str(name)[: p.MAX_TASK_NAME], str(contact)[: p.MAX_CONTACT] if contact else None)


def jobber_rows(core, labels: dict[str, str]) -> list[dict]:
    """Every identity `core` (dealer._core.Core) remembers, best first (credit, then
    valid results), named by `labels` (the names jobbers gave, which no journal keeps)."""
    rows = [
        {
            "key": key,
            "name": labels.get(key) or "-",  # "-": not heard since a restart
            "machine": r.machine,
            "valid": r.valid,
            "invalid": r.invalid,
            "errors": r.errors,
            "credit": r.credit,
            "last_seen": r.last_seen,
            "gone": r.gone,
            "holding": r.held,
            "denied": core.is_denied(key),
        }
        for key, r in core.jobbers.items()
    ]
    rows.sort(key=lambda r: (-r["credit"], -r["valid"], r["key"]))
    return rows


class Report:
    """The reporting part of Service (a mixin: the state is the service's)."""

    _summary_raised = False  # the task's summary() raised once: logged, not again

    def summary(self) -> str | None:
        """The task's own summary line (Task.summary: a running estimate, say), cut to
        SUMMARY_CHARS; None if it has none, or if it raised (its own bug, logged once)."""
        try:
            line = self.task.summary()
        except Exception:
            if not self._summary_raised:
                log.error("the task's summary() raised; shown as none", exc_info=True)
            self._summary_raised = True
            return None
        if line is None:
            return None
        line = " ".join(str(line).split())
        return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1] + "…"

    def told(self, reply: p.Message, key: str) -> p.Message:
        """`reply` to the jobber `key`, with what it is told of the batch (`about`) and of
        its own account here (nil before its first result counts)."""
        if not isinstance(reply, _TOLD):
            return reply
        r = self.core.jobbers.get(key)
        account = None if r is None else p.Account(r.valid, r.invalid, r.errors, r.credit)
        return dataclasses.replace(reply, about=self.about, account=account)

    def jobbers(self) -> list[dict]:
        """Every identity the dealer remembers, best first (credit, then valid results)."""
        return jobber_rows(self.core, self.labels)

    def waiting(self, now: float) -> list[str]:
        """Why unsettled jobs wait (the core's reasons, and jobbers too small for them)."""
        why = self.core.waiting(now)
        short = [k for k in self._no_room if k in self.core.jobbers]
        if self.core.in_flight and short:
            last = self._no_room[short[-1]]
            why.append(
                f"{len(short)} jobber{'s' if len(short) != 1 else ''} cannot take the jobs' "
                f"input files (the latest: {last})"
            )
        n = sum(1 for k in self._unprepared if k in self.core.jobbers)
        if self.core.in_flight and n and self.runtime is not None:
            why.append(f"jobbers asked to prepare the runtime {self.runtime.name}: {n}")
        small = [k for k in self._too_small if k in self.core.jobbers]
        if self.core.in_flight and small:
            most = max(self._too_small[k] for k in small)
            why.append(
                f"jobs need {self.core.policy.memory_mb} MiB each; {len(small)} jobber"
                f"{'s offer' if len(small) != 1 else ' offers'} at most {most}"
            )
        return why

    def status(self, now: float, page: int = 0) -> dict:
        """A report for people: counts, disagreements, and one page of jobbers (no tags)."""
        c = self.core
        rows = self.jobbers()
        pages = max(1, -(-len(rows) // STATUS_PAGE))
        return {
            "task": type(self.task).__name__,
            "key": self.key_hex,
            "signer": self.signer,
            "total": self._total(),
            "drawn": c.drawn,
            "accepted": c.accepted,
            "failed": c.failed,
            # ... of them, by their own bug: the same failure on a quorum of machines,
            # counted against no jobber (dealer._blame)
            "failed_own": c.failed_own,
            "in_flight": c.in_flight,
            "replicas_out": c.replicas_out,
            "distinct": self.distinct,
            "closed": self.closed,
            "waiting": self.waiting(now),
            "disputed": c.disputed,
            "task_error": c.source_error or None,
            "disputes": list(c.disputes)[-10:],
            "denied": sorted(c.denied)[:STATUS_PAGE],
            "jobbers_total": len(rows),
            "page": page,
            "pages": pages,
            "jobbers": rows[page * STATUS_PAGE : (page + 1) * STATUS_PAGE],
            "peers": self.peers.status(now),
            "long_jobs": c.long_jobs(now) if c.policy.checkpoint_bytes else [],
            **self.saves.status(),
            **self.files.status(),
        }
