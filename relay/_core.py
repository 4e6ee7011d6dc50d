"""The relay's core: a jobber to its upstream dealer, a dealer to its own jobbers.

Theory of operation
-------------------
A relay (`python -m relay UPSTREAM`) stands between one upstream dealer
and jobbers that cannot reach it, or should not depend on reaching it: a lab
behind a firewall, a site on an unreliable link. Upstream it speaks the jobber
protocol under its own key (`bored`, `results`, `alive`); downstream it speaks
the dealer protocol, so an unchanged jobber works against it. This module
decides everything and does no I/O: messages and `now` in, replies, upstream
requests and journal operations out. relay/_server.py is the shell.

It is composed of two sides over one state: the **upstream** side
(relay._upstream: what it asks upstream over its link, net._link, and what it
makes of the answers), the **downstream** side (relay._downstream: what it
answers its own jobbers), and the **holdings** they share (relay._holdings:
what it holds, and the moves that change it). The records, the journal's
operations and the lifecycle of a held replica as a transition table are in
relay._records.

Each upstream replica the relay holds (an **upstream tag**, `utag`) is in one
of three states, HELD_TRANSITIONS in relay._records:

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
result, a tag dropped) is an operation in `take_ops()` (relay._records.Op); the shell writes them
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

import protocol as p
from net._link import Backoff, Link
from protocol._runtimes import RUNTIMES
from relay._downstream import GONE, DownstreamSide
from relay._files import FILE_CACHE_MB, RelayFiles, runtime_files
from relay._holdings import GIVEN_BACK, Holdings
from relay._records import (
    DENY_AFTER,
    LEASE_S,
    MAX_ALLOWANCE,
    QUOTA,
    Done,
    Drop,
    Held,
    Hold,
    Jobber,
    Local,
    Next,
    Op,
    Payload,
    Release,
    Send,
)
from relay._upstream import REQUEST_TIMEOUT_S, Upstream, UpstreamSide

__all__ = [
    "DENY_AFTER",
    "GIVEN_BACK",
    "GONE",
    "HORIZON_S",
    "LEASE_S",
    "MAX_ALLOWANCE",
    "MAX_BUFFER",
    "QUOTA",
    "Done",
    "Drop",
    "Held",
    "Hold",
    "Jobber",
    "Local",
    "Next",
    "Op",
    "Payload",
    "RelayCore",
    "Release",
    "Send",
]

HORIZON_S = 120.0  # the buffer covers this long of work at the rate results come back
MAX_BUFFER = 1024  # upstream replicas held at most (queued and out)


class RelayCore(Holdings):
    """The holdings, with an upstream side and a downstream side acting on them."""

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
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        file_cache_bytes: int = FILE_CACHE_MB << 20,
    ) -> None:
        """`attribute`: ask upstream for each jobber's jobs on its behalf (`bored.behalf`)
        and give each job only to the jobber it was fetched for, so that the upstream
        keeps each of its jobbers' standing (and, trusting this relay, counts each as a
        machine of its own). `quota`: the allowance a new jobber of ours starts with.
        `request_timeout_s`: a request upstream unanswered this long is a failed contact.
        `file_cache_bytes`: the input files' chunks kept in memory (relay._files)."""
        if not 1 <= max_buffer <= p.MAX_BATCH:
            raise ValueError(f"the buffer must hold 1 to {p.MAX_BATCH} jobs, not {max_buffer}")
        if horizon_s <= 0 or lease_s <= 0:
            raise ValueError("horizon_s and lease_s must be positive")
        if not 1 <= quota <= MAX_ALLOWANCE:
            raise ValueError(f"the quota must be 1 to {MAX_ALLOWANCE}, not {quota}")
        super().__init__(
            tag_prefix, horizon_s=horizon_s, max_buffer=max_buffer, lease_s=lease_s, quota=quota
        )
        # the upstream's key, once learnt, is pinned and kept (never asked again)
        line = Link(request_timeout_s, backoff or Backoff(), recheck_learnt=False)
        self.up = Upstream(line, LEASE_S)
        self.upstream = UpstreamSide(self, self.up, name=name, attribute=attribute)
        self.downstream = DownstreamSide(self, self.up, attribute=attribute)
        self.files = RelayFiles(line, file_cache_bytes)
        self._sizes: tuple[tuple, dict[str, int]] = ((), {})  # file_sizes, by what it read

    # --- upstream --------------------------------------------------------------

    def upstream_requests(self, now: float) -> list[p.Message]:
        """The requests to send upstream now (each recorded as out)."""
        out: list[p.Message] = self.upstream.requests(now)
        return out + self.files.requests(now, self.file_sizes())

    def upstream_reply(self, msg: p.Message, now: float) -> None:
        """A reply from upstream (one whose `re` may match no request: stale, ignored)."""
        if self.files.owns(msg):
            self.up.contacts += 1
            self.up.last_reply = now
            self.files.reply(msg, now, self.file_sizes())
        else:
            self.upstream.reply(msg, now)

    def file_sizes(self) -> dict[str, int]:
        """The files the relay serves its jobbers (hash -> size): those its jobs not yet
        done read, and the module and files of the runtimes they run or the upstream
        asked for. Made again only when the holdings or those runtimes changed: it is
        asked for every fetch."""
        made_of = (self.version, self.up.runtimes)
        if self._sizes[0] == made_of:
            return self._sizes[1]
        open_ = [h.spec for h in self.held.values() if h.result is None]
        sizes = runtime_files(self.up.runtimes | {spec.payload for spec in open_})
        for spec in open_:  # input files, and the saved state a job resumes from
            for ref in spec.fetched():
                sizes[ref.hash] = ref.size
        self._sizes = (made_of, sizes)
        return sizes

    def upstream_failed(self, now: float) -> float:
        """A failed contact (no reply in time, a send that failed): every request out is
        lost and the socket is to be reset. Returns the wait chosen."""
        return self.upstream.failed(now)

    def host(self, now: float) -> p.HostFacts:
        return self.upstream.host(now)

    # --- downstream ------------------------------------------------------------

    def bored(self, msg: p.Bored, now: float, key: str, address: str) -> p.Message:
        return self.downstream.bored(msg, now, key, address)

    def results(self, msg: p.Results, now: float, key: str, address: str) -> p.Ack:
        return self.downstream.results(msg, now, key, address)

    def alive(self, msg: p.Alive, now: float, key: str, address: str) -> p.AliveAck:
        return self.downstream.alive(msg, now, key, address)

    def offer(self, rid: int, now: float) -> p.WorkOffer:
        return self.downstream.offer(rid, now)

    def fetch(self, msg: p.Fetch, now: float, key: str) -> p.Message:
        """A jobber's `fetch`: a chunk of a file its jobs read, kept here or fetched
        upstream for it meanwhile (relay._files)."""
        j = self.jobbers.get(key)
        if j is not None and j.denied:
            return p.Error(msg.id, p.ErrorCode.DENIED, f"denied by the relay: {j.denied}")
        return self.files.fetch(msg, now, self.file_sizes())

    # --- time ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Leases of our jobbers; queued jobs past their deadline given back."""
        self.downstream.leases(now)
        self.give_back_late(now)
        self.files.forget(self.file_sizes())

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
            "files": self.files.status(),
            "runtimes": sorted(RUNTIMES[sha].name for sha in up.runtimes),
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
