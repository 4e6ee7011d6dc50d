"""The jobber core's rule for its owner's word: whether jobs are suspended and work is
asked for. Part of the core (jobber._core.JobberCore, whose theory of operation this
follows), kept apart so each part reads alone; it shares the core's state and logs as
the core.
"""

from __future__ import annotations

import logging

from jobber._actions import Owner, Resume, Suspend

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks


class OwnerRule:
    """The owner's part of JobberCore (a mixin: the state is the core's)."""

    def _owner(self, ev: Owner, now: float) -> None:
        """Suspend the slots, or resume them: the first reason that holds wins (the owner's
        word, the pool's hours, the machine in use, the CPU limit); none while the jobber
        winds down (running jobs get their grace). Asking for work stops too, but for the
        CPU limit (a pause of a second or so) and outside the network hours alone."""
        why = ""
        if ev.stopping or self.stopping:
            pass
        elif ev.suspended:
            why = "suspended by the owner"
        elif not ev.computes:
            why = "outside the pool's hours"
        elif ev.in_use:
            why = "machine in use"
        elif ev.cpu_off:
            why = "cpu limit"
        if why and not self.suspended:
            self._actions.append(Suspend())
            self.suspended = True
            if why != "cpu limit":
                log.info("jobs suspended: %s", why)
        elif not why and self.suspended:
            self._actions.append(Resume())
            self.suspended = False
            if self.why_suspended != "cpu limit":
                log.info("jobs resumed")
        self.why_suspended = why
        self.paused = "suspended" if self.suspended else ""
        self.fetch_paused = (
            ev.suspended or why in ("machine in use", "outside the pool's hours") or not ev.asks
        )
        if ev.suspended:  # suspended by its owner: that is not idling
            self.busy(now)
