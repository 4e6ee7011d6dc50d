"""The relay's downstream side: a dealer to its own jobbers.

It answers our jobbers' `bored`, `results` and `alive` from the holdings
(relay._holdings), as a dealer would: jobs from the buffer within each jobber's
allowance and what it runs soon, results checked for plausibility (as
dealer._core.implausible checks them), and leases: a jobber silent for
`lease_s` is gone and what it held goes back to the buffer. It reads the
upstream's state (finished, failing, quiet) to tell a jobber how long to wait;
it never asks upstream itself.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

import protocol as p
from dealer._policy import RETRY_QUOTA_S, SOON_S, implausible
from protocol._runtimes import RUNTIMES
from relay._holdings import Holdings
from relay._records import Local, Next, Send
from relay._upstream import Upstream

log = logging.getLogger(__name__)

RETRY_S = 1.0  # "retry later" to a jobber while jobs may come (upstream asked, or others out)
# "retry later" to a jobber holding what it runs soon: the results it is about to return
# free room within a round trip, so it comes back soon (the dealer's RETRY_QUOTA_S)
RETRY_FULL_S = RETRY_QUOTA_S
RETRY_IDLE_S = 30.0  # "retry later" to a jobber none of whose jobs it can run
MAX_JOBS_BYTES = 16 * 1024 * 1024  # stdin and payload bytes in one `jobs` to our jobbers
EVICT_AFTER_S = 600.0  # a jobber of ours that holds nothing and is silent this long is forgotten
GONE = "the relay's jobber it was fetched for is gone"


@dataclass(frozen=True, slots=True)
class _Bounds:
    """What dealer._core.implausible reads of a policy, from one job's limits."""

    fuel_limit: int
    output_bytes: int


class DownstreamSide:
    """What the relay answers its own jobbers."""

    def __init__(self, book: Holdings, up: Upstream, *, attribute: bool) -> None:
        self.book = book
        self.up = up
        self.attribute = attribute

    def bored(self, msg: p.Bored, now: float, key: str, address: str) -> p.Message:
        book = self.book
        j = book._jobber(key, address)
        j.label, j.host, j.last_seen = msg.jobber, msg.host, now
        book._held_release(key, msg.holding)
        if j.denied:
            return p.Error(msg.id, p.ErrorCode.DENIED, f"denied by the relay: {j.denied}")
        mine = sum(1 for loc in book.local.values() if loc.key == key)
        # what it runs soon: two per slot, or as many as it returned in the last SOON_S;
        # never more than its allowance
        soon = max(2 * max(1, msg.host.slots), _since(j.done, now - SOON_S))
        room = min(msg.want, max(0, soon - mine), max(0, j.allowance - mine))
        jobs: list[p.JobSpec] = []
        payloads: dict[str, bytes] = {}
        size = 0
        refused: str | None = None
        if room:
            queue = sorted(
                (
                    h
                    for h in book.held.values()
                    if h.result is None and not h.local and h.for_key in ("", key)
                ),
                key=lambda h: h.deadline_at,
            )
            cached = set(msg.host.cached)
            for h in queue:
                if len(jobs) >= room:
                    break
                why = msg.host.refuses(h.spec.limits) or msg.host.refuses_inputs(
                    sum(f.size for f in (h.spec.files or {}).values())
                )
                runtime = RUNTIMES.get(h.spec.payload)
                if why is None and runtime is not None and runtime.sha256 not in cached:
                    why = f"the {runtime.name} runtime ready"
                if why is not None:
                    refused = why
                    continue
                left = h.deadline_at - now
                if left <= 0:
                    continue  # tick gives it back
                extra = 0
                sha = h.spec.payload
                if sha not in cached and sha not in payloads:  # (a runtime is in cached)
                    extra = len(book.payloads[sha])
                if jobs and size + extra + len(h.spec.stdin) + 256 > MAX_JOBS_BYTES:
                    break
                if sha not in cached and sha not in payloads:
                    if len(payloads) >= p.MAX_PAYLOADS:
                        continue
                    payloads[sha] = book.payloads[sha]
                size += extra + len(h.spec.stdin) + 256
                ltag = f"{book.prefix}.{book._next}"
                book._next += 1
                book._ops.append(Next(book._next))
                loc = Local(ltag, h.utag, key, address, now)
                book.local[ltag] = loc
                h.local.add(ltag)
                h.fire("sent")
                book._ops.append(Send(ltag, h.utag, key, address, now))
                jobs.append(_spec_for(h.spec, ltag, left, native=bool(h.for_key)))
        if jobs:
            names = {s.payload for s in jobs}
            sigs = {s: book.signatures[s] for s in names if s in book.signatures}
            return p.Jobs(msg.id, tuple(jobs), payloads, sigs or None)
        # the runtimes the upstream runs and this jobber lacks: it prepares them (their
        # files come through us) to be sent their jobs
        lacks = tuple(sorted(self.up.runtimes - set(msg.host.cached))) or None
        if not room and mine:
            why = "you hold as much as you run soon"
            return p.RetryLater(msg.id, RETRY_FULL_S, why, True, lacks)
        if refused is not None:
            why = f"every job here needs {refused}"
            return p.RetryLater(msg.id, RETRY_IDLE_S, why, None, lacks)
        out = any(h.local for h in book.held.values() if h.result is None)
        if self.up.finished and not out:
            return p.Finished(msg.id)
        why = "the relay's buffer is empty" + ("" if out else "; asking upstream")
        # the upstream answering and asked (or about to be): jobs come within a round trip
        soon_ = self.up.backoff.failures == 0 and now >= self.up.quiet_until
        wait = RETRY_FULL_S if soon_ else RETRY_S
        return p.RetryLater(msg.id, wait, why, True if out else None, lacks)

    def results(self, msg: p.Results, now: float, key: str, address: str) -> p.Ack:
        book = self.book
        j = book._jobber(key, address)
        j.label, j.last_seen = msg.jobber, now
        tags: list[str] = []
        rejected: list[p.Rejection] = []
        for r in msg.results:
            loc = book.local.get(r.tag) or book.late.get(r.tag)
            if loc is None or loc.key != key:
                rejected.append(p.Rejection(r.tag, p.ErrorCode.UNKNOWN_TAG, "not sent to you"))
                continue
            if j.denied:
                book._release(r.tag)
                book.late.pop(r.tag, None)
                text = f"denied by the relay: {j.denied}"
                rejected.append(p.Rejection(r.tag, p.ErrorCode.DENIED, text))
                continue
            h = book.held.get(loc.utag)
            if h is None or h.result is not None:
                rejected.append(p.Rejection(r.tag, p.ErrorCode.SETTLED, "already decided"))
                book._release(r.tag)
                continue
            if r.status is p.Status.ABANDONED and not (r.output or r.fuel) and not h.for_key:
                book._release(r.tag)  # given back: another of ours runs it
                tags.append(r.tag)
                continue
            lim = h.spec.limits
            why = implausible(r.status, r.output, r.fuel, _Bounds(lim.fuel, lim.output_kb * 1024))
            if why is not None:
                log.warning("jobber %s: implausible result for %s: %s", key[:12], r.tag, why)
                j.implausible += 1
                j.bad()
                book._release(r.tag)
                rejected.append(p.Rejection(r.tag, p.ErrorCode.IMPLAUSIBLE, why))
                if h.for_key and not h.local and h.result is None:
                    # fetched for this jobber alone: no other of ours may run it, so it
                    # goes back upstream unrun rather than as a result no sandbox gives
                    book._give_back(h, f"implausible from the jobber it was fetched for: {why}")
                continue
            by = p.Attribution(key, j.address[:256])  # as we saw it, whoever it names
            book._done(h, dataclasses.replace(r, tag=h.utag, by=by), key)
            book._release(r.tag)
            book.late.pop(r.tag, None)
            j.results += 1
            j.done.append(now)
            tags.append(r.tag)
        return p.Ack(msg.id, tuple(tags), tuple(rejected))

    def alive(self, msg: p.Alive, now: float, key: str, address: str) -> p.AliveAck:
        book = self.book
        j = book._jobber(key, address)
        j.label, j.last_seen = msg.jobber, now
        book._held_release(key, msg.holding)
        cancel = []
        for ltag in msg.holding or ():
            loc = book.local.get(ltag) or book.late.get(ltag)
            h = None if loc is None or loc.key != key else book.held.get(loc.utag)
            if h is None or h.result is not None or j.denied:
                cancel.append(ltag)  # decided, cancelled upstream, or never ours
        return p.AliveAck(msg.id, book.lease_s, tuple(cancel)[: p.MAX_HOLDING])

    def leases(self, now: float) -> None:
        """Our jobbers silent for `lease_s` are gone: what they held goes to others (or,
        fetched for them, back upstream); long silent ones holding nothing are forgotten."""
        book = self.book
        for j in list(book.jobbers.values()):
            if now - j.last_seen >= book.lease_s:
                mine = [loc.ltag for loc in book.local.values() if loc.key == j.key]
                if mine:
                    log.info(
                        "jobber %s silent for %.0f s: its %d jobs go to others",
                        j.label or j.key[:12],
                        now - j.last_seen,
                        len(mine),
                    )
                for ltag in mine:
                    book._release(ltag)
                if self.attribute:  # its jobs were fetched for it: back upstream
                    for h in list(book.held.values()):
                        if h.result is None and h.for_key == j.key and not h.local:
                            book._give_back(h, GONE)
                if now - j.last_seen >= EVICT_AFTER_S and not mine:
                    del book.jobbers[j.key]

    def offer(self, rid: int, now: float) -> p.WorkOffer:
        """What a peer dealer's work_query is told: the jobs in the buffer any new jobber
        could be given, and what one needs (as it would go down: NaNs canonical).
        Attributed, the relay asks upstream for each jobber, so while the upstream
        answers it says it has one."""
        book = self.book
        free = [h for h in book.held.values() if h.result is None and not h.local]
        jobs = sum(1 for h in free if not h.for_key)
        if self.attribute and not self.up.finished and self.up.backoff.failures == 0:
            jobs = max(jobs, 1)
        limits = None
        if free:
            limits = free[0].spec.limits
            if limits.native_nans and not self.attribute:
                limits = dataclasses.replace(limits, native_nans=None)
        finished = self.up.finished and not book.held
        return p.WorkOffer(rid, 0 if finished else jobs, limits, None, finished or None)


def _since(times: deque[float], t: float) -> int:
    """How many of `times` (in order) are at or after `t`."""
    n = 0
    for x in reversed(times):
        if x < t:
            break
        n += 1
    return n


def _spec_for(spec: p.JobSpec, ltag: str, left_s: float, *, native: bool) -> p.JobSpec:
    """The job as it goes to one of our jobbers: its local tag, what is left of its
    deadline, and NaNs canonical unless `native` (fetched on behalf of the jobber, with
    its own platform). Asking for itself the relay names no platform (it serves jobbers
    of any), so the upstream takes it for a jobber that canonicalizes every NaN; its
    jobbers must then do so, whatever the job allowed."""
    limits = spec.limits
    if limits.native_nans and not native:
        limits = dataclasses.replace(limits, native_nans=None)
    return dataclasses.replace(spec, tag=ltag, limits=limits, deadline_s=min(1e9, left_s))
