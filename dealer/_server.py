"""The dealer's ZeroMQ loop: decode, feed the core, journal, reply, tell the task.

One ROUTER socket for work, one thread. Each turn of the loop drains every
message that is waiting (up to MAX_DRAIN), feeds them all to the core, writes
the records they produced to the journal in one transaction, and only then
sends the replies: nothing is acknowledged before it is durable, and one fsync
serves a whole batch. Settled jobs are then handed to the task in order.

The work socket is a CurveZMQ server. A ZAP handler (zmq.auth's
ThreadAuthenticator, with a callback) admits any client key on an open
dealer, or only the keys of an --allow directory on a closed one, and never a
denied key. The key each message's connection proved (its "User-Id") is the
sender's identity; the connection's source address ("Peer-Address") names its
machine. Nothing a message says about who sent it is believed.

A second, plaintext ROUTER on the next port up answers only `hello` (the work
socket's public key, for jobbers that trust on first use) and `status`.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TextIO

import zmq
from zmq.auth.thread import ThreadAuthenticator

import protocol as p
from dealer._core import Accepted, Core, Policy
from dealer._journal import Journal
from protocol._keys import KeyPair, hex_of_z85
from protocol._signing import AuthorKey
from tasks import Job, Task

log = logging.getLogger(__name__)

MAX_DRAIN = 512  # messages handled per journal commit
TICK_S = 1.0  # longest poll: deadlines are checked at least this often
RETRY_BUSY_S = 2.0  # "retry later" while all work is out but not settled
RETRY_IDLE_S = 30.0  # "retry later" for jobbers this dealer cannot use
# Frames the work socket takes: 1 MiB for requests and batches of results (the
# reference jobber keeps a results message under it), plus one result's output.
REQUEST_BYTES = 1024 * 1024
RCVHWM = 8  # messages queued per connection; the reference jobber has 2 in flight
STATUS_PAGE = 100  # jobbers listed per status page
EVICT_EVERY_S = 60.0  # how often idle strangers are forgotten
# a finished dealer stays this long to answer "finished", take late results and
# cancel held work: longer than a jobber's alive interval, so every holder hears
LINGER_S = 6.0
DISTINCT = ("host", "subnet", "key")
ZAP_DOMAIN = "borednet"


def frame_cap(output_kb: int) -> int:
    """The largest frame a dealer whose jobs write at most `output_kb` KiB takes."""
    return min(p.MAX_MESSAGE_BYTES, REQUEST_BYTES + output_kb * 1024 + 64 * 1024)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a message, as the transport proved it."""

    key: str  # the CurveZMQ public key, 64 hex digits ("" on the plaintext socket)
    address: str  # the connection's source IP address

    def machine(self, distinct: str) -> str:
        """The group votes are counted by, under the --distinct policy."""
        if distinct == "key":
            return self.key
        if distinct == "subnet":
            try:
                ip = ipaddress.ip_address(self.address)
            except ValueError:
                return self.address
            bits = 24 if ip.version == 4 else 64
            return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
        return self.address


class _Gate:
    """The ZAP callback: which client keys may complete the handshake."""

    def __init__(self, allow: Collection[str] | None) -> None:
        self.allow = None if allow is None else frozenset(allow)
        self.denied: frozenset[str] = frozenset()  # replaced whole, read by the auth thread

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            who = hex_of_z85(key)
        except ValueError:
            return False
        return who not in self.denied and (self.allow is None or who in self.allow)


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
    quota: int | None = None,
    deny_after: int | None = None,
    lease_s: float | None = None,
    backups: int | None = None,
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
        fuel_limit=task.limits.fuel,
        output_bytes=task.limits.output_kb * 1024,
        **({} if quota is None else {"quota": quota}),
        **({} if deny_after is None else {"deny_after": deny_after}),
        **({} if lease_s is None else {"lease_s": lease_s}),
        **({} if backups is None else {"backups": backups}),
        **({} if task.lease_s is None or lease_s is not None else {"lease_s": task.lease_s}),
    )


class RouterServer:
    """A ROUTER socket served in turns: drain, decode, handle, commit, reply.

    Subclasses answer decoded messages in `handle` and may act around each
    turn: `before_turn` (time-driven work), `commit` (make the turn's changes
    durable: runs before any reply is sent), `after_turn`.
    """

    def __init__(
        self,
        bind: str,
        keys: KeyPair | None = None,
        *,
        allow: Collection[str] | None = None,
        max_frame: int = p.MAX_MESSAGE_BYTES,
    ) -> None:
        if keys is None:  # a key for this run only (tests, embedding)
            keys = KeyPair(*zmq.curve_keypair())
        self.keys = keys
        self._ctx = zmq.Context()
        self.gate = _Gate(allow)
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("dealer.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.gate)
        self.sock = self._router(max_frame)
        self.sock.curve_server = True
        self.sock.curve_secretkey = keys.secret
        self.sock.curve_publickey = keys.public
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.public = self._router(REQUEST_BYTES)
        try:
            self._bind(bind)
        except BaseException:
            self.close()
            raise
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.public_endpoint: str = self.public.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stopping = False

    def _router(self, max_frame: int) -> zmq.Socket:
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.MAXMSGSIZE, max_frame)
        s.setsockopt(zmq.RCVHWM, RCVHWM)
        return s

    def _bind(self, bind: str) -> None:
        """Bind the work socket to `bind` and the plaintext one to the next port up."""
        scheme, _, rest = bind.partition("://")
        if scheme != "tcp":  # ipc/inproc: a sibling name
            self.sock.bind(bind)
            self.public.bind(bind + ".public")
            return
        host, _, port = rest.rpartition(":")
        for _ in range(50 if port == "*" else 1):
            self.sock.bind(bind)
            work = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            work_port = int(work.rpartition(":")[2])
            try:
                self.public.bind(f"tcp://{host}:{work_port + 1}")
                return
            except zmq.ZMQError as e:
                if port != "*":
                    raise zmq.ZMQError(
                        e.errno, f"{host}:{work_port + 1} (the plaintext port): {e}"
                    ) from e
                self.sock.unbind(work)  # that port's neighbour is taken: pick another pair
        raise zmq.ZMQError(zmq.EADDRINUSE, f"no free pair of ports on {host}")

    @property
    def address(self) -> str:
        """What a jobber needs: the work endpoint and `#` the public key, in hex."""
        return f"{connectable(self.endpoint)}#{self.keys.public_hex}"

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        raise NotImplementedError

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        """The plaintext socket: the key, and whatever else a subclass makes public."""
        if isinstance(msg, p.Hello):
            return p.HelloReply(msg.id, self.keys.public_hex)
        return self.unexpected(msg, "the plaintext port (use the encrypted one)")

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
        poller.register(self.public, zmq.POLLIN)
        while not self._stopping and not self.finished():
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            poller.poll(int(self.timeout_s() * 1000) + 1)
            self.turn()

    def turn(self) -> None:
        """Handle everything waiting, commit it, then reply."""
        now = time.time()
        self.before_turn(now)
        replies: list[tuple[zmq.Socket, zmq.Frame, bytes]] = []
        for sock in (self.sock, self.public):
            for _ in range(MAX_DRAIN):
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(parts) != 2:
                    log.warning("dropping a message of %d frames", len(parts))
                    continue
                ident, frame = parts
                data = frame.bytes
                try:
                    msg = p.decode(data)
                except p.ProtocolError as e:
                    log.warning("malformed message: %s", e)
                    code = (
                        p.ErrorCode.VERSION
                        if isinstance(e, p.VersionError)
                        else p.ErrorCode.MALFORMED
                    )
                    reply: p.Message | None = p.Error(p.request_id(data), code, str(e)[:1000])
                else:
                    reply = self._dispatch(sock, msg, frame, now)
                if reply is None:
                    continue
                try:
                    out = p.encode(reply)
                except p.ProtocolError as e:  # e.g. jobs whose stdin adds up past the frame cap
                    log.error("cannot send %s: %s", reply.TYPE, e)
                    err = p.Error(p.request_id(data), p.ErrorCode.INTERNAL, str(e)[:1000])
                    out = p.encode(err)
                replies.append((sock, ident, out))
        self.commit()
        for sock, ident, out in replies:
            try:
                sock.send_multipart([ident, out], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY) or its queue full
                log.info("reply dropped: %s", e)
        self.after_turn()

    def _dispatch(
        self, sock: zmq.Socket, msg: p.Message, frame: zmq.Frame, now: float
    ) -> p.Message | None:
        if sock is self.public:
            return self.handle_public(msg, now)
        try:
            key = hex_of_z85(frame.get("User-Id"))
            address = frame.get("Peer-Address")
        except (ValueError, zmq.ZMQError) as e:  # no ZAP identity: should not happen
            log.error("message without a proven identity dropped: %s", e)
            return None
        return self.handle(msg, now, Peer(key, address))

    @staticmethod
    def unexpected(msg: p.Message, what: str) -> p.Error:
        rid = getattr(msg, "id", getattr(msg, "re", 0))
        return p.Error(rid, p.ErrorCode.UNEXPECTED, f"{what} does not take {msg.TYPE} messages")

    def close(self) -> None:
        for s in (getattr(self, "sock", None), getattr(self, "public", None)):
            if s is not None:
                s.close(linger=1000)
        self._auth.stop()
        self._ctx.term()


def connectable(endpoint: str) -> str:
    """A bound endpoint as a client reaches it: a wildcard bind is reached on loopback."""
    return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace(
        "tcp://[::]:", "tcp://[::1]:"
    )


class Referrer(RouterServer):
    """A dealer with no task of its own: it refers every bored jobber to its peers.

    A well-known entry point in front of the dealers that hold the work.
    """

    def __init__(self, bind: str, peers: Sequence[str], keys: KeyPair | None = None):
        if not peers:
            raise ValueError("a referrer needs at least one --peer")
        super().__init__(bind, keys)
        self.peers = tuple(peers)

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            return self.handle(msg, now, Peer("", ""))
        return super().handle_public(msg, now)

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
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
        keys: KeyPair | None = None,
        peers: Sequence[str] = (),
        policy: Policy | None = None,
        distinct: str = "host",
        allow: Collection[str] | None = None,
        admins: Collection[str] = (),
        progress: TextIO | None = sys.stderr,
        signer: AuthorKey | None = None,
    ) -> None:
        """`signer`: the task author's key. The payload is signed with it once, here, and
        the signature (with the key's rotation links) goes out in every `jobs`."""
        if len(task.payload.wasm) > p.MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload of {len(task.payload.wasm)} bytes is over the {p.MAX_PAYLOAD_BYTES} cap"
            )
        if distinct not in DISTINCT:
            raise ValueError(f"--distinct must be one of {', '.join(DISTINCT)}, not {distinct!r}")
        self.task = task
        self.journal = journal
        self.peers = tuple(peers)
        self.distinct = distinct
        self.admins = frozenset(admins)
        policy = policy or policy_for(task)
        # the rules that decide settlement must be the ones the journal was written under
        journal.pin(
            "voting",
            f"redundancy={policy.redundancy} quorum={policy.quorum} "
            f"max_errors={policy.max_errors} max_replicas={policy.max_replicas} "
            f"distinct={distinct}",
            "the voting rules",
        )
        self.core = Core(task.jobs(), policy, journal.tag_prefix)
        self._payload = task.payload
        self.signer = None if signer is None else signer.public
        self._signatures = None
        if signer is not None:
            sha = task.payload.sha256
            signature = signer.sign_payload(sha)
            root = signer.chain[0].old if signer.chain else signer.public
            verdict = p.verify_payload(sha, signature, {root})
            if not verdict.accepted:  # what every trusting jobber would say: say it first
                raise ValueError(f"the payload's own signature is refused: {verdict.reason}")
            self._signatures = {sha: signature}
            log.info("payload %s signed by %s", sha[:12], signer.public)
        self.labels: dict[str, str] = {}  # identity -> the name it gave, for people
        self._too_small: dict[str, int] = {}  # identity -> the memory it offered, too little
        self._evicted_at = 0.0
        super().__init__(bind, keys, allow=allow, max_frame=frame_cap(task.limits.output_kb))
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
        self._said_at = 0.0
        self.done = False
        self.linger_s = LINGER_S
        self._lingering = False
        self._until = lambda: True
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
        self.gate.denied = frozenset(self.core.denied)
        self.core.resume(time.time())  # jobbers holding work get a full lease to come back
        self._deliver()

    # --- the loop ----------------------------------------------------------

    def run(self, *, max_s: float | None = None, linger: bool = True) -> None:
        """Serve until the task is done (then, with `linger`, a moment more: see linger)."""
        log.debug("dealer for %s listening on %s", type(self.task).__name__, self.address)
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
        held work) until `until()` is true or `max_s` seconds have passed."""
        self._lingering, self._until = True, until
        since = time.monotonic()
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
        self.done = self.task.done() or self.core.finished()
        self.journal.append(self.core.take_records())  # finished() may draw a job
        return self.done

    def before_turn(self, now: float) -> None:
        self.core.tick(now)
        if now - self._evicted_at >= EVICT_EVERY_S:
            self._evicted_at = now
            self.core.evict(now)
            self.labels = {k: v for k, v in self.labels.items() if k in self.core.jobbers}
            self._too_small = {k: v for k, v in self._too_small.items() if k in self.core.jobbers}

    def commit(self) -> None:
        self.journal.append(self.core.take_records())

    def after_turn(self) -> None:
        if len(self.gate.denied) != len(self.core.denied):
            self.gate.denied = frozenset(self.core.denied)
        self._deliver()
        now = time.time()
        if self._bar is not None and now - self._said_at >= 1.0:  # the progress line says why
            self._said_at = now
            why = self.waiting(now)
            self._bar.set_postfix_str(why[0] if why else "", refresh=False)

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status(msg.page or 0))
        return super().handle_public(msg, now)

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        if isinstance(msg, p.Bored):
            self._label(peer, msg.jobber)
            return self._bored(msg, now, peer)
        if isinstance(msg, p.Results):
            self._label(peer, msg.jobber)
            return self._results(msg, now, peer)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status(msg.page or 0))
        if isinstance(msg, p.Alive):
            self._label(peer, msg.jobber)
            cancel = self.core.alive(peer.key, now, msg.holding)
            return p.AliveAck(msg.id, self.core.policy.lease_s, tuple(cancel))
        if isinstance(msg, p.Deny):
            return self._deny(msg, peer)
        return self.unexpected(msg, "a dealer")

    def _label(self, peer: Peer, name: str) -> None:
        if self.labels.get(peer.key) != name:
            self.labels[peer.key] = name

    def _bored(self, msg: p.Bored, now: float, peer: Peer) -> p.Message:
        core = self.core
        if self.done:
            core.alive(peer.key, now, msg.holding)
            return p.Finished(msg.id)
        if core.is_denied(peer.key):
            return p.Error(msg.id, p.ErrorCode.DENIED, "this identity is denied by the dealer")
        machine = peer.machine(self.distinct)
        # no more than the jobber can run soon: its slots and as many buffered
        want = min(msg.want, 2 * max(1, msg.host.slots))
        sha = self._payload.sha256
        send_payload = sha not in msg.host.cached
        # Jobs are taken one at a time while the reply stays well under the frame
        # cap: a batch of jobs with large stdin must not make an unsendable reply.
        budget = p.MAX_MESSAGE_BYTES // 2 - (len(self._payload.wasm) if send_payload else 0)
        too_much = msg.host.refuses(self.task.limits)
        if too_much is not None:
            want = 0  # this machine cannot run these jobs: only its `holding` is read
        assigned = core.bored(peer.key, min(want, 1), msg.host.memory_mb, now, msg.holding, machine)
        if assigned:
            budget -= _size(assigned[-1].job)
        while assigned and len(assigned) < want and budget > 0:
            more = core.bored(peer.key, 1, msg.host.memory_mb, now, None, machine)
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
            log.debug("%d jobs to %s", len(specs), peer.key[:12])
            return p.Jobs(msg.id, specs, payloads, self._signatures)
        if msg.want == 0:
            return p.Jobs(msg.id, (), signatures=self._signatures)
        if msg.host.memory_mb < core.policy.memory_mb:
            self._too_small[peer.key] = msg.host.memory_mb
            why = f"jobs need {core.policy.memory_mb} MiB each; you offer {msg.host.memory_mb}"
            return p.RetryLater(msg.id, RETRY_IDLE_S, why)
        if too_much is not None:
            return p.RetryLater(msg.id, RETRY_IDLE_S, f"jobs here need {too_much}")
        if self.peers and not core.has_work():
            return p.Referral(msg.id, self.peers)
        if not core.room(peer.key, peer.machine(self.distinct)):
            why = "you hold as many jobs as your quota allows"
            return p.RetryLater(msg.id, RETRY_BUSY_S, why, more=True)
        why = "no job needs this machine now; all are out"
        return p.RetryLater(msg.id, RETRY_BUSY_S, why, more=True)

    def _results(self, msg: p.Results, now: float, peer: Peer) -> p.Message:
        ok: list[str] = []
        rejected: list[p.Rejection] = []
        for r in msg.results:
            why = self.core.result(peer.key, r.tag, r.status, r.output, r.fuel, r.detail, now)
            if why is None:
                ok.append(r.tag)
            else:
                log.info("result %s from %s refused: %s", r.tag, peer.key[:12], why.text)
                rejected.append(p.Rejection(r.tag, why.code, why.text))
        return p.Ack(msg.id, tuple(ok), tuple(rejected))

    def _deny(self, msg: p.Deny, peer: Peer) -> p.Message:
        if peer.key not in self.admins:
            return p.Error(msg.id, p.ErrorCode.FORBIDDEN, "deny needs the dealer's admin key")
        self.core.deny(msg.key, msg.reason or "denied by the admin")
        log.warning("identity %s denied: %s", msg.key, msg.reason)
        return p.AdminReply(msg.id, f"{msg.key} denied")

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

    def jobbers(self) -> list[dict]:
        """Every identity the dealer remembers, best first (credit, then valid results)."""
        c = self.core
        rows = [
            {
                "key": key,
                "name": self.labels.get(key) or "-",  # "-": not heard since a restart
                "machine": r.machine,
                "valid": r.valid,
                "invalid": r.invalid,
                "errors": r.errors,
                "credit": r.credit,
                "last_seen": r.last_seen,
                "gone": r.gone,
                "holding": r.held,
                "denied": c.is_denied(key),
            }
            for key, r in c.jobbers.items()
        ]
        rows.sort(key=lambda r: (-r["credit"], -r["valid"], r["key"]))
        return rows

    def waiting(self, now: float) -> list[str]:
        """Why unsettled jobs wait (the core's reasons, and jobbers too small for them)."""
        why = self.core.waiting(now)
        small = [k for k in self._too_small if k in self.core.jobbers]
        if self.core.in_flight and small:
            most = max(self._too_small[k] for k in small)
            why.append(
                f"jobs need {self.core.policy.memory_mb} MiB each; {len(small)} jobber"
                f"{'s offer' if len(small) != 1 else ' offers'} at most {most}"
            )
        return why

    def status(self, page: int = 0) -> dict:
        """A report for people: counts, disagreements, and one page of jobbers (no tags)."""
        c = self.core
        rows = self.jobbers()
        pages = max(1, -(-len(rows) // STATUS_PAGE))
        return {
            "task": type(self.task).__name__,
            "key": self.keys.public_hex,
            "signer": self.signer,
            "total": self.task.total(),
            "drawn": c.drawn,
            "accepted": c.accepted,
            "failed": c.failed,
            "in_flight": c.in_flight,
            "replicas_out": c.replicas_out,
            "distinct": self.distinct,
            "closed": self.gate.allow is not None,
            "waiting": self.waiting(time.time()),
            "disputed": c.disputed,
            "disputes": list(c.disputes)[-10:],
            "denied": sorted(c.denied)[:STATUS_PAGE],
            "jobbers_total": len(rows),
            "page": page,
            "pages": pages,
            "jobbers": rows[page * STATUS_PAGE : (page + 1) * STATUS_PAGE],
        }

    def finish_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.finish_bar()
        super().close()
        self.journal.close()
