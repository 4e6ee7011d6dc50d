"""The dealer's servers: a task's Dealer, and a Referrer with no task of its own.

Both are net._router.RouterServer subclasses (one ROUTER loop: decode, handle,
commit, reply). A Dealer feeds each message to its dealer._service.Service,
journals what the turn produced in one transaction, and only then replies;
settled jobs are then handed to the task in order.

A server given peers asks them `work_query` from the same loop (dealer._peerlink:
non-blocking DEALER sockets polled beside its own, as a RouterServer link) and
keeps what they said in a dealer._peers.Peers, which decides whom a jobber with
nothing here is referred to.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence

import protocol as p
from dealer._core import Core, Policy
from dealer._dashboard import Dashboard
from dealer._fileserver import SERVE_MIB_S
from dealer._journal import Journal
from dealer._peerlink import PeerLinks
from dealer._peers import ASK_EVERY_S, RETRY_NONE_S, Peers
from dealer._service import Service
from net._keys import KeyPair
from net._router import (
    DEALER_SNDHWM,
    PER_SOURCE_CONNECTIONS,
    TICK_S,
    RouterServer,
    frame_cap,
)
from protocol import Peer
from protocol._signing import AuthorKey
from tasks import Task

log = logging.getLogger(__name__)

# a finished dealer stays this long to answer "finished", take late results and
# cancel held work: longer than a jobber's alive interval, so every holder hears
LINGER_S = 6.0
# a dealer whose status was asked this recently before it finished is watched (by an
# allocator counting credit, say): it lingers until asked once more, within LINGER_S
WATCHED_S = 10.0
# While it serves, a dealer collects cyclic garbage when this many more objects were made
# than freed (Python's default: 700). Its loop makes and drops tens of objects a job, each
# freed by its count of references; at 700 the collector ran every few dozen jobs and took
# a sixth of the dealer's time (docs/benchmarks.md, "Dispatch"), at 10,000 a twentieth.
YOUNG_OBJECTS = 10_000


@contextlib.contextmanager
def _serving_gc() -> Iterator[None]:
    """Python's cyclic collector tuned for the loop (YOUNG_OBJECTS), and what exists as it
    starts (modules, the task, the journal's state: never cyclic garbage it could free)
    kept out of its full collections (gc.freeze); both as they were afterwards."""
    was = gc.get_threshold()
    gc.set_threshold(max(was[0], YOUNG_OBJECTS), *was[1:])
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*was)


class PeeredServer(RouterServer):
    """A RouterServer that asks its peers what work they have (`self.peers`)."""

    def __init__(
        self, bind: str, keys: KeyPair | None = None, *, peers: Sequence[str] = (), **kw
    ) -> None:
        """`peers`: dealer addresses to ask what work they have (any form of
        protocol.dealer_address; referrals name them in its canonical form)."""
        # ValueError for a bad list, before any socket exists
        self.peers = Peers([p.dealer_address(a) for a in peers])
        super().__init__(bind, keys, **kw)
        if self.peers:
            self.links = (PeerLinks(self._ctx, self.peers),)


class Referrer(PeeredServer):
    """A dealer with no task of its own: it refers each bored jobber to the peers that
    have work that jobber can run (best first), or tells it to come back shortly.

    A well-known entry point in front of the dealers that hold the work.
    """

    def __init__(self, bind: str, peers: Sequence[str], keys: KeyPair | None = None):
        if not peers:
            raise ValueError("a referrer needs at least one --peer")
        super().__init__(bind, keys, peers=peers)

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            return self.handle(msg, now, Peer("", ""))
        return super().handle_public(msg, now)

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        if isinstance(msg, p.Bored):
            dealers = self.peers.referral(msg.host, now)
            if dealers:
                return p.Referral(msg.id, dealers)
            if self.peers.may_have_work(msg.host, now):  # all out now: soon, maybe
                why = "the peers' work this machine can run is all out"
                return p.RetryLater(msg.id, ASK_EVERY_S, why, more=True)
            why = "no peer has work this machine can run"
            return p.RetryLater(msg.id, RETRY_NONE_S, why)
        if isinstance(msg, p.WorkQuery):
            return self.work_offer(msg, now)
        if isinstance(msg, p.Results):
            rejected = tuple(
                p.Rejection(r.tag, p.ErrorCode.UNKNOWN_TAG, "this dealer hands out no jobs")
                for r in msg.results
            )
            return p.Ack(msg.id, (), rejected)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, {"task": None, "peers": self.peers.status(now)})
        return self.unexpected(msg, "a referrer")


class Dealer(PeeredServer):
    """Serves one task's Service (dealer._service) on `bind` until it is finished."""

    def __init__(
        self,
        task: Task,
        bind: str,
        journal: Journal,
        *,
        keys: KeyPair | None = None,
        peers: Sequence[str] = (),
        policy: Policy | None = None,
        distinct: str = "host",
        allow: Collection[str] | None = None,
        admins: Collection[str] = (),
        relays: Collection[str] = (),
        signer: AuthorKey | None = None,
        http: tuple[str, int] | None = None,
        on_turn: Callable[[Service, float], None] | None = None,
        per_source: int = PER_SOURCE_CONNECTIONS,
        serve_mib_s: float = SERVE_MIB_S,
        retry: Collection[int] | None = None,
    ) -> None:
        """`http`: (host, port) to serve the live dashboard on (dealer._dashboard). `on_turn`:
        called after every turn with the service and the time (the command line's
        progress bar). `per_source`: connections kept open from one source address.
        `serve_mib_s`: input files one source address may fetch, MiB a second.
        `retry`: failed jobs to put back (Service's)."""
        super().__init__(
            bind,
            keys,
            allow=allow,
            max_frame=frame_cap(task.limits.output_kb, task.limits.checkpoint_kb or 0),
            peers=peers,
            per_source=per_source,
            sndhwm=DEALER_SNDHWM,
        )
        try:
            self.service = Service(
                task,
                journal,
                now=time.time(),
                policy=policy,
                peers=self.peers,
                distinct=distinct,
                admins=admins,
                relays=relays,
                signer=signer,
                key_hex=self.keys.public_hex,
                closed=allow is not None,
                serve_mib_s=serve_mib_s,
                retry=retry,
            )
        except BaseException:
            RouterServer.close(self)
            raise
        self.gate.denied = frozenset(self.core.denied)
        self._on_turn = on_turn
        self.service.note(address=self.address)  # for a reader of the journal alone
        self.dashboard = None
        self._ended_at: float | None = None  # when the batch was seen done (its last result)
        if http is not None:
            try:
                self.dashboard = Dashboard(*http, type(task).__name__, self.address)
            except OSError as e:
                self.close()
                raise OSError(e.errno, f"--http {http[0]}:{http[1]}: {e.strerror or e}") from e
            self._publish(time.time())
        self.linger_s = LINGER_S
        self._lingering = False
        self._until = lambda: True
        self._status_at = float("-inf")  # when the plaintext status was last asked

    @property
    def core(self) -> Core:
        return self.service.core

    @property
    def task(self) -> Task:
        return self.service.task

    @property
    def done(self) -> bool:
        return self.service.done

    @property
    def failures(self) -> int:
        return self.service.failures

    # --- the loop ----------------------------------------------------------

    def run(self, *, max_s: float | None = None, linger: bool = True) -> None:
        """Serve until the task is done (then, with `linger`, a moment more: see linger)."""
        log.debug("dealer for %s listening on %s", type(self.task).__name__, self.address)
        with _serving_gc():
            self._run(max_s, linger)

    def _run(self, max_s: float | None, linger: bool) -> None:
        started = time.monotonic()
        super().run(max_s=max_s)
        if linger and self.done and not self._stopping and self.linger_s > 0:
            # done: stay a moment to tell askers so, take late results, cancel held work
            left = None if max_s is None else max(0.0, max_s - (time.monotonic() - started))
            self.linger(
                lambda: not self.core.late,
                self.linger_s if left is None else min(self.linger_s, left),
            )

    def linger(self, until, max_s: float) -> None:
        """Once done, go on serving (answering "finished", taking late results, cancelling
        held work) until `until()` is true or `max_s` seconds have passed. A dealer watched
        (its status asked within WATCHED_S) also stays until its status is asked once
        more: an allocator polling it counts the batch's last results too."""
        since = time.monotonic()
        watched = since - self._status_at < WATCHED_S  # then its final figures are read too
        self._lingering = True
        self._until = (lambda: until() and self._status_at >= since) if watched else until
        super().run(max_s=max_s)
        log.debug(
            "done; stayed %.1f s for late results (%d replicas unheard of)",
            time.monotonic() - since,
            self.core.late,
        )

    def timeout_s(self) -> float:
        nd = self.core.next_deadline()
        return TICK_S if nd is None else min(TICK_S, max(0.0, nd - time.time()))

    def finished(self) -> bool:
        if self._lingering:
            return self._until()
        return self.service.finished()

    def before_turn(self, now: float) -> None:
        self.service.tick(now)

    def commit(self) -> None:
        self.service.commit()

    def after_turn(self) -> None:
        now = time.time()
        self.service.after_turn(now)
        if len(self.gate.denied) != len(self.core.denied):
            self.gate.denied = frozenset(self.core.denied)
        if self.dashboard is not None and self.dashboard.due(now):
            self._publish(now)
        if self._on_turn is not None:
            self._on_turn(self.service, now)

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            self._status_at = time.monotonic()
            return p.StatusReply(msg.id, self.status(msg.page or 0))
        return super().handle_public(msg, now)

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        return self.service.handle(msg, now, peer)

    def work_offer(self, msg: p.WorkQuery, now: float) -> p.WorkOffer:
        return self.service.work_offer(msg.id)

    def status(self, page: int = 0) -> dict:
        return {**self.service.status(time.time(), page), "connections": self.gate_status()}

    def _publish(self, now: float) -> None:
        s = self.service
        assert self.dashboard is not None
        if self.done and self._ended_at is None:
            self._ended_at = s.times.last_at or now
        self.dashboard.publish(
            s.status(now),
            list(s.recent_failures),
            s.failures,
            now,
            s.times,
            finished=self.done,
            state="finished" if self.done else "running",
            ended_at=self._ended_at,
            journal=str(s.journal.path.absolute()),
            summary=s.summary(),
            failure_groups=s.failure_groups.rows(),
            failures_ungrouped=s.failure_groups.ungrouped,
            credit=sum(r.credit for r in self.core.jobbers.values()),
        )

    def close(self) -> None:
        if getattr(self, "dashboard", None) is not None:
            self._publish(time.time())  # the last word: what the batch ended with
            self.dashboard.close()
            self.dashboard = None
        super().close()
        if hasattr(self, "service"):
            self.service.close()
