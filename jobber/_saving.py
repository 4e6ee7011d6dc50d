"""The jobber core's saved states: long jobs' checkpoints, kept here and sent to their
dealers, so that a job whose machine goes away loses minutes, not hours. Part of the
core (jobber._core.JobberCore, whose theory of operation this follows), kept apart so
each part reads alone; it shares the core's state and logs as the core.

A job with `limits.checkpoint_kb` saves its state now and then (sandbox._scratch); the
shell keeps the latest of each running job in memory and in its spool of states
(jobber._states), and tells the core (`StateSaved`). The core sends each job's latest
state to its dealer (`save`, docs/protocol.md) once the job has run
`limits.checkpoint_every_s` (CHECKPOINT_EVERY_S if nil) since the state last sent, a
chunk at a time, one `save` out per dealer; a dealer that refuses a job's state
(`unknown_tag`, `settled`, `unexpected`, `implausible`) gets no more of it, one that
says `busy` gets the chunk again after `retry_s`, and any other error or silence is a
failed contact (the state is sent again from chunk 0 later).

When the jobber stops (`quit`, a signal), a running job that saved a state is not
given back: it is stopped at once and *parked*, its state kept in the spool, and its
latest state sent to its dealer before the jobber exits (as long as results are
flushed). Its tag stays in `holding`, so its dealer keeps the replica until its lease
runs out: a jobber started again on the same data directory finds the state in its
spool (`restore`) and runs the job on from it; one that stays away past the lease
has its job sent elsewhere, from the state it sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import protocol as p
from jobber._actions import ForgetState, SendSave, StateSaved, Stop
from jobber._state import SAVE, Held, Link

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks

CHECKPOINT_EVERY_S = 300.0  # a job's state goes to its dealer this often when it says nil
# a dealer's `save` answered with these: it takes no state of that job (do not send more)
REFUSING = (
    p.ErrorCode.UNKNOWN_TAG,
    p.ErrorCode.SETTLED,
    p.ErrorCode.UNEXPECTED,
    p.ErrorCode.IMPLAUSIBLE,
    p.ErrorCode.DENIED,
    p.ErrorCode.MALFORMED,
)


class Saving:
    """The saved states' half of JobberCore (a mixin: the state is the core's)."""

    def _saving_init(self) -> None:
        # jobs stopped when the jobber stopped, with a saved state: not given back, their
        # states sent to their dealers before it exits; (dealer, tag) -> job
        self.parked: dict[tuple[str, str], Held] = {}

    def restore(self, jobs: Iterable[tuple[str, p.JobSpec, float, p.Resume]], now: float) -> None:
        """Jobs an earlier run held and parked (or was killed running), each with the
        saved state the shell found in its spool: (dealer, spec, seconds left to its
        deadline, the state). They run first, from their states."""
        n = 0
        for dealer, spec, left_s, state in jobs:
            if dealer not in self.links:
                self.add_dealer(dealer, depth=1)
            h = Held(dealer, replace(spec, resume=None), now + max(0.0, left_s))
            h.saved = state
            h.sent_time_s = state.time_s  # sent again only when it has run an interval more
            self._owe(h, +1)
            self.buffer.appendleft(h)
            n += 1
        if n:
            log.info("resuming %d jobs from the states an earlier run saved", n)

    def _state_saved(self, ev: StateSaved, now: float) -> None:
        h = self._running_job(ev.dealer, ev.tag)
        if h is not None:
            h.saved = p.Resume(ev.sha, ev.size, ev.fuel, ev.time_s)

    def _running_job(self, dealer: str, tag: str) -> Held | None:
        for h in self.running.values():
            if h.dealer == dealer and h.spec.tag == tag:
                return h
        return self.parked.get((dealer, tag))

    def _forget_state(self, h: Held) -> None:
        """`h` ended (a result, or cancelled): its state goes."""
        if h.saves:
            self._actions.append(ForgetState(h.dealer, h.spec.tag))

    def _park(self) -> None:
        """The jobber stops: running jobs that saved a state stop at once, parked (see
        this module's docstring); the others run on for their grace, as ever."""
        for key, h in list(self.running.items()):
            if h.saved is None or key in self._cancelled:
                continue
            self._cancelled.add(key)
            self._actions.append(Stop(key))
            self.parked[(h.dealer, h.spec.tag)] = h
            self._owe(h, -1)
        if self.parked:
            log.info("%d jobs stopped with their saved states, to resume", len(self.parked))

    def uploads_pending(self) -> bool:
        """Parked jobs whose latest state their dealer has not taken (and may)."""
        return any(
            not h.save_refused and h.saved.hash != h.sent_state and self._may_reach(h.dealer)
            for h in self.parked.values()
            if h.saved is not None
        )

    def _may_reach(self, dealer: str) -> bool:
        link = self.links.get(dealer)
        return link is not None and link.usable() and not link.refused

    def _send_saves(self, now: float) -> None:
        """One `save` out per dealer: the next chunk of the state going, or the first of a
        job's latest state once it is due (parked jobs' at once)."""
        due: dict[str, Held] = {}
        live = [h for k, h in self.running.items() if k not in self._cancelled]
        for h in (*self.parked.values(), *live):
            s = h.saved
            if s is None or h.save_refused or h.save_after > now or s.hash == h.sent_state:
                continue
            every = h.spec.limits.checkpoint_every_s or CHECKPOINT_EVERY_S
            parked = (h.dealer, h.spec.tag) in self.parked
            if h.sending is None and not parked and s.time_s - h.sent_time_s < every:
                continue
            cur = due.get(h.dealer)  # a state half sent goes on before another starts
            if cur is None or (h.sending is not None and cur.sending is None):
                due[h.dealer] = h
        for dealer, h in due.items():
            link = self.links.get(dealer)
            if link is None or not link.usable() or link.req.out.get(SAVE) is not None:
                continue
            if not link.backoff.ready(now) or link.key is None or link.check_key:
                continue
            if h.sending is None:
                h.sending, h.next_chunk = h.saved, 0
            rid = self._rid()
            self._actions.append(SendSave(dealer, h.spec.tag, rid, h.next_chunk))
            link.sent(SAVE, rid, now)
            link.saving = h.spec.tag

    def _sending_job(self, link: Link) -> Held | None:
        tag = link.saving
        return None if tag is None else self._running_job(link.address, tag)

    def _saved_reply(self, link: Link, msg: p.Saved, now: float) -> None:
        """The dealer took a chunk (`next` says which it wants now) or the whole state."""
        link.answered_by(SAVE, now)
        h = self._sending_job(link)
        link.saving = None
        if h is None or h.sending is None or msg.hash != h.sending.hash:
            return
        if msg.next >= p.chunk_count(h.sending.size):
            h.sent_state, h.sent_time_s = h.sending.hash, h.sending.time_s
            h.sending = None
            log.debug("job %s: its state sent to %s", h.spec.tag, link.address)
        elif msg.next == 0:  # it holds nothing of it (it restarted): the latest, anew
            h.sending = None
        else:
            h.next_chunk = msg.next

    def _save_error(self, link: Link, msg: p.Error, now: float) -> None:
        """The dealer refused a chunk: `busy`, again later; a refusal of the job's state,
        no more of it; anything else, a failed contact."""
        h = self._sending_job(link)
        link.saving = None
        if msg.code is p.ErrorCode.BUSY:
            link.answered_by(SAVE, now)
            if h is not None:
                h.save_after = now + (1.0 if msg.retry_s is None else msg.retry_s)
            return
        if h is not None:
            h.sending = None
        if msg.code in REFUSING:
            link.answered_by(SAVE, now)
            if h is not None:
                h.save_refused = True
                log.warning(
                    "dealer %s takes no saved state of job %s: %s: %s",
                    link.address,
                    h.spec.tag,
                    msg.code.value,
                    msg.text,
                )
            return
        self._failed(link, now, f"error {msg.code.value} to save")
