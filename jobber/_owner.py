"""The jobber core's rule for its owner's word: whether jobs are suspended and work is
asked for. Part of the core (jobber._core.JobberCore, whose theory of operation this
follows), kept apart so each part reads alone; it shares the core's state and logs as
the core.
"""

from __future__ import annotations

import logging

from jobber._actions import Owner, Reset, Resume, Suspend

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
            # quit never resumes what the owner or the machine holds (the jobs are given
            # back, or parked, at once); a CPU limit's pause ends, so running jobs finish
            if self.suspended and self.why_suspended != "cpu limit":
                why = self.why_suspended
        elif ev.suspended:
            why = "suspended by the owner"
        elif not ev.computes:
            why = "outside the pool's hours"
        elif ev.held:  # an owner's preference: hours, batteries, memory while in use
            why = ev.held
        elif ev.in_use:
            why = "machine in use"
        elif ev.cpu_off:
            why = "cpu limit"
        if why and not self.suspended:
            self._actions.append(Suspend())
            self.suspended, self.suspended_at = True, now
            if why != "cpu limit":
                log.info("jobs suspended: %s", why)
        elif not why and self.suspended:
            self._actions.append(Resume())
            self.suspended = False
            for h in self.running.values():  # suspended time is no run time
                h.paused_s += now - max(self.suspended_at, h.started)
            if self.why_suspended != "cpu limit":
                log.info("jobs resumed")
        self.why_suspended = why
        self.paused = "suspended" if self.suspended else ""
        self.fetch_paused = (
            ev.suspended
            or why in ("machine in use", "outside the pool's hours")
            or bool(ev.held)
            or not ev.asks
        )
        if ev.suspended:  # suspended by its owner: that is not idling
            self.busy(now)

    def accept_key(self, address: str, key: str) -> bool:
        """The owner accepts `key` for the dealer at `address` (a key mismatch shown, or a
        key changed on purpose): pinned as the owner's, the refusal lifted, the backoff
        reset. False if no such dealer is known."""
        link = self.links.get(address)
        if link is None:
            return False
        link.req.refused = ""
        link.req.backoff.succeeded()
        link.key, link.key_from_hello, link.key_referred_by = key, False, ""
        link.check_key, link.mismatch, link.claims = False, None, None
        link.forget_requests()
        self._pin(address, key)
        self._actions.append(Reset(address))
        log.warning("dealer %s: key %s accepted by the owner", address, key)
        return True

    def pause(self, address: str, paused: bool) -> bool:
        """The owner pauses (or unpauses) asking the dealer at `address` for work; results,
        alive and the files of jobs held still go. False if no such dealer is known."""
        (self.owner_paused.add if paused else self.owner_paused.discard)(address)
        link = self.links.get(address)
        if link is None:
            return False
        if link.paused != paused:
            log.info("dealer %s %s by the owner", address, "paused" if paused else "unpaused")
        link.paused = paused
        return True
