"""The dealer's ZeroMQ loop: decode, feed the core, journal, reply, tell the task.

One ROUTER socket, one thread. Each turn of the loop drains every message that
is waiting (up to MAX_DRAIN), feeds them all to the core, writes the records
they produced to the journal in one transaction, and only then sends the
replies: nothing is acknowledged before it is durable, and one fsync serves a
whole batch. Settled jobs are then handed to the task in order.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import zmq

import protocol as p
from dealer._core import Accepted, Core, Policy
from dealer._journal import Journal
from tasks import Job, Task

log = logging.getLogger(__name__)

MAX_DRAIN = 512  # messages handled per journal commit
TICK_S = 1.0  # longest poll: deadlines are checked at least this often
RETRY_BUSY_S = 2.0  # "retry later" while all work is out but not settled
RETRY_IDLE_S = 30.0  # "retry later" for jobbers this dealer cannot use


def _size(job: Job) -> int:
    """About how many bytes a job takes in a `jobs` message."""
    return 256 + len(job.stdin) + sum(len(a) * 4 for a in job.args)


def policy_for(
    task: Task,
    *,
    redundancy: int | None = None,
    quorum: int | None = None,
    max_errors: int | None = None,
    deadline_s: float | None = None,
) -> Policy:
    """The task's scheduling policy, with any of its class attributes overridden."""
    redundancy = task.redundancy if redundancy is None else redundancy
    if quorum is None:
        quorum = redundancy if task.quorum is None else min(task.quorum, redundancy)
    return Policy(
        redundancy=redundancy,
        quorum=quorum,
        max_errors=task.max_errors if max_errors is None else max_errors,
        deadline_s=task.effective_deadline_s() if deadline_s is None else deadline_s,
        memory_mb=task.limits.memory_mb,
    )


class RouterServer:
    """A ROUTER socket served in turns: drain, decode, handle, commit, reply.

    Subclasses answer decoded messages in `handle` and may act around each
    turn: `before_turn` (time-driven work), `commit` (make the turn's changes
    durable: runs before any reply is sent), `after_turn`.
    """

    def __init__(self, bind: str, context: zmq.Context | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sock.bind(bind)
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stopping = False

    def handle(self, msg: p.Message, now: float) -> p.Message | None:
        raise NotImplementedError

    def before_turn(self, now: float) -> None:
        pass

    def commit(self) -> None:
        pass

    def after_turn(self) -> None:
        pass

    def finished(self) -> bool:
        return False

    def timeout_s(self) -> float:
        return TICK_S

    def stop(self) -> None:
        """Make `run` return after the current turn (from another thread or a signal)."""
        self._stopping = True

    def run(self, *, max_s: float | None = None) -> None:
        """Serve until finished, stopped, or `max_s` seconds have passed."""
        stop_at = None if max_s is None else time.monotonic() + max_s
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stopping and not self.finished():
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            poller.poll(int(self.timeout_s() * 1000) + 1)
            self.turn()

    def turn(self) -> None:
        """Handle everything waiting, commit it, then reply."""
        now = time.time()
        self.before_turn(now)
        replies: list[tuple[bytes, bytes]] = []
        for _ in range(MAX_DRAIN):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 2:
                log.warning("dropping message of %d frames from %r", len(parts), parts[0])
                continue
            ident, frame = parts
            try:
                msg = p.decode(frame)
            except p.ProtocolError as e:
                log.warning("malformed message: %s", e)
                code = (
                    p.ErrorCode.VERSION if isinstance(e, p.VersionError) else p.ErrorCode.MALFORMED
                )
                reply = p.Error(p.request_id(frame), code, str(e)[:1000])
            else:
                reply = self.handle(msg, now)
            if reply is None:
                continue
            try:
                data = p.encode(reply)
            except p.ProtocolError as e:  # e.g. jobs whose stdin adds up past the frame cap
                log.error("cannot send %s: %s", reply.TYPE, e)
                data = p.encode(p.Error(p.request_id(frame), p.ErrorCode.INTERNAL, str(e)[:1000]))
            replies.append((ident, data))
        self.commit()
        for ident, data in replies:
            try:
                self.sock.send_multipart([ident, data], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY) or its queue full
                log.info("reply to %r dropped: %s", ident, e)
        self.after_turn()

    @staticmethod
    def unexpected(msg: p.Message, what: str) -> p.Error:
        rid = getattr(msg, "id", getattr(msg, "re", 0))
        return p.Error(rid, p.ErrorCode.UNEXPECTED, f"{what} does not take {msg.TYPE} messages")

    def close(self) -> None:
        self.sock.close(linger=1000)


class Referrer(RouterServer):
    """A dealer with no task of its own: it refers every bored jobber to its peers.

    A well-known entry point in front of the dealers that hold the work.
    """

    def __init__(self, bind: str, peers: Sequence[str], context: zmq.Context | None = None):
        if not peers:
            raise ValueError("a referrer needs at least one --peer")
        super().__init__(bind, context)
        self.peers = tuple(peers)

    def handle(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.Bored):
            return p.Referral(msg.id, self.peers)
        if isinstance(msg, p.Results):
            rejected = tuple(
                p.Rejection(r.tag, p.ErrorCode.UNKNOWN_TAG, "this dealer hands out no jobs")
                for r in msg.results
            )
            return p.Ack(msg.id, (), rejected)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, {"task": None, "peers": list(self.peers)})
        return self.unexpected(msg, "a referrer")


class Dealer(RouterServer):
    """Serves one task on `bind` until it is finished."""

    def __init__(
        self,
        task: Task,
        bind: str,
        journal: Journal,
        *,
        peers: Sequence[str] = (),
        policy: Policy | None = None,
        progress: TextIO | None = sys.stderr,
        context: zmq.Context | None = None,
    ) -> None:
        if len(task.payload.wasm) > p.MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload of {len(task.payload.wasm)} bytes is over the {p.MAX_PAYLOAD_BYTES} cap"
            )
        self.task = task
        self.journal = journal
        self.peers = tuple(peers)
        policy = policy or policy_for(task)
        # the rules that decide settlement must be the ones the journal was written under
        journal.pin(
            "voting",
            f"redundancy={policy.redundancy} quorum={policy.quorum} "
            f"max_errors={policy.max_errors} max_replicas={policy.max_replicas}",
            "the voting rules",
        )
        self.core = Core(task.jobs(), policy, journal.tag_prefix)
        self._payload = task.payload
        super().__init__(bind, context)
        self._bar = None
        if progress is not None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=task.total(),
                unit="job",
                file=progress,
                desc=type(task).__name__,
                dynamic_ncols=True,
            )
        self.failures = 0
        self._replay()

    # --- start-up ----------------------------------------------------------

    def _replay(self) -> None:
        n = 0
        for rec in self.journal.records():
            self.core.apply(rec)
            n += 1
        self.core.take_records()  # already in the journal
        if n:
            log.info(
                "replayed %d journal records: %d jobs accepted, %d failed, %d unsettled",
                n,
                self.core.accepted,
                self.core.failed,
                self.core.in_flight,
            )
        self._deliver()

    # --- the loop ----------------------------------------------------------

    def run(self, *, max_s: float | None = None) -> None:
        log.info("dealer for %s listening on %s", type(self.task).__name__, self.endpoint)
        super().run(max_s=max_s)

    def timeout_s(self) -> float:
        nd = self.core.next_deadline()
        return TICK_S if nd is None else min(TICK_S, max(0.0, nd - time.time()))

    def finished(self) -> bool:
        done = self.task.done() or self.core.finished()
        self.journal.append(self.core.take_records())  # finished() may draw a job
        return done

    def before_turn(self, now: float) -> None:
        self.core.tick(now)

    def commit(self) -> None:
        self.journal.append(self.core.take_records())

    def after_turn(self) -> None:
        self._deliver()

    def handle(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.Bored):
            return self._bored(msg, now)
        if isinstance(msg, p.Results):
            return self._results(msg, now)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status())
        return self.unexpected(msg, "a dealer")

    def _bored(self, msg: p.Bored, now: float) -> p.Message:
        sha = self._payload.sha256
        send_payload = sha not in msg.host.cached
        # Jobs are taken one at a time while the reply stays well under the frame
        # cap: a batch of jobs with large stdin must not make an unsendable reply.
        budget = p.MAX_MESSAGE_BYTES // 2 - (len(self._payload.wasm) if send_payload else 0)
        assigned = self.core.bored(msg.jobber, 1, msg.host.memory_mb, now, msg.holding)
        if assigned:
            budget -= _size(assigned[-1].job)
        while assigned and len(assigned) < msg.want and budget > 0:
            more = self.core.bored(msg.jobber, 1, msg.host.memory_mb, now)
            if not more:
                break
            assigned += more
            budget -= _size(more[0].job)
        if assigned:
            specs = tuple(
                p.JobSpec(a.tag, sha, a.job.args, a.job.stdin, self.task.limits, a.deadline - now)
                for a in assigned
            )
            payloads = {sha: self._payload.wasm} if send_payload else {}
            log.debug("%d jobs to %s", len(specs), msg.jobber)
            return p.Jobs(msg.id, specs, payloads)
        if msg.host.memory_mb < self.core.policy.memory_mb:
            return p.RetryLater(msg.id, RETRY_IDLE_S)
        if self.peers and not self.core.has_work():
            return p.Referral(msg.id, self.peers)
        return p.RetryLater(msg.id, RETRY_BUSY_S)

    def _results(self, msg: p.Results, now: float) -> p.Message:
        ok: list[str] = []
        rejected: list[p.Rejection] = []
        for r in msg.results:
            why = self.core.result(msg.jobber, r.tag, r.status, r.output, r.fuel, r.detail, now)
            if why is None:
                ok.append(r.tag)
            else:
                log.info("result %s from %s refused: %s", r.tag, msg.jobber, why.text)
                rejected.append(p.Rejection(r.tag, why.code, why.text))
        return p.Ack(msg.id, tuple(ok), tuple(rejected))

    def _deliver(self) -> None:
        for s in self.core.take_settled():
            if isinstance(s, Accepted):
                self.task.on_output(s.job, s.output)
            else:
                self.failures += 1
                log.warning("job %d failed: %s", s.job_id, "; ".join(s.reasons))
                self.task.on_failure(s.job, list(s.reasons))
            if self._bar is not None:
                self._bar.update(1)

    # --- reporting ---------------------------------------------------------

    def status(self) -> dict:
        c = self.core
        return {
            "task": type(self.task).__name__,
            "total": self.task.total(),
            "drawn": c.drawn,
            "accepted": c.accepted,
            "failed": c.failed,
            "in_flight": c.in_flight,
            "replicas_out": c.replicas_out,
            "jobbers": {
                name: {
                    "valid": r.valid,
                    "invalid": r.invalid,
                    "errors": r.errors,
                    "credit": r.credit,
                    "last_seen": r.last_seen,
                }
                for name, r in c.jobbers.items()
            },
        }

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        super().close()
        self.journal.close()
