"""What the relay holds, shared by its two sides: upstream replicas, local replicas out
with our jobbers, payloads, our jobbers and their standing, and the journal operations
every change makes. The upstream side (relay._upstream) and the downstream side
(relay._downstream) change it only through the few moves here, each of which fires
the replica's transition (relay._records.HELD_TRANSITIONS) and records its operation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import protocol as p
from relay._records import (
    Done,
    Drop,
    Held,
    HeldState,
    Jobber,
    Local,
    Op,
    Release,
)

log = logging.getLogger(__name__)

PACE_WINDOW_S = 10.0  # results per second are counted over this window
MAX_LATE = 65536  # released local replicas remembered for a late result (this process)
GIVEN_BACK = "the relay could not start it before its deadline"


class Holdings:
    """The relay's state, and the moves both its sides make on it."""

    def __init__(
        self, tag_prefix: str, *, horizon_s: float, max_buffer: int, lease_s: float, quota: int
    ) -> None:
        self.quota = quota
        self.prefix = tag_prefix
        self.horizon_s = horizon_s
        self.max_buffer = max_buffer
        self.lease_s = lease_s
        self.held: dict[str, Held] = {}  # utag -> held replica, in the order received
        self.local: dict[str, Local] = {}  # ltag -> replica out with one of our jobbers
        self.payloads: dict[str, bytes] = {}
        self.signatures: dict[str, p.Signature] = {}
        self.jobbers: dict[str, Jobber] = {}
        self.late: dict[str, Local] = {}  # released local replicas whose results still count
        self._next = 0  # the next local tag's number
        self._ops: list[Op] = []
        self.given_back = 0  # queued jobs given back past their deadline (this process)
        # bumped by every change to which replicas are held and which are done, so that
        # what is derived from them (the files served: relay._core) is made once a change
        self.version = 0

    # --- the journal ---------------------------------------------------------

    def take_ops(self) -> list[Op]:
        ops, self._ops = self._ops, []
        return ops

    def load(
        self,
        held: Iterable[tuple[str, p.JobSpec, float, p.Result | None, str, str]],
        payloads: Iterable[tuple[str, bytes, p.Signature | None]],
        local: Iterable[Local],
        next_tag: int,
        now: float,
    ) -> None:
        """The state a journal kept (a restart). Jobbers holding our work get a full
        lease from `now` to come back."""
        for utag, spec, got_at, result, by, for_key in held:
            self.held[utag] = Held(utag, spec, got_at, result, by, for_key)
        self.version += 1
        for sha, wasm, sig in payloads:
            self.payloads[sha] = wasm
            if sig is not None:
                self.signatures[sha] = sig
        for loc in local:
            h = self.held.get(loc.utag)
            if h is None:
                continue
            self.local[loc.ltag] = loc
            h.local.add(loc.ltag)
            if h.state is HeldState.QUEUED:
                h.fire("sent")
            j = self._jobber(loc.key, loc.address)
            j.last_seen = now
        self._next = next_tag

    # --- what it holds -------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "out": 0, "done": 0}
        for h in self.held.values():
            out[h.state.value] += 1
        return out

    def served(self, now: float) -> list[Jobber]:
        """Our jobbers whose lease runs (the ones the buffer is for)."""
        return [
            j
            for j in self.jobbers.values()
            if j.host is not None and now - j.last_seen < self.lease_s and not j.denied
        ]

    def rate(self, now: float) -> float:
        """Results per second our jobbers returned over the last PACE_WINDOW_S."""
        return sum(self._rate_of(j, now) for j in self.jobbers.values())

    def _rate_of(self, j: Jobber, now: float) -> float:
        while j.done and j.done[0] < now - PACE_WINDOW_S:
            j.done.popleft()
        return len(j.done) / PACE_WINDOW_S

    def _target_of(self, j: Jobber, now: float) -> int:
        assert j.host is not None
        want = max(2 * max(1, j.host.slots), math.ceil(self._rate_of(j, now) * self.horizon_s))
        return min(self.max_buffer, want)

    def target(self, now: float) -> int:
        """How many upstream replicas (queued and out) to hold: the rate times the
        horizon, at least two per slot served, at most max_buffer."""
        slots = sum(max(1, j.host.slots) for j in self.served(now) if j.host is not None)
        if slots == 0:
            return 0
        want = max(2 * slots, math.ceil(self.rate(now) * self.horizon_s))
        return min(self.max_buffer, want)

    def _open(self) -> int:
        return sum(1 for h in self.held.values() if h.result is None)

    def holding(self) -> tuple[str, ...]:
        return tuple(self.held)[: p.MAX_HOLDING]

    # --- the moves -----------------------------------------------------------

    def _jobber(self, key: str, address: str) -> Jobber:
        j = self.jobbers.get(key)
        if j is None:
            j = self.jobbers[key] = Jobber(key, allowance=self.quota)
        if address:
            j.address = address
        return j

    def deny(self, key: str, why: str) -> None:
        """No more work for our jobber `key`; its results are refused from now on, and what it
        holds goes to our other jobbers (fetched for it alone: back upstream, unrun). A
        relay the upstream denies is told `denied` for each jobber it asks for, which each
        is then denied here in turn: no work will come for any of them."""
        j = self.jobbers.get(key)
        if j is None or j.denied:
            return
        j.denied = why
        log.warning("jobber %s (%s) denied: %s", j.label or key[:12], key, why)
        for loc in [x for x in self.local.values() if x.key == key]:
            self._release(loc.ltag)
        for h in list(self.held.values()):
            if h.result is None and h.for_key == key and not h.local:
                self._give_back(h, f"the relay's jobber it was fetched for is denied: {why}")

    def _drop(self, utag: str) -> None:
        h = self.held.pop(utag)
        self.version += 1
        h.fire("dropped")
        for ltag in h.local:
            self.local.pop(ltag, None)
        self._ops.append(Drop(utag))

    def _done(self, h: Held, result: p.Result, by: str, event: str = "result") -> None:
        h.fire(event)
        h.result, h.by = result, by
        self.version += 1
        self._ops.append(Done(h.utag, result._to_wire(), by))

    def _give_back(self, h: Held, why: str) -> None:
        """Return an upstream replica unrun: no fault of anyone's, the upstream sends it
        to someone else."""
        self.given_back += 1
        self._done(h, p.Result(h.utag, p.Status.ABANDONED, detail=why), "", "given_back")

    def _release(self, ltag: str) -> None:
        loc = self.local.pop(ltag, None)
        if loc is None:
            self.late.pop(ltag, None)
            return
        # its jobber may still send a result for it (gone and back): it counts while
        # the upstream replica is undecided
        self.late[ltag] = loc
        if len(self.late) > MAX_LATE:
            del self.late[next(iter(self.late))]
        h = self.held.get(loc.utag)
        if h is not None:
            h.local.discard(ltag)
            if not h.local or h.state is HeldState.DONE:
                h.fire("released")
        self._ops.append(Release(ltag))

    def _held_release(self, key: str, holding: Sequence[str] | None) -> None:
        """Our replicas on `key` that it does not list in `holding` are lost: requeue."""
        if holding is None:
            return
        kept = set(holding)
        for loc in [x for x in self.local.values() if x.key == key and x.ltag not in kept]:
            h = self.held.get(loc.utag)
            if h is not None and h.result is None:
                log.info("jobber %s no longer holds %s: back to the buffer", key[:12], loc.ltag)
            self._release(loc.ltag)

    def give_back_late(self, now: float) -> None:
        """Queued jobs past their deadline go back upstream unrun."""
        for h in list(self.held.values()):
            if h.result is None and not h.local and now >= h.deadline_at:
                self._give_back(h, GIVEN_BACK)
