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
from tasks import Task

log = logging.getLogger(__name__)

MAX_DRAIN = 512  # messages handled per journal commit
TICK_S = 1.0  # longest poll: deadlines are checked at least this often
RETRY_BUSY_S = 2.0  # "retry later" while all work is out but not settled
RETRY_IDLE_S = 30.0  # "retry later" for jobbers this dealer cannot use


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


class Dealer:
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
        self.task = task
        self.journal = journal
        self.peers = tuple(peers)
        self.core = Core(task.jobs(), policy or policy_for(task), journal.tag_prefix)
        self._payload = task.payload
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sock.bind(bind)
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
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
        self._stopping = False
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
        """Serve until the task is finished (or `max_s` seconds have passed)."""
        stop_at = None if max_s is None else time.monotonic() + max_s
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        log.info("dealer for %s listening on %s", type(self.task).__name__, self.endpoint)
        while not self._stopping and not self._finished():
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            timeout_s = TICK_S
            nd = self.core.next_deadline()
            if nd is not None:
                timeout_s = min(timeout_s, max(0.0, nd - time.time()))
            poller.poll(int(timeout_s * 1000) + 1)
            self.turn()

    def stop(self) -> None:
        """Make `run` return after the current turn (from another thread or a signal)."""
        self._stopping = True

    def _finished(self) -> bool:
        done = self.task.done() or self.core.finished()
        self.journal.append(self.core.take_records())  # finished() may draw a job
        return done

    def turn(self) -> None:
        """Handle everything waiting, journal it, reply, tell the task."""
        now = time.time()
        self.core.tick(now)
        replies: list[tuple[bytes, bytes]] = []
        for _ in range(MAX_DRAIN):
            try:
                ident, frame = self._recv()
            except zmq.Again:
                break
            if frame is None:
                continue
            reply = self._handle(frame, now)
            if reply is not None:
                replies.append((ident, p.encode(reply)))
        self.journal.append(self.core.take_records())
        for ident, data in replies:
            try:
                self.sock.send_multipart([ident, data], zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError) as e:  # peer gone or its queue full
                log.info("reply to %r dropped: %s", ident, e)
        self._deliver()

    def _recv(self) -> tuple[bytes, bytes | None]:
        parts = self.sock.recv_multipart(zmq.NOBLOCK)
        if len(parts) != 2:
            log.warning("dropping message of %d frames from %r", len(parts), parts[0])
            return parts[0], None
        return parts[0], parts[1]

    def _handle(self, frame: bytes, now: float) -> p.Message | None:
        try:
            msg = p.decode(frame)
        except p.ProtocolError as e:
            log.warning("malformed message: %s", e)
            return p.Error(p.request_id(frame), p.ErrorCode.MALFORMED, str(e)[:1000])
        if isinstance(msg, p.Bored):
            return self._bored(msg, now)
        if isinstance(msg, p.Results):
            return self._results(msg, now)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status())
        rid = getattr(msg, "id", getattr(msg, "re", 0))
        return p.Error(rid, p.ErrorCode.UNEXPECTED, f"a dealer does not take {msg.TYPE} messages")

    def _bored(self, msg: p.Bored, now: float) -> p.Message:
        assigned = self.core.bored(msg.jobber, msg.want, msg.host.memory_mb, now)
        if assigned:
            sha = self._payload.sha256
            specs = tuple(
                p.JobSpec(a.tag, sha, a.job.args, a.job.stdin, self.task.limits, a.deadline - now)
                for a in assigned
            )
            payloads = {} if sha in msg.host.cached else {sha: self._payload.wasm}
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
        self.sock.close(linger=1000)
        self.journal.close()
