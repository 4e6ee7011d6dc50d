"""What a dealer knows of its peers: who has work a jobber can run. No sockets, no clock.

Theory of operation
-------------------
A dealer given peers (`--peer`, or the referral-only dealer) asks each of them
`work_query` every ASK_EVERY_S and keeps the last `work_offer` it heard, with
the time it heard it. The shell (dealer._peerlink) does the sockets: it asks
`due(now)` which peers to query now and sends them, feeds every reply to
`heard`, and calls `expire(now)` each turn, which turns a query unanswered for
TIMEOUT_S into a failed link (the shell resets that peer's socket, as a jobber
does: Lazy Pirate, net._link).

Each peer link is in one of three states, read from its fields:

=========  =====================================  =============================
state      means                                  asked again
=========  =====================================  =============================
waiting    a query is out (`query_id` set)        when it is answered or expires
backing    the last contact failed                when its backoff is over
           (`backoff.failures > 0`)               (net._link: doubling from
                                                  MIN_BACKOFF_S to MAX_BACKOFF_S)
idle       answered, or never asked yet           ASK_EVERY_S after the last ask
=========  =====================================  =============================

Any answer resets the backoff. A reply whose `re` is not the query out (late,
after a timeout; or forged) changes nothing. An `error`, or a reply that is
not a `work_offer`, is a failed link like a timeout.

`referral(host, now)` answers for one jobber: the peers whose offer is fresh
(heard within STALE_S), not finished, with jobs, and whose limits the jobber's
HostFacts does not refuse, most jobs first (then most left, then the order
the peers were given). A peer whose link fails keeps its last offer only until
it goes stale, so a dead peer is never referred for long, and one that never
answered never is. An offer is believed as it was said: a peer that lies about
its work costs each jobber referred to it one wasted `bored`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import protocol as p
from net._link import Backoff  # the project's one Lazy Pirate rule
from net._link import Link as Line

log = logging.getLogger(__name__)

ASK_EVERY_S = 2.0  # a few seconds: a peer's work is known that fresh, for ~60 bytes each way
TIMEOUT_S = 3.0  # a query unanswered this long is a failed link (loopback answers in ~1 ms)
# an offer older than this is not used: about five periods, so one lost answer, or two,
# does not make a live peer disappear, and a dead one is gone within seconds
STALE_S = 10.0
# backoff of a failing link: short, since a peer dealer that comes back should be used
# again within a couple of minutes; a dead peer then costs one query every 1 to 2 min
MIN_BACKOFF_S = 2.0
MAX_BACKOFF_S = 120.0
MAX_REFERRED = 64  # dealers in one `referral` (the wire's cap)
# what a referral-only dealer tells a jobber no peer has work for, nor may soon: long
# enough that 10,000 idle jobbers cost it 1,000 messages a second, short enough that a
# new batch behind it is found within seconds
RETRY_NONE_S = 10.0
MAX_ADDRESS = 256  # characters in a dealer address on the wire
QUERY = "work_query"  # the one kind of request a peer link sends


@dataclass(frozen=True, slots=True)
class Offer:
    """What a peer last said (a work_offer) and when (the dealer's clock)."""

    jobs: int
    limits: p.Limits | None
    left: int | None
    finished: bool
    at: float


@dataclass
class Link:
    """One peer: its last offer, and its line (net._link: the query out and the backoff)."""

    address: str
    order: int  # its place among the peers given: the last tie-break
    line: Line
    offer: Offer | None = None
    asked_at: float | None = None  # when the last query went out
    error: str | None = None  # why the last contact failed (None after an answer)

    @property
    def backoff(self) -> Backoff:
        return self.line.backoff

    @property
    def query_id(self) -> int | None:
        """The work_query out, if any."""
        query = self.line.out.get(QUERY)
        return None if query is None else query.id


@dataclass
class Peers:
    """Every peer's last offer and link state; answers which peers a jobber may go to."""

    addresses: Sequence[str]
    ask_every_s: float = ASK_EVERY_S
    timeout_s: float = TIMEOUT_S
    stale_s: float = STALE_S
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    rng: random.Random = field(default_factory=random.Random, repr=False)
    links: dict[str, Link] = field(init=False)
    _next_id: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.links = {}
        seen: set[str] = set()
        for address in self.addresses:
            if not address or len(address) > MAX_ADDRESS:
                raise ValueError(f"peer address {address[:40]!r}...: 1 to {MAX_ADDRESS} characters")
            if address in seen:
                raise ValueError(f"peer {address} given twice")
            seen.add(address)
        if min(self.ask_every_s, self.timeout_s, self.stale_s) <= 0:
            raise ValueError("ask_every_s, timeout_s and stale_s must be positive")
        for i, address in enumerate(self.addresses):
            backoff = Backoff(self.min_backoff_s, self.max_backoff_s, rng=self.rng)
            line = Line(self.timeout_s, backoff, late_at_deadline=True)
            self.links[address] = Link(address, i, line)

    def __bool__(self) -> bool:
        return bool(self.links)

    # --- asking ------------------------------------------------------------

    def due(self, now: float) -> list[tuple[str, p.WorkQuery]]:
        """The queries to send now, one per peer that is idle and due, or whose backoff
        is over; each is recorded as out."""
        out = []
        for link in self.links.values():
            if not link.line.may_send(QUERY, now):
                continue
            idle = link.backoff.failures == 0 and link.asked_at is not None
            if idle and now - link.asked_at < self.ask_every_s:
                continue
            self._next_id += 1
            link.line.sent(QUERY, now, self._next_id)
            link.asked_at = now
            out.append((link.address, p.WorkQuery(self._next_id)))
        return out

    def heard(self, address: str, msg: p.Message, now: float) -> bool:
        """A reply from `address`. True if it answered the query out (and was taken)."""
        link = self.links.get(address)
        if link is None or link.line.match(getattr(msg, "re", None)) is None:
            return False  # late, stale or not ours: changes nothing
        if not isinstance(msg, p.WorkOffer):
            why = f"{msg.code.value}: {msg.text}" if isinstance(msg, p.Error) else msg.TYPE
            # an answer all the same: the socket stays
            self._said(link, link.line.error_answer(msg.re, now), f"answered {why}")
            return True
        link.line.answered(msg.re, now)
        if link.error is not None:
            log.info("peer %s answers again", address)
        link.error = None
        finished = bool(msg.finished)
        link.offer = Offer(msg.jobs, msg.limits, msg.left, finished, now)
        return True

    def expire(self, now: float) -> list[str]:
        """Peers whose query went unanswered for `timeout_s`: failed links, whose sockets
        the shell resets (what was queued on them is dropped)."""
        out = []
        for link in self.links.values():
            if link.line.late(now):
                self._failed(link, now, f"no answer within {self.timeout_s:g} s")
            if link.line.take_reset():
                out.append(link.address)
        return out

    def unreachable(self, address: str, now: float, why: str) -> bool:
        """The shell could not send to `address`, or read from it: a failed link. True: its
        socket must be reset."""
        link = self.links.get(address)
        if link is None:
            return False
        self._failed(link, now, why)
        return link.line.take_reset()

    def _failed(self, link: Link, now: float, why: str) -> None:
        self._said(link, link.line.failed(now), why)

    def _said(self, link: Link, wait: float, why: str) -> None:
        if link.error is None:
            log.warning("peer %s: %s; asking again in %.1f s", link.address, why, wait)
        link.error = why

    def next_due(self, now: float) -> float:
        """Seconds until `due` or `expire` may have something to do (0: now)."""
        if not self.links:
            return self.ask_every_s
        return max(0.0, min(self._next_at(link, now) for link in self.links.values()) - now)

    def _next_at(self, link: Link, now: float) -> float:
        """When `link` is next due: its query expires, its backoff ends, or its period."""
        query = link.line.out.get(QUERY)
        if query is not None:
            return query.deadline
        if not link.backoff.ready(now):
            return link.backoff.until
        if link.asked_at is None or link.backoff.failures:
            return now
        return link.asked_at + self.ask_every_s

    # --- deciding ----------------------------------------------------------

    def fresh(self, link: Link, now: float) -> Offer | None:
        """The link's last offer if heard within `stale_s`, else None."""
        o = link.offer
        return o if o is not None and now - o.at <= self.stale_s else None

    def referral(self, host: p.HostFacts, now: float) -> tuple[str, ...]:
        """The peers with work this jobber can run, best first (at most MAX_REFERRED)."""
        ranked = []
        for link in self.links.values():
            o = self.fresh(link, now)
            if o is None or o.finished or o.jobs <= 0 or o.limits is None:
                continue
            if host.refuses(o.limits) is not None:
                continue
            ranked.append((-o.jobs, -(o.left or 0), link.order, link.address))
        ranked.sort()
        return tuple(r[-1] for r in ranked[:MAX_REFERRED])

    def may_have_work(self, host: p.HostFacts, now: float) -> bool:
        """Whether some peer may soon have work for this jobber: a fresh offer, not
        finished, of jobs it can run, though none wants a replica now (all are out).
        What `retry_later.more` says; a dead or silent peer promises nothing."""
        for link in self.links.values():
            o = self.fresh(link, now)
            if o is None or o.finished or o.limits is None:
                continue
            if host.refuses(o.limits) is None:
                return True
        return False

    # --- reporting ---------------------------------------------------------

    def status(self, now: float, wall: float | None = None) -> list[dict]:
        """One map per peer, in the order given, for status_reply (times as Unix times:
        `wall` is the Unix time at `now`, the same clock when omitted)."""
        shift = 0.0 if wall is None else wall - now
        rows = []
        for link in self.links.values():
            o = link.offer
            next_try = max(now, self._next_at(link, now))
            rows.append(
                {
                    "address": link.address,
                    "jobs": None if o is None else o.jobs,
                    "limits": None if o is None or o.limits is None else _limits(o.limits),
                    "left": None if o is None else o.left,
                    "finished": None if o is None else o.finished,
                    "said_at": None if o is None else o.at + shift,
                    "stale": o is None or self.fresh(link, now) is None,
                    "failures": link.backoff.failures,
                    "error": link.error,
                    "next_try": next_try + shift,
                }
            )
        return rows


def _limits(limits: p.Limits) -> dict:
    return {
        "memory_mb": limits.memory_mb,
        "time_s": limits.time_s,
        "fuel": limits.fuel,
        "output_kb": limits.output_kb,
    }
