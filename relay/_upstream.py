"""The relay's upstream side: the relay as a jobber to its upstream dealer.

It asks (`bored`, `results`, `alive`) over one link (net._link: each request's
id and deadline, at most one of each kind out, a timeout or a send that failed
as one failed contact that resets the socket, the backoff, the upstream's key
learnt on first use and pinned); it takes what comes back into the holdings
(relay._holdings). Everything runs on the core's one clock, the `now` the shell
passes in: the requests' deadlines too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import protocol as p
from net._link import HELLO, Backoff, KeyVerdict, Link, Request
from protocol._runtimes import RUNTIMES
from relay._holdings import Holdings
from relay._records import DENY_AFTER, MAX_ALLOWANCE, Held, Hold, Payload

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # a request upstream unanswered this long is a failed contact
FINISHED_RECHECK_S = 60.0  # after `finished`, ask upstream again this much later (a new batch)
BORED, RESULTS, ALIVE = "bored", "results", "alive"  # the kinds of request that go upstream
_KINDS = (BORED, RESULTS, ALIVE)


@dataclass(slots=True)
class Upstream:
    """The relay as a jobber to its upstream: its link (requests, backoff, key) and what
    the upstream said."""

    line: Link
    lease_s: float
    quiet_until: float = 0.0  # retry_later / finished: no bored before this
    finished: bool = False  # the upstream said its task is done
    bored_for: str = ""  # attributed: the jobber of ours the outstanding bored is for
    in_flight: tuple[str, ...] = ()  # the upstream tags of the outstanding results
    last_alive: float = 0.0
    delivered: int = 0  # results the upstream acknowledged (this process)
    # whether the upstream keeps standing per jobber of ours (alive_ack.standing said);
    # None: not known yet (an alive goes at start to learn it)
    attributes: bool | None = None
    rejected: int = 0  # results the upstream rejected (this process)
    contacts: int = 0  # replies heard
    last_reply: float = 0.0
    # pinned runtimes the upstream asked us to prepare (retry_later.runtimes): asked of
    # our jobbers in turn, and their files served to them (relay._files)
    runtimes: frozenset[str] = frozenset()

    @property
    def backoff(self) -> Backoff:
        return self.line.backoff

    def _out(self, kind: str) -> int | None:
        request = self.line.out.get(kind)
        return None if request is None else request.id

    @property
    def bored(self) -> int | None:
        return self._out(BORED)

    @property
    def results(self) -> int | None:
        return self._out(RESULTS)

    @property
    def alive(self) -> int | None:
        return self._out(ALIVE)


class UpstreamSide:
    """What the relay asks upstream, and what it makes of the answers."""

    def __init__(self, book: Holdings, up: Upstream, *, name: str, attribute: bool) -> None:
        self.book = book
        self.up = up
        self.name = name
        self.attribute = attribute

    # --- what to send ----------------------------------------------------------

    def requests(self, now: float) -> list[p.Message]:
        """The requests to send upstream now (each recorded as out)."""
        up, book = self.up, self.book
        if not up.backoff.ready(now):
            return []
        out: list[p.Message] = []
        if up.results is None:
            batch = self._results_batch()
            if batch:
                rid = up.line.sent(RESULTS, now).id
                up.in_flight = tuple(r.tag for r in batch)
                out.append(p.Results(rid, self.name, batch))
        if up.bored is None and now >= up.quiet_until and self.attribute:
            ask = self._ask_for_one(now)
            if ask is not None:
                out.append(ask)
        elif up.bored is None and now >= up.quiet_until:
            target = book.target(now)
            open_ = book._open()
            queued = open_ - sum(1 for h in book.held.values() if h.result is None and h.local)
            if target and (queued * 2 <= target or open_ == 0) and open_ < target:
                want = min(p.MAX_BATCH, target - open_)
                rid = up.line.sent(BORED, now).id
                out.append(p.Bored(rid, self.name, self.host(now), want, book.holding()))
        interval = min(p.ALIVE_INTERVAL_S, up.lease_s / 4)
        probe = self.attribute and up.attributes is None  # at start: can it attribute?
        # attributing, it says alive while it serves jobbers too, holding nothing: the
        # alive_ack tells it their standing (votes settle after their results' ack)
        busy = book.held or (self.attribute and up.attributes and book.served(now))
        due = busy and now - up.last_alive >= interval
        if up.alive is None and (due or probe):
            rid = up.line.sent(ALIVE, now).id
            up.last_alive = now
            # holding only while no bored is outstanding: a jobs reply in flight would
            # otherwise read as lost
            holding = book.holding() if up.bored is None else None
            out.append(p.Alive(rid, self.name, holding))
        return out

    def _ask_for_one(self, now: float) -> p.Bored | None:
        """Attributed: a bored on behalf of the served jobber whose own buffer is lowest
        against its target (its own rate times the horizon, two per slot at least)."""
        book = self.book
        open_ = book._open()
        room = book.max_buffer - open_
        if room <= 0:
            return None
        best = None
        for j in book.served(now):
            if now < j.quiet_until:
                continue
            target = book._target_of(j, now)
            mine = [h for h in book.held.values() if h.result is None and h.for_key == j.key]
            queued = sum(1 for h in mine if not h.local)
            if len(mine) >= target or (queued * 2 > target and mine):
                continue
            # the emptiest buffer first; of equals, the one asked for longest ago
            lack = ((target - len(mine)) / target, -j.asked_at)
            if best is None or lack > best[0]:
                best = (lack, j, target - len(mine))
        if best is None:
            return None
        _, j, want = best
        assert j.host is not None
        up = self.up
        rid = up.line.sent(BORED, now).id
        up.bored_for = j.key
        j.asked_at = now
        # its own facts but one: the payloads it holds are the relay's (and the runtimes
        # it has ready, its own); its input files come through the relay (relay._files)
        host = dataclasses.replace(j.host, cached=self._cached([j.host]))
        behalf = p.Attribution(j.key, j.address[:256])
        want = min(p.MAX_BATCH, want, room)
        return p.Bored(rid, self.name, host, want, book.holding(), behalf)

    def host(self, now: float) -> p.HostFacts:
        """What the relay says of itself upstream: the sum of the jobbers it serves, the
        most any of them gives one job (input files too: they come through the relay,
        relay._files), the runtimes any of them has ready, no platform (see
        relay._downstream). Each job goes down only to a jobber that takes it."""
        hosts = [j.host for j in self.book.served(now) if j.host is not None]

        def most(name: str):
            values = [getattr(h, name) for h in hosts]
            return None if not values or None in values else max(values)

        inputs = [h.input_mb for h in hosts if h.input_mb is not None]
        return p.HostFacts(
            cpus=max(1, min(1 << 20, sum(h.cpus for h in hosts))),
            memory_mb=max((h.memory_mb for h in hosts), default=0),
            slots=min(1 << 20, sum(h.slots for h in hosts)),
            cached=self._cached(hosts),
            max_time_s=most("max_time_s"),
            max_fuel=most("max_fuel"),
            max_output_kb=most("max_output_kb"),
            input_mb=max(inputs) if inputs else None,
            # one name if its jobbers share it, else none (grouped with the oldest)
            nan_fuel=fuels.pop() if len(fuels := {h.nan_fuel for h in hosts}) == 1 else None,
        )

    def _cached(self, hosts: Sequence[p.HostFacts]) -> tuple[str, ...]:
        """What the relay lists as held: the payloads it holds, and the pinned runtimes
        any of `hosts` has ready (a runtime's jobs go down only to one that has it)."""
        ready = {sha for h in hosts for sha in h.cached if sha in RUNTIMES}
        return (*sorted(ready), *(s for s in self.book.payloads if s not in ready))[: p.MAX_CACHED]

    def _results_batch(self) -> tuple[p.Result, ...]:
        held = self.book.held.values()
        return p.results_that_fit(h.result for h in held if h.result is not None)

    # --- what came back --------------------------------------------------------

    def reply(self, msg: p.Message, now: float) -> None:
        """A reply from upstream (one whose `re` may match no request: stale, ignored)."""
        up, book = self.up, self.book
        request = up.line.match(getattr(msg, "re", None), _KINDS)
        if request is None:
            log.debug("stale %s from upstream dropped", msg.TYPE)
            return
        kind = request.kind
        in_flight: tuple[str, ...] = ()
        if kind == RESULTS:
            in_flight, up.in_flight = up.in_flight, ()
        if isinstance(msg, p.Error):
            j = book.jobbers.get(up.bored_for) if self.attribute and kind == BORED else None
            if j is not None and msg.code is p.ErrorCode.DENIED:
                # the upstream denies that jobber of ours, not us: the others go on
                up.line.answered(request.id, now, (kind,))
                book.deny(j.key, f"denied upstream: {msg.text}")
                up.last_reply = now
                return
            log.warning("upstream refused our %s: %s: %s", kind, msg.code.value, msg.text)
            up.line.error_answer(request.id, now, (kind,))
            return
        up.line.answered(request.id, now, (kind,))
        up.contacts += 1
        up.last_reply = now
        if isinstance(msg, p.Jobs) and kind == BORED:
            up.finished = False
            self._take_jobs(msg, now, up.bored_for if self.attribute else "")
        elif isinstance(msg, p.RetryLater) and kind == BORED:
            known = {sha for sha in msg.runtimes or () if sha in RUNTIMES}
            if known - up.runtimes:
                log.info("upstream runs pinned runtimes %s: our jobbers are asked for them", known)
                up.runtimes |= known
            j = book.jobbers.get(up.bored_for) if self.attribute else None
            if j is not None:  # for that jobber of ours: the others may still get work
                j.quiet_until = now + msg.seconds
            else:
                up.quiet_until = now + msg.seconds
        elif isinstance(msg, p.Finished) and kind == BORED:
            if not up.finished:
                log.info("upstream: its task is finished")
                # its last votes settled after our last ack: an alive now hears how our
                # jobbers stand, while the upstream still answers
                up.last_alive = -math.inf
            up.finished = True
            up.quiet_until = now + FINISHED_RECHECK_S
        elif isinstance(msg, p.Referral) and kind == BORED:
            # a relay serves one upstream: a referral is only "none here for now"
            log.info("upstream referred us to %s; asking it again later", ", ".join(msg.dealers))
            up.quiet_until = now + up.backoff.min_s
        elif isinstance(msg, p.Ack) and kind == RESULTS:
            self._acked(msg, in_flight)
        elif isinstance(msg, p.AliveAck) and kind == ALIVE:
            self._alive_ack(msg)
        else:
            log.warning("upstream answered our %s with %s; ignored", kind, msg.TYPE)

    def _alive_ack(self, msg: p.AliveAck) -> None:
        up = self.up
        if up.attributes is None:
            up.attributes = msg.standing is not None
            if self.attribute and not up.attributes:
                log.warning(
                    "THE UPSTREAM CANNOT ATTRIBUTE: it keeps no standing for the jobbers "
                    "of a relay (it is older than alive_ack.standing, or a relay), so it "
                    "counts this relay as one jobber and a vote one of our jobbers loses "
                    "costs us all; only implausible results are caught here"
                )
        if msg.standing is not None:
            self._standing(msg.standing)
        up.lease_s = msg.lease_s
        for utag in msg.cancel:
            if utag in self.book.held:
                log.info("upstream cancelled %s", utag)
                self.book._drop(utag)

    def failed(self, now: float) -> float:
        """A failed contact (no reply in time, a send that failed): every request out is
        taken as lost and the socket is to be reset (the shell opens a fresh one).
        Returns the wait chosen."""
        self.up.in_flight = ()
        return self.up.line.failed(now)

    def late(self, now: float) -> list[Request]:
        """The requests out past their deadline (the shell says which, then `failed`)."""
        return self.up.line.late(now)

    def take_reset(self) -> bool:
        """Whether the shell must close the upstream's sockets now (asked once)."""
        return self.up.line.take_reset()

    # --- the key -------------------------------------------------------------

    def given_key(self, key: str | None) -> None:
        """The upstream's key as its owner gave it, or as pinned before (None: neither)."""
        self.up.line.key = key

    def hello(self, now: float) -> p.Hello | None:
        """The hello to ask the upstream's plaintext port for its key, when one is due."""
        line = self.up.line
        if not line.needs_hello() or not line.may_send(HELLO, now):
            return None
        return p.Hello(line.sent(HELLO, now, rid=1).id)  # (always 1: a socket of its own)

    def hello_reply(self, msg: p.HelloReply, now: float) -> KeyVerdict:
        """The key the plaintext port announced (on a socket of its own: whatever comes
        there answers the hello). Learnt when none is held; a changed one is refused."""
        self.up.line.forget(HELLO)
        return self.up.line.heard_key(msg.key)

    # --- taking what came ------------------------------------------------------

    def _take_jobs(self, msg: p.Jobs, now: float, for_key: str) -> None:
        book = self.book
        for sha, wasm in msg.payloads.items():
            if hashlib.sha256(wasm).hexdigest() != sha:
                log.warning("upstream sent a payload whose bytes do not hash to %s: dropped", sha)
                continue
            sig = (msg.signatures or {}).get(sha)
            if sha not in book.payloads or (sig is not None and sha not in book.signatures):
                book.payloads[sha] = wasm
                if sig is not None:
                    book.signatures[sha] = sig
                book._ops.append(Payload(sha, wasm, None if sig is None else sig._to_wire()))
        for sha, sig in (msg.signatures or {}).items():
            if sha in book.payloads and sha not in book.signatures:
                book.signatures[sha] = sig
                book._ops.append(Payload(sha, book.payloads[sha], sig._to_wire()))
        for spec in msg.jobs:
            if spec.tag in book.held:
                continue  # sent twice (a reply to a request we gave up on): one is enough
            h = Held(spec.tag, spec, now, for_key=for_key)
            book.held[spec.tag] = h
            book.version += 1
            book._ops.append(Hold(spec.tag, spec._to_wire(), now, for_key))
            # as a jobber must: give it back invalid (a runtime's module never comes in jobs)
            if spec.payload not in book.payloads and spec.payload not in RUNTIMES:
                book._done(h, p.Result(spec.tag, p.Status.INVALID, detail="payload not sent"), "")
        if msg.jobs:
            log.info("took %d jobs from upstream (%d held)", len(msg.jobs), len(book.held))

    def _acked(self, msg: p.Ack, in_flight: Sequence[str]) -> None:
        book = self.book
        sent = set(in_flight)
        told = {s.key for s in msg.standing or ()}
        for tag in msg.tags:
            if tag in sent and tag in book.held:
                self.up.delivered += 1
                j = book.jobbers.get(book.held[tag].by)
                if j is not None and j.key not in told:
                    j.good()  # no standing said for it: an acknowledged result is all we learn
                book._drop(tag)
        for r in msg.rejected:
            if r.tag in sent and r.tag in book.held:
                log.warning(
                    "upstream rejected our result for %s: %s: %s", r.tag, r.code.value, r.text
                )
                self.up.rejected += 1
                by = book.held[r.tag].by
                book._drop(r.tag)
                if r.code is p.ErrorCode.DENIED and by in book.jobbers:
                    book.deny(by, f"denied upstream: {r.text}")
        if msg.standing is not None:
            self._standing(msg.standing)

    def _standing(self, standing: Sequence[p.Standing]) -> None:
        """What the upstream holds of our jobbers: votes each won and lost there (totals),
        and whether it denies it. Each lost vote halves the jobber's allowance here, each
        won one adds one, as the upstream's own quotas do."""
        book = self.book
        for s in standing:
            j = book.jobbers.get(s.key)
            if j is None:
                continue
            won, lost = max(0, s.valid - j.won), max(0, s.invalid - j.lost)
            j.won, j.lost = s.valid, s.invalid
            for _ in range(min(won, MAX_ALLOWANCE)):
                j.good()
            for _ in range(min(lost, 16)):  # 16 halvings reach 1 from any allowance
                j.bad()
            if lost:
                log.warning(
                    "jobber %s lost %d more votes upstream (%d lost, %d won)",
                    j.label or j.key[:12],
                    lost,
                    j.lost,
                    j.won,
                )
            if s.denied:
                book.deny(j.key, "denied upstream")
            elif j.lost >= DENY_AFTER and j.lost > j.won:
                book.deny(j.key, f"lost {j.lost} votes upstream and won {j.won}")
