"""The relay's core: a jobber to its upstream dealer, a dealer to its own jobbers.

Theory of operation
-------------------
A relay (`python -m dealer relay UPSTREAM`) stands between one upstream dealer
and jobbers that cannot reach it, or should not depend on reaching it: a lab
behind a firewall, a site on an unreliable link. Upstream it speaks the jobber
protocol under its own key (`bored`, `results`, `alive`); downstream it speaks
the dealer protocol, so an unchanged jobber works against it. This module
decides everything and does no I/O: messages and `now` in, replies, upstream
requests and journal operations out. relay/_server.py is the shell.

Each upstream replica the relay holds (an **upstream tag**, `utag`) is in one
of three states:

    state    meaning                                    leaves by
    queued   in the buffer, no jobber of ours runs it   sent to a jobber (out);
                                                        deadline passed (done: given back)
    out      one of our jobbers holds it (a local tag)  a result (done); the jobber gone,
                                                        or giving it back (queued)
    done     its result waits to go upstream            the upstream acknowledged or
                                                        rejected it (dropped)

and any state is dropped at once when the upstream cancels it (`alive_ack`).
Downstream, each replica sent to one of our jobbers has its own **local tag**,
unique within the relay and never reused, so a late result from a jobber the
relay had given up on is told apart; the first result for an upstream tag
wins, later ones are answered `settled`, and the holders of a done tag are
told to cancel it. Results are checked for plausibility against the job's
limits as the dealer checks them (dealer._core.implausible): an implausible
one is refused and its job goes to another of our jobbers, since upstream it
would count against the relay (a job fetched for that jobber alone, with
`--attribute`, goes back upstream unrun instead).

**The buffer.** The relay asks upstream for enough jobs to keep its jobbers
busy for `horizon_s` at the rate they return results (measured over
PACE_WINDOW_S), and never fewer than two per slot of the jobbers it serves, at
most `max_buffer`; it asks once the buffer is down to half of that. A jobber
of ours counts as served while its lease runs. It fetches nothing while no
jobber is served (it would only hold work others could run).

**Deadlines.** An upstream deadline counts from when the relay received the
job. A job goes down with what is left of it; a queued job whose deadline has
passed is given back upstream unrun (status `abandoned`), since the upstream
has sent it elsewhere by then. A job already out keeps running: its late
result still counts upstream until the job is decided.

**Liveness.** The relay says `alive` upstream for everything it holds (it
vouches for its jobbers), with `holding` listing every upstream tag it holds;
attributing to an upstream that keeps standing, also while it serves any
jobber, holding nothing (its `alive_ack` tells it its jobbers' standing).
A jobber of ours silent for `lease_s` is taken as gone and its replicas go
back to the buffer: the upstream sees nothing wrong.

**Durability.** Every change (a job taken, a payload, a local replica sent, a
result, a tag dropped) is an operation in `take_ops()`; the shell writes them
to the relay's journal in one transaction before it sends any reply or
request, so nothing is acknowledged downstream before it is on disk, and only
results the upstream acknowledged leave the journal. `load` rebuilds the
state from the journal after a restart.

**Standing.** The relay answers for its jobbers, and only for them: it keeps
each jobber's standing as a dealer does (dealer._core), and the upstream keeps
the same for it. A jobber's **allowance** (replicas of ours it may hold) starts
at QUOTA, grows by one for each of its outputs the upstream accepted in a
quorum (`standing.valid`; where the upstream reports no standing for it, for
each of its results it acknowledged) and halves for each implausible result
and each vote it lost upstream (`standing.invalid`). A jobber is **denied** here once the
upstream says it is (`standing.denied`, a `denied` rejection of its result or
a `denied` error to a `bored` on its behalf) or once it has lost DENY_AFTER
votes and more than it won: it gets no more work, its results are refused, and
what it held goes to our other jobbers (or, fetched for it, back upstream).
Lost votes are traced to the jobber whose output it was by the upstream itself:
with `attribute` (the CLI's default), every result goes up with `by` and every
`bored` with `behalf`, and the upstream counts each of our jobbers as an
identity of its own (docs/protocol.md, section 11), telling us its standing in
each `ack` and `alive_ack`. An upstream whose `alive_ack` carries no `standing`
keeps none: the relay says so once, loudly, at its first contact (it sends an
`alive` at start for that), and then has only its own plausibility checks.

**Trust.** Upstream, the relay's jobbers are identities of their own but, unless
the upstream trusts the relay, on the relay's one machine: the upstream sends it
at most one replica of a job and counts everything behind it as one vote
(docs/security.md, "Relays").
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import protocol as p
from dealer._core import implausible
from net._backoff import Backoff

log = logging.getLogger(__name__)

HORIZON_S = 120.0  # the buffer covers this long of work at the rate results come back
MAX_BUFFER = 1024  # upstream replicas held at most (queued and out)
PACE_WINDOW_S = 10.0  # results per second are counted over this window
SOON_S = 1.0  # a jobber of ours may hold what it returned in this long (as the dealer's)
LEASE_S = 20.0  # a jobber of ours silent this long is taken as gone (as the dealer's)
RETRY_S = 1.0  # "retry later" to a jobber while jobs may come (upstream asked, or others out)
# "retry later" to a jobber holding what it runs soon: the results it is about to return
# free room within a round trip, so it comes back soon (as the dealer's RETRY_QUOTA_S)
RETRY_FULL_S = 0.2
RETRY_IDLE_S = 30.0  # "retry later" to a jobber none of whose jobs it can run
FINISHED_RECHECK_S = 60.0  # after `finished`, ask upstream again this much later (a new batch)
MAX_RESULTS_PER_MESSAGE = 256  # results in one upstream `results` (as the reference jobber)
MAX_RESULTS_BYTES = 768 * 1024  # and under this much (the dealer takes 1 MiB + one output)
MAX_JOBS_BYTES = 16 * 1024 * 1024  # stdin and payload bytes in one `jobs` to our jobbers
EVICT_AFTER_S = 600.0  # a jobber of ours that holds nothing and is silent this long is forgotten
MAX_LATE = 65536  # released local replicas remembered for a late result (this process)
QUOTA = 4  # replicas a new jobber of ours may hold (as the dealer's Policy.quota)
MAX_ALLOWANCE = 4096  # the most a jobber of ours can earn (as the dealer's)
DENY_AFTER = 3  # votes lost upstream (more than won) that deny a jobber here (as the dealer's)
GONE = "the relay's jobber it was fetched for is gone"
GIVEN_BACK = "the relay could not start it before its deadline"


class Op:
    """Journal operations, as tuples: (kind, fields...). See relay._journal."""

    HOLD = "hold"  # (utag, spec wire map, got_at, for_key)
    PAYLOAD = "payload"  # (sha256, wasm bytes, signature wire map or None)
    SEND = "send"  # (ltag, utag, key, address, sent_at)
    RELEASE = "release"  # (ltag,)
    DONE = "done"  # (utag, result wire map, key)
    DROP = "drop"  # (utag,)
    NEXT = "next"  # (next local tag number,)


@dataclass(slots=True)
class Held:
    """One upstream replica the relay holds."""

    utag: str
    spec: p.JobSpec  # as the upstream sent it: deadline_s counts from got_at
    got_at: float
    result: p.Result | None = None  # done: the result for upstream (its tag is utag)
    by: str = ""  # done: the key of the jobber of ours that gave the result
    for_key: str = ""  # attributed: the jobber of ours it was fetched for ("": any)
    local: set[str] = field(default_factory=set)  # local tags out for it

    @property
    def deadline_at(self) -> float:
        return self.got_at + self.spec.deadline_s

    @property
    def state(self) -> str:
        if self.result is not None:
            return "done"
        return "out" if self.local else "queued"


@dataclass(frozen=True, slots=True)
class Local:
    """One replica sent to one of our jobbers."""

    ltag: str
    utag: str
    key: str
    address: str
    sent_at: float


@dataclass(slots=True)
class Jobber:
    """One of our jobbers, as its requests showed it."""

    key: str
    address: str = ""
    label: str = ""
    host: p.HostFacts | None = None
    last_seen: float = 0.0
    results: int = 0  # results taken from it
    asked_at: float = 0.0  # attributed: when the relay last asked upstream on its behalf
    quiet_until: float = 0.0  # attributed: the upstream's retry_later for it
    done: deque[float] = field(default_factory=deque)  # when its recent results came
    allowance: int = QUOTA  # replicas of ours it may hold (see Standing in the docstring)
    implausible: int = 0  # results refused here as implausible
    won: int = 0  # its outputs the upstream accepted in a quorum (as it last said)
    lost: int = 0  # its outputs that lost the vote upstream (as it last said)
    denied: str = ""  # why it is denied here ("": it is not)

    def good(self) -> None:
        self.allowance = min(MAX_ALLOWANCE, self.allowance + 1)

    def bad(self) -> None:
        self.allowance = max(1, self.allowance // 2)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """What dealer._core.implausible reads of a policy, from one job's limits."""

    fuel_limit: int
    output_bytes: int


@dataclass(slots=True)
class Upstream:
    """The relay as a jobber to its upstream: its requests and its backoff."""

    backoff: Backoff
    lease_s: float = LEASE_S
    quiet_until: float = 0.0  # retry_later / finished: no bored before this
    finished: bool = False  # the upstream said its task is done
    next_id: int = 1
    bored: int | None = None  # outstanding request ids
    bored_for: str = ""  # attributed: the jobber of ours the outstanding bored is for
    results: int | None = None
    alive: int | None = None
    in_flight: tuple[str, ...] = ()  # the upstream tags of the outstanding results
    last_alive: float = 0.0
    delivered: int = 0  # results the upstream acknowledged (this process)
    # whether the upstream keeps standing per jobber of ours (alive_ack.standing said);
    # None: not known yet (an alive goes at start to learn it)
    attributes: bool | None = None
    rejected: int = 0  # results the upstream rejected (this process)
    contacts: int = 0  # replies heard
    last_reply: float = 0.0


class RelayCore:
    def __init__(
        self,
        tag_prefix: str,
        *,
        horizon_s: float = HORIZON_S,
        max_buffer: int = MAX_BUFFER,
        lease_s: float = LEASE_S,
        backoff: Backoff | None = None,
        name: str = "relay",
        attribute: bool = False,
        quota: int = QUOTA,
    ) -> None:
        """`attribute`: ask upstream for each jobber's jobs on its behalf (`bored.behalf`)
        and give each job only to the jobber it was fetched for, so that the upstream
        keeps each of its jobbers' standing (and, trusting this relay, counts each as a
        machine of its own). `quota`: the allowance a new jobber of ours starts with."""
        if not 1 <= max_buffer <= p.MAX_BATCH:
            raise ValueError(f"the buffer must hold 1 to {p.MAX_BATCH} jobs, not {max_buffer}")
        if horizon_s <= 0 or lease_s <= 0:
            raise ValueError("horizon_s and lease_s must be positive")
        if not 1 <= quota <= MAX_ALLOWANCE:
            raise ValueError(f"the quota must be 1 to {MAX_ALLOWANCE}, not {quota}")
        self.quota = quota
        self.prefix = tag_prefix
        self.horizon_s = horizon_s
        self.max_buffer = max_buffer
        self.lease_s = lease_s
        self.name = name
        self.attribute = attribute
        self.up = Upstream(backoff or Backoff())
        self.held: dict[str, Held] = {}  # utag -> held replica, in the order received
        self.local: dict[str, Local] = {}  # ltag -> replica out with one of our jobbers
        self.payloads: dict[str, bytes] = {}
        self.signatures: dict[str, p.Signature] = {}
        self.jobbers: dict[str, Jobber] = {}
        self.late: dict[str, Local] = {}  # released local replicas whose results still count
        self._next = 0  # the next local tag's number
        self._ops: list[tuple] = []
        self.given_back = 0  # queued jobs given back past their deadline (this process)

    # --- the journal ---------------------------------------------------------

    def take_ops(self) -> list[tuple]:
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
            j = self._jobber(loc.key, loc.address)
            j.last_seen = now
        self._next = next_tag

    # --- what it holds -------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "out": 0, "done": 0}
        for h in self.held.values():
            out[h.state] += 1
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

    # --- upstream: what to send ----------------------------------------------

    def upstream_requests(self, now: float) -> list[p.Message]:
        """The requests to send upstream now (each recorded as outstanding)."""
        up = self.up
        if not up.backoff.ready(now):
            return []
        out: list[p.Message] = []
        if up.results is None:
            batch = self._results_batch()
            if batch:
                up.results, up.next_id = up.next_id, up.next_id + 1
                up.in_flight = tuple(r.tag for r in batch)
                out.append(p.Results(up.results, self.name, batch))
        if up.bored is None and now >= up.quiet_until and self.attribute:
            ask = self._ask_for_one(now)
            if ask is not None:
                out.append(ask)
        elif up.bored is None and now >= up.quiet_until:
            target = self.target(now)
            open_ = self._open()
            queued = open_ - sum(1 for h in self.held.values() if h.result is None and h.local)
            if target and (queued * 2 <= target or open_ == 0) and open_ < target:
                want = min(p.MAX_BATCH, target - open_)
                up.bored, up.next_id = up.next_id, up.next_id + 1
                out.append(p.Bored(up.bored, self.name, self.host(now), want, self.holding()))
        interval = min(p.ALIVE_INTERVAL_S, up.lease_s / 4)
        probe = self.attribute and up.attributes is None  # at start: can it attribute?
        # attributing, it says alive while it serves jobbers too, holding nothing: the
        # alive_ack tells it their standing (votes settle after their results' ack)
        busy = self.held or (self.attribute and up.attributes and self.served(now))
        due = busy and now - up.last_alive >= interval
        if up.alive is None and (due or probe):
            up.alive, up.next_id = up.next_id, up.next_id + 1
            up.last_alive = now
            # holding only while no bored is outstanding: a jobs reply in flight would
            # otherwise read as lost
            holding = self.holding() if up.bored is None else None
            out.append(p.Alive(up.alive, self.name, holding))
        return out

    def _ask_for_one(self, now: float) -> p.Bored | None:
        """Attributed: a bored on behalf of the served jobber whose own buffer is lowest
        against its target (its own rate times the horizon, two per slot at least)."""
        open_ = self._open()
        room = self.max_buffer - open_
        if room <= 0:
            return None
        best = None
        for j in self.served(now):
            if now < j.quiet_until:
                continue
            target = self._target_of(j, now)
            mine = [h for h in self.held.values() if h.result is None and h.for_key == j.key]
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
        up.bored, up.next_id, up.bored_for = up.next_id, up.next_id + 1, j.key
        j.asked_at = now
        host = dataclasses.replace(j.host, cached=tuple(self.payloads)[: p.MAX_CACHED])
        behalf = p.Attribution(j.key, j.address[:256])
        want = min(p.MAX_BATCH, want, room)
        return p.Bored(up.bored, self.name, host, want, self.holding(), behalf)

    def holding(self) -> tuple[str, ...]:
        return tuple(self.held)[: p.MAX_HOLDING]

    def host(self, now: float) -> p.HostFacts:
        """What the relay says of itself upstream: the sum of the jobbers it serves, the
        most any of them gives one job, and no platform (see _spec_for)."""
        hosts = [j.host for j in self.served(now) if j.host is not None]

        def most(name: str):
            values = [getattr(h, name) for h in hosts]
            return None if not values or None in values else max(values)

        return p.HostFacts(
            cpus=max(1, min(1 << 20, sum(h.cpus for h in hosts))),
            memory_mb=max((h.memory_mb for h in hosts), default=0),
            slots=min(1 << 20, sum(h.slots for h in hosts)),
            cached=tuple(self.payloads)[: p.MAX_CACHED],
            max_time_s=most("max_time_s"),
            max_fuel=most("max_fuel"),
            max_output_kb=most("max_output_kb"),
        )

    def _results_batch(self) -> tuple[p.Result, ...]:
        out: list[p.Result] = []
        size = 0
        for h in self.held.values():
            if h.result is None:
                continue
            size += len(h.result.output) + 4 * (len(h.utag) + len(h.result.detail)) + 64
            if out and (size > MAX_RESULTS_BYTES or len(out) >= MAX_RESULTS_PER_MESSAGE):
                break
            out.append(h.result)
        return tuple(out)

    # --- upstream: what came back --------------------------------------------

    def upstream_reply(self, msg: p.Message, now: float) -> None:
        """A reply from upstream (one whose `re` may match no request: stale, ignored)."""
        up = self.up
        re_ = getattr(msg, "re", None)
        kind = (
            "bored"
            if re_ is not None and re_ == up.bored
            else "results"
            if re_ is not None and re_ == up.results
            else "alive"
            if re_ is not None and re_ == up.alive
            else None
        )
        if kind is None:
            log.debug("stale %s from upstream dropped", msg.TYPE)
            return
        setattr(up, kind, None)
        if kind == "results":
            in_flight, up.in_flight = up.in_flight, ()
        if isinstance(msg, p.Error):
            j = self.jobbers.get(up.bored_for) if self.attribute and kind == "bored" else None
            if j is not None and msg.code is p.ErrorCode.DENIED:
                # the upstream denies that jobber of ours, not us: the others go on
                self.deny(j.key, f"denied upstream: {msg.text}")
                up.backoff.succeeded()
                up.last_reply = now
                return
            log.warning("upstream refused our %s: %s: %s", kind, msg.code.value, msg.text)
            self.upstream_failed(now, outstanding=False)
            return
        up.backoff.succeeded()
        up.contacts += 1
        up.last_reply = now
        if isinstance(msg, p.Jobs) and kind == "bored":
            up.finished = False
            self._take_jobs(msg, now, up.bored_for if self.attribute else "")
        elif isinstance(msg, p.RetryLater) and kind == "bored":
            j = self.jobbers.get(up.bored_for) if self.attribute else None
            if j is not None:  # for that jobber of ours: the others may still get work
                j.quiet_until = now + msg.seconds
            else:
                up.quiet_until = now + msg.seconds
        elif isinstance(msg, p.Finished) and kind == "bored":
            if not up.finished:
                log.info("upstream: its task is finished")
                # its last votes settled after our last ack: an alive now hears how our
                # jobbers stand, while the upstream still answers
                up.last_alive = -math.inf
            up.finished = True
            up.quiet_until = now + FINISHED_RECHECK_S
        elif isinstance(msg, p.Referral) and kind == "bored":
            # a relay serves one upstream: a referral is only "none here for now"
            log.info("upstream referred us to %s; asking it again later", ", ".join(msg.dealers))
            up.quiet_until = now + up.backoff.min_s
        elif isinstance(msg, p.Ack) and kind == "results":
            self._acked(msg, in_flight)
        elif isinstance(msg, p.AliveAck) and kind == "alive":
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
                if utag in self.held:
                    log.info("upstream cancelled %s", utag)
                    self._drop(utag)
        else:
            log.warning("upstream answered our %s with %s; ignored", kind, msg.TYPE)

    def upstream_failed(self, now: float, *, outstanding: bool = True) -> float:
        """A failed contact (no reply in time, a send that failed, an error): back off.
        With `outstanding`, every request out is taken as lost (the shell opens a fresh
        socket). Returns the wait chosen."""
        up = self.up
        if outstanding:
            up.bored = up.results = up.alive = None
            up.in_flight = ()
        return up.backoff.failed(now)

    def _take_jobs(self, msg: p.Jobs, now: float, for_key: str) -> None:
        for sha, wasm in msg.payloads.items():
            if hashlib.sha256(wasm).hexdigest() != sha:
                log.warning("upstream sent a payload whose bytes do not hash to %s: dropped", sha)
                continue
            sig = (msg.signatures or {}).get(sha)
            if sha not in self.payloads or (sig is not None and sha not in self.signatures):
                self.payloads[sha] = wasm
                if sig is not None:
                    self.signatures[sha] = sig
                self._ops.append((Op.PAYLOAD, sha, wasm, None if sig is None else sig._to_wire()))
        for sha, sig in (msg.signatures or {}).items():
            if sha in self.payloads and sha not in self.signatures:
                self.signatures[sha] = sig
                self._ops.append((Op.PAYLOAD, sha, self.payloads[sha], sig._to_wire()))
        for spec in msg.jobs:
            if spec.tag in self.held:
                continue  # sent twice (a reply to a request we gave up on): one is enough
            h = Held(spec.tag, spec, now, for_key=for_key)
            self.held[spec.tag] = h
            self._ops.append((Op.HOLD, spec.tag, spec._to_wire(), now, for_key))
            if spec.payload not in self.payloads:  # as a jobber must: give it back invalid
                self._done(h, p.Result(spec.tag, p.Status.INVALID, detail="payload not sent"), "")
        if msg.jobs:
            log.info("took %d jobs from upstream (%d held)", len(msg.jobs), len(self.held))

    def _acked(self, msg: p.Ack, in_flight: Sequence[str]) -> None:
        sent = set(in_flight)
        told = {s.key for s in msg.standing or ()}
        for tag in msg.tags:
            if tag in sent and tag in self.held:
                self.up.delivered += 1
                j = self.jobbers.get(self.held[tag].by)
                if j is not None and j.key not in told:
                    j.good()  # no standing said for it: an acknowledged result is all we learn
                self._drop(tag)
        for r in msg.rejected:
            if r.tag in sent and r.tag in self.held:
                log.warning(
                    "upstream rejected our result for %s: %s: %s", r.tag, r.code.value, r.text
                )
                self.up.rejected += 1
                by = self.held[r.tag].by
                self._drop(r.tag)
                if r.code is p.ErrorCode.DENIED and by in self.jobbers:
                    self.deny(by, f"denied upstream: {r.text}")
        if msg.standing is not None:
            self._standing(msg.standing)

    def _standing(self, standing: Sequence[p.Standing]) -> None:
        """What the upstream holds of our jobbers: votes each won and lost there (totals),
        and whether it denies it. Each lost vote halves the jobber's allowance here, each
        won one adds one, as the upstream's own quotas do."""
        for s in standing:
            j = self.jobbers.get(s.key)
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
                self.deny(j.key, "denied upstream")
            elif j.lost >= DENY_AFTER and j.lost > j.won:
                self.deny(j.key, f"lost {j.lost} votes upstream and won {j.won}")

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
        for ltag in h.local:
            self.local.pop(ltag, None)
        self._ops.append((Op.DROP, utag))

    def _done(self, h: Held, result: p.Result, by: str) -> None:
        h.result, h.by = result, by
        self._ops.append((Op.DONE, h.utag, result._to_wire(), by))

    # --- time ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Leases of our jobbers; queued jobs past their deadline given back."""
        for j in list(self.jobbers.values()):
            if now - j.last_seen >= self.lease_s:
                mine = [loc.ltag for loc in self.local.values() if loc.key == j.key]
                if mine:
                    log.info(
                        "jobber %s silent for %.0f s: its %d jobs go to others",
                        j.label or j.key[:12],
                        now - j.last_seen,
                        len(mine),
                    )
                for ltag in mine:
                    self._release(ltag)
                if self.attribute:  # its jobs were fetched for it: back upstream
                    for h in list(self.held.values()):
                        if h.result is None and h.for_key == j.key and not h.local:
                            self._give_back(h, GONE)
                if now - j.last_seen >= EVICT_AFTER_S and not mine:
                    del self.jobbers[j.key]
        for h in list(self.held.values()):
            if h.result is None and not h.local and now >= h.deadline_at:
                self._give_back(h, GIVEN_BACK)

    def _give_back(self, h: Held, why: str) -> None:
        """Return an upstream replica unrun: no fault of anyone's, the upstream sends it
        to someone else."""
        self.given_back += 1
        self._done(h, p.Result(h.utag, p.Status.ABANDONED, detail=why), "")

    # --- downstream ------------------------------------------------------------

    def _jobber(self, key: str, address: str) -> Jobber:
        j = self.jobbers.get(key)
        if j is None:
            j = self.jobbers[key] = Jobber(key, allowance=self.quota)
        if address:
            j.address = address
        return j

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
        self._ops.append((Op.RELEASE, ltag))

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

    def bored(self, msg: p.Bored, now: float, key: str, address: str) -> p.Message:
        j = self._jobber(key, address)
        j.label, j.host, j.last_seen = msg.jobber, msg.host, now
        self._held_release(key, msg.holding)
        if j.denied:
            return p.Error(msg.id, p.ErrorCode.DENIED, f"denied by the relay: {j.denied}")
        mine = sum(1 for loc in self.local.values() if loc.key == key)
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
                    for h in self.held.values()
                    if h.result is None and not h.local and h.for_key in ("", key)
                ),
                key=lambda h: h.deadline_at,
            )
            cached = set(msg.host.cached)
            for h in queue:
                if len(jobs) >= room:
                    break
                why = msg.host.refuses(h.spec.limits)
                if why is not None:
                    refused = why
                    continue
                left = h.deadline_at - now
                if left <= 0:
                    continue  # tick gives it back
                extra = 0
                sha = h.spec.payload
                if sha not in cached and sha not in payloads:
                    extra = len(self.payloads[sha])
                if jobs and size + extra + len(h.spec.stdin) + 256 > MAX_JOBS_BYTES:
                    break
                if sha not in cached and sha not in payloads:
                    if len(payloads) >= p.MAX_PAYLOADS:
                        continue
                    payloads[sha] = self.payloads[sha]
                size += extra + len(h.spec.stdin) + 256
                ltag = f"{self.prefix}.{self._next}"
                self._next += 1
                self._ops.append((Op.NEXT, self._next))
                loc = Local(ltag, h.utag, key, address, now)
                self.local[ltag] = loc
                h.local.add(ltag)
                self._ops.append((Op.SEND, ltag, h.utag, key, address, now))
                jobs.append(_spec_for(h.spec, ltag, left, native=bool(h.for_key)))
        if jobs:
            names = {s.payload for s in jobs}
            sigs = {s: self.signatures[s] for s in names if s in self.signatures}
            return p.Jobs(msg.id, tuple(jobs), payloads, sigs or None)
        if not room and mine:
            return p.RetryLater(msg.id, RETRY_FULL_S, "you hold as much as you run soon", True)
        if refused is not None:
            return p.RetryLater(msg.id, RETRY_IDLE_S, f"every job here needs {refused}", None)
        out = any(h.local for h in self.held.values() if h.result is None)
        if self.up.finished and not out:
            return p.Finished(msg.id)
        why = "the relay's buffer is empty" + ("" if out else "; asking upstream")
        # the upstream answering and asked (or about to be): jobs come within a round trip
        soon_ = self.up.backoff.failures == 0 and now >= self.up.quiet_until
        wait = RETRY_FULL_S if soon_ else RETRY_S
        return p.RetryLater(msg.id, wait, why, True if out else None)

    def results(self, msg: p.Results, now: float, key: str, address: str) -> p.Ack:
        j = self._jobber(key, address)
        j.label, j.last_seen = msg.jobber, now
        tags: list[str] = []
        rejected: list[p.Rejection] = []
        for r in msg.results:
            loc = self.local.get(r.tag) or self.late.get(r.tag)
            if loc is None or loc.key != key:
                rejected.append(p.Rejection(r.tag, p.ErrorCode.UNKNOWN_TAG, "not sent to you"))
                continue
            if j.denied:
                self._release(r.tag)
                self.late.pop(r.tag, None)
                text = f"denied by the relay: {j.denied}"
                rejected.append(p.Rejection(r.tag, p.ErrorCode.DENIED, text))
                continue
            h = self.held.get(loc.utag)
            if h is None or h.result is not None:
                rejected.append(p.Rejection(r.tag, p.ErrorCode.SETTLED, "already decided"))
                self._release(r.tag)
                continue
            if r.status is p.Status.ABANDONED and not (r.output or r.fuel) and not h.for_key:
                self._release(r.tag)  # given back: another of ours runs it
                tags.append(r.tag)
                continue
            lim = h.spec.limits
            why = implausible(r.status, r.output, r.fuel, _Bounds(lim.fuel, lim.output_kb * 1024))
            if why is not None:
                log.warning("jobber %s: implausible result for %s: %s", key[:12], r.tag, why)
                j.implausible += 1
                j.bad()
                self._release(r.tag)
                rejected.append(p.Rejection(r.tag, p.ErrorCode.IMPLAUSIBLE, why))
                if h.for_key and not h.local and h.result is None:
                    # fetched for this jobber alone: no other of ours may run it, so it
                    # goes back upstream unrun rather than as a result no sandbox gives
                    self._give_back(h, f"implausible from the jobber it was fetched for: {why}")
                continue
            by = p.Attribution(key, j.address[:256])  # as we saw it, whoever it names
            self._done(h, dataclasses.replace(r, tag=h.utag, by=by), key)
            self._release(r.tag)
            self.late.pop(r.tag, None)
            j.results += 1
            j.done.append(now)
            tags.append(r.tag)
        return p.Ack(msg.id, tuple(tags), tuple(rejected))

    def alive(self, msg: p.Alive, now: float, key: str, address: str) -> p.AliveAck:
        j = self._jobber(key, address)
        j.label, j.last_seen = msg.jobber, now
        self._held_release(key, msg.holding)
        cancel = []
        for ltag in msg.holding or ():
            loc = self.local.get(ltag) or self.late.get(ltag)
            h = None if loc is None or loc.key != key else self.held.get(loc.utag)
            if h is None or h.result is not None or j.denied:
                cancel.append(ltag)  # decided, cancelled upstream, or never ours
        return p.AliveAck(msg.id, self.lease_s, tuple(cancel)[: p.MAX_HOLDING])

    def offer(self, rid: int, now: float) -> p.WorkOffer:
        """What a peer dealer's work_query is told: the jobs in the buffer any new jobber
        could be given, and what one needs (as it would go down: NaNs canonical).
        Attributed, the relay asks upstream for each jobber, so while the upstream
        answers it says it has one."""
        free = [h for h in self.held.values() if h.result is None and not h.local]
        jobs = sum(1 for h in free if not h.for_key)
        if self.attribute and not self.up.finished and self.up.backoff.failures == 0:
            jobs = max(jobs, 1)
        limits = None
        if free:
            limits = free[0].spec.limits
            if limits.native_nans and not self.attribute:
                limits = dataclasses.replace(limits, native_nans=None)
        finished = self.up.finished and not self.held
        return p.WorkOffer(rid, 0 if finished else jobs, limits, None, finished or None)

    # --- people ----------------------------------------------------------------

    def status(self, now: float, upstream: str) -> dict:
        up = self.up
        return {
            "task": None,
            "relay": upstream,
            "upstream": {
                "finished": up.finished,
                "failures": up.backoff.failures,
                "last_reply": up.last_reply or None,
                "delivered": up.delivered,
                "rejected": up.rejected,
                "attributes": up.attributes,
            },
            **self.counts(),
            "target": self.target(now),
            "rate": round(self.rate(now), 3),
            "given_back": self.given_back,
            "jobbers": [
                {
                    "key": j.key,
                    "name": j.label,
                    "machine": j.address,
                    "results": j.results,
                    "allowance": j.allowance,
                    "implausible": j.implausible,
                    "valid": j.won,
                    "invalid": j.lost,
                    "denied": j.denied or None,
                    "holding": sum(1 for x in self.local.values() if x.key == j.key),
                    "last_seen": j.last_seen,
                    "gone": now - j.last_seen >= self.lease_s,
                }
                for j in list(self.jobbers.values())[:100]
            ],
        }


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
